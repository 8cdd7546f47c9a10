#!/usr/bin/python3
"""libtorrent (python3-libtorrent) as a test peer and reference tool for ringbit's tests.

Run with Debian's interpreter: /usr/bin/python3 tests/peers/lt_tool.py SUBCOMMAND ...
Every wait is bounded by --timeout. Output for the test is one JSON object on stdout.

  create PATH OUT --piece-length N [--tracker URL]...   make a v1-only torrent, print {"info_hash"}
  info TORRENT                                          print {"info_hash","name","num_files","total_size","num_pieces","piece_length"}
  recheck TORRENT SAVE_PATH                             force a recheck, print {"num_pieces","have","progress","seconds"}
  seed TORRENT SAVE_PATH --port P [--peer H:P]...       seed (seed_mode) until killed; prints {"listening":port} when ready
  leech TORRENT SAVE_PATH --port P [--peer H:P]...      download, exit 0 when complete, print {"seconds","bytes"}
                                                        (TORRENT may be a magnet link)
"""
import argparse
import json
import os
import sys
import time

import libtorrent as lt


def session(port, extra=None):
    settings = {
        "listen_interfaces": "127.0.0.1:%d" % port,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "out_enc_policy": 2,  # disabled: plaintext handshakes
        "in_enc_policy": 1,  # enabled: accept either
        "alert_mask": lt.alert.category_t.all_categories,
        "user_agent": "lt_tool",
    }
    if extra:
        settings.update(extra)
    return lt.session(settings)


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cmd_create(a):
    fs = lt.file_storage()
    lt.add_files(fs, os.path.abspath(a.path))
    ct = lt.create_torrent(fs, a.piece_length, flags=lt.create_torrent.v1_only)
    for tier, url in enumerate(a.tracker or []):
        ct.add_tracker(url, tier)
    lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(a.path)))
    data = lt.bencode(ct.generate())
    with open(a.out, "wb") as f:
        f.write(data)
    ti = lt.torrent_info(a.out)
    emit({"info_hash": str(ti.info_hashes().v1)})


def cmd_info(a):
    ti = lt.torrent_info(a.torrent)
    emit({
        "info_hash": str(ti.info_hashes().v1),
        "name": ti.name(),
        "num_files": ti.num_files(),
        "total_size": ti.total_size(),
        "num_pieces": ti.num_pieces(),
        "piece_length": ti.piece_length(),
    })


def add(ses, a, flags=0):
    # A magnet link instead of a .torrent: libtorrent fetches the metadata
    # (BEP 9) from the peers it meets, then downloads.
    if a.torrent.startswith("magnet:"):
        p = lt.parse_magnet_uri(a.torrent)
    else:
        p = lt.add_torrent_params()
        p.ti = lt.torrent_info(a.torrent)
    p.save_path = a.save_path
    p.flags |= flags
    h = ses.add_torrent(p)
    for peer in a.peer or []:
        host, port = peer.rsplit(":", 1)
        h.connect_peer((host, int(port)))
    return h


# Seconds between dials of the --peer addresses while no peer is connected.
REDIAL_SECONDS = 2.0


def wait_for(ses, pred, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ses.wait_for_alert(200)
        alerts = ses.pop_alerts()
        if pred(alerts):
            return True
    return False


def cmd_recheck(a):
    ses = session(0)
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(a.torrent)
    p.save_path = a.save_path
    p.flags &= ~lt.torrent_flags.auto_managed
    p.flags &= ~lt.torrent_flags.paused
    h = ses.add_torrent(p)
    # Let the initial (resume-less) check settle, then time a forced recheck.
    wait_for(ses, lambda al: any(isinstance(x, lt.torrent_checked_alert) for x in al), a.timeout)
    start = time.time()
    h.force_recheck()
    ok = wait_for(ses, lambda al: any(isinstance(x, lt.torrent_checked_alert) for x in al), a.timeout)
    seconds = time.time() - start
    st = h.status()
    emit({"num_pieces": p.ti.num_pieces(), "have": st.num_pieces, "progress": st.progress,
          "seconds": seconds, "checked": ok})


def cmd_seed(a):
    ses = session(a.port)
    h = add(ses, a, lt.torrent_flags.seed_mode)
    emit({"listening": ses.listen_port()})
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        ses.wait_for_alert(500)
        ses.pop_alerts()
    return 0


def cmd_leech(a):
    ses = session(a.port)
    h = add(ses, a)
    start = time.time()
    deadline = start + a.timeout
    redial_at = start + REDIAL_SECONDS
    while time.time() < deadline:
        ses.wait_for_alert(200)
        ses.pop_alerts()
        st = h.status()
        if st.is_seeding or st.state == lt.torrent_status.seeding:
            emit({"seconds": time.time() - start, "bytes": st.total_wanted})
            return 0
        # A seeder that was still loading its torrent drops our first
        # connection, and libtorrent waits min_reconnect_time (60 s) before
        # dialling it again: dial the given peers again while none is connected.
        if st.num_peers == 0 and time.time() >= redial_at:
            redial_at = time.time() + REDIAL_SECONDS
            for peer in a.peer or []:
                host, port = peer.rsplit(":", 1)
                h.connect_peer((host, int(port)))
    st = h.status()
    emit({"error": "timeout", "progress": st.progress})
    return 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("path")
    c.add_argument("out")
    c.add_argument("--piece-length", type=int, required=True)
    c.add_argument("--tracker", action="append")
    i = sub.add_parser("info")
    i.add_argument("torrent")
    for name in ("recheck", "seed", "leech"):
        s = sub.add_parser(name)
        s.add_argument("torrent")
        s.add_argument("save_path")
        s.add_argument("--port", type=int, default=0)
        s.add_argument("--peer", action="append")
        s.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args()
    rc = {"create": cmd_create, "info": cmd_info, "recheck": cmd_recheck,
          "seed": cmd_seed, "leech": cmd_leech}[a.cmd](a)
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
