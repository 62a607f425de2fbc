//! Allocator settings for training on the CPU.
//!
//! candle allocates a fresh buffer for every tensor operation. With glibc's
//! defaults, buffers of a few hundred KiB (a layer's weights or gradients) come
//! from `mmap` and go back with `munmap`, so every step pays page faults and
//! page zeroing for each of them: profiled at about 70% of an MLP step
//! (`starling bench train`). Keeping such buffers on the heap and not trimming
//! it lets freed buffers be reused, 3-4× faster per step.

/// Largest allocation glibc still serves from the heap (its maximum).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory kept at the top of the heap before it is returned to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 1 << 30;
/// Extra memory asked for whenever the heap grows.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD: i32 = 64 << 20;
/// Heaps (arenas) threads allocate from. glibc's default, 8 per core, lets
/// every worker thread keep its own freed buffers: a lone `lm-small` node
/// peaked at 1.26 GB for 0.66 GB of live heap (`heaptrack`); with 2 arenas at
/// 0.78 GB, and no step slower (`starling bench train`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: i32 = 2;

/// Applies the settings; call once at start-up, before other threads run.
/// Does nothing where the C library is not glibc.
pub fn tune_for_training() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any
    // other thread exists, and the values are within glibc's documented ranges.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Returns the heap's free memory to the system (glibc's `malloc_trim`): call
/// when a burst of work is over. The settings above keep freed buffers for the
/// next step's reuse, which within a round is what makes steps fast; across
/// rounds it kept up to a gigabyte per node that nothing used, which in a
/// 4-node `gpt2-small` swarm on one 24 GiB machine was the difference between
/// fitting and a node killed for want of memory. Does nothing where the C
/// library is not glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system; it takes
    // the allocator's locks itself and may be called from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
