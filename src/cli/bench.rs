//! `ringbit bench`: the whole client end to end on loopback, with nothing but
//! this binary. Makes a payload (default 1 GiB) and its torrent, seeds it from
//! one ringbit process, downloads it with one or more others over
//! 127.0.0.1, checks every byte, and reports throughput, CPU-seconds per GiB
//! and peak memory of each side.
//!
//! A leecher's time runs from its spawn to its "download finished" log line
//! (every piece verified and written), not to its exit: the exit flushes the
//! payload to disk (`fdatasync`, ~1.5 s for 1 GiB here), which is the disk's
//! speed, not the swarm's. The flush is reported beside it.
//!
//! Layer: edge. The processes are this binary's own `download` command (the
//! seeder with `--seed` over the complete payload), so the numbers are those
//! of the real client, not of an in-process shortcut.

use crate::create::{create, CreateOptions};
use anyhow::Context;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How long the seeder may take to check its data and listen.
pub const SEEDER_READY_LIMIT: Duration = Duration::from_secs(300);

/// The line a leecher logs (at `-v`) once every piece is verified; see
/// `cli::download`.
const FINISHED_MARK: &[u8] = b"download finished";

/// How often leechers' logs and exits are checked.
const LEECHER_POLL: Duration = Duration::from_millis(10);

/// Arguments of `ringbit bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Payload size (e.g. 64M, 1G).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,

    /// Leechers downloading at the same time.
    #[arg(long, default_value_t = 1)]
    pub leechers: usize,

    /// Piece length of the generated torrent.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub piece_length: u64,

    /// Working directory (default: a new directory under the system temp
    /// dir, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,

    /// Give up when the transfer takes longer than this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,

    /// Extra flags for every ringbit process (e.g. `--engine-flag=--backend=mmap`).
    #[arg(long = "engine-flag", value_name = "FLAG", allow_hyphen_values = true)]
    pub engine_flags: Vec<String>,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Seed from a cold page cache: once the seeder has checked its data and
    /// listens, the payload's pages are dropped from the page cache
    /// (written back, then `POSIX_FADV_DONTNEED`; no root needed), so every
    /// block served is read from the disk.
    #[arg(long)]
    pub cold: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    super::units::parse_size(s).ok_or_else(|| format!("{s:?} is not a size (try 64M or 1G)"))
}

/// Resources one process used.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    cpu_seconds: f64,
    peak_rss_bytes: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.size > 0, "--size must be positive");
    anyhow::ensure!(args.leechers >= 1, "--leechers must be at least 1");
    let piece_length =
        crate::create::check_piece_length(args.piece_length).context("--piece-length")?;
    let work = WorkDir::new(args.dir.clone())?;
    let seed_dir = work.path.join("seed");
    std::fs::create_dir_all(&seed_dir)?;
    let payload = seed_dir.join("payload.bin");
    eprintln!("bench: writing {} payload", indicatif::HumanBytes(args.size));
    write_payload(&payload, args.size)?;
    let torrent = work.path.join("bench.torrent");
    let created = create(
        &payload,
        &CreateOptions { piece_length: Some(piece_length), ..CreateOptions::default() },
        |_| {},
    )?;
    std::fs::write(&torrent, &created.bytes)?;

    let exe = std::env::current_exe().context("cannot find the ringbit binary")?;
    let port = free_port()?;
    let mut seeder = spawn(
        &exe,
        &torrent,
        &seed_dir,
        &["--seed".to_string(), "--port".to_string(), port.to_string()],
        &args.engine_flags,
        &work.path.join("seeder.log"),
    )?;
    let ready = wait_listening(port, &mut seeder, SEEDER_READY_LIMIT);
    if let Err(error) = ready {
        let _ = seeder.kill();
        let _ = seeder.wait();
        return Err(error.context(log_tail(&work.path.join("seeder.log"))));
    }
    if args.cold {
        crate::storage::drop_page_cache(&payload)
            .context("dropping the payload from the page cache (--cold)")?;
        eprintln!("bench: payload dropped from the page cache (--cold)");
    }
    eprintln!("bench: seeder ready on 127.0.0.1:{port}; {} leecher(s) downloading", args.leechers);

    let seeder_cpu_before = proc_cpu_seconds(seeder.id()).unwrap_or(0.0);
    let started = Instant::now();
    let mut running = Vec::new();
    for index in 0..args.leechers {
        let dir = work.path.join(format!("leech{index}"));
        std::fs::create_dir_all(&dir)?;
        let flags = vec!["--peer".to_string(), format!("127.0.0.1:{port}")];
        let log = work.path.join(format!("leech{index}.log"));
        let child = spawn(&exe, &torrent, &dir, &flags, &args.engine_flags, &log)?;
        running.push(Leecher { index, child, dir, log, log_read: 0, finished: None });
    }
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut results = Vec::new();
    // The seeder's CPU when the last leecher finished (its exit flush is not
    // the seeder's work).
    let mut seeder_cpu_at_finish = None;
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            let leecher = &mut running[i];
            if leecher.finished.is_none() && leecher.saw_finished_line() {
                leecher.finished = Some(started.elapsed().as_secs_f64());
            }
            match try_wait_with_usage(&leecher.child) {
                None => i += 1,
                Some((ok, usage)) => {
                    let mut leecher = running.swap_remove(i);
                    if !ok {
                        let _ = seeder.kill();
                        anyhow::bail!(
                            "leecher in {} failed{}",
                            leecher.dir.display(),
                            log_tail(&leecher.log)
                        );
                    }
                    let exited = started.elapsed().as_secs_f64();
                    // A line written just before the exit is in the log by now.
                    if leecher.finished.is_none() && leecher.saw_finished_line() {
                        leecher.finished = Some(exited);
                    }
                    let Some(finished) = leecher.finished else {
                        let _ = seeder.kill();
                        anyhow::bail!(
                            "leecher in {} exited without logging {:?}{}",
                            leecher.dir.display(),
                            String::from_utf8_lossy(FINISHED_MARK),
                            log_tail(&leecher.log)
                        );
                    };
                    results.push(LeecherResult {
                        index: leecher.index,
                        finished,
                        exited,
                        usage,
                        dir: leecher.dir,
                    });
                }
            }
        }
        if seeder_cpu_at_finish.is_none() && running.iter().all(|l| l.finished.is_some()) {
            seeder_cpu_at_finish = proc_cpu_seconds(seeder.id());
        }
        if running.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for leecher in &mut running {
                let _ = leecher.child.kill();
                let _ = leecher.child.wait();
            }
            let _ = seeder.kill();
            anyhow::bail!(
                "{} leecher(s) did not finish within {} s (--timeout-secs)",
                running.len(),
                args.timeout_secs
            );
        }
        std::thread::sleep(LEECHER_POLL);
    }
    results.sort_by_key(|r| r.index);
    let transfer_seconds = results.iter().map(|r| r.finished).fold(0.0, f64::max);
    let seeder_cpu = seeder_cpu_at_finish.or_else(|| proc_cpu_seconds(seeder.id())).unwrap_or(0.0)
        - seeder_cpu_before;
    let seeder_rss = proc_peak_rss(seeder.id()).unwrap_or(0);
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    unsafe {
        libc::kill(seeder.id() as i32, libc::SIGINT);
    }
    let _ = wait_with_usage(seeder, Instant::now() + Duration::from_secs(30));

    for r in &results {
        same_bytes(&payload, &r.dir.join("payload.bin"))
            .with_context(|| format!("download in {} differs from the payload", r.dir.display()))?;
    }
    let gib = args.size as f64 / (1u64 << 30) as f64;
    let total_bytes = args.size as f64 * results.len() as f64;
    let report = serde_json::json!({
        "size_bytes": args.size,
        "piece_length": piece_length,
        "leechers": results.iter().map(|r| serde_json::json!({
            "seconds": r.finished,
            "exit_seconds": r.exited,
            "mb_per_s": args.size as f64 / r.finished / 1e6,
            "cpu_seconds_per_gib": r.usage.cpu_seconds / gib,
            "peak_rss_bytes": r.usage.peak_rss_bytes,
        })).collect::<Vec<_>>(),
        "seeder": {
            "mb_per_s": total_bytes / transfer_seconds / 1e6,
            "cpu_seconds_per_gib": seeder_cpu / (gib * results.len() as f64),
            "peak_rss_bytes": seeder_rss,
        },
        "verified": true,
        "cold": args.cold,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "ringbit bench: {} in {} pieces of {}, {} leecher(s), every byte verified",
            indicatif::HumanBytes(args.size),
            created.piece_count,
            indicatif::HumanBytes(piece_length as u64),
            results.len()
        );
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>14} {:>12}",
            "side", "MB/s", "seconds", "exit s", "CPU-s per GiB", "peak RSS"
        );
        for r in &results {
            println!(
                "{:<10} {:>10.0} {:>10.2} {:>10.2} {:>14.2} {:>12}",
                format!("leecher{}", r.index),
                args.size as f64 / r.finished / 1e6,
                r.finished,
                r.exited,
                r.usage.cpu_seconds / gib,
                indicatif::HumanBytes(r.usage.peak_rss_bytes).to_string()
            );
        }
        println!(
            "{:<10} {:>10.0} {:>10.2} {:>10} {:>14.2} {:>12}",
            "seeder",
            total_bytes / transfer_seconds / 1e6,
            transfer_seconds,
            "",
            seeder_cpu / (gib * results.len() as f64),
            indicatif::HumanBytes(seeder_rss).to_string()
        );
        println!(
            "seconds: from the leechers' start to each one's \"download finished\" (every piece \
             verified); exit s adds its flush of the payload to disk"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A working directory, removed on drop unless the user named it.
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn new(dir: Option<PathBuf>) -> anyhow::Result<WorkDir> {
        match dir {
            Some(path) => {
                std::fs::create_dir_all(&path)?;
                Ok(WorkDir { path, remove: false })
            }
            None => {
                let path = tempfile::Builder::new().prefix("ringbit-bench-").tempdir()?.keep();
                Ok(WorkDir { path, remove: true })
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Fast deterministic pseudo-random bytes (xorshift), written in 1 MiB chunks.
fn write_payload(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(
    exe: &Path,
    torrent: &Path,
    dir: &Path,
    flags: &[String],
    engine_flags: &[String],
    log: &Path,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    let mut command = Command::new(exe);
    command
        .arg("download")
        .arg(torrent)
        .arg("-o")
        .arg(dir)
        // Loopback only: no trackers, no DHT (it would look for the
        // internet's bootstrap routers).
        .args(["--no-trackers", "--no-dht", "--bind", "127.0.0.1"])
        // Each process its own resume state, inside the work directory.
        .arg("--state-dir")
        .arg(dir.with_extension("state"))
        .args(flags)
        .args(engine_flags)
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if !flags.iter().any(|f| f == "--port") {
        command.args(["--port", "0"]);
    }
    Ok(command.spawn()?)
}

fn wait_listening(port: u16, seeder: &mut Child, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = seeder.try_wait()? {
            anyhow::bail!("the seeder exited ({status}) before listening");
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("the seeder did not listen within {limit:?}")
}

/// A leecher process being watched.
struct Leecher {
    /// Its number: `leech{index}` is its directory.
    index: usize,
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    /// Bytes of the log already searched for [`FINISHED_MARK`].
    log_read: u64,
    /// Seconds from the start to its "download finished" line.
    finished: Option<f64>,
}

impl Leecher {
    /// Whether the log has the finished line, reading only what is new
    /// (a line cut by the last read is searched again with its end).
    fn saw_finished_line(&mut self) -> bool {
        use std::io::{Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.log) else { return false };
        let from = self.log_read.saturating_sub(FINISHED_MARK.len() as u64);
        if file.seek(SeekFrom::Start(from)).is_err() {
            return false;
        }
        let mut fresh = Vec::new();
        if file.read_to_end(&mut fresh).is_err() {
            return false;
        }
        self.log_read = from + fresh.len() as u64;
        fresh.windows(FINISHED_MARK.len()).any(|w| w == FINISHED_MARK)
    }
}

/// What one leecher did.
struct LeecherResult {
    index: usize,
    /// Seconds from the start to its "download finished" line.
    finished: f64,
    /// Seconds from the start to its exit (after flushing to disk).
    exited: f64,
    usage: Usage,
    dir: PathBuf,
}

/// `Some((succeeded, usage))` once `child` has exited (reaped with wait4's
/// rusage), `None` while it runs.
fn try_wait_with_usage(child: &Child) -> Option<(bool, Usage)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid with valid out-pointers; WNOHANG
    // so it never blocks. std's Child is not used to wait afterwards.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, libc::WNOHANG, &mut usage) };
    if pid > 0 {
        let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        let used = Usage {
            cpu_seconds: cpu(usage.ru_utime) + cpu(usage.ru_stime),
            peak_rss_bytes: usage.ru_maxrss as u64 * 1024,
        };
        return Some((ok, used));
    }
    if pid < 0 {
        return Some((false, Usage::default()));
    }
    None
}

/// Waits for `child` (killing it at `deadline`) and returns whether it
/// succeeded and what it used, from wait4's rusage.
fn wait_with_usage(mut child: Child, deadline: Instant) -> (bool, Usage) {
    loop {
        if let Some(done) = try_wait_with_usage(&child) {
            return done;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// utime + stime of a running process, from /proc.
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

/// Peak resident set (VmHWM) of a running process.
fn proc_peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn same_bytes(a: &Path, b: &Path) -> anyhow::Result<()> {
    let mut fa = std::fs::File::open(a)?;
    let mut fb = std::fs::File::open(b).with_context(|| format!("{}", b.display()))?;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        anyhow::ensure!(na == nb && ba[..na] == bb[..nb], "contents differ");
        if na == 0 {
            return Ok(());
        }
    }
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("\n--- {} (last lines) ---\n{tail}", path.display())
}
