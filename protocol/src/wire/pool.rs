//! Model-sized wire buffers kept for the next round.
//!
//! A dense delta's wire bytes are as large as the model (400 MB at 10⁸
//! parameters), written once a round and let go when the last peer has it.
//! Freed, such a buffer goes back to the system, and the next round's first
//! write to every page pays a page fault and the page's zeroing: at 10⁸ that
//! was most of encoding a delta (1.6 s of CPU a round on a VM whose host takes
//! freed memory back, against 0.2 s into pages already in place). A
//! [`BufferPool`] keeps the last large buffer instead: shared bytes made with
//! [`BufferPool::share`] hand their buffer back when the last clone is dropped,
//! and [`BufferPool::take`] lends it to the next encoding.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Buffers smaller than this are not kept: they cost little to allocate
/// against the training that fills them, and a kept one is memory held.
pub const POOLED_MIN_BYTES: usize = 64 << 20;

/// At most one large buffer, waiting for the next delta's wire bytes.
#[derive(Debug, Default)]
pub struct BufferPool {
    kept: Mutex<Option<Vec<u8>>>,
}

impl BufferPool {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// An empty buffer with room for `capacity` bytes: the kept one when it
    /// is large enough (and not more than twice as large), else a new one.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).take();
        match kept {
            Some(mut buffer)
                if buffer.capacity() >= capacity && buffer.capacity() <= capacity.saturating_mul(2) =>
            {
                buffer.clear();
                buffer
            }
            // A kept buffer of another size is let go: the model does not change size.
            _ => Vec::with_capacity(capacity),
        }
    }

    /// `buffer` as shared bytes that come back to this pool (if it still
    /// exists) when their last clone is dropped. A small buffer is shared as
    /// it is and never comes back.
    pub fn share(self: &Arc<Self>, buffer: Vec<u8>) -> Bytes {
        if buffer.capacity() < POOLED_MIN_BYTES {
            return Bytes::from(buffer);
        }
        Bytes::from_owner(Pooled { buffer, home: Arc::downgrade(self) })
    }

    /// Whether a buffer is waiting to be taken (for tests and reports).
    pub fn holds(&self) -> bool {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn keep(&self, buffer: Vec<u8>) {
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(buffer);
    }
}

/// A buffer lent out as shared bytes, on its way back to its pool.
struct Pooled {
    buffer: Vec<u8>,
    home: Weak<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.home.upgrade() {
            pool.keep(std::mem::take(&mut self.buffer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_comes_back_when_its_last_clone_is_dropped() {
        let pool = BufferPool::new();
        let mut buffer = pool.take(POOLED_MIN_BYTES);
        buffer.extend_from_slice(&[7; 100]);
        let address = buffer.as_ptr();
        let bytes = pool.share(buffer);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert!(!pool.holds(), "a clone is still out");
        assert_eq!(&slice[..], &[7; 10]);
        drop(slice);
        assert!(pool.holds(), "the last clone is gone");
        let again = pool.take(POOLED_MIN_BYTES);
        assert_eq!(again.as_ptr(), address, "the same memory is lent again");
        assert!(again.is_empty(), "lent empty");
        assert!(!pool.holds());
    }

    #[test]
    fn small_and_mis_sized_buffers_are_not_kept() {
        let pool = BufferPool::new();
        drop(pool.share(vec![1, 2, 3]));
        assert!(!pool.holds(), "a small buffer is not kept");
        drop(pool.share(Vec::with_capacity(POOLED_MIN_BYTES)));
        assert!(pool.holds());
        let other = pool.take(POOLED_MIN_BYTES * 3);
        assert!(other.capacity() >= POOLED_MIN_BYTES * 3, "a buffer too small is not lent");
        assert!(!pool.holds(), "and is let go");
    }

    #[test]
    fn bytes_outliving_their_pool_free_their_buffer() {
        let pool = BufferPool::new();
        let bytes = pool.share(Vec::with_capacity(POOLED_MIN_BYTES));
        drop(pool);
        drop(bytes);
    }
}
