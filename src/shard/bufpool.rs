//! Per-shard pool of byte buffers, so steady-state I/O allocates nothing: owned
//! buffers go to io_uring and always come back here.
//!
//! Layer: driver (single-threaded, lives on one shard). Invariants: a pooled
//! buffer has exactly `buffer_bytes` of capacity and length 0 when handed out;
//! the pool never holds more than `max_pooled` idle buffers (the rest are freed,
//! bounding idle memory).

use std::cell::RefCell;

/// A pool of equally sized buffers.
#[derive(Debug)]
pub struct BufPool {
    buffer_bytes: usize,
    max_pooled: usize,
    idle: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    /// A pool of `buffer_bytes`-capacity buffers keeping at most `max_pooled` idle.
    pub fn new(buffer_bytes: usize, max_pooled: usize) -> BufPool {
        BufPool { buffer_bytes, max_pooled, idle: RefCell::new(Vec::new()) }
    }

    /// Capacity of every buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// An empty buffer with `buffer_bytes` of capacity.
    pub fn take(&self) -> Vec<u8> {
        self.idle.borrow_mut().pop().unwrap_or_else(|| Vec::with_capacity(self.buffer_bytes))
    }

    /// Returns a buffer. Buffers of another capacity (grown or foreign) are
    /// dropped so every pooled buffer keeps the invariant.
    pub fn give(&self, mut buf: Vec<u8>) {
        let mut idle = self.idle.borrow_mut();
        if buf.capacity() == self.buffer_bytes && idle.len() < self.max_pooled {
            buf.clear();
            idle.push(buf);
        }
    }

    /// Idle buffers held now.
    pub fn idle(&self) -> usize {
        self.idle.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let pool = BufPool::new(1024, 2);
        let a = pool.take();
        let ptr = a.as_ptr();
        assert_eq!(a.capacity(), 1024);
        pool.give(a);
        let b = pool.take();
        assert_eq!(b.as_ptr(), ptr, "buffer reused");
        pool.give(b);
        pool.give(Vec::with_capacity(1024));
        pool.give(Vec::with_capacity(1024));
        assert_eq!(pool.idle(), 2, "bounded");
        pool.give(Vec::with_capacity(10));
        assert_eq!(pool.idle(), 2);
    }
}
