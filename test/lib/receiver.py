#!/usr/bin/python3
"""HTTP receiver for the tests, benchmarks and demo: records every request
as one JSON line (time, method, path, headers, body) and answers according
to the path:

  /ok                  200
  /status/NNN          NNN
  /fail/N/KEY          500 for the first N requests to this path, then 200
  /retry-after/S/KEY   503 with "Retry-After: S" the first time, then 200
  /slow/SECONDS        waits, then 200
  /redirect            302 to /ok
  /big                 200 with a 1 MB body

Usage: receiver.py --log FILE --port-file FILE [--port N] [--host ::1] [--quiet]
It listens on 127.0.0.1 only (or ::1 with --host ::1), serves requests
concurrently and keeps connections alive (HTTP/1.1).
"""
import argparse
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # answer in one go: without this, Nagle holds the body back until
        # the client's delayed ACK (40 ms) on a kept-alive connection
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def reply(self, status, body=b'{"received": true}', headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        entry = {
            "time": time.time(),
            "method": "POST",
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        with lock:
            counts[self.path] = counts.get(self.path, 0) + 1
            seen = counts[self.path]
            if not self.server.quiet:
                with open(self.server.log, "a") as f:
                    f.write(json.dumps(entry) + "\n")
        parts = self.path.strip("/").split("/")
        if parts[0] == "status":
            self.reply(int(parts[1]))
        elif parts[0] == "fail":
            self.reply(500 if seen <= int(parts[1]) else 200)
        elif parts[0] == "retry-after":
            if seen == 1:
                self.reply(503, headers=[("Retry-After", parts[1])])
            else:
                self.reply(200)
        elif parts[0] == "slow":
            time.sleep(float(parts[1]))
            self.reply(200)
        elif parts[0] == "redirect":
            self.reply(302, headers=[("Location", "/ok")])
        elif parts[0] == "big":
            self.reply(200, body=b"x" * (1 << 20))
        else:
            self.reply(200)


class V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1"])
    ap.add_argument("--log", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--quiet", action="store_true", help="count, do not log bodies")
    args = ap.parse_args()
    cls = V6Server if args.host == "::1" else ThreadingHTTPServer
    server = cls((args.host, args.port), Handler)
    server.daemon_threads = True
    server.log = args.log
    server.quiet = args.quiet
    open(args.log, "a").close()
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.rename(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
