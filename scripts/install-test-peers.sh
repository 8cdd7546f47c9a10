#!/usr/bin/env bash
# Installs the real peers ringbit's tests run against (Debian packages) and
# the qBittorrent Web API client library (PyPI `qbittorrent-api`, for
# tests/peers/qbt_client.py), into Debian's /usr/bin/python3.
# Idempotent: does nothing when everything is already installed.
# python3-fusepy (with libfuse2) runs tests/peers/failfs.py, the FUSE
# filesystem whose fsync fails on demand (tests/it/durability.rs).
# libssl-dev and pkg-config build the optional openssl-sha1 feature (tested below).
set -euo pipefail
PACKAGES=(python3-libtorrent python3-pip transmission-cli transmission-daemon aria2 opentracker mktorrent python3-fusepy strace python3-seccomp libssl-dev pkg-config)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test peers: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! /usr/bin/python3 -c "import qbittorrentapi" 2>/dev/null; then
  echo "installing qbittorrent-api (PyPI)"
  $SUDO /usr/bin/python3 -m pip install --quiet --break-system-packages --root-user-action=ignore \
    "qbittorrent-api>=2024.1"
fi
