//! Buffers as large as a model: a dense delta's wire bytes, a received
//! payload. Each round allocates them afresh, and glibc serves an allocation
//! of 32 MiB or more with its own `mmap`, so the first write to each of its
//! 4 KiB pages is a page fault: 10,000 of them for a 10⁷-parameter delta,
//! profiled at about a third of encoding one (`starling bench average`).
//! Asking for transparent huge pages on such a buffer makes that 20 faults of
//! 2 MiB, where the kernel allows them (`madvise` mode, the usual default);
//! elsewhere the hint does nothing.

use std::mem::MaybeUninit;

/// Buffers from this size on are their own `mmap` (glibc's largest heap
/// allocation under the node's allocator settings), so a hint on them touches
/// no memory that the heap reuses for small allocations.
pub const HUGE_PAGES_FROM: usize = 32 << 20;

/// Asks for huge pages under `spare`, the not yet written part of a buffer of
/// at least [`HUGE_PAGES_FROM`] bytes (smaller ones are left alone). Call it
/// before the first write: pages already touched stay small.
pub fn advise_huge_pages(spare: &mut [MaybeUninit<u8>]) {
    advise(spare.as_mut_ptr().cast(), spare.len());
}

fn advise(start: *mut u8, len: usize) {
    if len < HUGE_PAGES_FROM {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let aligned = (start as usize).next_multiple_of(PAGE);
        let end = (start as usize + len) & !(PAGE - 1);
        if end > aligned {
            // SAFETY: the range lies inside the caller's buffer, memory this
            // process owns and holds exclusively; MADV_HUGEPAGE only marks it
            // as fit for huge pages and changes no byte of it. Its result is a
            // hint's: an error (a kernel without transparent huge pages) is ignored.
            unsafe {
                libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// `len` zero bytes, on huge pages when large (see [`advise_huge_pages`]).
/// The allocator's zeroed pages are not touched here: a peer that announces
/// more bytes than it sends costs only the pages its bytes fill.
pub fn zeroed(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    advise(buf.as_mut_ptr(), len);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_buffers_come_back_zeroed_and_writable() {
        for len in [0, 10, HUGE_PAGES_FROM - 1, HUGE_PAGES_FROM + 4097] {
            let mut buf = zeroed(len);
            assert_eq!(buf.len(), len);
            assert!(buf.iter().all(|&b| b == 0));
            if let Some(last) = buf.last_mut() {
                *last = 7;
            }
        }
        let mut out: Vec<u8> = Vec::with_capacity(HUGE_PAGES_FROM + 100);
        out.extend_from_slice(b"header");
        advise_huge_pages(out.spare_capacity_mut());
        out.resize(HUGE_PAGES_FROM + 100, 1);
        assert_eq!(&out[..6], b"header");
        assert_eq!(out[HUGE_PAGES_FROM + 99], 1);
    }
}
