#!/usr/bin/env bash
# SHA1 on this CPU and as on a CPU without SHA extensions (SHA-NI): the sha1
# crate against OpenSSL, one core. Used for docs/storage.md, "SHA1 on CPUs
# without SHA-NI". Run on a quiet machine; prints `uptime` with the figures.
#
#   scripts/bench-sha1.sh
#
# Without SHA-NI is emulated: the sha1 crate is built with
# `--cfg sha1_backend="soft"` (its portable code) in its own target dir, and
# OpenSSL is told the CPU lacks the SHA extension with
# OPENSSL_ia32cap=":~0x20000000" (bit 29 of CPUID leaf 7 EBX).
set -euo pipefail
cd "$(dirname "$0")/.."
mask=':~0x20000000'
uptime
grep -q -w sha_ni /proc/cpuinfo && echo "cpu: has sha_ni" || echo "cpu: no sha_ni"
echo "== openssl speed -evp sha1 (16 KiB blocks), with and without the SHA extension"
openssl speed -seconds 3 -bytes 16384 -evp sha1 2>/dev/null | tail -1
OPENSSL_ia32cap="$mask" openssl speed -seconds 3 -bytes 16384 -evp sha1 2>/dev/null | tail -1
echo "== criterion, this CPU"
cargo bench --locked --features openssl-sha1 --bench hash -- sha1_backends 2>&1 \
  | grep -E "^sha1_backends|thrpt"
echo "== criterion, SHA extensions masked (sha1 crate soft backend, OpenSSL masked)"
OPENSSL_ia32cap="$mask" RUSTFLAGS='--cfg sha1_backend="soft"' \
  CARGO_TARGET_DIR=target/sha1-soft \
  cargo bench --locked --features openssl-sha1 --bench hash -- sha1_backends 2>&1 \
  | grep -E "^sha1_backends|thrpt"
uptime
