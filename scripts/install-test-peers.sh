#!/usr/bin/env bash
# Installs the real peers ringbit's tests run against (Debian packages).
# Idempotent: does nothing when every package is already installed.
# python3-fusepy (with libfuse2) runs tests/peers/failfs.py, the FUSE
# filesystem whose fsync fails on demand (tests/it/durability.rs).
set -euo pipefail
PACKAGES=(python3-libtorrent transmission-cli transmission-daemon aria2 opentracker mktorrent python3-fusepy strace python3-seccomp)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing test peers: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
