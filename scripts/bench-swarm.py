#!/usr/bin/python3
"""End-to-end swarm benchmark on loopback: seeder/leecher pairs, timed alike.

Each measured pair is one seeder process (libtorrent in seed_mode via
tests/peers/lt_extra.py, or `ringbit seed`) serving a single-file torrent
(default 1 GiB, 1 MiB pieces; libtorrent-hp is the libtorrent seeder with
libtorrent's high_performance_seed() preset) to one leecher process: libtorrent
(lt_extra.py leech), libtorrent-dq (the same with its disk queue,
max_queued_disk_bytes, at 32 MiB instead of 1 MiB), aria2, transmission or
ringbit (`ringbit download`).
Every pair is timed the same way, whoever seeds and whoever leeches:

  t0  the leecher process is spawned, with the seeder already listening and
      serving (started, data checked, idle);
  t1  the leecher reports that it has every piece, hash-verified: libtorrent's
      {"event":"done"} line (is_seeding), ringbit's "download finished" log
      line, aria2's "Download complete" notice, transmission's -f script.
      The line is timestamped by this script as it arrives on the pipe (each
      client notices completion within 10-100 ms).

  MB/s              payload bytes / (t1 - t0), MB = 10^6 bytes. Start-up of the
                    leecher (process start, connect, handshake) counts, the same
                    for every seeder it is paired with.
  wall s            t0 to the leecher's exit (shutdown and flush included).
  CPU-s/GiB         user+sys of the leecher process tree, whole life (os.wait4
                    rusage, so reaped children count), per GiB received.
  RSS MiB           the leecher's peak RSS (VmHWM, read every 50 ms while it runs).
  seed CPU-s/GiB    user+sys of the seeder process between t0 and t1
                    (/proc/PID/stat, 10 ms ticks), per GiB served.
  seed RSS MiB      the seeder's peak RSS between t0 and t1: its VmHWM is reset
                    (/proc/PID/clear_refs, "5") before each run. Pages of mapped
                    files that a seeder touches count (libtorrent maps its files).

Modes:
  --compare   (the issue 6 targets, in ONE invocation) six pairs:
              the libtorrent leecher from `ringbit seed` and from a libtorrent
              seeder, once with libtorrent's default settings and once as
              libtorrent-dq; ringbit->ringbit (`ringbit seed` -> `ringbit
              download`, the two processes `ringbit bench` runs); and
              libtorrent-hp (libtorrent's high_performance_seed preset) ->
              libtorrent-dq, for information. Prints the ratios the targets
              name: rate >= 1.2x and seeder CPU <= 0.5x for the same libtorrent
              leecher (against the default libtorrent seeder with that
              leecher); ringbit->ringbit rate >= 1.5x lt->lt.
  --leech-compare  (the issue 14 leecher targets, in ONE invocation) three
              leechers from the same `ringbit seed`: aria2, libtorrent and
              ringbit. Prints the leecher ratios the targets name: ringbit's
              rate >= 1.25x aria2's, ringbit's CPU per GiB <= 0.6x aria2's,
              ringbit's peak RSS <= 64 MiB, ringbit->ringbit >= 800 MB/s.
              scripts/bench-leech.sh runs this.
  default     one seeder (--seeder) and each of --leechers.

Runs interleave the pairs (--runs rounds; each round runs every pair once, in
an order rotated per round) so drift on a shared machine spreads evenly; the
tables show medians. Seeders live for the whole invocation (one per kind);
every leecher is a fresh process on a fresh port (libtorrent will not redial
an ip:port for 60 s; transmission must be restarted between runs), and its
output is compared with the payload after the run (--no-check skips that).
The 1-minute load average is printed with every run: other work on the
machine skews every number.

The page cache is NOT dropped (that needs root and changes the machine): the
payload is read once before the runs so every seeder serves from memory.

Peers: libtorrent and ringbit leechers dial the seeder (--peer); aria2 finds it
through a private opentracker the benchmark announces the seeder to; the
seeder dials transmission (which never dials 127.0.0.1 itself): libtorrent is
told on stdin, `ringbit seed` is restarted with --peer (its resume state skips
the recheck). Such runs are timed from the dial, not from the leecher's start.

Usage:
  cargo build --release
  /usr/bin/python3 scripts/bench-swarm.py --compare [--size 1G] [--runs 3]
  /usr/bin/python3 scripts/bench-swarm.py --transmission [--size 1G] [--runs 3]
  /usr/bin/python3 scripts/bench-swarm.py [--size 1G] [--runs 3]
      [--leechers libtorrent,libtorrent-dq,aria2,transmission,ringbit]
      [--seeder libtorrent|ringbit]
  common: [--ringbit target/release/ringbit] [--ringbit-flag=--backend=mmap]...
          [--ringbit-seed-flag=FLAG]... [--ringbit-leech-flag=FLAG]...
          [--workdir DIR] [--markdown]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import free_port, machine, parse_size, proc_cpu_s, ringbit_missing, tool_version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LT_TOOL = os.path.join(REPO, "tests", "peers", "lt_tool.py")
LT_EXTRA = os.path.join(REPO, "tests", "peers", "lt_extra.py")
PYTHON = "/usr/bin/python3"  # python3-libtorrent is built for Debian's interpreter
LEECHERS = ["libtorrent", "libtorrent-dq", "aria2", "transmission", "ringbit", "ringbit-epoll"]
DEFAULT_LEECHERS = ["libtorrent", "aria2", "transmission", "ringbit"]
# libtorrent-hp: the libtorrent seeder with libtorrent's own
# high_performance_seed() preset (lt_extra.py seed --high-performance-seed).
# ringbit-epoll: ringbit forced onto its epoll I/O driver (--io-driver epoll);
# plain "ringbit" runs on io_uring where the kernel allows it.
SEEDERS = ["libtorrent", "libtorrent-hp", "ringbit", "ringbit-epoll"]
# libtorrent-dq: the libtorrent leecher with its disk queue (max_queued_disk_bytes,
# qBittorrent's "disk queue size") raised from 1 MiB to this. At 1 MiB the
# leecher stops reading its socket whenever a MiB waits for its disk threads,
# and on a small machine that caps it below what either seeder can send.
DEEP_DISK_QUEUE_BYTES = 32 << 20
# --compare: (seeder, leecher) pairs; the first is the reference.
# --leech-compare: every leecher from the same ringbit seeder; aria2 is the reference.
LEECH_COMPARE_PAIRS = [("ringbit", "aria2"), ("ringbit", "libtorrent"), ("ringbit", "ringbit")]
COMPARE_PAIRS = [("libtorrent", "libtorrent"), ("ringbit", "libtorrent"), ("ringbit", "ringbit"),
                 ("libtorrent", "libtorrent-dq"), ("ringbit", "libtorrent-dq"),
                 ("libtorrent-hp", "libtorrent-dq")]
# --transmission: a transmission leecher from each seeder (issue 11: >= 0.8x).
TRANSMISSION_PAIRS = [("libtorrent", "transmission"), ("ringbit", "transmission")]
# --drivers: ringbit -> ringbit on each I/O driver (issue 15: epoll >= 0.8x io_uring).
DRIVER_PAIRS = [("ringbit", "ringbit"), ("ringbit-epoll", "ringbit-epoll")]
# A line a leecher prints once it has every piece verified (transmission has
# none: its -f script makes a marker file instead).
DONE_MARKS = {
    "libtorrent": b'"event": "done"',
    "libtorrent-dq": b'"event": "done"',
    "ringbit": b"download finished",
    "ringbit-epoll": b"download finished",
    "aria2": b"Download complete",
}
ARIA2_COMMON = [
    "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
    "--enable-peer-exchange=false", "--interface=127.0.0.1", "--disable-ipv6=true",
    "--summary-interval=0", "--console-log-level=notice", "--enable-color=false",
    "--auto-file-renaming=false",
]
# Bounds on every wait.
READY_LIMIT_S = 600.0  # `ringbit seed` rechecks its data before it listens
STOP_LIMIT_S = 60.0  # a leecher's exit may flush a GiB to disk
POLL_S = 0.005
RSS_POLL_S = 0.05
GIB = 1 << 30
# Leechers spawned and not yet reaped: killed (by pid) if the benchmark stops early.
LIVE = {}


def die(msg):
    sys.stderr.write("bench-swarm: %s\n" % msg)
    sys.exit(1)


def is_listening(port):
    """From /proc/net/tcp{,6}: no probe connection a client would count as a peer."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            pass
    return False


def wait_listening(proc, port, what):
    deadline = time.monotonic() + READY_LIMIT_S
    while not is_listening(port):
        if proc.poll() is not None:
            die("%s exited (%s) before listening on %d" % (what, proc.returncode, port))
        if time.monotonic() > deadline:
            die("%s did not listen on %d within %ss" % (what, port, READY_LIMIT_S))
        time.sleep(POLL_S)


def vm_hwm_kib(pid):
    """Peak RSS of a live process (VmHWM). Not wait4's ru_maxrss: a child
    spawned with vfork inherits the parent's high-water mark through exec,
    so ru_maxrss would report this Python process's RSS for small clients."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------------------
# ringbit


# ---------------------------------------------------------------------------
# opentracker: how aria2 (which takes peers only from trackers) finds the seeder

class Tracker:
    """A private opentracker (HTTP on 127.0.0.1) whitelisted for one info hash.
    The benchmark announces the seeder to it on the seeder's behalf, so aria2
    dials the seeder as the libtorrent and ringbit leechers do (--peer)."""

    def __init__(self, info_hash, workdir):
        self.info_hash = info_hash
        self.port = free_port() or die("no free port on 127.0.0.1")
        root = os.path.join(workdir, "opentracker")
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "whitelist.txt"), "w") as f:
            f.write(info_hash + "\n")
        # -d chroots first, so the whitelist path is relative to it.
        self.proc = subprocess.Popen(
            ["opentracker", "-i", "127.0.0.1", "-p", str(self.port), "-P", str(self.port),
             "-d", root, "-w", "/whitelist.txt"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.proc, self.port, "opentracker")

    def url(self):
        return "http://127.0.0.1:%d/announce" % self.port

    def announce_seeder(self, port):
        """Registers 127.0.0.1:port (opentracker takes the source address) as a seeder."""
        import urllib.parse
        import urllib.request
        query = urllib.parse.urlencode({
            "info_hash": bytes.fromhex(self.info_hash), "peer_id": b"-BS0001-%012d" % port,
            "port": port, "uploaded": 0, "downloaded": 0, "left": 0, "event": "started",
            "compact": 1, "numwant": 0})
        with urllib.request.urlopen(self.url() + "?" + query, timeout=5) as r:
            body = r.read(65536)
        if b"failure reason" in body:
            die("opentracker refused the seeder: %r" % body)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STOP_LIMIT_S)


def info_hash_of(torrent):
    out = subprocess.run([PYTHON, LT_TOOL, "info", torrent], capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)["info_hash"]




def reset_hwm(pid):
    """Resets a process's peak RSS (VmHWM) to its current RSS, so the next
    reading is the peak of what follows (Linux >= 4.0; our own child)."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def load_1min():
    return os.getloadavg()[0]


# ---------------------------------------------------------------------------
# Seeder

class Seeder:
    """One seeder process, started before the runs and kept serving. The
    libtorrent one (tests/peers/lt_extra.py) takes commands on stdin: it
    dials leechers that cannot dial loopback peers (transmission)."""

    def __init__(self, kind, torrent, data_dir, workdir, ringbit, ringbit_flags):
        self.kind = kind
        self.port = free_port() or die("no free port on 127.0.0.1")
        self.log = open(os.path.join(workdir, "seeder-%s.log" % kind), "ab")
        # Set when the process was replaced since the caller last read its CPU.
        self.restarted = False
        if kind in ("libtorrent", "libtorrent-hp"):
            cmd = [PYTHON, LT_EXTRA, "seed", torrent, data_dir, "--port", str(self.port),
                   "--timeout", "86400"]
            if kind == "libtorrent-hp":
                cmd.append("--high-performance-seed")
            stdin = subprocess.PIPE
        else:
            # A state dir of its own: a restart (to dial a leecher) finds its
            # resume state and skips the recheck.
            cmd = [ringbit, "seed", torrent, data_dir, "--port", str(self.port),
                   "--bind", "127.0.0.1", "--no-dht", "--state-dir",
                   os.path.join(workdir, "seed-state-" + kind)] + ringbit_flags
            if kind == "ringbit-epoll":
                cmd += ["--io-driver", "epoll"]
            stdin = subprocess.DEVNULL
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=stdin, stdout=self.log, stderr=self.log)
        wait_listening(self.proc, self.port, "%s seeder" % kind)
        self.hwm_resettable = reset_hwm(self.proc.pid)

    def send(self, line):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def dial(self, addr):
        """Makes the seeder connect to a leecher that never dials loopback
        (transmission). libtorrent is told on stdin; `ringbit seed` takes
        peers only at start, so it is restarted with --peer (its resume state
        skips the recheck) and `restarted` is set: the caller must take the
        new process's CPU from zero."""
        if not self.kind.startswith("ringbit"):
            self.send("connect " + addr)
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_LIMIT_S)
        self.proc = subprocess.Popen(self.cmd + ["--peer", addr], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        wait_listening(self.proc, self.port, "ringbit seeder (restarted to dial %s)" % addr)
        reset_hwm(self.proc.pid)
        self.restarted = True

    def cpu_s(self):
        cpu = proc_cpu_s(self.proc.pid)
        if cpu is None:
            die("the %s seeder exited (%s)" % (self.kind, self.proc.poll()))
        return cpu

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STOP_LIMIT_S)
        self.log.close()


# ---------------------------------------------------------------------------
# Leechers

class Leecher:
    """One leecher process. Its stdout and stderr go through a pipe to its log;
    the time its completion line arrives is kept (time.monotonic())."""

    def __init__(self, kind, torrent, run_dir, seeder, tracker, a):
        self.kind = kind
        self.done_at = None
        self.out_dir = os.path.join(run_dir, "out")
        os.makedirs(self.out_dir)
        port = free_port() or die("no free port on 127.0.0.1")
        seed_addr = "127.0.0.1:%d" % seeder.port
        self.marker = None
        dial = False  # the seeder must dial it
        if kind in ("libtorrent", "libtorrent-dq"):
            cmd = [PYTHON, LT_EXTRA, "leech", torrent, self.out_dir, "--port", str(port),
                   "--peer", seed_addr, "--timeout", "3600"]
            if kind == "libtorrent-dq":
                cmd += ["--set", "max_queued_disk_bytes=%d" % DEEP_DISK_QUEUE_BYTES]
        elif kind == "aria2":
            # aria2 takes peers only from trackers: the private one lists the seeder.
            tracker.announce_seeder(seeder.port)
            cmd = ["aria2c"] + ARIA2_COMMON + [
                "--seed-time=0", "--file-allocation=none", "--bt-exclude-tracker=*",
                "--bt-tracker=" + tracker.url(), "--listen-port=%d" % port, "-d", self.out_dir,
                torrent]
        elif kind == "transmission":
            config = os.path.join(run_dir, "config")
            os.makedirs(config)
            with open(os.path.join(config, "settings.json"), "w") as f:
                json.dump({
                    "dht-enabled": False, "utp-enabled": False, "lpd-enabled": False,
                    "pex-enabled": False, "port-forwarding-enabled": False, "encryption": 0,
                    "peer-port": port, "bind-address-ipv4": "127.0.0.1",
                    "bind-address-ipv6": "::1", "blocklist-enabled": False,
                    "speed-limit-down-enabled": False, "speed-limit-up-enabled": False,
                    "alt-speed-enabled": False, "rpc-enabled": False,
                    "incomplete-dir-enabled": False, "message-level": 2,
                }, f)
            self.marker = os.path.join(run_dir, "complete")
            script = os.path.join(run_dir, "on-complete.sh")
            with open(script, "w") as f:
                f.write("#!/bin/sh\n: > '%s'\n" % self.marker)
            os.chmod(script, 0o755)
            # transmission never dials 127.0.0.1 peers: the seeder dials it.
            cmd = ["transmission-cli", "-g", config, "-p", str(port), "-f", script, "-M", "-D",
                   "-U", "-w", self.out_dir, torrent]
            dial = True
        elif kind in ("ringbit", "ringbit-epoll"):
            # -v: the "download finished" line; a state dir of its own, so
            # runs do not share resume state.
            cmd = [a.ringbit, "-v", "download", torrent, "-o", self.out_dir, "--port", str(port),
                   "--bind", "127.0.0.1", "--no-trackers", "--no-dht", "--peer", seed_addr,
                   "--state-dir", os.path.join(run_dir, "state")] + a.ringbit_flag \
                + a.ringbit_leech_flag
            if kind == "ringbit-epoll":
                cmd += ["--io-driver", "epoll"]
        else:
            die("unknown leecher %s" % kind)
        self.log_path = os.path.join(run_dir, "leecher.log")
        self.log = open(self.log_path, "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        LIVE[self.proc.pid] = self.proc
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if dial:
            wait_listening(self.proc, port, kind)
            # Timed from the dial for every seeder: transmission's start-up
            # (and a restarted ringbit seeder's) is not the transfer.
            self.t0 = time.monotonic()
            seeder.dial("127.0.0.1:%d" % port)

    def _read(self):
        mark = DONE_MARKS.get(self.kind)
        # readline on the raw pipe: a line is seen as soon as it is written.
        for line in iter(self.proc.stdout.readline, b""):
            if mark and self.done_at is None and mark in line:
                self.done_at = time.monotonic()
            self.log.write(line)
        self.log.close()

    def done(self):
        if self.marker and self.done_at is None and os.path.exists(self.marker):
            self.done_at = time.monotonic()
        return self.done_at is not None


def log_tail(run_dir, lines=30):
    """The end of a leecher's log, for error messages (the work dir is removed)."""
    try:
        with open(os.path.join(run_dir, "leecher.log"), "rb") as f:
            text = f.read().decode("utf-8", "replace").replace("\r", "\n")
    except OSError:
        return "(no log)"
    kept = [l for l in text.splitlines() if l.strip()][-lines:]
    return "\n".join("    " + l for l in kept)


def reap(proc, limit_s):
    """os.wait4 with a bound: (exit code, rusage), or None while it runs.
    Never Popen.poll()/kill() a leecher: they reap it and lose its rusage."""
    deadline = time.monotonic() + limit_s
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            LIVE.pop(proc.pid, None)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_S)


def stop(proc, sig):
    """Signals a leecher we have not reaped (so its pid is still ours) and
    reaps it; SIGKILL when it outlives STOP_LIMIT_S."""
    os.kill(proc.pid, sig)
    got = reap(proc, STOP_LIMIT_S)
    if got is None:
        os.kill(proc.pid, signal.SIGKILL)
        got = reap(proc, STOP_LIMIT_S)
    return got




def run_once(pair, a, torrent, payload, workdir, seeders, tracker, run_no):
    seeder_kind, kind = pair
    seeder = seeders[seeder_kind]
    if not seeder.alive():
        die("the %s seeder exited (%s)" % (seeder_kind, seeder.proc.returncode))
    run_dir = os.path.join(workdir, "run-%s-%s-%d" % (seeder_kind, kind, run_no))
    os.makedirs(run_dir)
    load = load_1min()
    reset_hwm(seeder.proc.pid)
    seed_cpu0 = seeder.cpu_s()
    leecher = Leecher(kind, torrent, run_dir, seeder, tracker, a)
    if seeder.restarted:
        # A new seeder process (ringbit, to dial transmission): all its CPU
        # is this run's.
        seeder.restarted = False
        seed_cpu0 = 0.0
    proc = leecher.proc
    deadline = leecher.t0 + a.timeout
    hwm_kib = 0
    seed_hwm_kib = 0
    next_hwm = 0.0
    seed_cpu = None
    reaped = None
    while True:
        now = time.monotonic()
        if seed_cpu is None and leecher.done():
            # t1: read the seeder first, then let the leecher finish.
            seed_cpu = seeder.cpu_s() - seed_cpu0
            seed_hwm_kib = vm_hwm_kib(seeder.proc.pid)
            hwm_kib = max(hwm_kib, vm_hwm_kib(proc.pid))
            if leecher.marker:
                reaped = stop(proc, signal.SIGINT)  # transmission stops cleanly on SIGINT only
                wall = time.monotonic() - leecher.t0
                break
        if now >= next_hwm:
            # VmHWM only grows: the last reading before exit is within
            # RSS_POLL_S of the true peak's time, never above it.
            hwm_kib = max(hwm_kib, vm_hwm_kib(proc.pid))
            next_hwm = now + RSS_POLL_S
        got = reap(proc, 0)
        if got is not None:
            wall = time.monotonic() - leecher.t0
            reaped = got
            if got[0] != 0 or leecher.marker:
                die("%s exited with %s before completing; its log:\n%s"
                    % (kind, got[0], log_tail(run_dir)))
            break
        if now > deadline:
            stop(proc, signal.SIGKILL)
            die("%s did not complete within %ss; its log:\n%s"
                % (kind, a.timeout, log_tail(run_dir)))
        time.sleep(POLL_S)
    leecher.reader.join(timeout=STOP_LIMIT_S)
    if leecher.done_at is None:
        die("%s exited 0 but never reported completion (%r); its log:\n%s"
            % (kind, DONE_MARKS.get(kind), log_tail(run_dir)))
    if seed_cpu is None:  # the line and the exit came within one poll
        seed_cpu = seeder.cpu_s() - seed_cpu0
        seed_hwm_kib = vm_hwm_kib(seeder.proc.pid)
    _, ru = reaped
    transfer = leecher.done_at - leecher.t0
    if not a.no_check:
        got_path = os.path.join(leecher.out_dir, os.path.basename(payload))
        if subprocess.run(["cmp", "-s", payload, got_path], timeout=600).returncode != 0:
            die("%s -> %s: %s differs from the payload" % (seeder_kind, kind, got_path))
    shutil.rmtree(run_dir)
    os.sync()  # the next run should not pay for this one's writeback
    time.sleep(1.0)
    return {
        "mbps": a.size / transfer / 1e6,
        "transfer": transfer,
        "wall": wall,
        "cpu_per_gib": (ru.ru_utime + ru.ru_stime) / (a.size / GIB),
        "rss_mib": hwm_kib / 1024.0,
        "seed_cpu_per_gib": seed_cpu / (a.size / GIB),
        "seed_rss_mib": seed_hwm_kib / 1024.0,
        "load": load,
    }

# ---------------------------------------------------------------------------

def make_payload(path, size):
    """Pseudo-random bytes (a fixed seed: same payload every time)."""
    import random
    rng = random.Random(0x51AB17)
    chunk = 16 << 20
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(rng.randbytes(n))
            left -= n


def warm(path):
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def fmt_table(rows, cols):
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])


def fmt_markdown(rows, cols):
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)




def pair_name(pair):
    return "%s -> %s" % pair


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=GIB, help="payload size (1G, 256M...)")
    ap.add_argument("--piece-log2", type=int, default=20, help="piece size 2^N (20 = 1 MiB)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compare", action="store_true",
                    help="the issue 6 targets in one run: lt->lt, ringbit->lt, ringbit->ringbit, "
                    "lt->lt-dq, ringbit->lt-dq, lt-hp->lt-dq")
    ap.add_argument("--transmission", action="store_true",
                    help="issue 11's pair: a transmission leecher from the libtorrent seeder "
                    "and from ringbit seed, rate ratio (target >= 0.8x)")
    ap.add_argument("--leech-compare", action="store_true",
                    help="the issue 14 leecher targets in one run: aria2, libtorrent and "
                    "ringbit leechers from the same ringbit seed")
    ap.add_argument("--drivers", action="store_true",
                    help="issue 15's pair: ringbit -> ringbit on io_uring and on epoll, "
                    "rate and CPU ratios (goal: epoll >= 0.8x io_uring's rate)")
    ap.add_argument("--leechers", default=",".join(DEFAULT_LEECHERS),
                    help="comma-separated, from: " + ", ".join(LEECHERS))
    ap.add_argument("--seeder", choices=SEEDERS, default="libtorrent")
    ap.add_argument("--ringbit", default=os.path.join(REPO, "target", "release", "ringbit"))
    ap.add_argument("--ringbit-flag", action="append", default=[], metavar="FLAG",
                    help="extra flag for every ringbit process (repeat; e.g. "
                    "--ringbit-flag=--backend=mmap)")
    ap.add_argument("--ringbit-seed-flag", action="append", default=[], metavar="FLAG",
                    help="extra flag for `ringbit seed` only (repeat)")
    ap.add_argument("--ringbit-leech-flag", action="append", default=[], metavar="FLAG",
                    help="extra flag for `ringbit download` only (repeat)")
    ap.add_argument("--workdir", help="where payload and downloads go (default: a temp dir)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per leecher run")
    ap.add_argument("--no-check", action="store_true", help="do not compare the bytes")
    ap.add_argument("--markdown", action="store_true", help="also print markdown tables")
    a = ap.parse_args()
    if a.runs < 1 or a.size < 1:
        die("--runs and --size must be positive")
    for tool in (PYTHON, "aria2c", "transmission-cli", "mktorrent"):
        if not shutil.which(tool):
            die("%s is not installed: run scripts/install-test-peers.sh" % tool)

    notes = []
    if a.compare and a.leech_compare:
        die("--compare and --leech-compare are separate runs")
    if a.compare:
        pairs = list(COMPARE_PAIRS)
    elif a.transmission:
        pairs = list(TRANSMISSION_PAIRS)
    elif a.drivers:
        pairs = list(DRIVER_PAIRS)
    elif a.leech_compare:
        pairs = list(LEECH_COMPARE_PAIRS)
    else:
        pairs = [(a.seeder, k.strip()) for k in a.leechers.split(",") if k.strip()]
    for sub, role in (("download", "leecher"), ("seed", "seeder")):
        uses = [p for p in pairs if p[0 if role == "seeder" else 1].startswith("ringbit")]
        if uses:
            note = ringbit_missing(a.ringbit, sub)
            if note:
                if a.compare or a.leech_compare or role == "seeder":
                    die("ringbit %s: %s" % (role, note))
                notes.append("ringbit %s skipped: %s" % (role, note))
                pairs = [p for p in pairs if p not in uses]
    if not pairs:
        die("no seeder/leecher pair to run")

    workdir = a.workdir or tempfile.mkdtemp(prefix="bench-swarm-")
    os.makedirs(workdir, exist_ok=True)
    data_dir = os.path.join(workdir, "data")
    os.makedirs(data_dir, exist_ok=True)
    payload = os.path.join(data_dir, "payload.bin")
    torrent = os.path.join(workdir, "payload.torrent")
    seeders = {}
    tracker = None
    results = {p: [] for p in pairs}
    rounds = []
    try:
        t = time.monotonic()
        if not (os.path.exists(payload) and os.path.getsize(payload) == a.size):
            make_payload(payload, a.size)
        if os.path.exists(torrent):
            os.remove(torrent)
        subprocess.run(["mktorrent", "-d", "-l", str(a.piece_log2), "-o", torrent, payload],
                       check=True, stdout=subprocess.DEVNULL, timeout=600)
        warm(payload)
        print("payload %.0f MiB, %d KiB pieces, ready in %.1fs (page cache warm, not dropped)"
              % (a.size / (1 << 20), (1 << a.piece_log2) >> 10, time.monotonic() - t),
              flush=True)
        if any(p[1] == "aria2" for p in pairs):
            tracker = Tracker(info_hash_of(torrent), workdir)
        load_before = load_1min()
        for kind in sorted({p[0] for p in pairs}):
            seeders[kind] = Seeder(kind, torrent, data_dir, workdir, a.ringbit,
                                   a.ringbit_flag + a.ringbit_seed_flag)
            if not seeders[kind].hwm_resettable:
                notes.append("%s seeder: cannot reset VmHWM; its peak RSS is since start"
                             % kind)
        for run in range(a.runs):
            order = pairs[run % len(pairs):] + pairs[:run % len(pairs)]
            this_round = {}
            for pair in order:
                r = run_once(pair, a, torrent, payload, workdir, seeders, tracker, run)
                results[pair].append(r)
                this_round[pair] = r
                print("  run %d %-29s %7.1f MB/s  %6.2fs (wall %6.2fs)  leecher %5.2f CPU-s/GiB "
                      "%5.0f MiB  seeder %5.2f CPU-s/GiB %5.0f MiB  load %.1f"
                      % (run + 1, pair_name(pair), r["mbps"], r["transfer"], r["wall"],
                         r["cpu_per_gib"], r["rss_mib"], r["seed_cpu_per_gib"],
                         r["seed_rss_mib"], r["load"]),
                      flush=True)
            rounds.append(this_round)
    finally:
        for proc in list(LIVE.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=STOP_LIMIT_S)
        for seeder in seeders.values():
            seeder.stop()
        if tracker:
            tracker.stop()
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    med = {p: {m: statistics.median(r[m] for r in v) for m in v[0]} for p, v in results.items()}
    cols = ["seeder -> leecher", "MB/s", "transfer s", "wall s", "leecher CPU-s/GiB",
            "leecher RSS MiB", "seeder CPU-s/GiB", "seeder RSS MiB"]
    rows = [[pair_name(p), "%.0f" % m["mbps"], "%.2f" % m["transfer"], "%.2f" % m["wall"],
             "%.2f" % m["cpu_per_gib"], "%.0f" % m["rss_mib"], "%.2f" % m["seed_cpu_per_gib"],
             "%.0f" % m["seed_rss_mib"]] for p, m in med.items()]
    loads = [r["load"] for v in results.values() for r in v]

    print()
    print("%.0f MiB, %d KiB pieces, median of %d run(s); every pair timed from leecher "
          "start to leecher has every piece verified"
          % (a.size / (1 << 20), (1 << a.piece_log2) >> 10, a.runs))
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()) + " on " + machine())
    print("load average (1 min): %.1f before, %.1f-%.1f during runs, %.1f after: other "
          "work on the machine skews every number"
          % (load_before, min(loads), max(loads), load_1min()))
    print("peers: libtorrent %s, %s, %s; ringbit flags: %s" % (
        tool_version([PYTHON, "-c", "import libtorrent; print(libtorrent.__version__)"]),
        tool_version(["aria2c", "--version"]), tool_version(["transmission-cli", "--version"]),
        " ".join(a.ringbit_flag + ["seed: %s" % f for f in a.ringbit_seed_flag]
                 + ["download: %s" % f for f in a.ringbit_leech_flag]) or "(defaults)"))
    print()
    print(fmt_table(rows, cols))
    tables = [(rows, cols)]

    # Ratios against a libtorrent seeder with the same leecher (the seeder is
    # what differs; in --compare also against libtorrent's high-performance
    # preset, for information); ringbit -> ringbit against lt -> lt.
    ratio_cols = ["seeder -> leecher", "reference", "rate", "seeder CPU", "seeder RSS",
                  "rate per round"]
    if a.compare:
        comparisons = [(("ringbit", "libtorrent"), ("libtorrent", "libtorrent")),
                       (("ringbit", "ringbit"), ("libtorrent", "libtorrent")),
                       (("ringbit", "libtorrent-dq"), ("libtorrent", "libtorrent-dq")),
                       (("ringbit", "libtorrent-dq"), ("libtorrent-hp", "libtorrent-dq"))]
    elif a.transmission:
        comparisons = [TRANSMISSION_PAIRS[::-1]]
    elif a.leech_compare or a.drivers:
        comparisons = []
    elif a.seeder == "libtorrent":
        comparisons = [(p, ("libtorrent", "libtorrent")) for p in med]
    else:
        comparisons = [(p, ("libtorrent", p[1])) for p in med]
    ratio_rows = []
    for p, base in comparisons:
        if base not in med or p not in med or base == p:
            continue
        m, b = med[p], med[base]
        per_round = ["%.2f" % (r[p]["mbps"] / r[base]["mbps"]) for r in rounds
                     if p in r and base in r]
        ratio_rows.append([pair_name(p), pair_name(base), "%.2fx" % (m["mbps"] / b["mbps"]),
                           "%.2fx" % (m["seed_cpu_per_gib"] / b["seed_cpu_per_gib"]),
                           "%.2fx" % (m["seed_rss_mib"] / max(b["seed_rss_mib"], 1e-9)),
                           " ".join(per_round)])
    if ratio_rows:
        print()
        print(fmt_table(ratio_rows, ratio_cols))
        tables.append((ratio_rows, ratio_cols))
    if a.compare:
        lt, rb_lt, rb_rb, lt_dq, rb_dq, _ = (med[p] for p in COMPARE_PAIRS)
        checks = [
            ("(a) rate, libtorrent leecher: ringbit seed / libtorrent seed",
             rb_lt["mbps"] / lt["mbps"], ">= 1.20", rb_lt["mbps"] / lt["mbps"] >= 1.2),
            ("(a) rate, libtorrent leecher, disk queue %d MiB: same" % (DEEP_DISK_QUEUE_BYTES >> 20),
             rb_dq["mbps"] / lt_dq["mbps"], ">= 1.20", rb_dq["mbps"] / lt_dq["mbps"] >= 1.2),
            ("(a) seeder CPU per GiB: ringbit seed / libtorrent seed",
             rb_lt["seed_cpu_per_gib"] / lt["seed_cpu_per_gib"], "<= 0.50",
             rb_lt["seed_cpu_per_gib"] / lt["seed_cpu_per_gib"] <= 0.5),
            ("(b) rate: ringbit->ringbit / libtorrent->libtorrent",
             rb_rb["mbps"] / lt["mbps"], ">= 1.50", rb_rb["mbps"] / lt["mbps"] >= 1.5),
        ]
        target_cols = ["target", "measured", "wanted", "met"]
        target_rows = [[n, "%.2fx" % v, w, "yes" if ok else "NO"] for n, v, w, ok in checks]
        print()
        print(fmt_table(target_rows, target_cols))
        tables.append((target_rows, target_cols))
        if rb_dq["mbps"] > 1.15 * rb_lt["mbps"]:
            notes.append("the same ringbit seeder sent %.0f MB/s to libtorrent-dq and %.0f MB/s "
                         "to the default libtorrent leecher: the leecher's 1 MiB disk queue, "
                         "not the seeder, capped the default pair"
                         % (rb_dq["mbps"], rb_lt["mbps"]))
    if a.transmission:
        rb, lt = med[TRANSMISSION_PAIRS[1]], med[TRANSMISSION_PAIRS[0]]
        ratio = rb["mbps"] / lt["mbps"]
        target_cols = ["target", "measured", "wanted", "met"]
        target_rows = [["rate, transmission leecher: ringbit seed / libtorrent seed",
                        "%.2fx" % ratio, ">= 0.80", "yes" if ratio >= 0.8 else "NO"]]
        print()
        print(fmt_table(target_rows, target_cols))
        tables.append((target_rows, target_cols))
    elif a.drivers:
        ur, ep = med[DRIVER_PAIRS[0]], med[DRIVER_PAIRS[1]]
        per_round = " ".join("%.2f" % (r[DRIVER_PAIRS[1]]["mbps"] / r[DRIVER_PAIRS[0]]["mbps"])
                             for r in rounds)
        target_cols = ["epoll / io_uring", "measured", "wanted", "met"]
        target_rows = [
            ["rate (per round: %s)" % per_round, "%.2fx" % (ep["mbps"] / ur["mbps"]),
             ">= 0.80", "yes" if ep["mbps"] / ur["mbps"] >= 0.8 else "NO"],
            ["leecher CPU per GiB", "%.2fx" % (ep["cpu_per_gib"] / ur["cpu_per_gib"]), "", ""],
            ["seeder CPU per GiB", "%.2fx" % (ep["seed_cpu_per_gib"] / ur["seed_cpu_per_gib"]),
             "", ""],
            ["leecher peak RSS", "%.2fx" % (ep["rss_mib"] / max(ur["rss_mib"], 1e-9)), "", ""],
        ]
        print()
        print(fmt_table(target_rows, target_cols))
        tables.append((target_rows, target_cols))
    elif a.leech_compare:
        # The leecher is what differs: ratios of leecher rate, leecher CPU and
        # RSS against aria2 (and libtorrent) from the same ringbit seeder.
        rb, ar, lt = (med[("ringbit", k)] for k in ("ringbit", "aria2", "libtorrent"))
        leech_cols = ["leecher", "reference", "rate", "leecher CPU/GiB", "leecher RSS",
                      "rate per round"]
        leech_rows = []
        for name, ref in (("aria2", ar), ("libtorrent", lt)):
            per_round = ["%.2f" % (r[("ringbit", "ringbit")]["mbps"] / r[("ringbit", name)]["mbps"])
                         for r in rounds]
            leech_rows.append(["ringbit", name, "%.2fx" % (rb["mbps"] / ref["mbps"]),
                               "%.2fx" % (rb["cpu_per_gib"] / ref["cpu_per_gib"]),
                               "%.2fx" % (rb["rss_mib"] / max(ref["rss_mib"], 1e-9)),
                               " ".join(per_round)])
        print()
        print(fmt_table(leech_rows, leech_cols))
        tables.append((leech_rows, leech_cols))
        checks = [
            ("rate: ringbit leecher / aria2 leecher (same ringbit seed)",
             "%.2fx" % (rb["mbps"] / ar["mbps"]), ">= 1.25x", rb["mbps"] / ar["mbps"] >= 1.25),
            ("CPU per GiB: ringbit leecher / aria2 leecher",
             "%.2fx" % (rb["cpu_per_gib"] / ar["cpu_per_gib"]), "<= 0.60x",
             rb["cpu_per_gib"] / ar["cpu_per_gib"] <= 0.6),
            ("peak RSS of the ringbit leecher", "%.0f MiB" % rb["rss_mib"], "<= 64 MiB",
             rb["rss_mib"] <= 64),
            ("ringbit -> ringbit rate", "%.0f MB/s" % rb["mbps"], ">= 800 MB/s",
             rb["mbps"] >= 800),
        ]
        target_cols = ["target", "measured", "wanted", "met"]
        target_rows = [[n, v, w, "yes" if ok else "NO"] for n, v, w, ok in checks]
        print()
        print(fmt_table(target_rows, target_cols))
        tables.append((target_rows, target_cols))
    for n in notes:
        print("note: " + n)
    if a.markdown:
        for r, c in tables:
            print()
            print(fmt_markdown(r, c))


if __name__ == "__main__":
    main()
