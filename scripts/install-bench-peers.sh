#!/usr/bin/env bash
# Installs what scripts/bench-scale.py runs against (Debian packages): the two
# other seed-box daemons it measures, libtorrent's Python binding (fallback
# .torrent writer, not needed by default), iproute2 and util-linux for the
# loopback-only network namespace (`unshare --net`, `ip link set lo up`).
# Idempotent: does nothing when every package is already installed.
set -euo pipefail
PACKAGES=(transmission-daemon qbittorrent-nox python3-libtorrent iproute2 util-linux)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing benchmark peers: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
