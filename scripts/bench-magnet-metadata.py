#!/usr/bin/python3
"""Time from `ringbit download magnet:` to the metadata, with one loopback
peer known (issue 12; target: under 1 s after the first connect).

A libtorrent seeder (tests/peers/lt_extra.py seed) holds a payload; ringbit
starts from a magnet link whose only source is that seeder (`x.pe=`, no
trackers, no DHT). ringbit logs "metadata received" with `seconds` (since the
fetch started) and `seconds_after_first_connect`; the script also measures the
wall time from spawning ringbit to that line. Each run uses fresh ports and a
fresh state dir. Prints one line per run and the medians, with `uptime`.

Usage: /usr/bin/python3 scripts/bench-magnet-metadata.py [--ringbit PATH]
       [--runs 5] [--files 200]
(`--files N` makes a multi-file payload of N small files, so the info
dictionary spans several 16 KiB metadata pieces.)
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import benchlib  # noqa: E402

RUN_LIMIT_S = 60.0


def info_hash(torrent):
    out = subprocess.run(
        ["/usr/bin/python3", os.path.join(ROOT, "tests/peers/lt_tool.py"), "info", torrent],
        capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)["info_hash"]


def make_payload(work, files):
    data = os.path.join(work, "data")
    top = os.path.join(data, "bench-metadata")
    os.makedirs(top)
    for i in range(files):
        with open(os.path.join(top, "file-%04d.bin" % i), "wb") as f:
            f.write(os.urandom(4096 + i))
    torrent = os.path.join(work, "bench.torrent")
    subprocess.run(["mktorrent", "-d", "-l", "16", "-o", torrent, top],
                   check=True, capture_output=True, timeout=120)
    return data, torrent


def start_seeder(torrent, data):
    port = benchlib.free_port()
    p = subprocess.Popen(
        ["/usr/bin/python3", os.path.join(ROOT, "tests/peers/lt_extra.py"), "seed", torrent, data,
         "--port", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        if '"listening"' in line:
            return p, json.loads(line)["port"]
    p.kill()
    raise SystemExit("libtorrent seeder did not start")


def one_run(ringbit, magnet_hash, seed_port, work, run):
    state = os.path.join(work, "state-%d" % run)
    out = os.path.join(work, "out-%d" % run)
    magnet = "magnet:?xt=urn:btih:%s&x.pe=127.0.0.1:%d" % (magnet_hash, seed_port)
    cmd = [ringbit, "-v", "download", magnet, "-o", out, "--state-dir", state,
           "--port", str(benchlib.free_port()), "--bind", "127.0.0.1",
           "--no-trackers", "--no-dht", "--encryption", "disable"]
    env = dict(os.environ, NO_COLOR="1", RINGBIT_DHT_BOOTSTRAP="none")
    started = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env)
    result = None
    try:
        deadline = started + RUN_LIMIT_S
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            if "metadata received" in line and "seconds=" in line:
                wall = time.monotonic() - started
                clean = re.sub(r"\x1b\[[0-9;]*m", "", line)
                secs = float(re.search(r"\bseconds=([0-9.]+)", clean).group(1))
                after = float(re.search(r"seconds_after_first_connect=([0-9.]+)", clean).group(1))
                result = (wall, secs, after)
                break
    finally:
        p.kill()
        p.wait()
    shutil.rmtree(out, ignore_errors=True)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ringbit", default=os.path.join(ROOT, "target/release/ringbit"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--files", type=int, default=200)
    a = ap.parse_args()
    missing = benchlib.ringbit_missing(a.ringbit, "download")
    if missing:
        raise SystemExit(missing)
    print("machine:", benchlib.machine())
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print("ringbit:", a.ringbit)
    with tempfile.TemporaryDirectory() as work:
        data, torrent = make_payload(work, a.files)
        h = info_hash(torrent)
        info_len = os.path.getsize(torrent)
        print("payload: %d files, .torrent %d bytes" % (a.files, info_len))
        rows = []
        for run in range(a.runs):
            # A fresh seeder per run: libtorrent will not take the same
            # ip:port again for a minute (min_reconnect_time).
            seeder, port = start_seeder(torrent, data)
            try:
                r = one_run(a.ringbit, h, port, work, run)
            finally:
                seeder.kill()
                seeder.wait()
            if r is None:
                print("run %d: no metadata within %.0f s" % (run, RUN_LIMIT_S))
                continue
            rows.append(r)
            print("run %d: wall %.3f s from spawn, fetch %.3f s, %.3f s after first connect"
                  % (run, *r))
        if rows:
            print("median: wall %.3f s, fetch %.3f s, after first connect %.3f s (target < 1 s)"
                  % tuple(statistics.median(x[i] for x in rows) for i in range(3)))
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
