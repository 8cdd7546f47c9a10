#!/usr/bin/env python3
"""Writes the hostile .torrent fixtures in this directory (run from anywhere).

Each file is a .torrent that ringbit must refuse with exit status 1 and a clear
error; tests/it/foundation.rs lists the error text expected for each one.
Regenerate with: python3 tests/data/hostile/generate.py
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def be(v):
    if isinstance(v, bool):
        raise TypeError("no bools in bencode")
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(be(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(be(k) + be(x) for k, x in items) + b"e"
    raise TypeError(type(v))


def multi(paths, length=5, piece_length=16384, name="payload"):
    files = [{"length": length, "path": p} for p in paths]
    total = length * len(paths)
    n = max(1, -(-total // piece_length))
    return {"announce": "http://127.0.0.1/announce",
            "info": {"name": name, "piece length": piece_length, "files": files,
                     "pieces": b"\x01" * 20 * n}}


def single(length=5, piece_length=16384, pieces=None, name="file.bin", **extra):
    if pieces is None:
        pieces = b"\x01" * 20 * max(1, -(-length // piece_length))
    info = {"name": name, "piece length": piece_length, "length": length, "pieces": pieces}
    info.update(extra)
    return {"announce": "http://127.0.0.1/announce", "info": info}


VALID = be(single(100_000, 16384))

CASES = {
    "traversal-dotdot.torrent": be(multi([["..", "..", "etc", "passwd"]])),
    "traversal-dot.torrent": be(multi([[".", "x"]])),
    "absolute-path.torrent": be(multi([["/etc/passwd"]])),
    "absolute-name.torrent": be(single(name="/tmp/evil")),
    "name-dotdot.torrent": be(single(name="..")),
    "slash-in-element.torrent": be(multi([["a/../../b"]])),
    "backslash-in-element.torrent": be(multi([["..\\..\\windows"]])),
    "nul-in-element.torrent": be(multi([["a\0b"]])),
    "empty-element.torrent": be(multi([["", "x"]])),
    "empty-path.torrent": be(multi([[]])),
    "duplicate-path.torrent": be(multi([["a"], ["a"]])),
    "absurd-length.torrent": be(single(length=1 << 62, piece_length=1 << 20, pieces=b"\x01" * 20)),
    "total-overflow.torrent": be({"info": {"name": "x", "piece length": 16384, "pieces": b"\x01" * 20,
                                           "files": [{"length": (1 << 63) - 1, "path": ["a"]},
                                                     {"length": (1 << 63) - 1, "path": ["b"]},
                                                     {"length": 2, "path": ["c"]}]}}),
    "integer-overflow.torrent": b"d4:infod6:lengthi99999999999999999999999e4:name1:xee",
    "negative-length.torrent": be(single(length=-5)),
    "zero-piece-length.torrent": be(single(piece_length=0, pieces=b"\x01" * 20)),
    "negative-piece-length.torrent": be(single(piece_length=-16384, pieces=b"\x01" * 20)),
    "huge-piece-length.torrent": be(single(piece_length=1 << 40, pieces=b"\x01" * 20)),
    "wrong-pieces-size.torrent": be(single(pieces=b"\x01" * 19)),
    "wrong-piece-count.torrent": be(single(length=100_000, pieces=b"\x01" * 20 * 3)),
    "deep-nesting.torrent": b"d4:info" + b"l" * 10_000 + b"e" * 10_000 + b"e",
    "deep-nesting-dicts.torrent": b"d1:a" * 10_000 + b"i1e" + b"e" * 10_000,
    "huge-string-length.torrent": b"d4:info99999999999999:xe",
    "string-length-overflow.torrent": b"d4:info999999999999999999999999999999:xe",
    "truncated.torrent": VALID[: len(VALID) // 2],
    "trailing-garbage.torrent": VALID + b"GARBAGE",
    "v2-only.torrent": be({"info": {"name": "x", "meta version": 2, "piece length": 16384,
                                    "file tree": {"x": {"": {"length": 5, "pieces root": b"\x02" * 32}}}},
                           "piece layers": {}}),
    "not-bencode.torrent": b"<html>this is not a torrent</html>\n",
    "empty.torrent": b"",
    "not-a-dictionary.torrent": be([1, 2, 3]),
    "missing-info.torrent": be({"announce": "http://x/"}),
    "info-not-dictionary.torrent": be({"info": "nope"}),
    "duplicate-keys.torrent": b"d4:infod6:lengthi5e6:lengthi5eee",
    "non-string-key.torrent": b"di1ei2ee",
    "leading-zero.torrent": b"d4:infod6:lengthi05eee",
    "negative-zero.torrent": b"d4:infod6:lengthi-0eee",
    "no-files.torrent": be({"info": {"name": "x", "piece length": 16384, "pieces": b"", "files": []}}),
    "zero-total-length.torrent": be(single(length=0, pieces=b"")),
    "length-and-files.torrent": be({"info": {"name": "x", "piece length": 16384, "pieces": b"\x01" * 20,
                                             "length": 5, "files": [{"length": 5, "path": ["a"]}]}}),
}

if __name__ == "__main__":
    for name, data in CASES.items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
    print("wrote %d files to %s" % (len(CASES), HERE))
