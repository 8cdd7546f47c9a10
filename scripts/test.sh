#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs the test peers,
# then runs every unit, property and interop test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-peers.sh
cargo test --all-targets --locked "$@"
cargo test --doc --locked
