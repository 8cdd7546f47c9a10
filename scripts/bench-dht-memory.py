#!/usr/bin/python3
"""DHT memory and packets per second with N torrents announced (issue 12;
target: under 64 MiB extra for 10,000 torrents).

What it does
  1. Generates N tiny single-file torrents (bench-scale.py's generator: the
     same arguments give the same info hashes; reused between runs).
  2. Starts a loopback DHT of libtorrent nodes (tests/peers/lt_dht.py, DHT
     restrictions for the internet off) on free ports.
  3. Twice, `ringbit daemon` on a fresh state dir: once with `dht = false`,
     once with `dht = true` and `dht_bootstrap` = the libtorrent nodes. Adds
     all N torrents through the API, waits (bounded) until all are seeding,
     then samples for --settle-s seconds: VmRSS, VmHWM, and the DHT counters
     of /metrics (`ringbit_dht_queries{direction}`, `ringbit_dht_nodes`,
     `ringbit_dht_torrents`).
  4. Prints RSS with and without the DHT, the difference, and DHT queries
     (datagrams) per second in and out over the settle window, with `uptime`.

Usage: /usr/bin/python3 scripts/bench-dht-memory.py [--ringbit PATH]
       [--count 10000] [--settle-s 60] [--nodes 3] [--workdir DIR]
Runs only on 127.0.0.1 (the libtorrent nodes bootstrap from each other, never
from the internet routers; ringbit gets only them as routers).
"""
import argparse
import http.client
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import benchlib  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_scale", os.path.join(HERE, "bench-scale.py"))
bench_scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_scale)

LOAD_LIMIT_S = 900.0
STOP_LIMIT_S = 120.0


def log(msg):
    sys.stderr.write("bench-dht-memory: %s\n" % msg)
    sys.stderr.flush()


def rss_kib(pid):
    s = bench_scale.proc_status(pid)
    return s["VmRSS"], s["VmHWM"]


def metrics(http, token):
    status, _, body = http.request("GET", "/metrics", headers={"Authorization": "Bearer " + token})
    out = {}
    if status != 200:
        return out
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("ringbit_dht_"):
            m = re.match(r"(\S+?)(\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
            if m:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def dht_queries(m):
    """(in, out) totals from the metrics dict."""
    q_in = sum(v for k, v in m.items()
               if k.startswith("ringbit_dht_queries") and 'direction="in"' in k)
    q_out = sum(v for k, v in m.items()
                if k.startswith("ringbit_dht_queries") and 'direction="out"' in k)
    return q_in, q_out


def run_daemon(args, work, data_dir, torrents, dht_nodes):
    label = "dht" if dht_nodes else "no-dht"
    d = os.path.join(work, label)
    state = os.path.join(d, "state")
    os.makedirs(state, exist_ok=True)
    api_port = benchlib.free_port()
    config = os.path.join(d, "ringbit.toml")
    with open(config, "w") as f:
        f.write("listen_port = %d\n" % benchlib.free_port())
        f.write("bind = [\"127.0.0.1\"]\n")
        f.write("state_dir = %s\n" % json.dumps(state))
        f.write("download_dir = %s\n" % json.dumps(data_dir))
        f.write("api_listen = \"127.0.0.1:%d\"\n" % api_port)
        f.write("trackers = false\n")
        f.write("dht = %s\n" % ("true" if dht_nodes else "false"))
        if dht_nodes:
            f.write("dht_bootstrap = %s\n" % json.dumps(["127.0.0.1:%d" % p for p in dht_nodes]))
        tor_dirs = sorted({os.path.dirname(t["path"]) for t in torrents})
        f.write("download_roots = %s\n" % json.dumps([data_dir] + tor_dirs))
    logf = open(os.path.join(d, "daemon.log"), "wb")
    proc = subprocess.Popen([args.ringbit, "daemon", "--config", config],
                            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                            env=dict(os.environ, RINGBIT_DHT_BOOTSTRAP="none"
                                     if not dht_nodes else ",".join(
                                         "127.0.0.1:%d" % p for p in dht_nodes)))
    try:
        http = bench_scale.Http(api_port)
        token_path = os.path.join(state, "api.token")
        deadline = time.monotonic() + 60
        while not os.path.exists(token_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        with open(token_path) as f:
            token = f.read().strip()
        auth = {"Authorization": "Bearer " + token}
        t0 = time.monotonic()
        for i, t in enumerate(torrents):
            body = json.dumps({"path": t["path"]}).encode()
            status, _, resp = http.request("POST", "/api/v1/torrents", body=body,
                                           headers=dict(auth, **{"Content-Type":
                                                                 "application/json"}))
            if status not in (200, 201, 202):
                raise RuntimeError("add %s: HTTP %d %s" % (t["path"], status, resp[:200]))
            if (i + 1) % 2000 == 0:
                log("%s: added %d/%d" % (label, i + 1, len(torrents)))
        deadline = time.monotonic() + LOAD_LIMIT_S
        while time.monotonic() < deadline:
            status, _, body = http.request("GET", "/api/v1/status", headers=auth)
            s = json.loads(body)
            if s.get("by_state", {}).get("seeding", 0) == len(torrents):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("%s: not all seeding within %.0f s" % (label, LOAD_LIMIT_S))
        loaded_s = time.monotonic() - t0
        m0 = metrics(http, token)
        t_start = time.monotonic()
        samples = []
        while time.monotonic() - t_start < args.settle_s:
            samples.append(rss_kib(proc.pid)[0])
            time.sleep(1.0)
        m1 = metrics(http, token)
        elapsed = time.monotonic() - t_start
        rss, hwm = rss_kib(proc.pid)
        q0, q1 = dht_queries(m0), dht_queries(m1)
        result = {
            "label": label,
            "loaded_s": loaded_s,
            "rss_mib": rss / 1024,
            "rss_max_mib": max(samples + [rss]) / 1024,
            "hwm_mib": hwm / 1024,
            "queries_in_per_s": (q1[0] - q0[0]) / elapsed,
            "queries_out_per_s": (q1[1] - q0[1]) / elapsed,
            "dht": {k: v for k, v in m1.items() if "nodes" in k or "torrents" in k
                    or "peers_found" in k},
        }
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()


def start_dht_nodes(work, torrent, data_dir, n):
    ports = []
    while len(ports) < n + 1:
        p = benchlib.free_port()
        if p not in ports:
            ports.append(p)
    proc = subprocess.Popen(
        ["/usr/bin/python3", os.path.join(ROOT, "tests/peers/lt_dht.py"),
         "--ports", ",".join(map(str, ports)), "seed", torrent, data_dir, "--timeout", "36000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, ports


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ringbit", default=os.path.join(ROOT, "target/release/ringbit"))
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--settle-s", type=float, default=60.0)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    missing = benchlib.ringbit_missing(a.ringbit, "daemon")
    if missing:
        raise SystemExit(missing)
    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print("machine:", benchlib.machine())
    print("uptime at start:", uptime())
    print("ringbit:", a.ringbit)
    with tempfile.TemporaryDirectory() as tmp:
        gen_dir = a.workdir or os.path.join(tmp, "gen")
        os.makedirs(gen_dir, exist_ok=True)
        data_dir, torrents, _ = bench_scale.generate(gen_dir, a.count, 16 * 1024, 16 * 1024,
                                                     None, 12)
        nodes_proc, ports = start_dht_nodes(tmp, torrents[0]["path"], data_dir, a.nodes)
        try:
            time.sleep(3)  # the libtorrent nodes find each other
            rows = [run_daemon(a, tmp, data_dir, torrents, None),
                    run_daemon(a, tmp, data_dir, torrents, ports)]
        finally:
            nodes_proc.kill()
            nodes_proc.wait()
    for r in rows:
        print("%-7s loaded %6.1f s  RSS %7.1f MiB (max %7.1f, HWM %7.1f)  DHT queries/s in %.1f "
              "out %.1f  %s" % (r["label"], r["loaded_s"], r["rss_mib"], r["rss_max_mib"],
                                r["hwm_mib"], r["queries_in_per_s"], r["queries_out_per_s"],
                                json.dumps(r["dht"])))
    print("DHT extra RSS: %.1f MiB (settled), %.1f MiB (HWM); target < 64 MiB for 10,000"
          % (rows[1]["rss_mib"] - rows[0]["rss_mib"], rows[1]["hwm_mib"] - rows[0]["hwm_mib"]))
    print("uptime at end:", uptime())


if __name__ == "__main__":
    main()
