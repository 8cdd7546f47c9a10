//! Batch SHA1 over every core.
//!
//! Layer: CPU work (threads, no sockets or runtime). Owns piece hashing for
//! `create`, recheck and the download engine.
//!
//! * [`hash_pieces_parallel`] hashes a run of pieces whose bytes are produced
//!   by a caller-supplied reader, one worker thread per core, each reading and
//!   hashing its own pieces so reads and hashing overlap across cores (`create`,
//!   `verify`, resume recheck).
//! * [`HashPool`] is the download engine's: long-lived worker threads that take
//!   pieces already in memory and answer through a `tokio::sync::oneshot`, so a
//!   shard `.await`s the verdict and its network loop never stalls on SHA1.
//!
//! Invariants of the pool: at most [`HASH_QUEUE_DEPTH`] pieces are queued or
//! being hashed at once; past that, [`HashPool::submit`] hands the buffer back
//! as [`SubmitError::Full`] (back-pressure as a value: the caller stops reading
//! from peers until a verdict frees a slot). Every buffer comes back with its
//! verdict so the caller can reuse it.
//!
//! Which SHA1 implementation hashes pieces is chosen once per process
//! ([`sha1_backend`]): the `sha1` crate, which uses the CPU's SHA extensions
//! (SHA-NI) when present, or, on CPUs without them and only in builds with the
//! `openssl-sha1` cargo feature, OpenSSL's AVX2/SSSE3 assembly, which was 1.55x
//! faster than the crate's portable code on this project's test machine (figures
//! and the reasoning in docs/storage.md, "SHA1 on CPUs without SHA-NI").

use sha1::{Digest, Sha1};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The implementation [`PieceHasher`] and [`sha1`] use in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sha1Backend {
    /// The `sha1` crate with the CPU's SHA extensions (SHA-NI, ARMv8 SHA2).
    RustShaExtensions,
    /// The `sha1` crate's portable code: the CPU has no SHA extensions.
    RustPortable,
    /// OpenSSL's assembly (`openssl-sha1` feature, CPU without SHA extensions).
    OpenSsl,
}

impl Sha1Backend {
    pub fn name(self) -> &'static str {
        match self {
            Sha1Backend::RustShaExtensions => "sha1 crate, SHA extensions",
            Sha1Backend::RustPortable => "sha1 crate, portable",
            Sha1Backend::OpenSsl => "OpenSSL",
        }
    }
}

/// Environment variable that forces a backend (`rust` or `openssl`), for
/// benchmarks comparing them on one machine. Unknown values are ignored.
pub const SHA1_BACKEND_ENV: &str = "RINGBIT_SHA1_BACKEND";

/// The backend chosen for this process (decided on first use).
pub fn sha1_backend() -> Sha1Backend {
    static BACKEND: OnceLock<Sha1Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| {
        let extensions = cpu_has_sha_extensions();
        let rust =
            if extensions { Sha1Backend::RustShaExtensions } else { Sha1Backend::RustPortable };
        let forced = std::env::var(SHA1_BACKEND_ENV).ok();
        match forced.as_deref() {
            Some("rust") => rust,
            Some("openssl") if cfg!(feature = "openssl-sha1") => Sha1Backend::OpenSsl,
            // With SHA extensions the crate matches OpenSSL (both about 1.9 GB/s
            // here) without a call across FFI per update.
            _ if extensions || !cfg!(feature = "openssl-sha1") => rust,
            _ => Sha1Backend::OpenSsl,
        }
    })
}

fn cpu_has_sha_extensions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("sha2")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Incremental SHA1 of a piece, on the process's [`sha1_backend`].
pub struct PieceHasher(HasherInner);

enum HasherInner {
    Rust(Sha1),
    #[cfg(feature = "openssl-sha1")]
    OpenSsl(openssl::sha::Sha1),
}

impl PieceHasher {
    pub fn new() -> Self {
        match sha1_backend() {
            #[cfg(feature = "openssl-sha1")]
            Sha1Backend::OpenSsl => PieceHasher(HasherInner::OpenSsl(openssl::sha::Sha1::new())),
            _ => PieceHasher(HasherInner::Rust(Sha1::new())),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherInner::Rust(h) => h.update(data),
            #[cfg(feature = "openssl-sha1")]
            HasherInner::OpenSsl(h) => h.update(data),
        }
    }

    pub fn finish(self) -> [u8; 20] {
        match self.0 {
            HasherInner::Rust(h) => h.finalize().into(),
            #[cfg(feature = "openssl-sha1")]
            HasherInner::OpenSsl(h) => h.finish(),
        }
    }
}

impl Default for PieceHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// SHA1 of one buffer, on the process's [`sha1_backend`].
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut hasher = PieceHasher::new();
    hasher.update(data);
    hasher.finish()
}

/// Number of hashing threads to use by default: every core.
///
/// Asked once per process: `available_parallelism` reads the cgroup files and
/// the affinity mask on every call (a few path lookups and syscalls), and
/// `CheckOptions::default()` calls it once per torrent: 18% of the daemon's CPU
/// while it started 10,000 torrents (scripts/bench-scale.py, perf).
pub fn default_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
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
    type WorkerResult<E> = Result<Vec<(u32, [u8; 20])>, E>;
    let results: Vec<WorkerResult<E>> = std::thread::scope(|scope| {
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

/// Most pieces queued or being hashed in one [`HashPool`] at once. With 4 MiB
/// pieces this bounds the pool's buffers to 1 GiB; with 256 KiB pieces, 64 MiB.
pub const HASH_QUEUE_DEPTH: usize = 256;

/// A piece's hash verdict, with its buffer handed back for reuse.
#[derive(Debug)]
pub struct Verdict {
    pub index: u32,
    /// The SHA1 of the buffer equals the expected hash.
    pub ok: bool,
    pub buf: Vec<u8>,
}

/// A piece for [`HashPool::submit_batch`].
#[derive(Debug)]
pub struct PieceJob {
    pub index: u32,
    pub buf: Vec<u8>,
    pub expected: [u8; 20],
}

/// The pool did not take the work; the buffers come back untouched.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError<T> {
    /// [`HASH_QUEUE_DEPTH`] pieces are already queued: retry after a verdict.
    #[error("hash queue is full ({HASH_QUEUE_DEPTH} pieces)")]
    Full(T),
    /// A batch larger than [`HASH_QUEUE_DEPTH`] can never fit: split it.
    #[error("batch of {len} pieces exceeds the hash queue depth {HASH_QUEUE_DEPTH}")]
    BatchTooLarge { len: usize, jobs: T },
}

/// Receives one piece's verdict: `.await` it on a shard, or `blocking_recv()`
/// on a plain thread. Errors only if the pool shut down first.
pub type VerdictReceiver = tokio::sync::oneshot::Receiver<Verdict>;

/// Receives a whole batch's verdicts, in submission order.
pub type BatchReceiver = tokio::sync::oneshot::Receiver<Vec<Verdict>>;

enum Reply {
    One(tokio::sync::oneshot::Sender<Verdict>),
    Batch(Arc<BatchState>, usize),
}

struct BatchState {
    slots: Mutex<BatchSlots>,
}

/// A batch's verdicts so far, how many are still out, and where to send them.
struct BatchSlots {
    verdicts: Vec<Option<Verdict>>,
    left: usize,
    reply: Option<tokio::sync::oneshot::Sender<Vec<Verdict>>>,
}

struct Job {
    index: u32,
    buf: Vec<u8>,
    expected: [u8; 20],
    reply: Reply,
}

/// Long-lived SHA1 workers for the download engine. Dropping the pool lets
/// queued work finish, then joins the workers.
pub struct HashPool {
    tx: Option<crossbeam_channel::Sender<Job>>,
    pending: Arc<AtomicUsize>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl HashPool {
    /// Starts `threads` workers (clamped to 1..=256); see [`default_threads`].
    pub fn new(threads: usize) -> std::io::Result<HashPool> {
        let threads = threads.clamp(1, 256);
        // The channel itself is unbounded; `pending` enforces the depth so a
        // batch can reserve all its slots at once or none.
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let pending = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::with_capacity(threads);
        for n in 0..threads {
            let rx = rx.clone();
            let pending = pending.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("ringbit-hash-{n}"))
                    .spawn(move || worker(rx, pending))?,
            );
        }
        Ok(HashPool { tx: Some(tx), pending, workers })
    }

    /// Pieces queued or being hashed right now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn reserve(&self, n: usize) -> bool {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p + n <= HASH_QUEUE_DEPTH).then_some(p + n)
            })
            .is_ok()
    }

    fn send(&self, job: Job) {
        // The workers hold the receiver until the pool is dropped, so sending
        // cannot fail while `self` is alive.
        let tx = self.tx.as_ref().expect("pool is running");
        tx.send(job).expect("hash workers alive while the pool exists");
    }

    /// Queues one piece. Never blocks: a full queue returns the buffer.
    pub fn submit(
        &self,
        index: u32,
        buf: Vec<u8>,
        expected: [u8; 20],
    ) -> Result<VerdictReceiver, SubmitError<Vec<u8>>> {
        if !self.reserve(1) {
            return Err(SubmitError::Full(buf));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Job { index, buf, expected, reply: Reply::One(reply) });
        Ok(rx)
    }

    /// Queues many pieces as one submission (recheck): they are hashed on
    /// every worker at once and answered together, in submission order.
    pub fn submit_batch(
        &self,
        jobs: Vec<PieceJob>,
    ) -> Result<BatchReceiver, SubmitError<Vec<PieceJob>>> {
        if jobs.len() > HASH_QUEUE_DEPTH {
            return Err(SubmitError::BatchTooLarge { len: jobs.len(), jobs });
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        if jobs.is_empty() {
            let _ = reply.send(Vec::new());
            return Ok(rx);
        }
        if !self.reserve(jobs.len()) {
            return Err(SubmitError::Full(jobs));
        }
        let state = Arc::new(BatchState {
            slots: Mutex::new(BatchSlots {
                verdicts: (0..jobs.len()).map(|_| None).collect(),
                left: jobs.len(),
                reply: Some(reply),
            }),
        });
        for (slot, job) in jobs.into_iter().enumerate() {
            self.send(Job {
                index: job.index,
                buf: job.buf,
                expected: job.expected,
                reply: Reply::Batch(state.clone(), slot),
            });
        }
        Ok(rx)
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        drop(self.tx.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(rx: crossbeam_channel::Receiver<Job>, pending: Arc<AtomicUsize>) {
    while let Ok(job) = rx.recv() {
        let ok = sha1(&job.buf) == job.expected;
        let verdict = Verdict { index: job.index, ok, buf: job.buf };
        // Free the slot before replying so a caller woken by the verdict can
        // submit again at once.
        pending.fetch_sub(1, Ordering::AcqRel);
        match job.reply {
            // A dropped receiver means the caller lost interest (torrent
            // removed): the verdict and buffer are dropped.
            Reply::One(tx) => {
                let _ = tx.send(verdict);
            }
            Reply::Batch(state, slot) => {
                let mut guard = state.slots.lock().unwrap_or_else(|e| e.into_inner());
                let slots = &mut *guard;
                slots.verdicts[slot] = Some(verdict);
                slots.left -= 1;
                if slots.left == 0 {
                    if let Some(reply) = slots.reply.take() {
                        let all = slots
                            .verdicts
                            .drain(..)
                            .map(|v| v.expect("every slot filled"))
                            .collect();
                        let _ = reply.send(all);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn piece_hasher_matches_known_digests_in_pieces_of_any_split() {
        // FIPS 180 test vector, fed whole and in uneven parts.
        let data = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        let want = [
            0x84, 0x98, 0x3e, 0x44, 0x1c, 0x3b, 0xd2, 0x6e, 0xba, 0xae, 0x4a, 0xa1, 0xf9, 0x51,
            0x29, 0xe5, 0xe5, 0x46, 0x70, 0xf1,
        ];
        assert_eq!(sha1(data), want);
        let mut h = PieceHasher::new();
        for part in data.chunks(7) {
            h.update(part);
        }
        assert_eq!(h.finish(), want);
    }

    #[cfg(feature = "openssl-sha1")]
    #[test]
    fn openssl_and_rust_backends_agree() {
        use sha1::Digest;
        let data: Vec<u8> =
            (0..(1u32 << 20) + 13).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
        let mut ossl = openssl::sha::Sha1::new();
        ossl.update(&data);
        let rust: [u8; 20] = sha1::Sha1::digest(&data).into();
        assert_eq!(ossl.finish(), rust);
        assert_eq!(super::sha1(&data), rust);
    }

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
    fn pool_verdicts_and_buffers_come_back() {
        let pool = HashPool::new(2).unwrap();
        let data = vec![7u8; 1000];
        let good = sha1(&data);
        let ok = pool.submit(3, data.clone(), good).unwrap().blocking_recv().unwrap();
        assert!(ok.ok && ok.index == 3 && ok.buf == data);
        let bad = pool.submit(4, data.clone(), [0; 20]).unwrap().blocking_recv().unwrap();
        assert!(!bad.ok && bad.buf == data);
        let jobs: Vec<PieceJob> = (0..50u32)
            .map(|i| {
                let buf = vec![i as u8; 100 + i as usize];
                let expected = if i % 7 == 0 { [1; 20] } else { sha1(&buf) };
                PieceJob { index: i, buf, expected }
            })
            .collect();
        let verdicts = pool.submit_batch(jobs).unwrap().blocking_recv().unwrap();
        assert_eq!(verdicts.len(), 50);
        for (i, v) in verdicts.iter().enumerate() {
            assert_eq!(v.index, i as u32);
            assert_eq!(v.ok, i % 7 != 0);
            assert_eq!(v.buf.len(), 100 + i);
        }
        assert!(pool.submit_batch(Vec::new()).unwrap().blocking_recv().unwrap().is_empty());
        assert_eq!(pool.pending(), 0);
    }

    #[test]
    fn pool_full_hands_buffers_back() {
        let pool = HashPool::new(1).unwrap();
        // Occupy every slot but one, as if that many pieces were in flight
        // (deterministic: no race with the worker).
        pool.pending.store(HASH_QUEUE_DEPTH - 1, Ordering::Release);
        let rx = pool.submit(0, vec![1; 10], [0; 20]).unwrap();
        assert!(!rx.blocking_recv().unwrap().ok);
        pool.pending.store(HASH_QUEUE_DEPTH, Ordering::Release);
        match pool.submit(1, vec![9; 1 << 20], [0; 20]) {
            Err(SubmitError::Full(buf)) => assert_eq!(buf, vec![9; 1 << 20]),
            other => panic!("expected Full, got {:?}", other.map(|_| ())),
        }
        pool.pending.store(HASH_QUEUE_DEPTH - 2, Ordering::Release);
        let three: Vec<PieceJob> = (0..3u32)
            .map(|index| PieceJob { index, buf: vec![index as u8], expected: [0; 20] })
            .collect();
        match pool.submit_batch(three) {
            Err(SubmitError::Full(jobs)) => assert_eq!(jobs.len(), 3),
            other => panic!("expected Full, got {:?}", other.map(|_| ())),
        }
        pool.pending.store(0, Ordering::Release);
        let too_big: Vec<PieceJob> = (0..HASH_QUEUE_DEPTH as u32 + 1)
            .map(|index| PieceJob { index, buf: Vec::new(), expected: [0; 20] })
            .collect();
        match pool.submit_batch(too_big) {
            Err(SubmitError::BatchTooLarge { len, jobs }) => {
                assert_eq!(len, HASH_QUEUE_DEPTH + 1);
                assert_eq!(jobs.len(), len);
            }
            other => panic!("expected BatchTooLarge, got {:?}", other.map(|_| ())),
        }
        // A full-depth batch fits once the queue is empty.
        let max: Vec<PieceJob> = (0..HASH_QUEUE_DEPTH as u32)
            .map(|index| PieceJob { index, buf: vec![0; 64], expected: sha1(&[0; 64]) })
            .collect();
        let verdicts = pool.submit_batch(max).unwrap().blocking_recv().unwrap();
        assert!(verdicts.iter().all(|v| v.ok));
        assert_eq!(pool.pending(), 0);
    }

    #[test]
    fn pool_answers_an_async_waiter() {
        let pool = HashPool::new(2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let v = rt.block_on(async { pool.submit(1, b"abc".to_vec(), sha1(b"abc")).unwrap().await });
        assert!(v.unwrap().ok);
    }

    #[test]
    fn read_error_is_returned() {
        let r =
            hash_pieces_parallel(10, 2, |i, _| if i == 5 { Err("boom") } else { Ok(()) }, |_| {});
        assert_eq!(r, Err("boom"));
    }
}
