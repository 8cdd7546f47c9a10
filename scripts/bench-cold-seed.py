#!/usr/bin/env python3
"""Cold seeding: N torrents to N libtorrent leechers at once from one seeder
process whose data is not in the page cache (issue 14's target: the ringbit
seed box at >= 1.5x a libtorrent seeder's aggregate rate, same setup).

    scripts/bench-cold-seed.py [--torrents 4] [--size 256M] [--runs 3]

The seeders, interleaved round by round:
  * ringbit: `ringbit daemon` with the torrents added through its watch
    directory (their data is rechecked and adopted, then seeded);
  * libtorrent: one python3-libtorrent session seeding every torrent
    (tests/peers/lt_extra.py seed --also ...).
Each round starts a fresh seeder, waits until it seeds every torrent, drops
the payload's pages from the page cache (fdatasync + POSIX_FADV_DONTNEED, and
/proc/sys/vm/drop_caches when root), then starts one libtorrent leecher per
torrent at once. The aggregate rate is all bytes over the time from the
leechers' start to the last one's completion. The disk's own limit is
measured in the same run with `dd iflag=direct` over the payload files.
Run it on a quiet machine: `uptime` is printed with the figures.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, machine, parse_size, proc_cpu_s  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LT_EXTRA = os.path.join(REPO, "tests", "peers", "lt_extra.py")
PYTHON = "/usr/bin/python3"  # python3-libtorrent is built for Debian's interpreter
READY_LIMIT_S = 600.0
STOP_LIMIT_S = 60.0
POLL_S = 0.05


def die(msg):
    print("bench-cold-seed: " + msg, file=sys.stderr)
    sys.exit(1)


def load_1min():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def make_payload(path, size):
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(1 << 20, size - written)
            f.write(os.urandom(n))
            written += n


def drop_cache(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if os.geteuid() == 0:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")


def wait_port(proc, port, what):
    import socket
    deadline = time.monotonic() + READY_LIMIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            die("%s exited with %s" % (what, proc.returncode))
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(POLL_S)
    die("%s did not listen on %d within %ss" % (what, port, READY_LIMIT_S))


class RingbitSeeder:
    def __init__(self, a, torrents, data_dir, workdir):
        self.port = free_port()
        self.api_port = free_port()
        state = os.path.join(workdir, "rb-state")
        watch = os.path.join(workdir, "rb-watch")
        os.makedirs(state, exist_ok=True)
        os.makedirs(watch, exist_ok=True)
        for t in torrents:
            shutil.copy(t, watch)
        self.config = os.path.join(workdir, "rb.toml")
        with open(self.config, "w") as f:
            f.write('state_dir = "%s"\ndownload_dir = "%s"\nwatch_dir = "%s"\n'
                    'watch_interval_secs = 1\nlisten_port = %d\nbind = ["127.0.0.1"]\n'
                    'api_listen = "127.0.0.1:%d"\ntrackers = false\ndht = false\n'
                    % (state, data_dir, watch, self.port, self.api_port))
        self.log = open(os.path.join(workdir, "rb-daemon.log"), "ab")
        self.proc = subprocess.Popen([a.ringbit, "daemon", "--config", self.config]
                                     + a.ringbit_flag, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        wait_port(self.proc, self.api_port, "ringbit daemon API")
        token_path = os.path.join(state, "api.token")
        deadline = time.monotonic() + READY_LIMIT_S
        while True:
            if time.monotonic() > deadline:
                die("ringbit daemon did not seed %d torrents within %ss"
                    % (len(torrents), READY_LIMIT_S))
            if self.proc.poll() is not None:
                die("ringbit daemon exited with %s" % self.proc.returncode)
            if os.path.exists(token_path):
                token = open(token_path).read().strip()
                req = urllib.request.Request(
                    "http://127.0.0.1:%d/api/v1/torrents" % self.api_port,
                    headers={"Authorization": "Bearer " + token})
                try:
                    body = json.load(urllib.request.urlopen(req, timeout=5))
                except OSError:
                    body = []
                items = body.get("torrents", []) if isinstance(body, dict) else body
                states = [t.get("state") for t in items]
                if len(states) == len(torrents) and all(s == "seeding" for s in states):
                    break
                if any(s == "error" for s in states):
                    die("ringbit daemon put a torrent in error: %r" % items)
            time.sleep(0.2)
        wait_port(self.proc, self.port, "ringbit daemon peer port")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_LIMIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_LIMIT_S)
        self.log.close()


class LibtorrentSeeder:
    def __init__(self, a, torrents, data_dir, workdir):
        self.port = free_port()
        cmd = [PYTHON, LT_EXTRA, "seed", torrents[0], data_dir, "--port", str(self.port),
               "--timeout", "86400"]
        for t in torrents[1:]:
            cmd += ["--also", t]
        self.log = open(os.path.join(workdir, "lt-seed.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self.log, stderr=self.log)
        wait_port(self.proc, self.port, "libtorrent seeder")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STOP_LIMIT_S)
        self.log.close()


def run_round(kind, a, torrents, payloads, data_dir, workdir, run_no):
    seeder = (RingbitSeeder if kind == "ringbit" else LibtorrentSeeder)(
        a, torrents, data_dir, workdir)
    leechers = []
    try:
        drop_cache(payloads)
        load = load_1min()
        cpu0 = proc_cpu_s(seeder.proc.pid)
        t0 = time.monotonic()
        for i, t in enumerate(torrents):
            out = os.path.join(workdir, "out-%s-%d-%d" % (kind, run_no, i))
            os.makedirs(out)
            port = free_port()
            p = subprocess.Popen([PYTHON, LT_EXTRA, "leech", t, out, "--port", str(port),
                                  "--peer", "127.0.0.1:%d" % seeder.port, "--timeout", "3600"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
            leechers.append((p, out))
        done = []
        for p, out in leechers:
            try:
                stdout, _ = p.communicate(timeout=a.timeout)
            except subprocess.TimeoutExpired:
                die("a %s leecher did not finish within %ss" % (kind, a.timeout))
            if p.returncode != 0 or b'"event": "done"' not in stdout:
                die("a leecher from %s failed (%s): %s" % (kind, p.returncode, stdout[-400:]))
            done.append(time.monotonic())
        elapsed = max(done) - t0
        cpu = proc_cpu_s(seeder.proc.pid) - cpu0
        for (p, out), payload in zip(leechers, payloads):
            got = os.path.join(out, os.path.basename(payload))
            if not a.no_check and subprocess.run(["cmp", "-s", payload, got]).returncode != 0:
                die("%s: %s differs from the payload" % (kind, got))
            shutil.rmtree(out)
    finally:
        for p, _ in leechers:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=STOP_LIMIT_S)
        seeder.stop()
    total = a.size * len(torrents)
    return {"mbps": total / elapsed / 1e6, "seconds": elapsed,
            "seed_cpu_per_gib": cpu / (total / (1 << 30)), "load": load}


def dd_direct(payloads):
    """The disk's sequential read rate with the page cache bypassed."""
    total, t0 = 0, time.monotonic()
    for p in payloads:
        subprocess.run(["dd", "if=" + p, "of=/dev/null", "bs=4M", "iflag=direct"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total += os.path.getsize(p)
    return total / (time.monotonic() - t0) / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--torrents", type=int, default=4)
    ap.add_argument("--size", type=parse_size, default=256 << 20, help="per torrent (256M)")
    ap.add_argument("--piece-log2", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ringbit", default=os.path.join(REPO, "target", "release", "ringbit"))
    ap.add_argument("--ringbit-flag", action="append", default=[], metavar="FLAG",
                    help="extra flag for `ringbit daemon` (repeat)")
    ap.add_argument("--workdir", help="default: a temp dir under /var/tmp (a real disk)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--no-check", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(a.ringbit):
        die("%s not found: cargo build --release" % a.ringbit)
    if not 1 <= a.torrents <= 64:
        die("--torrents must be 1..64")
    workdir = a.workdir or tempfile.mkdtemp(prefix="bench-cold-seed-", dir="/var/tmp")
    data_dir = os.path.join(workdir, "data")
    os.makedirs(data_dir, exist_ok=True)
    results = {"ringbit": [], "libtorrent": []}
    try:
        payloads, torrents = [], []
        for i in range(a.torrents):
            payload = os.path.join(data_dir, "cold-%d.bin" % i)
            if not (os.path.exists(payload) and os.path.getsize(payload) == a.size):
                make_payload(payload, a.size)
            torrent = os.path.join(workdir, "cold-%d.torrent" % i)
            if not os.path.exists(torrent):
                subprocess.run(["mktorrent", "-l", str(a.piece_log2), "-o", torrent, payload],
                               check=True, stdout=subprocess.DEVNULL)
            payloads.append(payload)
            torrents.append(torrent)
        load_before = load_1min()
        drop_cache(payloads)
        disk = dd_direct(payloads)
        print("payload %d x %.0f MiB; disk (dd iflag=direct) %.0f MB/s; load %.1f"
              % (a.torrents, a.size / (1 << 20), disk, load_before), flush=True)
        for run in range(a.runs):
            order = ["ringbit", "libtorrent"] if run % 2 == 0 else ["libtorrent", "ringbit"]
            for kind in order:
                r = run_round(kind, a, torrents, payloads, data_dir, workdir, run)
                results[kind].append(r)
                print("  run %d %-10s %7.1f MB/s aggregate  %6.2fs  seeder %5.2f CPU-s/GiB  "
                      "load %.1f" % (run + 1, kind, r["mbps"], r["seconds"],
                                     r["seed_cpu_per_gib"], r["load"]), flush=True)
    finally:
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    rb, lt = med["ringbit"], med["libtorrent"]
    print()
    print("%d torrents x %.0f MiB, %d KiB pieces, cold page cache, median of %d; %s on %s"
          % (a.torrents, a.size / (1 << 20), (1 << a.piece_log2) >> 10, a.runs,
             time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine()))
    print("load average (1 min): %.1f before, %.1f after" % (load_before, load_1min()))
    print("disk limit (dd iflag=direct, same run): %.0f MB/s" % disk)
    for k, m in med.items():
        print("%-10s %7.1f MB/s aggregate (%.0f%% of dd)  seeder %.2f CPU-s/GiB"
              % (k, m["mbps"], 100 * m["mbps"] / disk, m["seed_cpu_per_gib"]))
    ratio = rb["mbps"] / lt["mbps"]
    print("ringbit / libtorrent aggregate rate: %.2fx (wanted >= 1.50: %s); per round: %s"
          % (ratio, "yes" if ratio >= 1.5 else "NO",
             " ".join("%.2f" % (r["mbps"] / l["mbps"])
                      for r, l in zip(results["ringbit"], results["libtorrent"]))))


if __name__ == "__main__":
    main()
