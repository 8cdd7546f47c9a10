//! Storage: full-disk behaviour of every backend on a small tmpfs the test
//! mounts, `ringbit verify` against torrents made by libtorrent, and resume
//! state.

use crate::helpers::*;
use ringbit::bitfield::Bitfield;
use ringbit::metainfo::{FileEntry, Info};
use ringbit::storage::{Allocation, Backend, PieceStore, StorageError, StoreOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A size-limited tmpfs mounted on a temp dir, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs failed (these tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

const PIECE: u32 = 256 << 10;

fn single_file_info(len: u64) -> Info {
    Info {
        name: "big".into(),
        piece_length: PIECE,
        pieces: vec![[0; 20]; len.div_ceil(PIECE as u64) as usize],
        files: vec![FileEntry { path: vec!["big".into()], length: len, offset: 0, pad: false }],
        total_length: len,
        private: false,
        multi_file: false,
        source: None,
    }
}

fn piece_bytes(i: u32) -> Vec<u8> {
    payload_bytes(PIECE as usize, i as u64 + 100)
}

/// Runs `f` on the backend's natural executor: a tokio-uring runtime for
/// `Uring`, a plain current-thread runtime for the sync backends.
fn run_on<F: std::future::Future>(backend: Backend, f: F) -> F::Output {
    if backend == Backend::Uring {
        tokio_uring::start(f)
    } else {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }
}

/// Goal: a torrent larger than the disk fails at open, as a typed error, for
/// every backend with full allocation (the mmap backend never maps it).
#[test]
fn full_disk_at_open_is_a_typed_error_for_every_backend() {
    for backend in [Backend::Mmap, Backend::Pwrite, Backend::Uring] {
        let fs = SmallFs::mount("2m");
        let info = single_file_info(4 << 20);
        let r = run_on(backend, async {
            PieceStore::open(
                &info,
                fs.path(),
                StoreOptions { backend, allocation: Allocation::Full, ..Default::default() },
            )
            .map(|_| ())
        });
        match r {
            Err(e @ StorageError::DiskFull { .. }) => {
                assert!(e.to_string().contains("no space left"), "{e}")
            }
            other => panic!("{backend:?}: expected DiskFull, got {other:?}"),
        }
    }
}

/// Goal: the mmap backend on a disk that is already full and a sparse file of
/// the right length already there: fallocate fails, the file is never mapped
/// (a store through that mapping would raise SIGBUS and kill the process).
#[test]
fn mmap_never_maps_a_sparse_file_on_a_full_disk() {
    let fs = SmallFs::mount("2m");
    let info = single_file_info(1 << 20);
    std::fs::File::create(fs.path().join("big")).unwrap().set_len(1 << 20).unwrap();
    // Fill the disk with another file until it refuses more.
    let filler = payload_bytes(64 << 10, 9);
    let mut f = std::fs::File::create(fs.path().join("filler")).unwrap();
    use std::io::Write;
    for _ in 0..64 {
        if f.write_all(&filler).is_err() {
            break;
        }
    }
    let r = PieceStore::open(
        &info,
        fs.path(),
        StoreOptions { backend: Backend::Mmap, allocation: Allocation::Full, ..Default::default() },
    );
    assert!(matches!(r, Err(StorageError::DiskFull { .. })), "{:?}", r.err());
}

/// Goal: with sparse allocation, the write that hits a full disk is a typed
/// error; every piece written before it reads back intact, and after it.
#[test]
fn full_disk_mid_download_keeps_written_pieces() {
    for backend in [Backend::Pwrite, Backend::Uring] {
        let fs = SmallFs::mount("2m");
        let info = single_file_info(4 << 20);
        let written: Vec<u32> = run_on(backend, async {
            let store = PieceStore::open(
                &info,
                fs.path(),
                StoreOptions { backend, allocation: Allocation::Sparse, ..Default::default() },
            )
            .unwrap();
            let mut ok = Vec::new();
            let mut failed = false;
            for i in 0..store.layout().piece_count() {
                let (r, _) = store.write_piece(i, piece_bytes(i)).await;
                match r {
                    Ok(()) => ok.push(i),
                    Err(e) => {
                        assert!(e.is_disk_full(), "{backend:?}: {e}");
                        failed = true;
                        break;
                    }
                }
            }
            assert!(failed, "{backend:?}: 4 MiB fit on a 2 MiB tmpfs?");
            assert!(!ok.is_empty());
            // The store still serves what it has.
            for &i in &ok {
                let (r, buf) = store.read_block(i, 16384, 16384, Vec::new()).await;
                assert_eq!(r.unwrap(), 16384);
                assert_eq!(buf, &piece_bytes(i)[16384..32768]);
            }
            ok
        });
        // And the bytes are on disk after the store is gone.
        let data = std::fs::read(fs.path().join("big")).unwrap();
        for i in written {
            let s = i as usize * PIECE as usize;
            assert!(data[s..s + PIECE as usize] == piece_bytes(i)[..], "{backend:?} piece {i}");
        }
    }
}

/// Goal: a preallocated mmap store keeps working when the rest of the disk
/// fills up (its blocks were reserved), so no SIGBUS mid-download.
#[test]
fn mmap_preallocated_survives_disk_filling_up() {
    let fs = SmallFs::mount("2m");
    let info = single_file_info(1 << 20);
    let store = PieceStore::open(
        &info,
        fs.path(),
        StoreOptions { backend: Backend::Mmap, allocation: Allocation::Full, ..Default::default() },
    )
    .unwrap();
    let mut f = std::fs::File::create(fs.path().join("filler")).unwrap();
    use std::io::Write;
    let chunk = vec![1u8; 64 << 10];
    let mut filled = false;
    for _ in 0..64 {
        if f.write_all(&chunk).is_err() {
            filled = true;
            break;
        }
    }
    assert!(filled, "the filler never hit the size limit");
    for i in 0..store.layout().piece_count() {
        store.write_piece_sync(i, &piece_bytes(i)).unwrap();
    }
    run_on(Backend::Mmap, store.flush()).unwrap();
    let mut buf = Vec::new();
    store.read_block_sync(3, 0, PIECE, &mut buf).unwrap();
    assert_eq!(buf, piece_bytes(3));
    let _ = Bitfield::new(1);
}

// ---------------------------------------------------------------------------
// `ringbit verify`

fn lt_create(src: &Path, out: &Path, piece_length: u32) {
    run_ok(
        lt_tool()
            .arg("create")
            .arg(src)
            .arg(out)
            .args(["--piece-length", &piece_length.to_string()]),
        Duration::from_secs(60),
    );
}

/// A multi-file torrent made by libtorrent over test data: returns (data dir,
/// torrent path).
fn lt_torrent(root: &Path) -> (PathBuf, PathBuf) {
    let data = root.join("data");
    write_payload(
        &data,
        &[
            ("set/a.bin", 300_000),
            ("set/sub/b.bin", 65_536),
            ("set/empty", 0),
            ("set/c.bin", 1_000_001),
        ],
    );
    let torrent = root.join("set.torrent");
    lt_create(&data.join("set"), &torrent, 32768);
    (data, torrent)
}

fn verify(torrent: &Path, data: &Path, json: bool) -> (i32, String, String) {
    let mut cmd = ringbit();
    cmd.arg("verify").arg(torrent).arg(data);
    if json {
        cmd.arg("--json");
    }
    let out = run_bounded(&mut cmd, Duration::from_secs(60));
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Goal: verify passes complete data made by libtorrent, exit 0.
#[test]
fn verify_complete_exits_0() {
    let root = tempfile::tempdir().unwrap();
    let (data, torrent) = lt_torrent(root.path());
    let (code, out, err) = verify(&torrent, &data, false);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("complete"), "{out}");
    let (code, out, _) = verify(&torrent, &data, true);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["complete"], true);
    assert_eq!(v["pieces"]["total"], v["pieces"]["have"]);
    assert_eq!(v["pieces"]["corrupt"].as_array().unwrap().len(), 0);
    assert_eq!(v["files"].as_array().unwrap().len(), 4);
}

/// Goal: one flipped byte is reported as that piece, corrupt; exit 1.
#[test]
fn verify_one_corrupt_byte_reports_its_piece() {
    let root = tempfile::tempdir().unwrap();
    let (data, torrent) = lt_torrent(root.path());
    // libtorrent orders files by path: find where c.bin starts from the info
    // ringbit reports, then flip a byte 100_000 bytes into it.
    let (_, out, _) = verify(&torrent, &data, true);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let files = v["files"].as_array().unwrap();
    let c = files.iter().find(|f| f["path"].as_str().unwrap().ends_with("c.bin")).unwrap();
    let offset = c["offset"].as_u64().unwrap() + 100_000;
    let expected_piece = offset / 32768;
    let path = data.join("set/c.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100_000] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let (code, out, _) = verify(&torrent, &data, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("corrupt pieces: {expected_piece}")), "{out}");
    let (code, out, _) = verify(&torrent, &data, true);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["complete"], false);
    assert_eq!(v["pieces"]["corrupt"], serde_json::json!([expected_piece]));
    assert_eq!(v["pieces"]["missing"].as_array().unwrap().len(), 0);
}

/// Goal: a missing file is reported missing (not corrupt), with its pieces.
#[test]
fn verify_missing_file_is_reported_missing() {
    let root = tempfile::tempdir().unwrap();
    let (data, torrent) = lt_torrent(root.path());
    std::fs::remove_file(data.join("set/sub/b.bin")).unwrap();
    let (code, out, _) = verify(&torrent, &data, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing"), "{out}");
    let (code, out, _) = verify(&torrent, &data, true);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let files = v["files"].as_array().unwrap();
    let b = files.iter().find(|f| f["path"].as_str().unwrap().ends_with("b.bin")).unwrap();
    assert_eq!(b["state"], "missing");
    assert_eq!(b["bytes_complete"], 0);
    assert!(!v["pieces"]["missing"].as_array().unwrap().is_empty());
    assert_eq!(v["pieces"]["corrupt"].as_array().unwrap().len(), 0);
    let a = files.iter().find(|f| f["path"].as_str().unwrap().ends_with("a.bin")).unwrap();
    assert_eq!(a["state"], "present");
}

// ---------------------------------------------------------------------------
// Resume state

/// A torrent (made by libtorrent) over two files, with its data.
fn resume_fixture(root: &Path) -> (ringbit::metainfo::Metainfo, PathBuf, PathBuf) {
    let data = root.join("data");
    write_payload(&data, &[("r/one.bin", 200_000), ("r/two.bin", 300_000)]);
    let torrent = root.join("r.torrent");
    lt_create(&data.join("r"), &torrent, 16384);
    let meta = ringbit::metainfo::Metainfo::from_file(&torrent).unwrap();
    (meta, data, root.join("state"))
}

fn check_opts() -> ringbit::storage::check::CheckOptions {
    ringbit::storage::check::CheckOptions { threads: 2, ..Default::default() }
}

/// Goal: a saved state is trusted as is; a corrupt, truncated or
/// wrong-version resume file means a warning and a full recheck, not a crash.
#[test]
fn resume_corrupt_file_means_full_recheck() {
    use ringbit::storage::resume::{load_or_recheck, resume_path, save};
    let root = tempfile::tempdir().unwrap();
    let (meta, data, state) = resume_fixture(root.path());
    let info = &meta.info;
    let count = info.piece_count();

    let first = load_or_recheck(&state, meta.info_hash, info, &data, check_opts()).unwrap();
    assert!(first.full_recheck && first.warning.is_none(), "no resume file yet: plain recheck");
    assert!(first.have.is_full());
    save(&state, meta.info_hash, info, &data, &first.have).unwrap();
    let path = resume_path(&state, meta.info_hash);
    assert!(path.exists());
    assert!(!path.with_extension("resume.tmp").exists(), "temporary file renamed away");

    let trusted = load_or_recheck(&state, meta.info_hash, info, &data, check_opts()).unwrap();
    assert!(!trusted.full_recheck && trusted.rechecked == 0 && trusted.have.is_full());

    let good = std::fs::read(&path).unwrap();
    let mut wrong_version = good.clone();
    let at = wrong_version.windows(12).position(|w| w == b"7:versioni1e").unwrap();
    wrong_version[at + 10] = b'9';
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0xff;
    for damaged in [good[..good.len() / 2].to_vec(), b"garbage".to_vec(), wrong_version, flipped] {
        std::fs::write(&path, &damaged).unwrap();
        let r = load_or_recheck(&state, meta.info_hash, info, &data, check_opts()).unwrap();
        if r.full_recheck {
            assert!(r.warning.is_some(), "a rejected resume file is warned about");
            assert_eq!(r.rechecked, count);
        }
        assert!(r.have.is_full());
    }
    // A resume file saved with only half the pieces, on unchanged files, is
    // trusted as is: the missing half stays missing without hashing.
    let mut half = Bitfield::new(count);
    for p in 0..count / 2 {
        half.set(p);
    }
    save(&state, meta.info_hash, info, &data, &half).unwrap();
    let r = load_or_recheck(&state, meta.info_hash, info, &data, check_opts()).unwrap();
    assert_eq!((r.rechecked, r.have.count()), (0, count / 2));
}

/// Goal: touching one file rechecks only its pieces; corrupting it then
/// drops exactly the damaged piece.
#[test]
fn resume_touched_file_rechecks_only_its_pieces() {
    use ringbit::storage::resume::{load_or_recheck, save};
    let root = tempfile::tempdir().unwrap();
    let (meta, data, state) = resume_fixture(root.path());
    let info = &meta.info;
    let layout = ringbit::layout::Layout::new(info).unwrap();
    let first = load_or_recheck(&state, meta.info_hash, info, &data, check_opts()).unwrap();
    save(&state, meta.info_hash, info, &data, &first.have).unwrap();

    let (index, entry) =
        info.files.iter().enumerate().find(|(_, f)| f.path.last().unwrap() == "two.bin").unwrap();
    let two = data.join(entry.path.iter().collect::<PathBuf>());
    let mut bytes = std::fs::read(&two).unwrap();
    bytes[150_000] ^= 1;
    std::fs::write(&two, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&two).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5)).unwrap();
    drop(f);

    let r = load_or_recheck(&state, meta.info_hash, info, &data, check_opts()).unwrap();
    let range = layout.file_piece_range(index);
    assert!(!r.full_recheck);
    assert_eq!(r.rechecked, range.end - range.start, "only two.bin's pieces");
    let bad = ((entry.offset + 150_000) / info.piece_length as u64) as u32;
    let missing: Vec<u32> = (0..info.piece_count()).filter(|&p| !r.have.get(p)).collect();
    assert_eq!(missing, vec![bad]);
}

/// Writes every piece of a multi-file torrent whose file boundaries are not
/// page-aligned with the io_uring backend (`direct_io` on), flushes, and
/// reads every block back through the store and the files; returns whether
/// direct writes stayed on.
fn direct_round_trip(dir: &Path) -> bool {
    // 3 pieces of 256 KiB over files of 100,000 and the rest: file "b"
    // starts mid-page, so its spans have buffered heads and tails.
    let a_len = 100_000u64;
    let total = 3 * PIECE as u64 - 5;
    let files = vec![
        FileEntry { path: vec!["d".into(), "a".into()], length: a_len, offset: 0, pad: false },
        FileEntry {
            path: vec!["d".into(), "b".into()],
            length: total - a_len,
            offset: a_len,
            pad: false,
        },
    ];
    let info = Info {
        name: "d".into(),
        piece_length: PIECE,
        pieces: vec![[0; 20]; 3],
        files,
        total_length: total,
        private: false,
        multi_file: true,
        source: None,
    };
    let data = payload_bytes(total as usize, 9);
    let store = PieceStore::open(
        &info,
        dir,
        StoreOptions { backend: Backend::Uring, direct_io: true, ..Default::default() },
    )
    .unwrap();
    let direct = run_on(Backend::Uring, async {
        for i in 0..3u32 {
            let s = i as usize * PIECE as usize;
            let piece = data[s..(s + PIECE as usize).min(data.len())].to_vec();
            let (r, back) = store.write_piece(i, piece.clone()).await;
            r.unwrap();
            assert_eq!(back, piece);
        }
        store.flush().await.unwrap();
        let mut buf = Vec::with_capacity(16 << 10);
        for i in 0..3u32 {
            let size = store.layout().piece_size(i);
            let mut begin = 0;
            while begin < size {
                let len = (size - begin).min(16 << 10);
                let (r, b) = store.read_block(i, begin, len, buf).await;
                buf = b;
                assert_eq!(r.unwrap(), len as usize);
                let s = i as usize * PIECE as usize + begin as usize;
                assert_eq!(buf, &data[s..s + len as usize], "piece {i} block at {begin}");
                begin += len;
            }
        }
        match &store {
            PieceStore::Uring(s) => s.direct_io(),
            _ => unreachable!(),
        }
    });
    drop(store);
    let d = dir.join("d");
    assert_eq!(std::fs::read(d.join("a")).unwrap(), &data[..a_len as usize]);
    assert!(std::fs::read(d.join("b")).unwrap() == data[a_len as usize..], "file b differs");
    direct
}

/// Goal: O_DIRECT piece writes are coherent with reads, on the disk and on
/// tmpfs (which refused O_DIRECT before Linux 6.6: the store then falls back
/// to the page cache; since 6.6 it takes it).
/// Setup: the same multi-file torrent (unaligned file boundary) written by
/// the io_uring backend with `direct_io` into a temp dir on the disk and into
/// a tmpfs the test mounts.
/// Check: every byte reads back through the store and from the files, on
/// both; direct writes stayed on for the disk (ext4 takes O_DIRECT).
#[test]
fn direct_io_writes_read_back_on_disk_and_tmpfs() {
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    assert!(direct_round_trip(disk.path()), "direct writes were turned off on the disk");
    let fs = SmallFs::mount("8m");
    let direct = direct_round_trip(fs.path());
    eprintln!("tmpfs: direct writes {}", if direct { "taken" } else { "refused, fell back" });
}
