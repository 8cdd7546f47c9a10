#!/usr/bin/env bash
# Recheck speed, in one run over the same data in the page cache:
# ringbit verify vs libtorrent (force_recheck) vs aria2 (--check-integrity),
# against the hashing ceiling of `openssl speed -evp sha1 -multi <cores>`.
#
#   scripts/bench-verify.sh [SIZE_MIB=1024] [RUNS=3]
#
# With COLD=1 it also times ringbit verify on cold data (the payload's pages
# dropped from the cache with `dd iflag=nocache count=0`, only that file) and
# compares with the disk's sequential read speed (`dd iflag=direct bs=4M`).
#
# Makes SIZE_MIB of random data and a 256 KiB-piece torrent (mktorrent) in a
# temp dir (BENCH_DIR to choose where), warms the page cache, times each tool
# RUNS times and prints medians and ratios. Needs the test peers
# (scripts/install-test-peers.sh) and openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
RUNS=${2:-3}
CORES=$(nproc)

# RINGBIT=path/to/ringbit skips the build.
if [ -z "${RINGBIT:-}" ]; then
  cargo build --release --quiet --bin ringbit
  RINGBIT=$PWD/target/release/ringbit
fi
LT_TOOL="/usr/bin/python3 $PWD/tests/peers/lt_tool.py"

WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/bench-verify.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/data"
echo "== making ${SIZE_MIB} MiB of data and a torrent in $WORK"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$WORK/data/payload.bin"
mktorrent -d -l 18 -a http://127.0.0.1:1/announce -o "$WORK/t.torrent" "$WORK/data/payload.bin" > /dev/null
BYTES=$((SIZE_MIB << 20))
cat "$WORK/data/payload.bin" > /dev/null  # warm the page cache

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }

# The ceiling is measured just before and just after ringbit's runs and
# averaged, so a load that changes during the run moves both sides alike.
openssl_gbs() {
  openssl speed -evp sha1 -multi "$CORES" -bytes 262144 -seconds 3 2>/dev/null \
    | awk '/^sha1 /{v=$2} END{sub("k","",v); printf "%.3f", v*1000/1e9}'
}
echo "== openssl speed -evp sha1 -multi $CORES (256 KiB blocks)"
OPENSSL_BEFORE=$(openssl_gbs)
echo "openssl (before): $OPENSSL_BEFORE GB/s"

# Wall time, plus CPU seconds (user + sys), which a busy shared machine
# distorts far less than wall time.
ringbit_times=()
ringbit_cpu=()
for _ in $(seq "$RUNS"); do
  cat "$WORK/data/payload.bin" > /dev/null
  s=$(now)
  /usr/bin/time -f "%U %S" -o "$WORK/ringbit.time" "$RINGBIT" verify "$WORK/t.torrent" "$WORK/data" > "$WORK/ringbit.out"
  e=$(now)
  ringbit_times+=("$(awk -v s="$s" -v e="$e" 'BEGIN{print e-s}')")
  ringbit_cpu+=("$(awk '{print $1+$2}' "$WORK/ringbit.time")")
done
RINGBIT_S=$(printf '%s\n' "${ringbit_times[@]}" | median)
RINGBIT_CPU=$(printf '%s\n' "${ringbit_cpu[@]}" | median)
echo "ringbit verify: ${ringbit_times[*]} s (median $RINGBIT_S), CPU ${ringbit_cpu[*]} s (median $RINGBIT_CPU)"

# The pread read path, for comparison with the default above (a mapping
# guarded against SIGBUS, storage::sigbus).
pread_times=()
for _ in $(seq "$RUNS"); do
  cat "$WORK/data/payload.bin" > /dev/null
  s=$(now)
  "$RINGBIT" verify --read pread "$WORK/t.torrent" "$WORK/data" > /dev/null
  e=$(now)
  pread_times+=("$(awk -v s="$s" -v e="$e" 'BEGIN{print e-s}')")
done
PREAD_S=$(printf '%s\n' "${pread_times[@]}" | median)
echo "ringbit verify --read pread: ${pread_times[*]} s (median $PREAD_S)"
OPENSSL_AFTER=$(openssl_gbs)
OPENSSL_GBS=$(awk -v a="$OPENSSL_BEFORE" -v b="$OPENSSL_AFTER" 'BEGIN{printf "%.3f", (a+b)/2}')
echo "openssl (after): $OPENSSL_AFTER GB/s; ceiling used: $OPENSSL_GBS GB/s"

lt_times=()
for _ in $(seq "$RUNS"); do
  cat "$WORK/data/payload.bin" > /dev/null
  out=$($LT_TOOL recheck "$WORK/t.torrent" "$WORK/data" --timeout 600)
  lt_times+=("$(echo "$out" | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["progress"]==1.0, d; print(d["seconds"])')")
done
LT_S=$(printf '%s\n' "${lt_times[@]}" | median)
echo "libtorrent recheck: ${lt_times[*]} s (median $LT_S)"

# aria2 works in 1-second ticks: its wall time has a fixed overhead, measured
# on a one-piece torrent and subtracted.
aria() {
  aria2c --check-integrity=true --seed-time=0 --enable-dht=false --enable-dht6=false \
    --bt-enable-lpd=false --enable-peer-exchange=false --interface=127.0.0.1 \
    --disable-ipv6=true --bt-stop-timeout=1 --console-log-level=error --summary-interval=0 \
    --file-allocation=none -d "$1" "$2" > "$WORK/aria2.out" 2>&1 || true
}
mkdir -p "$WORK/tiny"
head -c 262144 /dev/urandom > "$WORK/tiny/tiny.bin"
mktorrent -d -l 18 -a http://127.0.0.1:1/announce -o "$WORK/tiny.torrent" "$WORK/tiny/tiny.bin" > /dev/null
aria_times=()
aria_fixed=()
for _ in $(seq "$RUNS"); do
  s=$(now); aria "$WORK/tiny" "$WORK/tiny.torrent"; e=$(now)
  aria_fixed+=("$(awk -v s="$s" -v e="$e" 'BEGIN{print e-s}')")
  cat "$WORK/data/payload.bin" > /dev/null
  s=$(now); aria "$WORK/data" "$WORK/t.torrent"; e=$(now)
  aria_times+=("$(awk -v s="$s" -v e="$e" 'BEGIN{print e-s}')")
done
ARIA_FIXED=$(printf '%s\n' "${aria_fixed[@]}" | median)
ARIA_WALL=$(printf '%s\n' "${aria_times[@]}" | median)
ARIA_S=$(awk -v w="$ARIA_WALL" -v f="$ARIA_FIXED" 'BEGIN{d=w-f; if (d < 0.001) d=0.001; print d}')
echo "aria2 check wall: ${aria_times[*]} s (median $ARIA_WALL), fixed overhead (1 piece) $ARIA_FIXED s -> $ARIA_S s"

awk -v b="$BYTES" -v rc="$RINGBIT_CPU" -v r="$RINGBIT_S" -v m="$PREAD_S" -v l="$LT_S" -v a="$ARIA_S" -v o="$OPENSSL_GBS" -v c="$CORES" -v load="$(cut -d' ' -f1-3 /proc/loadavg)" 'BEGIN{
  rg = b / r / 1e9;
  printf "\n== %d MiB, %d cores, page cache warm, medians of runs (load average now: %s)\n", b/1048576, c, load;
  printf "%-28s %8.3f s  %6.3f GB/s  (%.3f CPU-s, %.2f GB per CPU-s)\n", "ringbit verify (mmap)", r, rg, rc, b/rc/1e9;
  printf "%-28s %8.3f s  %6.3f GB/s  (%.1f%% of openssl)\n", "ringbit verify --read pread", m, b/m/1e9, 100*b/m/1e9/o;
  printf "%-28s %8.3f s  %6.3f GB/s\n", "libtorrent force_recheck", l, b/l/1e9;
  printf "%-28s %8.3f s  %6.3f GB/s\n", "aria2 (wall - fixed ticks)", a, b/a/1e9;
  printf "%-28s %8s    %6.3f GB/s\n", "openssl -multi ceiling", "", o;
  printf "ringbit / openssl ceiling:  %5.1f%%  (target >= 90%%)\n", 100*rg/o;
  printf "libtorrent / ringbit time:  %5.2fx  (target >= 2x)\n", l/r;
  printf "aria2 / ringbit time:       %5.2fx\n", a/r;
}'

if [ "${COLD:-0}" = 1 ]; then
  # Freshly written pages are dirty and cannot be dropped: write them back first.
  drop() { sync "$WORK/data/payload.bin"; dd if="$WORK/data/payload.bin" iflag=nocache count=0 status=none; }
  drop
  s=$(now); dd if="$WORK/data/payload.bin" of=/dev/null bs=4M iflag=direct status=none; e=$(now)
  DD_S=$(awk -v s="$s" -v e="$e" 'BEGIN{print e-s}')
  drop
  s=$(now); "$RINGBIT" verify "$WORK/t.torrent" "$WORK/data" > /dev/null; e=$(now)
  COLD_S=$(awk -v s="$s" -v e="$e" 'BEGIN{print e-s}')
  awk -v b="$BYTES" -v d="$DD_S" -v r="$COLD_S" 'BEGIN{
    printf "\n== cold data\n";
    printf "%-28s %8.3f s  %6.3f GB/s\n", "dd iflag=direct bs=4M", d, b/d/1e9;
    printf "%-28s %8.3f s  %6.3f GB/s\n", "ringbit verify (cold)", r, b/r/1e9;
    printf "ringbit cold / disk:        %5.1f%%  (target >= 90%%)\n", 100*d/r;
  }'
fi
