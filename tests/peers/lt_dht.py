#!/usr/bin/python3
"""A loopback DHT of libtorrent sessions, for ringbit's DHT interop tests.

  lt_dht.py --ports P1,P2,P3 [--node H:P]... leech TORRENT SAVE_PATH --timeout S
      DHT-only nodes on P1..Pn-1; the last port is a leecher that adds
      TORRENT with no trackers and finds peers through the DHT alone.
      Prints {"seconds":..,"bytes":..} when complete (exit 0), else an error.
  lt_dht.py --ports P1,P2,P3 [--node H:P]... seed TORRENT SAVE_PATH
      The same, but the last session seeds TORRENT (seed_mode) until killed;
      prints {"ready":true} once its DHT announce went out.

Every session bootstraps from the others and from --node (ringbit), never
from the internet routers (dht_bootstrap_nodes is empty), and accepts
loopback nodes (the restrictions meant for the internet are off).
"""
import argparse
import json
import sys
import time

import libtorrent as lt


def session(port):
    return lt.session({
        "listen_interfaces": "127.0.0.1:%d" % port,
        "enable_dht": True,
        "dht_bootstrap_nodes": "",
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_enforce_node_id": False,
        "dht_ignore_dark_internet": False,
        "dht_prefer_verified_node_ids": False,
        "dht_announce_interval": 5,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "out_enc_policy": 2,
        "in_enc_policy": 1,
        "alert_mask": lt.alert.category_t.all_categories,
    })


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", required=True)
    ap.add_argument("--node", action="append", default=[])
    ap.add_argument("mode", choices=["leech", "seed"])
    ap.add_argument("torrent")
    ap.add_argument("save_path")
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()
    ports = [int(p) for p in a.ports.split(",")]
    sessions = [session(p) for p in ports]
    nodes = [("127.0.0.1", p) for p in ports]
    for n in a.node:
        host, port = n.rsplit(":", 1)
        nodes.append((host, int(port)))
    for s in sessions:
        for n in nodes:
            s.add_dht_node(n)
    main_session = sessions[-1]
    ti = lt.torrent_info(a.torrent)
    atp = lt.add_torrent_params()
    atp.ti = ti
    atp.save_path = a.save_path
    atp.trackers = []
    if a.mode == "seed":
        atp.flags |= lt.torrent_flags.seed_mode
    h = main_session.add_torrent(atp)
    start = time.time()
    deadline = start + a.timeout
    ready = False
    while time.time() < deadline:
        for s in sessions:
            s.wait_for_alert(50)
            for alert in s.pop_alerts():
                if a.mode == "seed" and not ready and isinstance(alert, lt.dht_reply_alert):
                    ready = True
                    emit({"ready": True})
        st = h.status()
        if a.mode == "leech" and (st.is_seeding or st.state == lt.torrent_status.seeding):
            emit({"seconds": time.time() - start, "bytes": st.total_wanted})
            return 0
    if a.mode == "seed":
        return 0
    emit({"error": "timeout", "progress": h.status().progress})
    return 1


if __name__ == "__main__":
    sys.exit(main())
