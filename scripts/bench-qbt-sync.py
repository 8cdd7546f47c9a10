#!/usr/bin/python3
"""qBittorrent API cost at 10,000 torrents (issue 16): ringbit vs qbittorrent-nox.

What it does
  1. Generates N tiny single-file torrents (default 10,000 x 4 KiB, no
     tracker) with bench-scale.py's generator (same data, same hashes).
  2. For each client (ringbit daemon, then qbittorrent-nox with a temporary
     profile, headless on 127.0.0.1, DHT/LSD/PeX/UPnP off): start it, add all
     N torrents (bench-scale.py's clients), wait until all seed, then time
     over the Web API v2 (keep-alive connection, --reps runs each, median):
       full sync     GET /api/v2/sync/maindata?rid=0
       incremental   GET /api/v2/sync/maindata?rid=R, R from the answer
                     before, 1 s later (what Flood/VueTorrent poll)
       info          GET /api/v2/torrents/info
     and the bytes of each answer; then stops it.
  3. Prints a table and the machine's load (uptime) before and after.

qbittorrent-nox is installed with apt-get when missing (Debian package
`qbittorrent-nox`; sudo when not root); --no-qbittorrent skips it.

Usage
  /usr/bin/python3 scripts/bench-qbt-sync.py [--count 10000] [--size 4K]
      [--reps 5] [--ringbit target/debug/ringbit] [--workdir DIR]
      [--no-qbittorrent]
"""
import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
spec = importlib.util.spec_from_file_location("bench_scale", os.path.join(HERE, "bench-scale.py"))
scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scale)

# Bounds on every wait.
SEED_WAIT_S = 1800.0
INCREMENTAL_GAP_S = 1.0


def uptime():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def ensure_qbittorrent():
    if shutil.which("qbittorrent-nox"):
        return True
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    scale.log("installing qbittorrent-nox (apt-get)")
    r = subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                               "qbittorrent-nox"], stdout=subprocess.DEVNULL)
    return r.returncode == 0 and shutil.which("qbittorrent-nox") is not None


def timed(client, path, headers):
    t0 = time.perf_counter()
    status, _, body = client.http.request("GET", path, headers=headers, timeout=120)
    secs = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError("%s GET %s: HTTP %d %s" % (client.name, path, status, body[:200]))
    return secs, body


def qbt_session(client):
    """qBittorrent keeps sync/maindata state per login session: without a
    session cookie every answer is a full update. Logs in (4.5's default
    admin/adminadmin; localhost needs no login for anything else here)."""
    body = "username=admin&password=adminadmin".encode()
    status, headers, resp = client.http.request(
        "POST", "/api/v2/auth/login", body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    cookie = headers.get("set-cookie", "")
    if status != 200 or "SID=" not in cookie:
        raise RuntimeError("qbittorrent login: HTTP %d %s %r" % (status, resp[:100], cookie))
    return {"Cookie": cookie.split(";")[0]}


def measure(client, reps):
    headers = client.auth() if hasattr(client, "auth") else qbt_session(client)
    out = {}
    full = [timed(client, "/api/v2/sync/maindata?rid=0", headers) for _ in range(reps)]
    answer = json.loads(full[-1][1])
    if len(answer.get("torrents", {})) != client.n:
        raise RuntimeError("%s: full sync holds %d torrents, not %d"
                           % (client.name, len(answer.get("torrents", {})), client.n))
    out["full sync"] = full
    rid = answer["rid"]
    inc = []
    for _ in range(reps):
        time.sleep(INCREMENTAL_GAP_S)
        secs, body = timed(client, "/api/v2/sync/maindata?rid=%d" % rid, headers)
        inc.append((secs, body))
        reply = json.loads(body)
        if reply.get("full_update"):
            raise RuntimeError("%s: rid %d answered with a full update" % (client.name, rid))
        rid = reply["rid"]
    out["incremental"] = inc
    out["info"] = [timed(client, "/api/v2/torrents/info", headers) for _ in range(reps)]
    return {k: (statistics.median(s for s, _ in v) * 1000, statistics.median(len(b) for _, b in v))
            for k, v in out.items()}


def run(cls, args, root, data_dir, torrents):
    ns = argparse.Namespace(reuse_primed=False, ready_timeout=120.0, prime_timeout=SEED_WAIT_S,
                            tracker=None, ringbit=args.ringbit, load_timeout=600.0)
    client = cls(ns, root, data_dir, torrents, {"count": len(torrents)})
    client.prime_start()
    deadline = time.monotonic() + SEED_WAIT_S
    try:
        while True:
            st = client.try_poll()
            if st and st["done"]:
                break
            if client.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("%s: not all seeding (last %s; log %s)"
                                   % (client.name, st, client.log_path))
            time.sleep(1.0)
        scale.log("%s: all %d seeding; measuring" % (client.name, client.n))
        return measure(client, args.reps), client.version()
    finally:
        client.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--size", default="4K")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ringbit", default=os.path.join(scale.REPO, "target", "debug", "ringbit"))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-qbittorrent", action="store_true")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench-qbt-sync-")
    os.makedirs(work, exist_ok=True)
    load_before = uptime()
    data_dir, torrents, _ = scale.generate(work, args.count, scale.parse_size(args.size),
                                           16384, None, 1)
    clients = [scale.Ringbit]
    if not args.no_qbittorrent:
        if ensure_qbittorrent():
            clients.append(scale.Qbittorrent)
        else:
            scale.log("qbittorrent-nox unavailable: ringbit only")
    results = {}
    try:
        for cls in clients:
            results[cls.name] = run(cls, args, os.path.join(work, "state"), data_dir, torrents)
            scale.log("%s: %s" % (cls.name, results[cls.name]))
    finally:
        scale.cleanup_live()
    print("\n%d torrents; load before %s, after %s" % (args.count, load_before, uptime()))
    print("%-14s %-12s %12s %12s" % ("client", "request", "ms (median)", "bytes"))
    for name, (res, version) in results.items():
        for what, (ms, size) in res.items():
            print("%-14s %-12s %12.1f %12d" % (name, what, ms, size))
        print("  (%s)" % version)


if __name__ == "__main__":
    main()
