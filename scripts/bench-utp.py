#!/usr/bin/python3
"""uTP end-to-end benchmark on loopback (issue 13), all pairs in ONE run.

One single-file torrent (default 1 GiB, 1 MiB pieces), four pairs, each a
seeder process already serving and a fresh leecher process:

  ringbit utp   `ringbit seed --utp only`  -> `ringbit download --utp only`
  ringbit tcp   `ringbit seed --utp off`   -> `ringbit download --utp off`
  lt utp        libtorrent (TCP off)       -> libtorrent (TCP off)
  lt->ringbit   libtorrent (TCP off)       -> `ringbit download --utp only`

Timing: t0 = leecher spawned; t1 = the leecher exits 0 (both leechers exit
once they have every piece verified). MB/s = payload / (t1 - t0), MB =
10^6 bytes. CPU-s/GiB: the leecher's user+sys (os.wait4 rusage) and the
seeder's (/proc/PID/stat between t0 and t1), per GiB moved. Rounds
interleave the pairs (--runs); medians are printed with the ratios the
issue names: ringbit uTP >= 0.5x ringbit TCP, >= 10x the libtorrent uTP
pair, leecher CPU/GiB <= 2x TCP's. The load average is printed with every
run: on a shared machine, compare within one run only.

Usage: scripts/bench-utp.py [--size 1G] [--runs 1] [--ringbit target/release/ringbit]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LT_EXTRA = os.path.join(ROOT, "tests", "peers", "lt_extra.py")
LT_UTP_ONLY = ["--set", "enable_outgoing_tcp=false", "--set", "enable_incoming_tcp=false",
               "--set", "enable_outgoing_utp=true", "--set", "enable_incoming_utp=true"]
# Longest one leecher may run.
LEECH_LIMIT_S = 1800
# Longest a seeder may take to start serving.
SEED_READY_S = 300


def make_torrent(workdir, size):
    data = os.path.join(workdir, "data")
    os.makedirs(data)
    path = os.path.join(data, "payload.bin")
    with open(path, "wb") as f:
        left = size
        block = os.urandom(1 << 20)
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    torrent = os.path.join(workdir, "payload.torrent")
    subprocess.run(["mktorrent", "-d", "-l", "20", "-a", "http://127.0.0.1:1/announce",
                    "-o", torrent, path], check=True, capture_output=True)
    return data, torrent


def wait_port(port, proc):
    deadline = time.monotonic() + SEED_READY_S
    import socket
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("seeder exited early")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        # libtorrent with TCP off may not listen on TCP: check UDP instead.
        with open("/proc/net/udp") as f:
            if (":%04X " % port) in f.read():
                time.sleep(0.5)
                return
        time.sleep(0.1)
    raise SystemExit("seeder never listened on %d" % port)


def start_seeder(kind, ringbit, data, torrent):
    port = benchlib.free_port()
    log = tempfile.TemporaryFile()
    if kind == "lt":
        cmd = ["/usr/bin/python3", LT_EXTRA, "seed", torrent, data, "--port", str(port)] + LT_UTP_ONLY
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=log)
    else:
        utp = "only" if kind == "ringbit-utp" else "off"
        cmd = [ringbit, "seed", torrent, data, "--bind", "127.0.0.1", "--port", str(port),
               "--no-dht", "--no-trackers", "--utp", utp]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    wait_port(port, proc)
    return proc, port


def leech(kind, ringbit, torrent, seed_port, seeder_pid, size):
    out = tempfile.mkdtemp(prefix="bench-utp-")
    port = benchlib.free_port()
    peer = "127.0.0.1:%d" % seed_port
    if kind == "lt":
        cmd = ["/usr/bin/python3", LT_EXTRA, "leech", torrent, out, "--port", str(port),
               "--peer", peer, "--timeout", str(LEECH_LIMIT_S)] + LT_UTP_ONLY
    else:
        cmd = [ringbit, "download", torrent, "-o", out, "--bind", "127.0.0.1", "--port",
               str(port), "--no-dht", "--no-trackers", "--utp", kind, "--peer", peer]
    seed_cpu0 = benchlib.proc_cpu_s(seeder_pid)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    t1 = time.monotonic()
    seed_cpu1 = benchlib.proc_cpu_s(seeder_pid)
    shutil.rmtree(out, ignore_errors=True)
    if status != 0:
        raise SystemExit("leecher %s failed (status %d)" % (cmd, status))
    gib = size / (1 << 30)
    return {
        "mb_s": size / 1e6 / (t1 - t0),
        "leech_cpu_gib": (usage.ru_utime + usage.ru_stime) / gib,
        "seed_cpu_gib": (seed_cpu1 - seed_cpu0) / gib,
        "load": os.getloadavg()[0],
    }


PAIRS = [
    ("ringbit utp", "ringbit-utp", "only"),
    ("ringbit tcp", "ringbit-tcp", "off"),
    ("lt utp", "lt", "lt"),
    ("lt->ringbit utp", "lt", "only"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--ringbit", default=os.path.join(ROOT, "target", "release", "ringbit"))
    a = ap.parse_args()
    size = benchlib.parse_size(a.size)
    print(benchlib.machine())
    work = tempfile.mkdtemp(prefix="bench-utp-")
    seeders = {}
    try:
        data, torrent = make_torrent(work, size)
        for kind in {p[1] for p in PAIRS}:
            seeders[kind] = start_seeder(kind, a.ringbit, data, torrent)
        results = {name: [] for name, _, _ in PAIRS}
        for r in range(a.runs):
            order = PAIRS[r % len(PAIRS):] + PAIRS[:r % len(PAIRS)]
            for name, seeder, leecher in order:
                proc, port = seeders[seeder]
                res = leech(leecher, a.ringbit, torrent, port, proc.pid, size)
                results[name].append(res)
                print(json.dumps({"pair": name, **{k: round(v, 2) for k, v in res.items()}}),
                      flush=True)
        med = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
               for name, rs in results.items()}
        print("\n| pair | MB/s | leecher CPU-s/GiB | seeder CPU-s/GiB | load |")
        print("|---|---|---|---|---|")
        for name, m in med.items():
            print("| %s | %.0f | %.2f | %.2f | %.1f |" % (
                name, m["mb_s"], m["leech_cpu_gib"], m["seed_cpu_gib"], m["load"]))
        u, t, lt = med["ringbit utp"], med["ringbit tcp"], med["lt utp"]
        print("\nringbit uTP / ringbit TCP rate: %.2fx (goal >= 0.5)" % (u["mb_s"] / t["mb_s"]))
        print("ringbit uTP / libtorrent uTP pair rate: %.1fx (goal >= 10)" % (u["mb_s"] / lt["mb_s"]))
        print("ringbit uTP / TCP leecher CPU per GiB: %.2fx (goal <= 2)" % (
            u["leech_cpu_gib"] / t["leech_cpu_gib"]))
    finally:
        for proc, _ in seeders.values():
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
