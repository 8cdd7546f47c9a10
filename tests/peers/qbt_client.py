#!/usr/bin/python3
"""Drives ringbit's qBittorrent-compatible API (/api/v2) with the PyPI client
`qbittorrent-api`, as Sonarr-like tools would. Used by tests/it/qbt_api.rs.

Exits 0 when every check holds; otherwise prints what failed and exits 1.
Every wait is bounded.
"""
import argparse
import os
import sys
import time
import urllib.error
import urllib.request

import qbittorrentapi

WAIT_S = 60


def wait_for(what, check):
    deadline = time.monotonic() + WAIT_S
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--username", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--hash", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--save-path", required=True)
    ap.add_argument("--torrent", required=True, help=".torrent file to add")
    ap.add_argument("--outside", required=True, help="a save path outside the roots (must stay absent)")
    a = ap.parse_args()
    host = "http://127.0.0.1:%d" % a.port

    # Without a session: 403, as qBittorrent answers.
    try:
        urllib.request.urlopen(host + "/api/v2/app/version", timeout=20)
        raise AssertionError("unauthenticated call was answered")
    except urllib.error.HTTPError as e:
        assert e.code == 403, e.code

    bad = qbittorrentapi.Client(host=host, username=a.username, password="wrong",
                                REQUESTS_ARGS={"timeout": 20})
    try:
        bad.auth_log_in()
        raise AssertionError("a wrong password logged in")
    except qbittorrentapi.LoginFailed:
        pass

    c = qbittorrentapi.Client(host=host, username=a.username, password=a.password,
                              REQUESTS_ARGS={"timeout": 20})
    c.auth_log_in()
    assert c.app.version == "v4.6.7", c.app.version
    assert c.app.web_api_version == "2.9.3", c.app.web_api_version
    assert os.path.realpath(c.app.default_save_path) == os.path.realpath(a.save_path), c.app.default_save_path
    prefs = c.app.preferences
    for key in ("save_path", "max_ratio_enabled", "max_ratio", "max_ratio_act", "queueing_enabled", "dht"):
        assert key in prefs, key

    # Add the .torrent as Sonarr does (multipart), into the save path.
    assert c.torrents_info() == []
    try:
        c.torrents_add(torrent_files=a.torrent, save_path=a.outside)
        raise AssertionError("a save path outside the roots was accepted")
    except qbittorrentapi.Forbidden403Error:
        pass
    assert not os.path.exists(a.outside), "the refused save path was created"
    assert c.torrents_info() == []
    assert c.torrents_add(torrent_files=a.torrent, save_path=a.save_path) == "Ok."
    assert c.torrents_add(torrent_files=a.torrent, save_path=a.save_path) == "Fails.", "a duplicate"

    def one():
        rows = c.torrents_info(torrent_hashes=a.hash)
        return rows[0] if len(rows) == 1 else None

    t = wait_for("the torrent seeding", lambda: (lambda r: r if r and r.state in ("stalledUP", "uploading") else None)(one()))
    assert t.name == a.name, t.name
    assert t.progress == 1, t.progress
    assert t.amount_left == 0, t.amount_left
    assert os.path.realpath(t.save_path) == os.path.realpath(a.save_path), t.save_path
    assert [r.hash for r in c.torrents_info(status_filter="seeding")] == [a.hash]
    assert c.torrents_info(status_filter="downloading") == []
    assert len(c.torrents_info(sort="name", reverse=True, limit=1)) == 1

    c.torrents_pause(torrent_hashes=a.hash)
    wait_for("pausedUP", lambda: (one() or {}).get("state") == "pausedUP")
    assert [r.hash for r in c.torrents_info(status_filter="paused")] == [a.hash]
    c.torrents_resume(torrent_hashes=a.hash)
    wait_for("seeding again", lambda: (one() or {}).get("state") in ("stalledUP", "uploading"))

    info = c.transfer_info()
    for key in ("dl_info_speed", "up_info_speed", "dl_info_data", "up_info_data"):
        assert key in info, key

    # Unknown hashes are skipped; malformed ones are a clear error.
    c.torrents_pause(torrent_hashes="ab" * 20)
    try:
        c.torrents_info(torrent_hashes="nothex")
        raise AssertionError("a malformed hash was accepted")
    except qbittorrentapi.HTTP4XXError:
        pass

    data = os.path.join(a.save_path, a.name)
    assert os.path.exists(data)
    c.torrents_delete(delete_files=True, torrent_hashes=a.hash)
    wait_for("the torrent gone", lambda: c.torrents_info() == [])
    assert not os.path.exists(data), "deleteFiles left the data"
    c.auth_log_out()
    try:
        c.torrents_info()  # the client logs in again by itself
    except qbittorrentapi.exceptions.APIError:
        pass
    print("ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED: %s" % e)
        sys.exit(1)
