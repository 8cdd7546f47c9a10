#!/usr/bin/python3
"""A Sonarr-like flow against ringbit's qBittorrent API (/api/v2) with the
PyPI client `qbittorrent-api`, against real libtorrent seeders. Used by
tests/it/qbt_api.rs (which starts the seeders and dials the .torrent's seeder
into the daemon once the torrent is there).

Checks, in order: bad input is refused with a clear status and changes
nothing; a category and tags; a .torrent (into the category's save path) and
a magnet link (with savepath, category, tags) added and downloaded; a magnet
whose only peer is dead stays `metaDL`; sync/maindata full then incremental
(changed fields only, removals); properties, files, trackers, pieceStates;
share limits enforced (a torrent's own ratio limit stops it: `stoppedUP`;
the global one with `max_ratio_act` 1 removes the other, keeping its files).

Exits 0 when every check holds; otherwise prints what failed and exits 1.
Every wait is bounded.
"""
import argparse
import os
import sys
import time

import qbittorrentapi
import requests

WAIT_S = 90


def wait_for(what, check):
    deadline = time.monotonic() + WAIT_S
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def expect_status(response, code, what):
    assert response.status_code == code, "%s: %d %s" % (what, response.status_code, response.text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--username", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--save-path", required=True)
    ap.add_argument("--outside", required=True)
    ap.add_argument("--torrent", required=True)
    ap.add_argument("--torrent-hash", required=True)
    ap.add_argument("--torrent-name", required=True)
    ap.add_argument("--magnet", required=True)
    ap.add_argument("--magnet-hash", required=True)
    ap.add_argument("--magnet-name", required=True)
    ap.add_argument("--dead-magnet-hash", required=True)
    a = ap.parse_args()
    host = "http://127.0.0.1:%d" % a.port
    api = host + "/api/v2/"

    c = qbittorrentapi.Client(host=host, username=a.username, password=a.password,
                              REQUESTS_ARGS={"timeout": 30})
    c.auth_log_in()
    assert c.app.version == "v5.0.4", c.app.version
    assert c.app.web_api_version == "2.11.2", c.app.web_api_version

    # A raw session with the same login, for requests the client cannot make.
    raw = requests.Session()
    r = raw.post(api + "auth/login", data={"username": a.username, "password": a.password}, timeout=30)
    assert r.text == "Ok." and "SID" in raw.cookies, r.text

    def nothing_changed(what):
        assert c.torrents_info() == [], what
        assert c.torrents_categories() == {}, what
        assert c.torrents_tags() == [], what

    # --- Bad input: a clear status, nothing changes. ---
    expect_status(requests.post(api + "torrents/add", files={"torrents": ("x.torrent", b"d4:infoe")}, timeout=30),
                  403, "no cookie")
    expect_status(requests.post(api + "torrents/createCategory", data={"category": "x"}, timeout=30),
                  403, "no cookie")
    r = raw.post(api + "torrents/add", data=b"--nope\r\ngarbage", timeout=30,
                 headers={"Content-Type": "multipart/form-data; boundary=other"})
    expect_status(r, 400, "malformed multipart")
    assert "multipart" in r.text, r.text
    r = raw.post(api + "torrents/add", data={"urls": "http://127.0.0.1:1/x.torrent"}, timeout=30)
    expect_status(r, 400, "an http url")
    assert "not fetched" in r.text, r.text
    try:
        c.torrents_add(torrent_files=a.torrent, save_path=a.outside, category="tv")
        raise AssertionError("a save path outside the roots was accepted")
    except qbittorrentapi.Forbidden403Error:
        pass
    assert not os.path.exists(a.outside), "the refused save path was created"
    r = raw.post(api + "torrents/add", files={"torrents": ("a.torrent", open(a.torrent, "rb").read())},
                 data={"ratioLimit": "-7"}, timeout=30)
    expect_status(r, 400, "a bad ratio limit")
    huge = "|".join(["ab" * 20] * 10001)
    r = raw.post(api + "torrents/pause", data={"hashes": huge}, timeout=30)
    expect_status(r, 400, "10,001 hashes")
    assert "more than 10000 hashes" in r.text, r.text
    expect_status(raw.post(api + "torrents/pause", data={"hashes": "nothex"}, timeout=30), 400, "bad hash")
    expect_status(raw.post(api + "torrents/properties", data={"hash": "cd" * 20}, timeout=30),
                  404, "unknown hash")
    c.torrents_pause(torrent_hashes="cd" * 20)  # unknown hashes are skipped
    expect_status(raw.post(api + "torrents/setCategory", data={"hashes": "all", "category": "nope"}, timeout=30),
                  409, "an unknown category")
    expect_status(raw.post(api + "torrents/topPrio", data={"hashes": "all"}, timeout=30), 409, "queueing off")
    expect_status(raw.post(api + "torrents/createCategory", data={"category": "../x"}, timeout=30),
                  400, "a bad category name")
    expect_status(raw.post(api + "torrents/createCategory",
                           data={"category": "x", "savePath": a.outside}, timeout=30), 403, "category outside")
    expect_status(raw.post(api + "app/setPreferences", data={"json": '{"max_ratio_act": 2}'}, timeout=30),
                  400, "super seeding")
    nothing_changed("after bad input")

    # --- Categories and tags. ---
    tv = os.path.join(a.save_path, "tv")
    c.torrents_create_category(name="tv", save_path=tv)
    try:
        c.torrents_create_category(name="tv")
        raise AssertionError("a duplicate category was created")
    except qbittorrentapi.Conflict409Error:
        pass
    c.torrents_create_tags(tags="sonarr")
    assert c.torrents_tags() == ["sonarr"]
    cats = c.torrents_categories()
    assert os.path.realpath(cats["tv"]["savePath"]) == os.path.realpath(tv), cats

    # --- Add a .torrent (to the category's path) and magnet links. ---
    assert c.torrents_add(torrent_files=a.torrent, category="tv", tags="sonarr,ep") == "Ok."
    magnets_dir = os.path.join(a.save_path, "magnets")
    assert c.torrents_add(urls=a.magnet, save_path=magnets_dir, category="tv", tags=["sonarr"],
                          upload_limit=1 << 30) == "Ok."
    dead = "magnet:?xt=urn:btih:%s&dn=dead&x.pe=127.0.0.1:1" % a.dead_magnet_hash
    assert c.torrents_add(urls=dead, category="tv") == "Ok."
    assert sorted(c.torrents_tags()) == ["ep", "sonarr"]
    d = wait_for("the dead magnet in metaDL",
                 lambda: [t for t in c.torrents_info(torrent_hashes=a.dead_magnet_hash) if t.state == "metaDL"])[0]
    assert d.category == "tv", d

    full = c.sync_maindata(rid=0)
    assert full.get("full_update") is True, full
    for h in (a.torrent_hash, a.magnet_hash, a.dead_magnet_hash):
        assert h in full["torrents"], (h, list(full["torrents"]))
    assert "tv" in full["categories"] and sorted(full["tags"]) == ["ep", "sonarr"], full
    assert "dl_info_speed" in full["server_state"], full["server_state"]
    rid = full["rid"]

    # Delete the dead magnet: gone from the list, and an incremental sync says so.
    c.torrents_delete(delete_files=False, torrent_hashes=a.dead_magnet_hash)
    wait_for("the dead magnet gone", lambda: c.torrents_info(torrent_hashes=a.dead_magnet_hash) == [])
    inc = c.sync_maindata(rid=rid)
    assert not inc.get("full_update"), inc
    assert a.dead_magnet_hash in inc.get("torrents_removed", []), inc

    def seeding(h):
        rows = c.torrents_info(torrent_hashes=h)
        return rows[0] if len(rows) == 1 and rows[0].state in ("stalledUP", "uploading") else None

    t = wait_for("the .torrent downloaded", lambda: seeding(a.torrent_hash))
    m = wait_for("the magnet downloaded", lambda: seeding(a.magnet_hash))
    assert t.progress == 1 and t.amount_left == 0 and t.category == "tv" and t.tags == "ep, sonarr", t
    assert os.path.realpath(t.save_path) == os.path.realpath(tv), t.save_path
    assert os.path.realpath(m.save_path) == os.path.realpath(magnets_dir), m.save_path
    assert m.name == a.magnet_name and m.up_limit == 1 << 30 and m.tags == "sonarr", m
    assert os.path.isfile(os.path.join(tv, a.torrent_name))
    assert os.path.isfile(os.path.join(magnets_dir, a.magnet_name))
    assert [x.hash for x in c.torrents_info(category="tv", tag="ep")] == [a.torrent_hash]
    assert sorted(x.hash for x in c.torrents_info(tag="sonarr")) == sorted([a.torrent_hash, a.magnet_hash])
    assert c.torrents_info(category="") == []

    # Incremental sync: only changed fields (never the name again), same rid when idle.
    r1 = c.sync_maindata(rid=0)["rid"]
    inc = c.sync_maindata(rid=r1)
    assert not inc.get("full_update"), inc
    for h, fields in inc.get("torrents", {}).items():
        assert "name" not in fields and "save_path" not in fields, (h, fields)
    stale = c.sync_maindata(rid=1)
    assert stale.get("full_update") is True, "a rid from before this daemon must get a full update"

    # Per-torrent details.
    props = c.torrents_properties(torrent_hash=a.torrent_hash)
    assert props.pieces_have == props.pieces_num > 0, props
    files = c.torrents_files(torrent_hash=a.torrent_hash)
    assert [f.name for f in files] == [a.torrent_name] and files[0].progress == 1, files
    assert set(c.torrents_piece_states(torrent_hash=a.torrent_hash)) == {2}
    assert any(x.url == "** [DHT] **" for x in c.torrents_trackers(torrent_hash=a.torrent_hash))
    c.torrents_reannounce(torrent_hashes=a.torrent_hash)
    c.torrents_set_upload_limit(limit=123456, torrent_hashes=a.torrent_hash)
    assert c.torrents_upload_limit(torrent_hashes=a.torrent_hash)[a.torrent_hash] == 123456
    c.torrents_add_tags(tags="keep", torrent_hashes=a.torrent_hash)
    c.torrents_remove_tags(tags="keep", torrent_hashes=a.torrent_hash)
    assert c.torrents_info(torrent_hashes=a.torrent_hash)[0].tags == "ep, sonarr"

    # --- Share limits. Its own ratio limit 0 stops the .torrent at once. ---
    c.torrents_set_share_limits(ratio_limit=0, seeding_time_limit=-1, inactive_seeding_time_limit=-1,
                                torrent_hashes=a.torrent_hash)
    t = wait_for("stoppedUP by its ratio limit",
                 lambda: (lambda r: r if r and r[0].state == "stoppedUP" else None)(
                     c.torrents_info(torrent_hashes=a.torrent_hash)))[0]
    assert t.ratio_limit == 0 and t.max_ratio == 0, t
    # The magnet defers to the global limit: none yet, so it still seeds.
    assert seeding(a.magnet_hash), "the magnet was stopped without a limit"
    # Global: ratio 0, action 1 (remove, keep files).
    c.app_set_preferences(prefs={"max_ratio_enabled": True, "max_ratio": 0, "max_ratio_act": 1})
    prefs = c.app.preferences
    assert prefs.max_ratio_enabled is True and prefs.max_ratio_act == 1, prefs
    wait_for("the magnet removed by the global limit", lambda: c.torrents_info(torrent_hashes=a.magnet_hash) == [])
    assert os.path.isfile(os.path.join(magnets_dir, a.magnet_name)), "remove (act 1) deleted the files"
    # The stopped torrent stays (stopped torrents are not checked again).
    assert [x.state for x in c.torrents_info()] == ["stoppedUP"]
    print("ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED: %s" % e)
        sys.exit(1)
