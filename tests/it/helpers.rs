//! Shared test helpers: run the ringbit binary, find the real peers, pick
//! ports, make payloads, and stop only the processes a test started.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `ringbit` as built for this test run. Its default state directory (resume
/// files) is under cargo's target tmp directory, never the home of whoever
/// runs the tests (resume files are keyed by info hash and stamped with their
/// data's paths and mtimes, so tests cannot trust each other's).
pub fn ringbit() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringbit"));
    cmd.env("XDG_STATE_HOME", Path::new(env!("CARGO_TARGET_TMPDIR")).join("state-home"));
    // No DHT router: a test passes its loopback nodes with --dht-bootstrap.
    cmd.env("RINGBIT_DHT_BOOTSTRAP", "none");
    cmd
}

/// `ringbit` run by a wrapper command (`wrapper... ringbit ARGS`), with the
/// same environment as [`ringbit`].
pub fn ringbit_under(wrapper: &[&str]) -> Command {
    let mut cmd = Command::new(wrapper[0]);
    cmd.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_ringbit"));
    cmd.env("XDG_STATE_HOME", Path::new(env!("CARGO_TARGET_TMPDIR")).join("state-home"));
    cmd
}

/// Runs a command to completion with a bound on how long it may take; panics
/// with its output when it overruns.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("wait_with_output"),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("wait_with_output");
                panic!(
                    "{cmd:?} ran past {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs and asserts success, returning stdout.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let out = run_bounded(cmd, limit);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// The path of a real peer's program. Panics (never skips) when it is missing:
/// `scripts/test.sh` installs every one of them.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/test.sh, which installs the test peers");
}

/// `/usr/bin/python3 tests/peers/lt_tool.py` (libtorrent needs Debian's python).
pub fn lt_tool() -> Command {
    let python = require_tool("python3");
    let check =
        Command::new(&python).args(["-c", "import libtorrent"]).output().expect("run python3");
    assert!(check.status.success(), "python3-libtorrent is not installed: run scripts/test.sh");
    let mut cmd = Command::new(python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/lt_tool.py"));
    cmd
}

/// A port that was free on 127.0.0.1 for both TCP and UDP a moment ago.
pub fn free_port() -> u16 {
    for _ in 0..64 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

/// A child process that is killed (by its pid, and only it) when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ChildGuard { child, name: name.to_string() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends a signal to this child only.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// Deterministic pseudo-random bytes (xorshift), so payloads differ per seed
/// but every run makes the same files.
pub fn payload_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `files` (relative path, length) under `root` with deterministic
/// content; returns the paths written.
pub fn write_payload(root: &Path, files: &[(&str, usize)]) -> Vec<PathBuf> {
    files
        .iter()
        .enumerate()
        .map(|(i, (rel, len))| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(&payload_bytes(*len, i as u64 + 1)).unwrap();
            path
        })
        .collect()
}

/// Asserts two directory trees hold the same files with the same bytes.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let mut stack = vec![PathBuf::new()];
    let mut seen = 0;
    while let Some(rel) = stack.pop() {
        let e = expected.join(&rel);
        if e.is_dir() {
            for entry in std::fs::read_dir(&e).unwrap() {
                stack.push(rel.join(entry.unwrap().file_name()));
            }
        } else {
            let a = actual.join(&rel);
            let eb = std::fs::read(&e).unwrap();
            let ab = std::fs::read(&a).unwrap_or_else(|err| panic!("{}: {err}", a.display()));
            assert!(eb == ab, "{} differs from {}", a.display(), e.display());
            seen += 1;
        }
    }
    assert!(seen > 0, "no files compared under {}", expected.display());
}

/// opentracker on 127.0.0.1, HTTP and UDP on one ephemeral port, with a
/// whitelist of the given info hashes (Debian builds it whitelist-only).
pub struct Opentracker {
    pub port: u16,
    _dir: tempfile::TempDir,
    _child: ChildGuard,
}

impl Opentracker {
    pub fn start(info_hashes_hex: &[String]) -> Opentracker {
        let bin = require_tool("opentracker");
        let dir = tempfile::tempdir().unwrap();
        let mut list = info_hashes_hex.join("\n");
        list.push('\n');
        std::fs::write(dir.path().join("whitelist.txt"), list).unwrap();
        for _ in 0..8 {
            let port = free_port();
            let mut cmd = Command::new(&bin);
            // -d chroots into the directory first, so -w is relative to it.
            cmd.args(["-i", "127.0.0.1", "-p", &port.to_string(), "-P", &port.to_string()])
                .arg("-d")
                .arg(dir.path())
                .args(["-w", "/whitelist.txt"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = ChildGuard::spawn("opentracker", &mut cmd);
            // opentracker accepts TCP before it has loaded its whitelist and
            // bound UDP: wait until both transports serve a whitelisted hash.
            let up = wait_until(Duration::from_secs(10), || {
                child.child.try_wait().unwrap().is_some()
                    || (udp_tracker_answers(port) && http_tracker_serves(port, &info_hashes_hex[0]))
            });
            if up && child.child.try_wait().unwrap().is_none() {
                return Opentracker { port, _dir: dir, _child: child };
            }
        }
        panic!("opentracker did not start");
    }

    pub fn http_announce(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    pub fn udp_announce(&self) -> String {
        format!("udp://127.0.0.1:{}/announce", self.port)
    }
}

/// A BEP 15 connect request to 127.0.0.1:`port` gets a connect reply.
fn udp_tracker_answers(port: u16) -> bool {
    let Ok(socket) = std::net::UdpSocket::bind("127.0.0.1:0") else { return false };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let mut request = Vec::with_capacity(16);
    request.extend_from_slice(&0x41727101980u64.to_be_bytes());
    request.extend_from_slice(&0u32.to_be_bytes());
    request.extend_from_slice(&0x5eedu32.to_be_bytes());
    if socket.send_to(&request, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    matches!(socket.recv(&mut reply), Ok(16..) if reply[4..8] == 0x5eedu32.to_be_bytes())
}

/// An HTTP `stopped` announce for a whitelisted hash is answered without a
/// failure reason (so the whitelist is loaded).
fn http_tracker_serves(port: u16, info_hash_hex: &str) -> bool {
    use std::io::Read;
    let mut encoded = String::new();
    for pair in info_hash_hex.as_bytes().chunks(2) {
        encoded.push('%');
        encoded.push_str(std::str::from_utf8(pair).unwrap());
    }
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let request = format!(
        "GET /announce?info_hash={encoded}&peer_id=-RB0001-probeprobe12&port=1&uploaded=0&downloaded=0&left=0&event=stopped&compact=1 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut body = Vec::new();
    let _ = stream.read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    text.starts_with("HTTP/1") && text.contains(" 200 ") && !text.contains("failure reason")
}
