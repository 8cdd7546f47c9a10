//! A SIGBUS guard for read-only file mappings that another process may
//! truncate underneath us (recheck hashing straight from the page cache).
//!
//! Layer: driver (storage). Owns the process's SIGBUS handler. Without it, a
//! read through a mapping past a file's new end (the file was cut while we
//! hashed it, or the disk failed) raises SIGBUS and kills the whole process,
//! which is why recheck used to copy everything out with `pread`: a third more
//! CPU than the SHA1 itself on hot data (docs/storage.md, "Recheck").
//!
//! How: a [`GuardedMap`] registers its address range in one of
//! [`GUARD_SLOTS`] lock-free slots. The handler (installed once, on first
//! use) looks the faulting address up; when it is inside a registered range
//! it maps an anonymous zero page over the faulting page with `MAP_FIXED`,
//! counts the fault on the slot and returns, so the interrupted read resumes
//! and sees zeros. The caller compares [`GuardedMap::faults`] before and
//! after each piece and redoes a piece that faulted with `pread`, which
//! reports the short file properly. Faults outside every registered range go
//! to the handler that was installed before (Rust's own stack-overflow
//! handler, or the default action: the process dies as it would have).
//!
//! Invariants: a slot's range is published (end, then start) before the
//! mapping is read and cleared before it is unmapped; the handler only reads
//! atomics and calls `mmap`, a plain system call with no locks, so it is safe
//! at any point of the interrupted thread.

use memmap2::Mmap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Mappings that can be guarded at once (recheck maps each file of a torrent
/// for the check's duration); past this a file is read with `pread`.
pub const GUARD_SLOTS: usize = 1024;

struct Slot {
    busy: AtomicBool,
    start: AtomicUsize,
    end: AtomicUsize,
    faults: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    busy: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    faults: AtomicUsize::new(0),
};

static SLOTS: [Slot; GUARD_SLOTS] = [EMPTY_SLOT; GUARD_SLOTS];
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
/// The SIGBUS action before ours (chained for faults that are not ours).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
/// Whether the handler is installed (decided once).
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Installs the handler once; false when `sigaction` refused.
fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE_SIZE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: `sigaction` with a zeroed, then filled, struct: the mask is
        // initialised with sigemptyset, the handler is an `extern "C"` fn
        // with the SA_SIGINFO signature, and the previous action is written
        // into memory we own.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            // Record the old action before ours can run.
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                return false;
            }
            let _ = PREVIOUS.set(previous);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0
        }
    })
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel hands a valid siginfo_t to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &SLOTS {
        let start = slot.start.load(Ordering::Acquire);
        if start == 0 || addr < start || addr >= slot.end.load(Ordering::Acquire) {
            continue;
        }
        let page = addr & !(PAGE_SIZE.load(Ordering::Relaxed) - 1);
        // SAFETY: replaces one page inside a mapping this process owns and
        // registered (it stays mapped until the slot is cleared); the new
        // page is private, anonymous and read-only: the interrupted read
        // resumes and sees zeros.
        let mapped = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                PAGE_SIZE.load(Ordering::Relaxed),
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            slot.faults.fetch_add(1, Ordering::SeqCst);
            return;
        }
        break;
    }
    // Not ours (or the page could not be replaced): what would have happened
    // without us.
    match PREVIOUS.get() {
        Some(prev) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO,
                // so it has this signature.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(signal, info, context);
            } else {
                // SAFETY: a plain handler takes only the signal number.
                let f: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(signal);
            }
        }
        _ => {
            // SAFETY: resetting to the default action; returning re-runs the
            // faulting instruction, which now kills the process as SIGBUS
            // always did.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        }
    }
}

/// A read-only mapping whose SIGBUS faults turn into zero pages and a count.
pub struct GuardedMap {
    map: Mmap,
    slot: usize,
}

impl GuardedMap {
    /// Registers `map`; gives it back when the handler cannot be installed
    /// or every slot is taken (read that file another way).
    pub fn new(map: Mmap) -> Result<GuardedMap, Mmap> {
        if map.is_empty() || !install() {
            return Err(map);
        }
        for (index, slot) in SLOTS.iter().enumerate() {
            if slot.busy.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                let start = map.as_ptr() as usize;
                slot.faults.store(0, Ordering::SeqCst);
                slot.end.store(start + map.len(), Ordering::Release);
                slot.start.store(start, Ordering::Release);
                return Ok(GuardedMap { map, slot: index });
            }
        }
        Err(map)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// `MADV_SEQUENTIAL` over the mapping (readahead for a front-to-back read).
    pub fn bytes_advise_sequential(&self) -> std::io::Result<()> {
        self.map.advise(memmap2::Advice::Sequential)
    }

    /// Pages that faulted so far (each now reads as zeros).
    pub fn faults(&self) -> usize {
        SLOTS[self.slot].faults.load(Ordering::SeqCst)
    }
}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        let slot = &SLOTS[self.slot];
        slot.start.store(0, Ordering::Release);
        slot.end.store(0, Ordering::Release);
        slot.busy.store(false, Ordering::Release);
        // `self.map` is unmapped after this, once the range is unregistered.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memmap2::MmapOptions;
    use std::io::Write;

    #[test]
    fn a_file_cut_under_its_mapping_reads_zeros_and_counts_the_fault() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; 64 << 10]).unwrap();
        // SAFETY: a read-only mapping of our own temp file; the test cuts it
        // on purpose to prove the guard catches the SIGBUS.
        let map = unsafe { MmapOptions::new().len(64 << 10).map(&file) }.unwrap();
        let guarded = GuardedMap::new(map).map_err(|_| ()).expect("guard installed");
        assert_eq!(guarded.bytes()[40 << 10], 7);
        assert_eq!(guarded.faults(), 0);
        file.set_len(8 << 10).unwrap();
        // Past the new end: would have been SIGBUS.
        let tail_sum: u64 = guarded.bytes()[16 << 10..].iter().map(|&b| u64::from(b)).sum();
        assert_eq!(tail_sum, 0);
        assert!(guarded.faults() >= 1);
        // Still inside the file: the file's bytes.
        assert_eq!(guarded.bytes()[100], 7);
    }

    #[test]
    fn slots_are_reused_after_drop() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[1u8; 4096]).unwrap();
        for _ in 0..(GUARD_SLOTS + 8) {
            // SAFETY: a read-only mapping of our own temp file, never cut.
            let map = unsafe { MmapOptions::new().len(4096).map(&file) }.unwrap();
            let guarded = GuardedMap::new(map).map_err(|_| ()).expect("a free slot");
            assert_eq!(guarded.bytes()[0], 1);
        }
    }
}
