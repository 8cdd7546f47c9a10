#!/usr/bin/python3
"""libtorrent as a long-lived, controllable seeder for the peer harness
(tests/it/peers.rs) and the swarm benchmark (scripts/bench-swarm.py).

tests/peers/lt_tool.py is shared and kept small; this file adds what a harness
needs from a seeder: commands on stdin while it runs, announce events, and
upload timing measured at the seeder. Run with Debian's interpreter:

  /usr/bin/python3 tests/peers/lt_extra.py seed TORRENT SAVE_PATH --port P [--peer H:P]...
  /usr/bin/python3 tests/peers/lt_extra.py leech TORRENT SAVE_PATH --port P [--peer H:P]...
      [--set NAME=VALUE]...

seed --high-performance-seed applies libtorrent's own high_performance_seed()
preset (larger send buffers and disk queue, more connections) first; the
loopback settings below and every --set still win.

--set applies one libtorrent setting (settings_pack name; the value is parsed as
an integer, true/false, or kept as a string) on top of the loopback settings,
for either command; an unknown name is an error. The swarm benchmark uses it to
run a leecher whose disk queue is not its own bottleneck.

leech downloads and exits 0 when complete, printing {"event":"done","seconds":S,"bytes":B}
(exit 1 with {"event":"timeout"} past --timeout). Unlike lt_tool.py leech it
asks libtorrent only for status and error alerts, so a benchmark does not
charge libtorrent for per-block alerts that Python has to unpack.

seed output and commands:

Output: one JSON object per line on stdout ("event" names the kind):
  {"event":"listening","port":P}                  ready: the torrent is added in seed_mode
  {"event":"announced","url":U,"peers":N}         a tracker answered
  {"event":"announce_error","url":U,"msg":M}      a tracker failed
  {"event":"stats","uploaded":B,"peers":N}        answer to "stats"
  {"event":"watch_done","bytes":B,"first":T0,"last":T1,"timeout":bool}
                                                  answer to "watch B": T0 is when the
                                                  payload upload counter first grew
                                                  after the command, T1 when it had
                                                  grown by B; time.monotonic() seconds
                                                  (CLOCK_MONOTONIC, comparable across
                                                  processes)
  {"event":"error","msg":M}                       a command it could not parse

Commands on stdin, one per line:
  connect HOST:PORT    dial a peer (libtorrent's connect_peer)
  reannounce           announce to every tracker now, ignoring the min interval
  stats                print a stats event
  watch BYTES          start timing the next BYTES of payload upload
  quit                 exit 0
End of stdin also exits, so a seeder never outlives the test that started it.
Every wait is bounded: --timeout (seconds) ends the process whatever happens.
"""
import argparse
import os
import select
import sys
import time

import libtorrent as lt

import lt_tool
from lt_tool import emit

# How often the upload counter is sampled while a watch runs: the error on a
# measured transfer time is at most two periods.
WATCH_POLL_S = 0.01
# How long one watch may run before it reports a timeout.
WATCH_LIMIT_S = 600.0
# Longest command line accepted on stdin.
MAX_COMMAND_BYTES = 4096


def session(port):
    # lt_tool.py's loopback settings (see /work/shared/PEERS.md), with only
    # status, tracker and error alerts.
    return lt_tool.session(port, {
        "alert_mask": lt.alert.category_t.status_notification
        | lt.alert.category_t.tracker_notification
        | lt.alert.category_t.error_notification,
        "user_agent": "lt_extra",
    })


def add(ses, a, flags=0):
    """Adds the torrent started (neither paused nor auto-managed) and dials
    every --peer."""
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(a.torrent)
    p.save_path = a.save_path
    p.flags |= flags
    p.flags &= ~lt.torrent_flags.auto_managed
    p.flags &= ~lt.torrent_flags.paused
    h = ses.add_torrent(p)
    for peer in a.peer or []:
        h.connect_peer(parse_peer(peer))
    return h


def parse_setting(text):
    """NAME=VALUE -> (name, value) with the value typed as libtorrent expects."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE, got %r" % text)
    defaults = lt.default_settings()
    if name not in defaults:
        raise argparse.ArgumentTypeError("unknown libtorrent setting %r" % name)
    kind = type(defaults[name])
    try:
        if kind is bool:
            if raw not in ("true", "false"):
                raise ValueError(raw)
            return name, raw == "true"
        return name, kind(raw)
    except ValueError:
        raise argparse.ArgumentTypeError("%s wants a %s, got %r" % (name, kind.__name__, raw))


# Settings of session() that a preset must not change.
LOOPBACK_KEYS = ("listen_interfaces", "enable_dht", "enable_lsd", "enable_upnp", "enable_natpmp",
                 "allow_multiple_connections_per_ip", "enable_outgoing_utp",
                 "enable_incoming_utp", "out_enc_policy", "in_enc_policy", "alert_mask",
                 "user_agent")


def apply_settings(ses, a):
    if getattr(a, "high_performance_seed", False):
        preset = lt.high_performance_seed()
        ses.apply_settings({k: v for k, v in preset.items() if k not in LOOPBACK_KEYS})
    if a.set:
        ses.apply_settings(dict(a.set))


def parse_peer(text):
    host, port = text.rsplit(":", 1)
    return (host.strip("[]"), int(port))


def cmd_seed(a):
    ses = session(a.port)
    apply_settings(ses, a)
    h = add(ses, a, lt.torrent_flags.seed_mode)
    for extra in a.also:
        p = lt.add_torrent_params()
        p.ti = lt.torrent_info(extra)
        p.save_path = a.save_path
        p.flags |= lt.torrent_flags.seed_mode
        p.flags &= ~lt.torrent_flags.auto_managed
        p.flags &= ~lt.torrent_flags.paused
        ses.add_torrent(p)
    emit({"event": "listening", "port": ses.listen_port()})

    deadline = time.monotonic() + a.timeout
    stdin = sys.stdin.buffer
    pending = b""
    watch = None  # (bytes wanted, counter at start, first growth time or None, started at)
    while time.monotonic() < deadline:
        wait_s = WATCH_POLL_S if watch else 0.2
        readable, _, _ = select.select([stdin], [], [], wait_s)
        if readable:
            chunk = os.read(stdin.fileno(), MAX_COMMAND_BYTES)
            if not chunk:
                return 0  # the test that owns us is gone
            pending += chunk
            if len(pending) > MAX_COMMAND_BYTES and b"\n" not in pending:
                emit({"event": "error", "msg": "command line too long"})
                pending = b""
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                words = line.decode("utf-8", "replace").split()
                if not words:
                    continue
                try:
                    if words[0] == "connect" and len(words) == 2:
                        h.connect_peer(parse_peer(words[1]))
                    elif words[0] == "reannounce":
                        h.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
                    elif words[0] == "stats":
                        st = h.status()
                        emit({"event": "stats", "uploaded": st.total_payload_upload,
                              "peers": st.num_peers})
                    elif words[0] == "watch" and len(words) == 2:
                        watch = (int(words[1]), h.status().total_payload_upload, None,
                                 time.monotonic())
                    elif words[0] == "quit":
                        return 0
                    else:
                        emit({"event": "error", "msg": "unknown command: %s" % line[:80]})
                except (ValueError, RuntimeError) as e:
                    emit({"event": "error", "msg": str(e)})
        for al in ses.pop_alerts():
            if isinstance(al, lt.tracker_reply_alert):
                emit({"event": "announced", "url": al.tracker_url(), "peers": al.num_peers})
            elif isinstance(al, lt.tracker_error_alert):
                emit({"event": "announce_error", "url": al.tracker_url(), "msg": al.message()})
        if watch:
            want, base, first, started = watch
            now = time.monotonic()
            sent = h.status().total_payload_upload - base
            if first is None and sent > 0:
                first = now
                watch = (want, base, first, started)
            if sent >= want or now - started > WATCH_LIMIT_S:
                emit({"event": "watch_done", "bytes": sent, "first": first, "last": now,
                      "timeout": sent < want})
                watch = None
    return 0


def cmd_leech(a):
    ses = session(a.port)
    apply_settings(ses, a)
    h = add(ses, a)
    if a.torrent_download_limit:
        # A torrent limit binds loopback peers too (session limits do not:
        # libtorrent puts local peers in an unlimited peer class).
        h.set_download_limit(a.torrent_download_limit)
    emit({"event": "listening", "port": ses.listen_port()})
    start = time.monotonic()
    deadline = start + a.timeout
    while time.monotonic() < deadline:
        ses.wait_for_alert(100)
        ses.pop_alerts()
        st = h.status()
        if st.is_seeding:
            emit({"event": "done", "seconds": time.monotonic() - start, "bytes": st.total_wanted})
            return 0
    emit({"event": "timeout", "progress": h.status().progress})
    return 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("seed", "leech"):
        s = sub.add_parser(name)
        s.add_argument("torrent")
        s.add_argument("save_path")
        s.add_argument("--port", type=int, default=0)
        s.add_argument("--peer", action="append")
        s.add_argument("--timeout", type=float, default=3600.0)
        s.add_argument("--set", action="append", type=parse_setting, metavar="NAME=VALUE")
        if name == "seed":
            s.add_argument("--high-performance-seed", action="store_true")
            # More torrents seeded by the same session (scripts/bench-cold-seed.py);
            # their data is in the same save_path. Commands act on the first.
            s.add_argument("--also", action="append", default=[], metavar="TORRENT")
        else:
            s.add_argument("--torrent-download-limit", type=int, default=0,
                           metavar="BYTES_PER_S")
    a = ap.parse_args()
    sys.exit({"seed": cmd_seed, "leech": cmd_leech}[a.cmd](a) or 0)


if __name__ == "__main__":
    main()
