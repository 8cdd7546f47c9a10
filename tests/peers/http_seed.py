#!/usr/bin/env python3
"""A small web seed (BEP 19) for ringbit's integration tests.

Serves the files under ROOT at /ws/<path> over HTTP/1.1 with Range support
(206 with Content-Range; 200 for a request without Range), bound to
127.0.0.1 on an ephemeral port, which it prints on the first line of stdout.
Paths under /r/ answer 302 to the same path under /ws/ (redirects).

--corrupt: every body byte is flipped (a web seed serving bad data).
Each request served is logged to stderr as `GET <path> <range> <status>`.
"""

import argparse
import http.server
import os
import re
import sys
import urllib.parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--corrupt", action="store_true")
    args = ap.parse_args()
    root = os.path.realpath(args.root)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            pass

        def note(self, status, rng):
            sys.stderr.write(f"GET {self.path} {rng} {status}\n")
            sys.stderr.flush()

        def fail(self, status):
            self.note(status, "-")
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):
            path = urllib.parse.unquote(self.path.split("?", 1)[0])
            if path.startswith("/r/"):
                self.note(302, "-")
                self.send_response(302)
                self.send_header("Location", "/ws/" + self.path[3:])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if not path.startswith("/ws/"):
                return self.fail(404)
            full = os.path.realpath(os.path.join(root, path[4:]))
            if not full.startswith(root + os.sep) or not os.path.isfile(full):
                return self.fail(404)
            size = os.path.getsize(full)
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng.strip())
                if not m:
                    return self.fail(416)
                first, last = int(m.group(1)), int(m.group(2))
                if first > last or last >= size:
                    return self.fail(416)
                status = 206
            else:
                first, last, status = 0, size - 1, 200
            length = last - first + 1
            with open(full, "rb") as f:
                f.seek(first)
                body = f.read(length)
            if args.corrupt:
                body = bytes(b ^ 0xFF for b in body)
            self.note(status, rng or "-")
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.send_header("Content-Length", str(length))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
