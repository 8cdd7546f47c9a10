#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs the test peers,
# then runs every unit, property and interop test, and runs the download,
# seeding and daemon interop tests a second time on the epoll I/O driver
# (the first run uses io_uring, the default where the kernel allows it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-peers.sh
cargo test --all-targets --locked "$@"
cargo test --doc --locked
echo "== the SHA1 backends with the optional openssl-sha1 feature"
cargo test --lib --locked --features openssl-sha1 "$@" -- hash::
echo "== the download, seeding and daemon interop tests again on the epoll driver"
RINGBIT_IO_DRIVER=epoll cargo test --test it --locked "$@" -- download:: seeding:: daemon::
