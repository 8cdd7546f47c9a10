//! Foundation: `create` and `info` against mktorrent, libtorrent and
//! transmission-create; hostile .torrent files.

use crate::helpers::{lt_tool, require_tool, ringbit, run_bounded, run_ok, write_payload};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
const TRACKER: &str = "http://127.0.0.1:6969/announce";

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// `ringbit info --json PATH`.
fn ringbit_info(torrent: &Path) -> Value {
    json(&run_ok(ringbit().args(["info", "--json"]).arg(torrent), LIMIT))
}

/// libtorrent's view of a .torrent.
fn lt_info(torrent: &Path) -> Value {
    json(&run_ok(lt_tool().arg("info").arg(torrent), LIMIT))
}

/// The hash printed on `ringbit create`'s last line (`info hash: HEX`).
fn created_hash(stdout: &str) -> String {
    let line = stdout.lines().last().expect("create prints lines");
    line.strip_prefix("info hash: ").unwrap_or_else(|| panic!("unexpected: {stdout}")).to_string()
}

/// Goal: a single-file torrent from `ringbit create` has the info hash
/// mktorrent and libtorrent give the same payload and piece length, with and
/// without `private` and `source` (which live inside the info dictionary).
#[test]
fn create_single_file_matches_mktorrent_and_libtorrent() {
    let mktorrent = require_tool("mktorrent");
    let dir = tempfile::tempdir().unwrap();
    let payload = &write_payload(dir.path(), &[("movie.mkv", 1_234_567)])[0];

    for (private, source) in [(false, None), (true, None), (true, Some("SRC")), (false, Some("X"))]
    {
        let ours = dir.path().join("ours.torrent");
        let theirs = dir.path().join("mktorrent.torrent");
        let _ = std::fs::remove_file(&ours);
        let _ = std::fs::remove_file(&theirs);

        let mut cmd = ringbit();
        cmd.arg("create").arg(payload).arg("-o").arg(&ours);
        cmd.args(["--piece-length", "256K", "--no-date", "-t", TRACKER]);
        let mut mk = Command::new(&mktorrent);
        mk.args(["-d", "-l", "18", "-a", TRACKER, "-o"]).arg(&theirs);
        if private {
            cmd.arg("--private");
            mk.arg("-p");
        }
        if let Some(source) = source {
            cmd.args(["--source", source]);
            mk.args(["-s", source]);
        }
        let printed = created_hash(&run_ok(&mut cmd, LIMIT));
        run_ok(mk.arg(payload), LIMIT);

        let lt_ours = lt_info(&ours);
        let lt_theirs = lt_info(&theirs);
        assert_eq!(lt_ours["info_hash"], lt_theirs["info_hash"], "private={private} {source:?}");
        assert_eq!(lt_ours["info_hash"].as_str().unwrap(), printed);
        assert_eq!(ringbit_info(&theirs)["info_hash"], lt_theirs["info_hash"]);
        assert_eq!(lt_ours["num_pieces"], 5);
        let info = ringbit_info(&ours);
        assert_eq!(info["private"], private);
        assert_eq!(info["source"].as_str(), source);
        // Without a date the output is reproducible byte for byte.
        if !private && source.is_none() {
            assert_eq!(std::fs::read(&ours).unwrap().len(), std::fs::read(&theirs).unwrap().len());
        }
    }

    // libtorrent's create_torrent (v1 only) agrees too.
    let lt_out = dir.path().join("lt.torrent");
    let lt = json(&run_ok(
        lt_tool().arg("create").arg(payload).arg(&lt_out).args(["--piece-length", "262144"]),
        LIMIT,
    ));
    let ours = dir.path().join("ours2.torrent");
    let printed = created_hash(&run_ok(
        ringbit().arg("create").arg(payload).arg("-o").arg(&ours).args([
            "--piece-length",
            "262144",
            "--comment",
            "differs outside info",
        ]),
        LIMIT,
    ));
    assert_eq!(lt["info_hash"].as_str().unwrap(), printed);
}

/// The multi-file payload used below: nested directories, an empty file,
/// a hidden file and sizes that are not multiples of anything.
const TREE: &[(&str, usize)] = &[
    ("payload/nested/deep/er/a.bin", 100_003),
    ("payload/empty.txt", 0),
    ("payload/b", 1),
    ("payload/nested/c.dat", 262_145),
    ("payload/.hidden", 77_777),
    ("payload/z/last", 40_000),
];

/// Goal: libtorrent loads a multi-file torrent made by `ringbit create` and
/// its recheck finds every piece; one flipped byte costs exactly one piece.
#[test]
fn libtorrent_rechecks_multi_file_torrent_complete() {
    let dir = tempfile::tempdir().unwrap();
    write_payload(dir.path(), TREE);
    let root = dir.path().join("payload");
    for piece_length in ["32768", "auto"] {
        let torrent = dir.path().join(format!("payload-{piece_length}.torrent"));
        run_ok(
            ringbit().arg("create").arg(&root).arg("-o").arg(&torrent).args([
                "--piece-length",
                piece_length,
                "-t",
                TRACKER,
            ]),
            LIMIT,
        );
        let info = ringbit_info(&torrent);
        let lt = lt_info(&torrent);
        assert_eq!(info["info_hash"], lt["info_hash"]);
        assert_eq!(lt["num_files"], TREE.len());
        assert_eq!(lt["total_size"], TREE.iter().map(|(_, l)| l).sum::<usize>());
        let paths: Vec<&str> =
            info["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "payload/.hidden",
                "payload/b",
                "payload/empty.txt",
                "payload/nested/c.dat",
                "payload/nested/deep/er/a.bin",
                "payload/z/last"
            ]
        );
        let check = json(&run_ok(lt_tool().arg("recheck").arg(&torrent).arg(dir.path()), LIMIT));
        assert_eq!(check["checked"], true, "{check}");
        assert!(check["num_pieces"].as_u64().unwrap() > 1);
        assert_eq!(check["have"], check["num_pieces"], "{check}");
    }

    // The check is real: corrupt one byte and libtorrent finds one bad piece.
    let torrent = dir.path().join("payload-32768.torrent");
    let victim = root.join("nested/c.dat");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let check = json(&run_ok(lt_tool().arg("recheck").arg(&torrent).arg(dir.path()), LIMIT));
    assert_eq!(check["have"].as_u64().unwrap() + 1, check["num_pieces"].as_u64().unwrap());
}

/// Goal: `ringbit info --json` reports libtorrent's info hash (and sizes)
/// for torrents made by mktorrent, transmission-create and libtorrent.
#[test]
fn info_json_matches_libtorrent_for_other_creators() {
    let mktorrent = require_tool("mktorrent");
    let transmission = require_tool("transmission-create");
    let dir = tempfile::tempdir().unwrap();
    write_payload(dir.path(), TREE);
    let root = dir.path().join("payload");

    let mk = dir.path().join("mk.torrent");
    run_ok(
        Command::new(&mktorrent)
            .args(["-l", "15", "-a", "http://a/announce,http://b/announce", "-a", TRACKER])
            .args(["-c", "a comment", "-w", "http://seed/"])
            .arg("-o")
            .arg(&mk)
            .arg(&root),
        LIMIT,
    );
    let tr = dir.path().join("tr.torrent");
    run_ok(Command::new(&transmission).arg("-o").arg(&tr).args(["-t", TRACKER]).arg(&root), LIMIT);
    let lt = dir.path().join("lt.torrent");
    run_ok(lt_tool().arg("create").arg(&root).arg(&lt).args(["--piece-length", "65536"]), LIMIT);

    // transmission-create leaves out hidden and empty files; the others keep them.
    for (torrent, file_count) in [(&mk, TREE.len()), (&tr, TREE.len() - 2), (&lt, TREE.len())] {
        let ours = ringbit_info(torrent);
        let theirs = lt_info(torrent);
        assert_eq!(ours["info_hash"], theirs["info_hash"], "{}", torrent.display());
        assert_eq!(ours["total_size"], theirs["total_size"]);
        assert_eq!(ours["piece_count"], theirs["num_pieces"]);
        assert_eq!(ours["piece_length"], theirs["piece_length"]);
        assert_eq!(ours["name"], "payload");
        // Pad files (if a creator added any) are never shown.
        assert_eq!(ours["files"].as_array().unwrap().len(), file_count, "{}", torrent.display());
    }
    let ours = ringbit_info(&mk);
    assert_eq!(
        ours["trackers"],
        serde_json::json!([["http://a/announce", "http://b/announce"], [TRACKER]])
    );
    assert_eq!(ours["comment"], "a comment");
    assert_eq!(ours["web_seeds"], serde_json::json!(["http://seed/"]));
    assert!(ours["creation_date"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(ringbit_info(&tr)["trackers"], serde_json::json!([[TRACKER]]));

    // Tiers given to `ringbit create` the mktorrent way come out the same.
    let ours_t = dir.path().join("ours.torrent");
    run_ok(
        ringbit()
            .arg("create")
            .arg(&root)
            .arg("-o")
            .arg(&ours_t)
            .args(["-t", "http://a/announce,http://b/announce", "-t", TRACKER])
            .args(["--web-seed", "http://seed/", "--comment", "a comment"])
            .args(["--piece-length", "32K"]),
        LIMIT,
    );
    let mine = ringbit_info(&ours_t);
    assert_eq!(mine["trackers"], ours["trackers"]);
    assert_eq!(mine["web_seeds"], ours["web_seeds"]);
    assert_eq!(mine["created_by"], format!("ringbit/{}", env!("CARGO_PKG_VERSION")));
}

/// Every fixture in tests/data/hostile and the error it must give.
const HOSTILE: &[(&str, &str)] = &[
    ("absolute-name.torrent", "unsafe path in `name`"),
    ("absolute-path.torrent", "unsafe path"),
    ("absurd-length.torrent", "more than the limit of 4194304"),
    ("backslash-in-element.torrent", "path separator"),
    ("deep-nesting-dicts.torrent", "nesting deeper than 64"),
    ("deep-nesting.torrent", "nesting deeper than 64"),
    ("duplicate-keys.torrent", "duplicate dictionary key"),
    ("duplicate-path.torrent", "same path"),
    ("empty-element.torrent", "is empty"),
    ("empty-path.torrent", "empty path"),
    ("empty.torrent", "input is empty"),
    ("huge-piece-length.torrent", "`piece length`"),
    ("huge-string-length.torrent", "claims 99999999999999 bytes"),
    ("info-not-dictionary.torrent", "`info` must be a dictionary"),
    ("integer-overflow.torrent", "does not fit in 64 bits"),
    ("leading-zero.torrent", "leading zero"),
    ("length-and-files.torrent", "both `length` and `files`"),
    ("missing-info.torrent", "missing `info`"),
    ("name-dotdot.torrent", "relative directory reference"),
    ("negative-length.torrent", "negative length"),
    ("negative-piece-length.torrent", "`piece length` -16384 is invalid"),
    ("negative-zero.torrent", "negative zero"),
    ("no-files.torrent", "no files"),
    ("non-string-key.torrent", "not a byte string"),
    ("not-a-dictionary.torrent", "not a bencoded dictionary"),
    ("not-bencode.torrent", "unexpected byte 0x3c at byte 0"),
    ("nul-in-element.torrent", "NUL"),
    ("slash-in-element.torrent", "path separator"),
    ("string-length-overflow.torrent", "invalid string length"),
    ("total-overflow.torrent", "overflows 64 bits"),
    ("trailing-garbage.torrent", "trailing bytes"),
    ("traversal-dot.torrent", "relative directory reference"),
    ("traversal-dotdot.torrent", "relative directory reference"),
    ("truncated.torrent", "bytes but only"),
    ("v2-only.torrent", "v2-only torrents are not supported yet"),
    ("wrong-piece-count.torrent", "need 7"),
    ("wrong-pieces-size.torrent", "not a multiple of 20"),
    ("zero-piece-length.torrent", "`piece length` 0 is invalid"),
    ("zero-total-length.torrent", "total length 0"),
];

/// Goal: each hostile .torrent gets exit status 1 and a clear error (never a
/// panic), in both text and JSON modes.
#[test]
fn hostile_torrents_exit_1_with_clear_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".torrent"))
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = HOSTILE.iter().map(|(n, _)| *n).collect();
    assert_eq!(on_disk, listed, "every fixture needs an expected error (and vice versa)");

    for (name, expected) in HOSTILE {
        for json in [false, true] {
            let mut cmd = ringbit();
            cmd.arg("info").arg(dir.join(name));
            if json {
                cmd.arg("--json");
            }
            let out = run_bounded(&mut cmd, LIMIT);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
            assert!(!stderr.contains("panicked"), "{name}: {stderr}");
            assert!(stderr.starts_with("ringbit: error: "), "{name}: {stderr}");
            assert!(stderr.contains(expected), "{name}: expected {expected:?} in {stderr}");
            assert!(out.stdout.is_empty(), "{name}: printed {:?}", out.stdout);
        }
    }
}

/// Goal: usage errors exit 2 (clap), bad values that clap cannot see exit 1.
#[test]
fn usage_errors_exit_2_bad_values_exit_1() {
    for args in [
        &["info"][..],
        &["info", "a", "b"],
        &["create"],
        &["create", ".", "--piece-length", "banana"],
        &["frobnicate"],
    ] {
        let out = run_bounded(ringbit().args(args), LIMIT);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let payload = &write_payload(dir.path(), &[("f", 1000)])[0];
    let out_path = dir.path().join("f.torrent");
    let cases: [(&[&str], &str); 3] = [
        (&["--piece-length", "300000"], "power of two"),
        (&["--piece-length", "8K"], "power of two"),
        (&["--piece-length", "1G"], "power of two"),
    ];
    for (extra, expected) in cases {
        let out = run_bounded(
            ringbit().arg("create").arg(payload).arg("-o").arg(&out_path).args(extra),
            LIMIT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    // An existing output is kept unless --force.
    std::fs::write(&out_path, b"keep me").unwrap();
    let out = run_bounded(ringbit().arg("create").arg(payload).arg("-o").arg(&out_path), LIMIT);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&out_path).unwrap(), b"keep me");
    run_ok(ringbit().arg("create").arg(payload).arg("-o").arg(&out_path).arg("--force"), LIMIT);
    assert_eq!(ringbit_info(&out_path)["total_size"], 1000);
    // A missing file and an empty directory are clear errors too.
    let out = run_bounded(ringbit().args(["info", "/nonexistent/x.torrent"]), LIMIT);
    assert_eq!(out.status.code(), Some(1));
    std::fs::create_dir(dir.path().join("emptydir")).unwrap();
    let out = run_bounded(
        ringbit()
            .arg("create")
            .arg(dir.path().join("emptydir"))
            .arg("-o")
            .arg(dir.path().join("e.torrent")),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to share"));
}

/// Goal: `ringbit info` shows what a magnet link has, and refuses bad ones.
#[test]
fn info_on_magnet_links() {
    let hex = "c9e15763f722f23e98a29decdfae341b98d53056";
    let uri = format!(
        "magnet:?xt=urn:btih:{hex}&dn=Some+Name&tr=udp%3A%2F%2F127.0.0.1%3A6969&xl=42&x.pe=127.0.0.1:6881"
    );
    let v = json(&run_ok(ringbit().args(["info", "--json", &uri]), LIMIT));
    assert_eq!(v["info_hash"], hex);
    assert_eq!(v["name"], "Some Name");
    assert_eq!(v["total_size"], 42);
    assert_eq!(v["trackers"], serde_json::json!([["udp://127.0.0.1:6969"]]));
    assert_eq!(v["peers"], serde_json::json!(["127.0.0.1:6881"]));
    let text = run_ok(ringbit().args(["info", &uri]), LIMIT);
    assert!(text.contains(hex) && text.contains("Some Name"), "{text}");

    for (bad, expected) in [
        ("magnet:?dn=x", "no `xt=urn:btih:`"),
        ("magnet:?xt=urn:btih:123", "neither 40 hex"),
        (
            "magnet:?xt=urn:btmh:1220caf1e1c30e81cb361b9ee167c4aa64228a7fa4fa9f6105232b28ad099f3a302e",
            "v2-only torrents are not supported yet",
        ),
    ] {
        let out = run_bounded(ringbit().args(["info", bad]), LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(stderr.contains(expected), "{bad}: {stderr}");
    }
}
