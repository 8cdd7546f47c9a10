#!/usr/bin/env bash
# The issue 14 leecher benchmark: aria2, libtorrent and ringbit leechers from
# the same `ringbit seed`, interleaved rounds, medians and ratios (see
# scripts/bench-swarm.py --leech-compare). Extra arguments go to bench-swarm.py
# (e.g. --size 1G --runs 3 --ringbit-leech-flag=--no-direct-io).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec /usr/bin/python3 "$here/bench-swarm.py" --leech-compare "$@"
