#!/usr/bin/env python3
"""The test guest's peer, run inside the test's network namespace: HTTP on PORT (argv[1]).

GET /bytes/N    N bytes (byte i is i % 251); prints "served N md5=HEX" on stdout
POST /upload    reads the body, answers with its length; prints "received N"
GET /go         404 until the file argv[2] exists, then 200 (the test's signal to the guest)
Prints "ready" once it listens.
"""
import hashlib
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATTERN = bytes(i % 251 for i in range(251 * 4096))


def body(n):
    whole, rest = divmod(n, len(PATTERN))
    return PATTERN * whole + PATTERN[:rest]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, data):
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            data = body(int(self.path[len("/bytes/"):]))
            self.reply(200, data)
            print(f"served {len(data)} md5={hashlib.md5(data).hexdigest()}", flush=True)
        elif self.path == "/go":
            self.reply(200 if os.path.exists(sys.argv[2]) else 404, b"go\n")
        else:
            self.reply(404, b"no\n")

    def do_POST(self):
        left = int(self.headers.get("Content-Length", "0"))
        got = 0
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            got += len(chunk)
            left -= len(chunk)
        self.reply(200, f"{got}\n".encode())
        print(f"received {got}", flush=True)


server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
