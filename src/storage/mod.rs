//! Piece storage behind one narrow interface, with mmap, pwrite and io_uring
//! backends.
//!
//! Layer: driver.
