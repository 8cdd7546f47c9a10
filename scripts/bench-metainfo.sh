#!/usr/bin/env bash
# Decoding a 50,000-file .torrent: ringbit (criterion, benches/metainfo.rs)
# against libtorrent's torrent_info (python3-libtorrent) on the same file.
# Prints both medians and the ratio libtorrent / ringbit (> 1: ringbit faster).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench metainfo -- --noplot "$@"
torrent=target/bench-metainfo-50000.torrent
estimates=target/criterion/metainfo/from_bytes_50000_files/new/estimates.json
/usr/bin/python3 - "$torrent" "$estimates" <<'PY'
import json, statistics, sys, time
import libtorrent as lt

path, estimates = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
lt.torrent_info(data)  # warm up
runs = []
for _ in range(20):
    start = time.perf_counter()
    # From bytes already in memory, like the criterion bench (no file read).
    lt.torrent_info(data)
    runs.append(time.perf_counter() - start)
lt_s = statistics.median(runs)
ours_s = json.load(open(estimates))["median"]["point_estimate"] / 1e9
mib = len(data) / (1 << 20)
print(f"file: {path} ({mib:.1f} MiB, 50000 files)")
print(f"ringbit Metainfo::from_bytes: {ours_s * 1e3:8.2f} ms ({mib / ours_s:7.1f} MiB/s)")
print(f"libtorrent torrent_info:      {lt_s * 1e3:8.2f} ms ({mib / lt_s:7.1f} MiB/s)")
print(f"ratio libtorrent/ringbit:     {lt_s / ours_s:8.2f}")
PY
