#!/usr/bin/python3
"""End-to-end swarm benchmark on loopback: one seeder, leechers one after another.

The same seeder process (libtorrent in seed_mode by default, or `ringbit seed`)
serves a single-file torrent (default 1 GiB, 1 MiB pieces) to each leecher in
turn: libtorrent, aria2, transmission and ringbit (`ringbit download`). Each
leecher runs --runs times (rounds interleave the leechers so drift on a shared
machine spreads evenly); the table shows medians of:

  MB/s       payload bytes / transfer time, MB = 10^6 bytes. With the libtorrent
             seeder the transfer time is measured AT THE SEEDER, from the first
             to the last payload byte it uploads to that leecher (so each
             client's start-up and tracker/connect ticks do not count; aria2
             waits in 1 s ticks, transmission up to 10 s before its first
             request). With any other seeder: leecher wall time.
  wall s     leecher start to leecher done (exit, or transmission's -f script).
  CPU-s/GiB  user+sys of the leecher process tree (os.wait4 rusage, so reaped
             children count) per GiB received, start-up included.
  RSS MiB    the leecher's peak RSS (VmHWM from /proc/PID/status, read every
             50 ms while it runs). libtorrent maps the files, so the page-cache
             pages it touches count.
  seed CPU   the seeder's user+sys per GiB served during that run (/proc/PID/stat).

The page cache is NOT dropped (that needs root and changes the machine): the
payload is read once before the runs so every leecher is served from memory.
Each leecher gets a fresh port and a fresh process (libtorrent will not redial
an ip:port for 60 s; transmission must be restarted between runs), and its
output is compared with the payload after the run (--no-check skips that).

ringbit entries are skipped with a note while the binary lacks the `download`
(issue 5) or `seed` (issue 6) subcommand; once they exist they run with no
change (build with `cargo build --release`, or point --ringbit at the binary).

Peers: libtorrent and ringbit leechers dial the seeder (--peer); aria2 finds it
through a private opentracker the benchmark announces the seeder to; the
libtorrent seeder dials transmission (which never dials 127.0.0.1 itself).

Usage:
  /usr/bin/python3 scripts/bench-swarm.py [--size 1G] [--runs 3]
      [--leechers libtorrent,aria2,transmission,ringbit] [--seeder libtorrent|ringbit]
      [--ringbit target/release/ringbit] [--workdir DIR] [--markdown]
"""
import argparse
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LT_TOOL = os.path.join(REPO, "tests", "peers", "lt_tool.py")
LT_EXTRA = os.path.join(REPO, "tests", "peers", "lt_extra.py")
PYTHON = "/usr/bin/python3"  # python3-libtorrent is built for Debian's interpreter
LEECHERS = ["libtorrent", "aria2", "transmission", "ringbit"]
ARIA2_COMMON = [
    "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
    "--enable-peer-exchange=false", "--interface=127.0.0.1", "--disable-ipv6=true",
    "--summary-interval=0", "--console-log-level=notice", "--enable-color=false",
    "--auto-file-renaming=false",
]
# Bounds on every wait.
READY_LIMIT_S = 60.0
STOP_LIMIT_S = 20.0
POLL_S = 0.01
RSS_POLL_S = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
# Leechers spawned and not yet reaped: killed (by pid) if the benchmark stops early.
LIVE = {}


def die(msg):
    sys.stderr.write("bench-swarm: %s\n" % msg)
    sys.exit(1)


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("IB")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def free_port():
    for _ in range(64):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    die("no free port")


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


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


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


def tool_version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return "%s, %d cores, %.0f GiB RAM, Linux %s" % (
        model, os.cpu_count(), mem_kib / (1 << 20), platform.release())


# ---------------------------------------------------------------------------
# ringbit: present only once issues 5 and 6 land

def ringbit_has(binary, sub):
    """None when `binary sub` exists, else a note saying why it is skipped."""
    if not os.access(binary, os.X_OK):
        return "no ringbit binary at %s (cargo build --release, or --ringbit PATH)" % binary
    try:
        r = subprocess.run([binary, sub, "--help"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "%s %s --help failed: %s" % (binary, sub, e)
    if r.returncode != 0:
        return "`ringbit %s` is not implemented yet in %s" % (sub, binary)
    return None


# ---------------------------------------------------------------------------
# opentracker: how aria2 (which takes peers only from trackers) finds the seeder

class Tracker:
    """A private opentracker (HTTP on 127.0.0.1) whitelisted for one info hash.
    The benchmark announces the seeder to it on the seeder's behalf, so aria2
    dials the seeder as the libtorrent and ringbit leechers do (--peer)."""

    def __init__(self, info_hash, workdir):
        self.info_hash = info_hash
        self.port = free_port()
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


# ---------------------------------------------------------------------------
# Seeder

class Seeder:
    """The one seeder of the run. libtorrent (tests/peers/lt_extra.py) takes
    commands on stdin: it dials leechers that cannot dial loopback peers
    (transmission) and times each leecher's transfer at the seeder."""

    def __init__(self, kind, torrent, data_dir, workdir, ringbit):
        self.kind = kind
        self.port = free_port()
        self.events = queue.Queue()
        self.log = open(os.path.join(workdir, "seeder-%s.log" % kind), "wb")
        if kind == "libtorrent":
            cmd = [PYTHON, LT_EXTRA, "seed", torrent, data_dir, "--port", str(self.port),
                   "--timeout", "86400"]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.log)
            threading.Thread(target=self._read_events, daemon=True).start()
        else:
            cmd = [ringbit, "seed", torrent, data_dir, "--port", str(self.port)]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                         stderr=self.log)
        wait_listening(self.proc, self.port, "%s seeder" % kind)

    def _read_events(self):
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass

    def send(self, line):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def can_dial(self):
        return self.kind == "libtorrent"

    def can_time(self):
        return self.kind == "libtorrent"

    def watch(self, nbytes):
        while not self.events.empty():
            self.events.get_nowait()
        self.send("watch %d" % nbytes)

    def watch_result(self, limit_s):
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if ev.get("event") == "watch_done":
                return ev
        return None

    def cpu_s(self):
        return proc_cpu_s(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STOP_LIMIT_S)
        self.log.close()


# ---------------------------------------------------------------------------
# Leechers

def start_leecher(kind, torrent, out_dir, run_dir, seeder, tracker, ringbit):
    """Spawns one leecher; returns (Popen, port, completion marker or None)."""
    port = free_port()
    log = open(os.path.join(run_dir, "leecher.log"), "wb")
    seed_addr = "127.0.0.1:%d" % seeder.port
    marker = None
    dial = False  # the seeder must dial it
    if kind == "libtorrent":
        cmd = [PYTHON, LT_EXTRA, "leech", torrent, out_dir, "--port", str(port),
               "--peer", seed_addr, "--timeout", "3600"]
    elif kind == "aria2":
        # aria2 takes peers only from trackers: the private one lists the seeder.
        tracker.announce_seeder(seeder.port)
        cmd = ["aria2c"] + ARIA2_COMMON + [
            "--seed-time=0", "--file-allocation=none", "--bt-exclude-tracker=*",
            "--bt-tracker=" + tracker.url(), "--listen-port=%d" % port, "-d", out_dir, torrent]
    elif kind == "transmission":
        config = os.path.join(run_dir, "config")
        os.makedirs(config)
        with open(os.path.join(config, "settings.json"), "w") as f:
            json.dump({
                "dht-enabled": False, "utp-enabled": False, "lpd-enabled": False,
                "pex-enabled": False, "port-forwarding-enabled": False, "encryption": 0,
                "peer-port": port, "bind-address-ipv4": "127.0.0.1", "bind-address-ipv6": "::1",
                "blocklist-enabled": False, "speed-limit-down-enabled": False,
                "speed-limit-up-enabled": False, "alt-speed-enabled": False,
                "rpc-enabled": False, "incomplete-dir-enabled": False, "message-level": 2,
            }, f)
        marker = os.path.join(run_dir, "complete")
        script = os.path.join(run_dir, "on-complete.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\n: > '%s'\n" % marker)
        os.chmod(script, 0o755)
        # transmission never dials 127.0.0.1 peers: the seeder dials it.
        cmd = ["transmission-cli", "-g", config, "-p", str(port), "-f", script, "-M", "-D", "-U",
               "-w", out_dir, torrent]
        dial = True
    elif kind == "ringbit":
        cmd = [ringbit, "download", torrent, "-o", out_dir, "--port", str(port),
               "--peer", seed_addr]
    else:
        die("unknown leecher %s" % kind)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    LIVE[proc.pid] = proc
    log.close()
    wait_listening(proc, port, kind)
    if dial:
        seeder.send("connect 127.0.0.1:%d" % port)
    return proc, port, marker


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


def run_once(kind, a, torrent, payload, workdir, seeder, tracker, run_no):
    run_dir = os.path.join(workdir, "run-%s-%d" % (kind, run_no))
    out_dir = os.path.join(run_dir, "out")
    os.makedirs(out_dir)
    if seeder.can_time():
        seeder.watch(a.size)
    seed_cpu0 = seeder.cpu_s()
    t0 = time.monotonic()
    proc, port, marker = start_leecher(kind, torrent, out_dir, run_dir, seeder, tracker,
                                       a.ringbit)
    deadline = t0 + a.timeout
    reaped = None
    hwm_kib = 0
    next_hwm = 0.0
    while True:
        now = time.monotonic()
        if now >= next_hwm:
            # VmHWM only grows: the last reading before exit is within
            # RSS_POLL_S of the true peak's time, never above it.
            hwm_kib = max(hwm_kib, vm_hwm_kib(proc.pid))
            next_hwm = now + RSS_POLL_S
        if marker and os.path.exists(marker):
            hwm_kib = max(hwm_kib, vm_hwm_kib(proc.pid))
            wall = time.monotonic() - t0
            reaped = stop(proc, signal.SIGINT)  # transmission stops cleanly on SIGINT only
            break
        got = reap(proc, 0)
        if got is not None:
            wall = time.monotonic() - t0
            reaped = got
            if marker or got[0] != 0:
                die("%s exited with %s before completing; its log:\n%s"
                    % (kind, got[0], log_tail(run_dir)))
            break
        if time.monotonic() > deadline:
            stop(proc, signal.SIGKILL)
            die("%s did not complete within %ss; its log:\n%s"
                % (kind, a.timeout, log_tail(run_dir)))
        time.sleep(POLL_S)
    _, ru = reaped
    seed_cpu = seeder.cpu_s() - seed_cpu0
    transfer = wall
    if seeder.can_time():
        ev = seeder.watch_result(30.0)
        if ev is None or ev.get("timeout") or ev.get("first") is None:
            die("the seeder did not see %d bytes go to %s: %r" % (a.size, kind, ev))
        transfer = ev["last"] - ev["first"]
    if not a.no_check:
        got_path = os.path.join(out_dir, os.path.basename(payload))
        if subprocess.run(["cmp", "-s", payload, got_path], timeout=600).returncode != 0:
            die("%s: %s differs from the payload" % (kind, got_path))
    shutil.rmtree(run_dir)
    os.sync()  # the next run should not pay for this one's writeback
    time.sleep(1.0)
    return {
        "mbps": a.size / transfer / 1e6,
        "wall": wall,
        "cpu_per_gib": (ru.ru_utime + ru.ru_stime) / (a.size / GIB),
        "rss_mib": hwm_kib / 1024.0,
        "seed_cpu_per_gib": seed_cpu / (a.size / GIB),
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=GIB, help="payload size (1G, 256M...)")
    ap.add_argument("--piece-log2", type=int, default=20, help="piece size 2^N (20 = 1 MiB)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--leechers", default=",".join(LEECHERS))
    ap.add_argument("--seeder", choices=["libtorrent", "ringbit"], default="libtorrent")
    ap.add_argument("--ringbit", default=os.path.join(REPO, "target", "release", "ringbit"))
    ap.add_argument("--workdir", help="where payload and downloads go (default: a temp dir)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per leecher run")
    ap.add_argument("--no-check", action="store_true", help="do not compare the bytes")
    ap.add_argument("--markdown", action="store_true", help="also print a markdown table")
    a = ap.parse_args()
    if a.runs < 1 or a.size < 1:
        die("--runs and --size must be positive")
    for tool in (PYTHON, "aria2c", "transmission-cli", "mktorrent"):
        if not shutil.which(tool):
            die("%s is not installed: run scripts/install-test-peers.sh" % tool)

    leechers = [k.strip() for k in a.leechers.split(",") if k.strip()]
    notes = []
    if "ringbit" in leechers:
        note = ringbit_has(a.ringbit, "download")
        if note:
            notes.append("ringbit leecher skipped: " + note)
            leechers.remove("ringbit")
    if a.seeder == "ringbit":
        note = ringbit_has(a.ringbit, "seed")
        if note:
            die("--seeder ringbit: " + note)
        # transmission never dials a 127.0.0.1 peer, and ringbit seed cannot be
        # told to dial one from here.
        if "transmission" in leechers:
            leechers.remove("transmission")
            notes.append("transmission leecher skipped with the ringbit seeder: it must be "
                         "dialled by the seeder, which only lt_extra.py can be told to do")
    if not leechers:
        die("no leecher to run")

    workdir = a.workdir or tempfile.mkdtemp(prefix="bench-swarm-")
    os.makedirs(workdir, exist_ok=True)
    data_dir = os.path.join(workdir, "data")
    os.makedirs(data_dir, exist_ok=True)
    payload = os.path.join(data_dir, "payload.bin")
    torrent = os.path.join(workdir, "payload.torrent")
    seeder = None
    tracker = None
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
        tracker = Tracker(info_hash_of(torrent), workdir)
        load_before = os.getloadavg()[0]
        seeder = Seeder(a.seeder, torrent, data_dir, workdir, a.ringbit)
        results = {k: [] for k in leechers}
        for run in range(a.runs):
            for kind in leechers:
                r = run_once(kind, a, torrent, payload, workdir, seeder, tracker, run)
                results[kind].append(r)
                print("  run %d %-12s %7.1f MB/s  wall %6.2fs  %5.2f CPU-s/GiB  %6.0f MiB RSS  "
                      "seeder %5.2f CPU-s/GiB" % (run + 1, kind, r["mbps"], r["wall"],
                                                 r["cpu_per_gib"], r["rss_mib"],
                                                 r["seed_cpu_per_gib"]), flush=True)
    finally:
        for proc in list(LIVE.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=STOP_LIMIT_S)
        if seeder:
            seeder.stop()
        if tracker:
            tracker.stop()
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    rate_how = "at the seeder" if a.seeder == "libtorrent" else "leecher wall time"
    cols = ["leecher", "MB/s", "wall s", "CPU-s/GiB", "peak RSS MiB", "seeder CPU-s/GiB"]
    rows = [[k, "%.0f" % m["mbps"], "%.2f" % m["wall"], "%.2f" % m["cpu_per_gib"],
             "%.0f" % m["rss_mib"], "%.2f" % m["seed_cpu_per_gib"]] for k, m in med.items()]
    refs = [r for r in ("libtorrent", "ringbit") if r in med]
    ratio_cols = ["leecher"]
    for ref in refs:
        ratio_cols += ["rate/%s" % ref, "CPU/%s" % ref, "RSS/%s" % ref]
    ratio_rows = []
    for k, m in med.items():
        row = [k]
        for ref in refs:
            b = med[ref]
            row += ["%.2fx" % (m["mbps"] / b["mbps"]), "%.2fx" % (m["cpu_per_gib"] / b["cpu_per_gib"]),
                    "%.2fx" % (m["rss_mib"] / b["rss_mib"])]
        ratio_rows.append(row)

    print()
    print("%s seeder, %.0f MiB, %d KiB pieces, median of %d run(s); MB/s measured %s"
          % (a.seeder, a.size / (1 << 20), (1 << a.piece_log2) >> 10, a.runs, rate_how))
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()) + " on " + machine())
    print("load average (1 min) %.1f before, %.1f after: other work on the machine skews "
          "every number" % (load_before, os.getloadavg()[0]))
    print("peers: libtorrent %s, %s, %s" % (
        tool_version([PYTHON, "-c", "import libtorrent; print(libtorrent.__version__)"]),
        tool_version(["aria2c", "--version"]), tool_version(["transmission-cli", "--version"])))
    print()
    print(fmt_table(rows, cols))
    if refs:
        print()
        print(fmt_table(ratio_rows, ratio_cols))
    for n in notes:
        print("note: " + n)
    if a.markdown:
        print()
        print(fmt_markdown(rows, cols))
        if refs:
            print()
            print(fmt_markdown(ratio_rows, ratio_cols))


if __name__ == "__main__":
    main()
