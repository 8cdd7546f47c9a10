//! Batch SHA1 over every core.
//!
//! Layer: CPU work (threads, no sockets or runtime). Owns piece hashing for
//! `create`, recheck and the download engine.
//!
//! [`hash_pieces_parallel`] hashes a run of pieces whose bytes are produced by a
//! caller-supplied reader, one worker thread per core, each reading and hashing
//! its own pieces so reads and hashing overlap across cores.

use sha1::{Digest, Sha1};
use std::sync::atomic::{AtomicU32, Ordering};

/// SHA1 of one buffer.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}

/// Number of hashing threads to use by default: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Hashes pieces `0..piece_count` with `threads` workers.
///
/// `read_piece(index, buf)` must fill `buf` (cleared by the caller) with the
/// piece's bytes. `on_piece(index)` is called after each piece is hashed (for
/// progress). Returns the hashes in piece order, or the first read error.
pub fn hash_pieces_parallel<E, R, P>(
    piece_count: u32,
    threads: usize,
    read_piece: R,
    on_piece: P,
) -> Result<Vec<[u8; 20]>, E>
where
    E: Send,
    R: Fn(u32, &mut Vec<u8>) -> Result<(), E> + Sync,
    P: Fn(u32) + Sync,
{
    let threads = threads.clamp(1, 256);
    // Pieces are handed out one at a time from a shared counter so a slow
    // read on one thread never leaves the others idle.
    let next = AtomicU32::new(0);
    let results: Vec<Result<Vec<(u32, [u8; 20])>, E>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut buf = Vec::new();
                    let mut out = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= piece_count {
                            return Ok(out);
                        }
                        buf.clear();
                        if let Err(e) = read_piece(index, &mut buf) {
                            // Stop the other workers at their next piece.
                            next.store(piece_count, Ordering::Relaxed);
                            return Err(e);
                        }
                        out.push((index, sha1(&buf)));
                        on_piece(index);
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("hash worker panicked")).collect()
    });
    let mut hashes = vec![[0u8; 20]; piece_count as usize];
    for result in results {
        for (index, digest) in result? {
            hashes[index as usize] = digest;
        }
    }
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_matches_serial() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let piece = 4096usize;
        let count = data.len().div_ceil(piece) as u32;
        let hashes = hash_pieces_parallel::<(), _, _>(
            count,
            3,
            |i, buf| {
                let start = i as usize * piece;
                buf.extend_from_slice(&data[start..(start + piece).min(data.len())]);
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        for (i, chunk) in data.chunks(piece).enumerate() {
            assert_eq!(hashes[i], sha1(chunk));
        }
    }

    #[test]
    fn read_error_is_returned() {
        let r =
            hash_pieces_parallel(10, 2, |i, _| if i == 5 { Err("boom") } else { Ok(()) }, |_| {});
        assert_eq!(r, Err("boom"));
    }
}
