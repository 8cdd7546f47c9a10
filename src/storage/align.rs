//! The process's global allocator: the system allocator, except that every
//! allocation of [`ALIGNED_ALLOC_MIN_BYTES`] or more is aligned to
//! [`ALIGNED_ALLOC_BYTES`].
//!
//! Layer: driver support. Why: `O_DIRECT` writes need the memory of the piece
//! buffer aligned to the device's logical block size, and piece buffers are
//! plain `Vec<u8>` made by the pure core and passed through the hash pool
//! untouched. A `Vec<u8>` cannot carry an alignment of its own (freeing it
//! with another layout is undefined behaviour), so the alignment is the
//! allocator's: large buffers come back page-aligned, small ones are
//! untouched. The cost is nil for the few large allocations (glibc serves
//! them with `posix_memalign`, from fresh pages above its mmap threshold).
//!
//! Invariant: the layout used to free or grow a block is adjusted exactly as
//! the one that allocated it ([`adjust`] is a pure function of the layout),
//! so the system allocator always sees matching layouts.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are page-aligned (a block is 16 KiB,
/// pieces are 16 KiB or more).
pub const ALIGNED_ALLOC_MIN_BYTES: usize = 16 * 1024;

/// Their alignment: a page, which covers every logical block size.
pub const ALIGNED_ALLOC_BYTES: usize = 4096;

/// See the module docs.
pub struct LargeAlignedAlloc;

fn adjust(layout: Layout) -> Layout {
    if layout.size() >= ALIGNED_ALLOC_MIN_BYTES && layout.align() < ALIGNED_ALLOC_BYTES {
        // Cannot fail: the size is unchanged (so it does not overflow
        // isize when rounded to the page, since a smaller align held) and
        // the alignment is a power of two.
        Layout::from_size_align(layout.size(), ALIGNED_ALLOC_BYTES).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every method forwards to `System` with the layout passed through
// `adjust`; allocation and deallocation of one block always see the same
// adjusted layout (a pure function of the caller's layout, which GlobalAlloc
// callers must pass unchanged), and `realloc` across the threshold moves the
// block with a fresh allocation rather than asking System to change its
// alignment.
unsafe impl GlobalAlloc for LargeAlignedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with a valid non-zero-size layout (adjust keeps the size).
        unsafe { System.alloc(adjust(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(adjust(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` with this layout, so
        // System allocated it with `adjust(layout)`.
        unsafe { System.dealloc(ptr, adjust(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = adjust(layout);
        // SAFETY: the caller guarantees new_size > 0 and that it does not
        // overflow isize when rounded to `layout.align()`.
        let new = adjust(unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) });
        if old.align() == new.align() {
            // SAFETY: same alignment on both sides: System may resize in place.
            return unsafe { System.realloc(ptr, old, new_size) };
        }
        // SAFETY: a fresh block of the new layout; the old one holds
        // `old.size()` initialised-or-not bytes we copy (the smaller of the
        // two sizes), then free with the layout it was allocated with.
        unsafe {
            let moved = System.alloc(new);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, old.size().min(new_size));
                System.dealloc(ptr, old);
            }
            moved
        }
    }
}

#[global_allocator]
static ALLOCATOR: LargeAlignedAlloc = LargeAlignedAlloc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_vecs_are_page_aligned_small_ones_untouched_and_growth_keeps_bytes() {
        for size in [ALIGNED_ALLOC_MIN_BYTES, 256 * 1024, 1 << 20, (4 << 20) + 3] {
            let v = vec![7u8; size];
            assert_eq!(v.as_ptr() as usize % ALIGNED_ALLOC_BYTES, 0, "{size}");
            let w: Vec<u8> = Vec::with_capacity(size);
            assert_eq!(w.as_ptr() as usize % ALIGNED_ALLOC_BYTES, 0, "{size}");
        }
        // Growing across the threshold moves the bytes into an aligned block.
        let mut v: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        v.reserve_exact(ALIGNED_ALLOC_MIN_BYTES * 2);
        assert_eq!(v.as_ptr() as usize % ALIGNED_ALLOC_BYTES, 0);
        assert!(v.iter().enumerate().all(|(i, &b)| b == i as u8));
        v.truncate(10);
        v.shrink_to_fit();
        assert_eq!(v, (0..10u8).collect::<Vec<_>>());
    }
}
