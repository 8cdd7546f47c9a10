#!/usr/bin/python3
"""Seed box scale benchmark: N torrents loaded from resume state (issue 6).

Target: 10,000 torrents loaded from resume state in under 3 s and held in
under 200 MiB RSS by `ringbit daemon`, measured against transmission-daemon and
qbittorrent-nox with the same torrents in the same run.

What it does
  1. Generates N single-file torrents (default 10,000 x 32 KiB of deterministic
     random bytes, 16 KiB pieces) in one data directory, and their .torrent
     files (bencoded here, no creation date, so the same arguments give the same
     info hashes). No announce URL unless --tracker: no tracker traffic.
  2. For each client:
     PRIME     start it on an empty state directory, add all N torrents with
               their data present, wait (bounded) until all N are seeding,
               stop it cleanly so it writes its resume state.
     MEASURED  --runs times: start it on the state it saved and time, from
               process start, until its API reports all N torrents loaded and
               seeding (polled every 50 ms); read peak RSS (VmHWM) and CPU then;
               settled RSS (VmRSS) --settle-s (10 s) later; stop it cleanly
               (bounded) and record how long the stop took; record whether it
               rehashed any data while loading.
     Rounds interleave the clients (run 1 of each, then run 2 ...) so drift on
     a shared machine spreads evenly. Medians of the runs are reported.
  3. Prints a table (with ratios against ringbit) and writes --json FILE.

Measures
  load s       process start (just before fork/exec) to the first API reply
               saying all N torrents are present and seeding.
  peak RSS     VmHWM from /proc/PID/status at the settle point (covers load).
  settled RSS  VmRSS --settle-s after load.
  settled fds  entries of /proc/PID/fd at the same moment (sockets, logs and
               data files: ringbit opens a data file only while it serves it).
  load CPU-s   user+sys of the process (all threads) from start to loaded.
  stop s       clean-stop request to process exit (saving resume state).
  rehash       ringbit: `startup.rechecked_pieces` from its status API.
               transmission: torrents seen in status 1/2 (check wait/check)
               while polling. qBittorrent: torrents seen in checkingUP/
               checkingDL while polling (checkingResumeData is its normal
               load step, not a rehash). For all: bytes the process read
               through read(2) (rchar, /proc/PID/io) while loading, against
               the payload size. libtorrent (inside qBittorrent) reads through
               mmap, which rchar does not count.

Isolation
  The script re-executes itself inside a fresh network namespace
  (`unshare --net`, then `ip link set lo up`): the clients see only loopback,
  so nothing they do (DHT bootstrap, UPnP, LSD multicast, trackers) can leave
  the machine. DHT, LSD, PEX, uTP and port forwarding are also turned off in
  every client's configuration. Ports are picked free on 127.0.0.1. Each
  process is stopped by its pid, every wait is bounded.

Needs root (for the namespace; --no-netns runs without it) and the packages
from scripts/install-bench-peers.sh. The page cache is not dropped: data and
state files are read from memory, as on a seed box that restarts its daemon.

Traps found on Debian 12 (transmission-daemon 3.00, qbittorrent-nox 4.5.2 with
libtorrent 2.0.8), and what this script does about them
  transmission
  * It verifies every torrent it is given whose data exists, one at a time,
    and sleeps 100 ms per torrent doing so (verify.c sleeps "a few msec per
    second", starting with the first): about 0.11 s per torrent whatever its
    size, so PRIME takes ~19 minutes for 10,000 torrents. All clients are
    therefore primed at once; PRIME is not measured.
  * SIGTERM stops transmission-daemon cleanly (it is transmission-cli that
    ignores it); with 10,000 torrents the stop rewrites every resume file and
    takes 2-10 s. Twice, on a loaded machine, it took ~22 s and ended in
    SIGSEGV (exit -11) after the files were written: the daemon's 20 s
    shutdown deadline had passed. The next start loaded them without
    verifying. The JSON keeps each run's exit code.
  * RPC answers 409 with an X-Transmission-Session-Id header first; every
    request carries it (again after each 409).
  * session-stats (torrentCount) is cheap and is polled until all N exist;
    only then is the per-torrent status list fetched.
  * Status 0 (stopped) shows up briefly for some torrents while others verify.
  qBittorrent
  * It waits for an interactive legal notice unless qBittorrent.conf has
    [LegalNotice] Accepted=true (4.5 has no --confirm-legal-notice flag).
  * WebUI auth is bypassed for 127.0.0.1 only with WebUI\LocalHostAuth=false;
    CSRF and Host-header checks are off so this script can POST.
  * Torrents added faster than it can save them are silently lost on restart:
    10,000 added in 2.6 s (50 requests of 200) gave fastresume files for only
    9,760, and the clean shutdown then spent 44 s waiting for save-resume
    alerts that never came (libtorrent's alert queue overflowed). PRIME adds
    100 per request and waits until their fastresume files exist in
    BT_backup, and PRIME fails if any torrent has no fastresume file after
    the stop.
  * Even with all saved, a clean stop of 10,000 torrents can take 9 to 80 s.
  * /api/v2/torrents/info ignores an offset past the end (it restarts at 0),
    so "offset=N-1&limit=1 is non-empty" does not mean N torrents; the poll
    sorts by hash and compares the element at N-1 with our largest info hash.
    The 'seeding' filter also counts checkingUP, and 'checking' counts
    checkingResumeData (its normal load step), hence the state sample.
  * Polling the full list (~1.5 KB of JSON per torrent) every 50 ms raised
    its RSS from ~170 to ~650 MiB: the full list is fetched once per run,
    after the settled reading.
  * Queueing is turned off (Session\QueueingSystemEnabled=false) so every
    torrent is active, not queuedUP. The GeoIP database download is off.
  * skip_checking=true is used in PRIME only (this script wrote the data);
    the measured runs load qBittorrent's own fastresume files.

Usage
  /usr/bin/python3 scripts/bench-scale.py [--count 10000] [--size 32K]
      [--piece 16K] [--runs 3] [--clients ringbit,transmission,qbittorrent]
      [--ringbit target/release/ringbit] [--tracker URL] [--workdir DIR]
      [--settle-s 10] [--json FILE]
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

from benchlib import free_port, machine, parse_size, proc_cpu_s, ringbit_missing, tool_version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = ["ringbit", "transmission", "qbittorrent"]
MIB = 1 << 20
# Bounds on every wait.
POLL_S = 0.05
PRIME_POLL_S = 1.0
HTTP_TIMEOUT_S = 30.0
# qBittorrent PRIME: torrents per add request, and how long to wait for
# their fastresume files before the next request.
QBT_ADD_BATCH = 100
QBT_SAVE_WAIT_S = 30.0
# How many of qBittorrent's checking torrents each load poll looks at.
QBT_CHECKING_SAMPLE = 200
# Processes started and not yet reaped: killed by pid if the benchmark stops early.
LIVE = {}



def log(msg):
    sys.stderr.write("bench-scale: %s\n" % msg)
    sys.stderr.flush()


def die(msg):
    log(msg)
    sys.exit(1)


# ---------------------------------------------------------------------------
# /proc readings

def proc_status(pid):
    """VmHWM and VmRSS in KiB (0 when the process is gone)."""
    out = {"VmHWM": 0, "VmRSS": 0}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def open_fds(pid):
    """How many file descriptors the process holds (/proc/PID/fd), or None."""
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def proc_io(pid):
    """rchar (bytes read through read-like syscalls) and read_bytes (from disk)."""
    out = {}
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                k, v = line.split(":")
                out[k] = int(v)
    except OSError:
        pass
    return out


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------------------
# process control (by pid only)

def spawn(cmd, logpath, cwd=None):
    logf = open(logpath, "ab")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                            stderr=subprocess.STDOUT, cwd=cwd)
    logf.close()
    LIVE[proc.pid] = proc
    return proc, t0


def wait_exit(proc, limit_s):
    """Reap proc within limit_s; returns (exit status, rusage) or None on timeout."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            LIVE.pop(proc.pid, None)
            return proc.returncode, ru
        time.sleep(0.02)
    return None


def kill_hard(proc):
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wait_exit(proc, 10.0)


def cleanup_live():
    for proc in list(LIVE.values()):
        kill_hard(proc)


# ---------------------------------------------------------------------------
# tiny HTTP client: one keep-alive connection per client, reconnects on error

class Http:
    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT_S):
        """(status, headers dict, body bytes); raises OSError when it cannot connect."""
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                self.conn.timeout = timeout
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                if hdrs.get("connection", "").lower() == "close":
                    self.close()
                return resp.status, hdrs, data
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 1:
                    raise
        raise OSError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ---------------------------------------------------------------------------
# payload: N single-file torrents

def bencode(value):
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(type(value))


def generate(workdir, count, size, piece, tracker, seed):
    """Writes data/ and torrents/ under workdir (reused when the manifest matches)."""
    manifest = {"count": count, "size": size, "piece": piece, "tracker": tracker,
                "seed": seed, "version": 1}
    mpath = os.path.join(workdir, "manifest.json")
    data_dir = os.path.join(workdir, "data")
    tor_dir = os.path.join(workdir, "torrents")
    try:
        with open(mpath) as f:
            old = json.load(f)
        if old.get("params") == manifest:
            log("reusing %d torrents in %s" % (count, workdir))
            return data_dir, old["torrents"], manifest
    except (OSError, ValueError):
        pass
    for d in (data_dir, tor_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    width = max(5, len(str(count - 1)))
    rng = random.Random(seed)
    torrents = []
    t0 = time.monotonic()
    for i in range(count):
        name = "t%0*d.bin" % (width, i)
        payload = rng.randbytes(size)
        with open(os.path.join(data_dir, name), "wb") as f:
            f.write(payload)
        pieces = b"".join(hashlib.sha1(payload[o:o + piece]).digest()
                          for o in range(0, size, piece))
        info = {"length": size, "name": name, "piece length": piece, "pieces": pieces}
        meta = {"info": info}
        if tracker:
            meta["announce"] = tracker
        path = os.path.join(tor_dir, name[:-4] + ".torrent")
        with open(path, "wb") as f:
            f.write(bencode(meta))
        torrents.append({"name": name, "path": path,
                         "info_hash": hashlib.sha1(bencode(info)).hexdigest()})
        if (i + 1) % 2000 == 0:
            log("generated %d/%d torrents" % (i + 1, count))
    with open(mpath, "w") as f:
        json.dump({"params": manifest, "torrents": torrents}, f)
    log("generated %d torrents (%d MiB) in %.1f s" % (count, count * size // MIB,
                                                     time.monotonic() - t0))
    return data_dir, torrents, manifest


# ---------------------------------------------------------------------------
# clients

class Client:
    """One seed-box daemon: its state directory survives from PRIME to the runs."""

    name = "?"
    stop_limit_s = 180.0

    def __init__(self, args, root, data_dir, torrents, prime_params):
        self.args = args
        self.dir = os.path.join(root, self.name)
        self.primed_marker = os.path.join(self.dir, "primed.json")
        self.prime_params = prime_params
        self.primed = False
        if args.reuse_primed:
            try:
                with open(self.primed_marker) as f:
                    self.primed = json.load(f) == prime_params
            except (OSError, ValueError):
                pass
        if not self.primed:
            shutil.rmtree(self.dir, ignore_errors=True)
            os.makedirs(self.dir)
        self.data_dir = data_dir
        self.torrents = torrents
        self.n = len(torrents)
        self.api_port = free_port() or die("no free port on 127.0.0.1")
        self.peer_port = free_port() or die("no free port on 127.0.0.1")
        self.http = Http(self.api_port)
        self.log_path = os.path.join(self.dir, "client.log")
        self.proc = None

    # subclass interface -----------------------------------------------------
    def command(self):
        raise NotImplementedError

    def add_all(self):
        raise NotImplementedError

    def poll(self):
        """One API look: dict with 'seeding', 'done' (all N loaded and seeding),
        'rehashing' (torrents seen rehashing now, or a rechecked count)."""
        raise NotImplementedError

    def request_stop(self):
        os.kill(self.proc.pid, signal.SIGTERM)

    def version(self):
        return "?"

    # shared -----------------------------------------------------------------
    def start(self):
        self.http.close()
        with open(self.log_path, "ab") as f:
            f.write(b"\n==== start %s ====\n" % time.strftime("%H:%M:%S").encode())
        self.proc, t0 = spawn(self.command(), self.log_path)
        return t0

    def try_poll(self):
        try:
            return self.poll()
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            return None

    def stop(self):
        """Clean stop, bounded; returns (seconds, exit code, rusage or None)."""
        t0 = time.monotonic()
        try:
            self.request_stop()
        except (OSError, http.client.HTTPException) as e:
            log("%s: stop request failed (%s); SIGTERM" % (self.name, e))
            os.kill(self.proc.pid, signal.SIGTERM)
        got = wait_exit(self.proc, self.stop_limit_s)
        self.http.close()
        if got is None:
            log("%s: did not exit within %.0f s of the stop request; SIGKILL (state may "
                "be incomplete)" % (self.name, self.stop_limit_s))
            kill_hard(self.proc)
            return time.monotonic() - t0, None, None
        return time.monotonic() - t0, got[0], got[1]

    def prime_start(self):
        """PRIME, first half: start on an empty state directory and add all N."""
        log("%s: PRIME: adding %d torrents" % (self.name, self.n))
        self.prime_t0 = self.start()
        deadline = time.monotonic() + self.args.ready_timeout
        while self.try_poll() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("%s API did not come up (log: %s)" % (self.name, self.log_path))
            time.sleep(0.1)
        ta = time.monotonic()
        self.add_all()
        log("%s: added %d torrents in %.1f s; waiting for all to seed" %
            (self.name, self.n, time.monotonic() - ta))
        self.prime_deadline = time.monotonic() + self.args.prime_timeout
        self.prime_last = None

    def prime_step(self):
        """PRIME, second half, one look: True once all N seed and the client
        has been stopped cleanly (its resume state written)."""
        st = self.try_poll()
        if st and st["done"]:
            log("%s: all %d seeding %.1f s after start; stopping to write resume state" %
                (self.name, self.n, time.monotonic() - self.prime_t0))
            self.before_prime_stop()
            secs, code, _ = self.stop()
            log("%s: PRIME stop took %.1f s (exit %s)" % (self.name, secs, code))
            if code is None:
                raise RuntimeError("%s did not stop cleanly in PRIME" % self.name)
            missing = self.prime_missing()
            if missing:
                raise RuntimeError("%s: after PRIME its saved state lacks %d of %d torrents" %
                                   (self.name, missing, self.n))
            with open(self.primed_marker, "w") as f:
                json.dump(self.prime_params, f)
            return True
        if self.proc.poll() is not None:
            raise RuntimeError("%s exited during PRIME (log: %s)" % (self.name, self.log_path))
        if time.monotonic() > self.prime_deadline:
            raise RuntimeError("%s: not all %d seeding within %.0f s (last: %s)" %
                               (self.name, self.n, self.args.prime_timeout, st))
        if self.prime_last is None or time.monotonic() - self.prime_last > 10:
            log("%s: PRIME: %s" % (self.name, st))
            self.prime_last = time.monotonic()
        return False

    def before_prime_stop(self):
        pass

    def prime_missing(self):
        """Torrents missing from the state the client saved (0 when it cannot be told)."""
        return 0

    def measure(self, run):
        t0 = self.start()
        pid = self.proc.pid
        io0 = {"rchar": 0}
        deadline = t0 + self.args.load_timeout
        first_reply = None
        rehash_seen = 0
        last = None
        last_log = time.monotonic()
        while True:
            st = self.try_poll()
            now = time.monotonic()
            if st is not None:
                last = st
                if first_reply is None:
                    first_reply = now - t0
                rehash_seen = max(rehash_seen, st.get("rehashing", 0))
                if st["done"]:
                    break
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited while loading (log: %s)" % (self.name, self.log_path))
            if now > deadline:
                raise RuntimeError("%s: not loaded within %.0f s (last: %s)" %
                                   (self.name, self.args.load_timeout, last))
            if now - last_log > 5:
                log("%s: run %d loading: %s" % (self.name, run, st))
                last_log = now
            time.sleep(POLL_S)
        load_s = time.monotonic() - t0
        cpu_load = proc_cpu_s(pid)
        io_load = proc_io(pid)
        hwm_load = proc_status(pid)["VmHWM"]
        extra = self.after_loaded(last)
        time.sleep(self.args.settle_s)
        ps = proc_status(pid)
        fds_settled = open_fds(pid)
        cpu_settled = proc_cpu_s(pid)
        extra.update(self.verify_settled())
        stop_s, code, ru = self.stop()
        res = {
            "run": run,
            "load_s": load_s,
            "first_api_reply_s": first_reply,
            "load_cpu_s": cpu_load,
            "settled_cpu_s": cpu_settled,
            "total_cpu_s": (ru.ru_utime + ru.ru_stime) if ru else None,
            "peak_rss_at_load_mib": hwm_load / 1024,
            "peak_rss_mib": ps["VmHWM"] / 1024,
            "settled_rss_mib": ps["VmRSS"] / 1024,
            "settled_fds": fds_settled,
            "stop_s": stop_s,
            "exit_code": code,
            "rchar_at_load": io_load.get("rchar", 0) - io0["rchar"],
            "read_bytes_at_load": io_load.get("read_bytes", 0),
            "rehash_seen": rehash_seen,
            "payload_bytes": self.n * self.args.size_bytes,
        }
        res.update(extra)
        log("%s: run %d: loaded in %.2f s, RSS settled %.1f MiB peak %.1f MiB, load CPU %.2f s, "
            "stop %.1f s, rehash seen %s" % (self.name, run, load_s, res["settled_rss_mib"],
                                             res["peak_rss_mib"], cpu_load or 0, stop_s,
                                             rehash_seen))
        return res

    def after_loaded(self, last):
        """Facts from the API reply that ended the clock."""
        return {}

    def verify_settled(self):
        """A costlier check, after the settled reading."""
        return {}


class Ringbit(Client):
    """`ringbit daemon --config FILE.toml`, HTTP API under /api/v1."""

    name = "ringbit"

    def __init__(self, *a):
        super().__init__(*a)
        self.state_dir = os.path.join(self.dir, "state")
        os.makedirs(self.state_dir, exist_ok=True)
        self.config = os.path.join(self.dir, "ringbit.toml")
        with open(self.config, "w") as f:
            f.write("listen_port = %d\n" % self.peer_port)
            f.write("state_dir = %s\n" % json.dumps(self.state_dir))
            f.write("download_dir = %s\n" % json.dumps(self.data_dir))
            f.write("api_listen = \"127.0.0.1:%d\"\n" % self.api_port)
            f.write("trackers = %s\n" % ("true" if self.args.tracker else "false"))
            f.write("dht = false\n")  # loopback only: no bootstrap routers
            # The API reads .torrent files by path only under these roots.
            tor_dirs = sorted({os.path.dirname(t["path"]) for t in self.torrents})
            f.write("download_roots = %s\n" % json.dumps([self.data_dir] + tor_dirs))

    def auth(self, headers=None):
        """`headers` plus the API token the daemon wrote to its state dir."""
        with open(os.path.join(self.state_dir, "api.token")) as f:
            token = f.read().strip()
        return dict(headers or {}, Authorization="Bearer " + token)

    def command(self):
        return [self.args.ringbit, "daemon", "--config", self.config]

    def version(self):
        return tool_version([self.args.ringbit, "--version"])

    def get_json(self, path):
        status, _, body = self.http.request("GET", path, headers=self.auth())
        if status != 200:
            raise OSError("GET %s: HTTP %d" % (path, status))
        return json.loads(body)

    def add_all(self):
        for i, t in enumerate(self.torrents):
            body = json.dumps({"path": t["path"]}).encode()
            status, _, resp = self.http.request(
                "POST", "/api/v1/torrents", body=body,
                headers=self.auth({"Content-Type": "application/json"}))
            if status not in (200, 201, 202):
                raise RuntimeError("ringbit add %s: HTTP %d %s" % (t["path"], status, resp[:200]))
            if (i + 1) % 2000 == 0:
                log("ringbit: added %d/%d" % (i + 1, self.n))

    def poll(self):
        s = self.get_json("/api/v1/status")
        by = s.get("by_state", {})
        startup = s.get("startup", {})
        seeding = by.get("seeding", 0)
        return {
            "torrents": s.get("torrents"),
            "seeding": seeding,
            "checking": by.get("checking", 0),
            "error": by.get("error", 0),
            "startup_done": startup.get("done"),
            "rehashing": startup.get("rechecked_pieces", 0) or 0,
            "done": bool(startup.get("done", True)) and seeding == self.n
                    and s.get("torrents") == self.n,
            "startup": startup,
        }

    def after_loaded(self, last):
        st = last.get("startup", {})
        return {"self_reported_startup_s": st.get("seconds"),
                "rechecked_pieces": st.get("rechecked_pieces")}


class Transmission(Client):
    """transmission-daemon -f -g CONFIGDIR; JSON RPC at /transmission/rpc."""

    name = "transmission"

    def __init__(self, *a):
        super().__init__(*a)
        self.session_id = ""
        self.config_dir = os.path.join(self.dir, "config")
        os.makedirs(self.config_dir, exist_ok=True)
        settings = {
            "rpc-enabled": True,
            "rpc-port": self.api_port,
            "rpc-bind-address": "127.0.0.1",
            "rpc-whitelist-enabled": True,
            "rpc-whitelist": "127.0.0.1",
            "rpc-host-whitelist-enabled": False,
            "rpc-authentication-required": False,
            "peer-port": self.peer_port,
            "peer-port-random-on-start": False,
            "bind-address-ipv4": "127.0.0.1",
            "dht-enabled": False,
            "lpd-enabled": False,
            "utp-enabled": False,
            "pex-enabled": False,
            "port-forwarding-enabled": False,
            "download-dir": self.data_dir,
            "incomplete-dir-enabled": False,
            "watch-dir-enabled": False,
            "start-added-torrents": True,
            "trash-original-torrent-files": False,
            "download-queue-enabled": False,
            "seed-queue-enabled": False,
            "queue-stalled-enabled": False,
            "ratio-limit-enabled": False,
            "idle-seeding-limit-enabled": False,
            "rename-partial-files": False,
            "message-level": 1,
        }
        with open(os.path.join(self.config_dir, "settings.json"), "w") as f:
            json.dump(settings, f, indent=1)

    def command(self):
        return ["transmission-daemon", "-f", "-g", self.config_dir]

    def version(self):
        return tool_version(["transmission-daemon", "--version"])

    def rpc(self, method, arguments=None, timeout=HTTP_TIMEOUT_S):
        body = json.dumps({"method": method, "arguments": arguments or {}}).encode()
        for _ in range(3):
            status, hdrs, resp = self.http.request(
                "POST", "/transmission/rpc", body=body, timeout=timeout,
                headers={"X-Transmission-Session-Id": self.session_id,
                         "Content-Type": "application/json"})
            if status == 409:
                self.session_id = hdrs.get("x-transmission-session-id", "")
                continue
            if status != 200:
                raise OSError("transmission RPC %s: HTTP %d" % (method, status))
            out = json.loads(resp)
            if out.get("result") != "success":
                raise RuntimeError("transmission RPC %s: %s" % (method, out.get("result")))
            return out["arguments"]
        raise OSError("transmission RPC %s: session id dance failed" % method)

    def add_all(self):
        for i, t in enumerate(self.torrents):
            self.rpc("torrent-add", {"filename": t["path"], "download-dir": self.data_dir})
            if (i + 1) % 2000 == 0:
                log("transmission: added %d/%d" % (i + 1, self.n))

    def poll(self):
        # session-stats is cheap; only once every torrent is present is the
        # per-torrent status list (N entries) fetched.
        stats = self.rpc("session-stats")
        count = stats.get("torrentCount", 0)
        out = {"torrents": count, "seeding": 0, "rehashing": 0, "done": False}
        if count < self.n:
            return out
        tors = self.rpc("torrent-get", {"fields": ["status", "error"]})["torrents"]
        by = {}
        for t in tors:
            by[t["status"]] = by.get(t["status"], 0) + 1
        out["by_status"] = by
        out["seeding"] = by.get(6, 0)
        out["rehashing"] = by.get(1, 0) + by.get(2, 0)  # TR_STATUS_CHECK_WAIT, TR_STATUS_CHECK
        out["done"] = len(tors) == self.n and out["seeding"] == self.n
        return out


class Qbittorrent(Client):
    """qbittorrent-nox --profile=DIR --webui-port=N; WebUI API v2."""

    name = "qbittorrent"
    SEEDING_STATES = ("uploading", "stalledUP", "forcedUP")
    REHASH_STATES = ("checkingUP", "checkingDL")

    def __init__(self, *a):
        super().__init__(*a)
        self.max_hash = max(t["info_hash"] for t in self.torrents)
        self.profile = os.path.join(self.dir, "profile")
        conf_dir = os.path.join(self.profile, "qBittorrent", "config")
        os.makedirs(conf_dir, exist_ok=True)
        conf = """[LegalNotice]
Accepted=true

[Application]
FileLogger\\Enabled=true

[BitTorrent]
Session\\DHTEnabled=false
Session\\LSDEnabled=false
Session\\PeXEnabled=false
Session\\Port={peer}
Session\\Interface=lo
Session\\InterfaceName=lo
Session\\InterfaceAddress=127.0.0.1
Session\\QueueingSystemEnabled=false
Session\\DefaultSavePath={data}
Session\\TempPathEnabled=false
Session\\AddTorrentPaused=false
Session\\BTProtocol=TCP
Session\\GlobalMaxRatio=-1
Session\\GlobalMaxSeedingMinutes=-1
Session\\TorrentContentLayout=Original

[Network]
PortForwardingEnabled=false

[Preferences]
Connection\\UPnP=false
General\\Locale=en
WebUI\\Enabled=true
WebUI\\Address=127.0.0.1
WebUI\\Port={api}
WebUI\\LocalHostAuth=false
WebUI\\CSRFProtection=false
WebUI\\ClickjackingProtection=false
WebUI\\HostHeaderValidation=false
WebUI\\UseUPnP=false
Connection\\ResolvePeerCountries=false
""".format(peer=self.peer_port, data=self.data_dir, api=self.api_port)
        with open(os.path.join(conf_dir, "qBittorrent.conf"), "w") as f:
            f.write(conf)

    def command(self):
        return ["qbittorrent-nox", "--profile=" + self.profile,
                "--webui-port=%d" % self.api_port]

    def version(self):
        return tool_version(["qbittorrent-nox", "--version"])

    def get_json(self, path):
        status, _, body = self.http.request("GET", path)
        if status != 200:
            raise OSError("GET %s: HTTP %d %s" % (path, status, body[:200]))
        return json.loads(body)

    def backup_dir(self):
        return os.path.join(self.profile, "qBittorrent", "data", "BT_backup")

    def saved_hashes(self):
        """Info hashes qBittorrent has written fastresume files for."""
        try:
            return {f[:-len(".fastresume")] for f in os.listdir(self.backup_dir())
                    if f.endswith(".fastresume")}
        except OSError:
            return set()

    def add_batch(self, batch):
        boundary = "----benchscale%08x" % random.getrandbits(32)
        parts = []
        fields = {"savepath": self.data_dir, "skip_checking": "true", "paused": "false",
                  "autoTMM": "false", "contentLayout": "Original"}
        for k, v in fields.items():
            parts.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                          % (boundary, k, v)).encode())
        for t in batch:
            with open(t["path"], "rb") as f:
                data = f.read()
            parts.append(("--%s\r\nContent-Disposition: form-data; name=\"torrents\"; "
                          "filename=\"%s\"\r\nContent-Type: application/x-bittorrent\r\n\r\n"
                          % (boundary, os.path.basename(t["path"]))).encode() + data + b"\r\n")
        parts.append(("--%s--\r\n" % boundary).encode())
        status, _, resp = self.http.request(
            "POST", "/api/v2/torrents/add", body=b"".join(parts),
            headers={"Content-Type": "multipart/form-data; boundary=" + boundary})
        if status != 200 or resp.strip() != b"Ok.":
            raise RuntimeError("qbittorrent add: HTTP %d %s" % (status, resp[:200]))

    def add_all(self):
        # Batches of QBT_ADD_BATCH, each waited for until qBittorrent has written
        # its fastresume files: added all at once, libtorrent's alert queue
        # overflows, the save-resume alerts of some torrents are dropped, and
        # those torrents are silently missing after a restart (see the header).
        saved = self.saved_hashes()
        todo = [t for t in self.torrents if t["info_hash"] not in saved]
        for i in range(0, len(todo), QBT_ADD_BATCH):
            batch = todo[i:i + QBT_ADD_BATCH]
            self.add_batch(batch)
            want = {t["info_hash"] for t in batch}
            deadline = time.monotonic() + QBT_SAVE_WAIT_S
            while time.monotonic() < deadline and not want <= self.saved_hashes():
                time.sleep(0.05)
            if (i + len(batch)) % 2000 < QBT_ADD_BATCH:
                log("qbittorrent: added %d/%d" % (i + len(batch), len(todo)))

    def prime_missing(self):
        saved = self.saved_hashes()
        return sum(1 for t in self.torrents if t["info_hash"] not in saved)

    def poll(self):
        # qBittorrent 4.5 has no count endpoint and its full list is ~1.5 KB per
        # torrent; polling it every 50 ms would load it more than the thing
        # measured. Sorted by hash, the 'seeding' list's element at N-1 is our
        # largest info hash iff all N are in it: an offset past the end is
        # reset to 0 (it does not return an empty list), which yields the
        # smallest hash instead. 'seeding' also counts checkingUP (and
        # queuedUP, impossible with queueing off), hence the checking look.
        nth = self.get_json("/api/v2/torrents/info?filter=seeding&sort=hash&offset=%d&limit=1"
                            % (self.n - 1))
        all_seeding = bool(nth) and nth[0].get("hash") == self.max_hash
        checking = self.get_json("/api/v2/torrents/info?filter=checking&limit=%d"
                                 % QBT_CHECKING_SAMPLE)
        rehashing = sum(1 for t in checking if t.get("state") in self.REHASH_STATES)
        return {"all_seeding": all_seeding, "checking": len(checking), "rehashing": rehashing,
                "done": all_seeding and not checking}

    def verify_settled(self):
        """One full list after the settled reading: confirms every state."""
        full = self.get_json("/api/v2/torrents/info")
        by = {}
        for t in full:
            by[t["state"]] = by.get(t["state"], 0) + 1
        seeding = sum(by.get(s, 0) for s in self.SEEDING_STATES)
        if len(full) != self.n or seeding != self.n:
            raise RuntimeError("qbittorrent: loaded check disagrees with its full list: %d "
                               "torrents, states %s" % (len(full), by))
        return {"states_at_load": by}

    def request_stop(self):
        self.http.request("POST", "/api/v2/app/shutdown", timeout=10)


CLIENT_CLASSES = {"ringbit": Ringbit, "transmission": Transmission, "qbittorrent": Qbittorrent}


# ---------------------------------------------------------------------------
# report

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(results):
    out = {}
    for name, runs in results.items():
        if not runs:
            continue
        out[name] = {k: median([r[k] for r in runs]) for k in
                     ("load_s", "settled_rss_mib", "peak_rss_mib", "load_cpu_s", "stop_s",
                      "settled_cpu_s", "first_api_reply_s", "settled_fds")}
        out[name]["rehash_seen_max"] = max(r["rehash_seen"] for r in runs)
        out[name]["rchar_at_load_max"] = max(r["rchar_at_load"] for r in runs)
    return out


def fmt(v, spec="%.2f"):
    return "-" if v is None else spec % v


def table(summary, runs, count):
    base = summary.get("ringbit")
    head = ("| client | load s | settled RSS MiB | peak RSS MiB | load CPU-s | stop s "
            "| load x ringbit | settled RSS x ringbit | rehash seen | read(2) MiB at load "
            "| settled fds |")
    lines = [head, "|" + "---|" * 11]
    for name, s in summary.items():
        def ratio(k):
            if not base or not base.get(k) or s.get(k) is None:
                return "-"
            return "%.1fx" % (s[k] / base[k])
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, fmt(s["load_s"]), fmt(s["settled_rss_mib"], "%.0f"),
            fmt(s["peak_rss_mib"], "%.0f"), fmt(s["load_cpu_s"]), fmt(s["stop_s"], "%.1f"),
            ratio("load_s"), ratio("settled_rss_mib"), s["rehash_seen_max"],
            fmt(s["rchar_at_load_max"] / MIB, "%.1f"), fmt(s["settled_fds"], "%.0f")))
    return "\n".join(lines)


# ---------------------------------------------------------------------------

def enter_netns(argv):
    """Re-exec this script in a new network namespace that has only loopback."""
    if os.geteuid() != 0:
        die("a network namespace needs root (or pass --no-netns)")
    if not shutil.which("unshare") or not shutil.which("ip"):
        die("unshare/ip missing: run scripts/install-bench-peers.sh")
    cmd = ["unshare", "--net", "--", sys.executable, os.path.abspath(__file__),
           "--in-netns"] + argv
    child = subprocess.Popen(cmd)  # unshare execs: child.pid is the inner benchmark

    def forward(signum, _frame):
        child.send_signal(signum)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return child.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--size", default="32K", help="payload bytes per torrent (K/M suffix)")
    ap.add_argument("--piece", default="16K", help="piece length")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--ringbit", default=os.path.join(REPO, "target", "release", "ringbit"))
    ap.add_argument("--tracker", default=None, help="announce URL (default: none)")
    ap.add_argument("--seed", type=int, default=1, help="payload PRNG seed")
    ap.add_argument("--workdir", default=None,
                    help="keeps the payload between invocations (default: a temp dir, removed)")
    ap.add_argument("--reuse-primed", action="store_true",
                    help="with --workdir: skip PRIME for a client whose state a previous "
                         "invocation primed with the same torrents")
    ap.add_argument("--settle-s", type=float, default=10.0)
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument("--prime-timeout", type=float, default=3600.0)
    ap.add_argument("--load-timeout", type=float, default=600.0)
    ap.add_argument("--json", default=None, help="write results to FILE")
    ap.add_argument("--no-netns", action="store_true", help="run in the current namespace")
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    # SIGTERM unwinds like ^C, so the clients started so far are stopped (by pid).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if not args.no_netns and not args.in_netns:
        sys.exit(enter_netns(sys.argv[1:]))
    if args.in_netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        # /proc/net/dev is per network namespace (/sys/class/net is the host's sysfs).
        with open("/proc/net/dev") as f:
            links = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
        if links != ["lo"]:
            die("namespace has interfaces other than lo: %s" % links)
        network = "isolated network namespace (loopback only)"
    else:
        network = "host network namespace (--no-netns)"

    args.size_bytes = parse_size(args.size)
    piece = parse_size(args.piece)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    for c in clients:
        if c not in CLIENT_CLASSES:
            die("unknown client %s (choose from %s)" % (c, ",".join(CLIENTS)))
    if args.json:
        args.json = os.path.abspath(args.json)

    notes = []
    if "ringbit" in clients:
        why = ringbit_missing(args.ringbit, "daemon")
        if why:
            notes.append("ringbit skipped: " + why)
            log(notes[-1])
            clients.remove("ringbit")
    for c, binary in (("transmission", "transmission-daemon"), ("qbittorrent", "qbittorrent-nox")):
        if c in clients and not shutil.which(binary):
            die("%s missing: run scripts/install-bench-peers.sh" % binary)

    tmp = None
    if args.workdir:
        workdir = os.path.abspath(args.workdir)
        os.makedirs(workdir, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-scale-", dir="/var/tmp")
        workdir = tmp
    notes.append("no announce URL: no tracker traffic" if not args.tracker
                 else "announce URL %s" % args.tracker)
    log(notes[-1])
    log("network: " + network)

    results = {c: [] for c in clients}
    info = {}
    try:
        data_dir, torrents, manifest_params = generate(
            workdir, args.count, args.size_bytes, piece, args.tracker, args.seed)
        state_root = os.path.join(workdir, "clients")
        objs = {}
        prime_params = {"payload": manifest_params, "torrents": len(torrents)}
        for c in clients:
            objs[c] = CLIENT_CLASSES[c](args, state_root, data_dir, torrents, prime_params)
            info[c] = {"version": objs[c].version(), "state_dir": objs[c].dir}
        # PRIME all clients at once: transmission verifies each torrent it adds,
        # ~0.11 s per torrent whatever its size (see the header), so it runs while
        # the others add theirs. PRIME is not measured.
        priming = [objs[c] for c in clients if not objs[c].primed]
        for c in clients:
            if objs[c].primed:
                log("%s: reusing primed state in %s" % (c, objs[c].dir))
        for obj in sorted(priming, key=lambda o: o.name != "transmission"):  # slowest first
            obj.prime_start()
        while priming:
            priming = [obj for obj in priming if not obj.prime_step()]
            if priming:
                time.sleep(PRIME_POLL_S)
        for run in range(1, args.runs + 1):
            for c in clients:
                results[c].append(objs[c].measure(run))
    finally:
        cleanup_live()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    summary = summarize(results)
    print()
    print("Seed box scale: %d torrents x %s (%s pieces), medians of %d runs, settled = %.0f s "
          "after loaded" % (args.count, args.size, args.piece, args.runs, args.settle_s))
    print("%s; %s; load average %s" % (machine(), network, loadavg()))
    for c in clients:
        print("  %s: %s" % (c, info[c]["version"]))
    for n in notes:
        print("  note: " + n)
    print()
    print(table(summary, results, args.count))
    if "ringbit" in summary:
        s = summary["ringbit"]
        print()
        print("ringbit target: load < 3 s (%s: %.2f s), settled RSS < 200 MiB (%s: %.0f MiB)" % (
            "met" if s["load_s"] < 3 else "MISSED", s["load_s"],
            "met" if s["settled_rss_mib"] < 200 else "MISSED", s["settled_rss_mib"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"params": {"count": args.count, "size": args.size_bytes, "piece": piece,
                                  "runs": args.runs, "settle_s": args.settle_s,
                                  "tracker": args.tracker},
                       "machine": machine(), "network": network, "loadavg_end": loadavg(),
                       "clients": info, "notes": notes, "runs": results,
                       "medians": summary}, f, indent=1)
        log("wrote %s" % args.json)


if __name__ == "__main__":
    main()
