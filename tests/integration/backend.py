#!/usr/bin/env python3
"""A small HTTP/1.1 backend for Moat's integration tests and demo.

Endpoints (any method):
  /size/N          N bytes of body ('x' repeated)
  /chunked/N       N bytes sent with chunked transfer coding (in 1000-byte chunks)
  /slow/MS         answers after MS milliseconds
  /close           body delimited by closing the connection (no length)
  /headers         JSON of the request headers it received
  anything else    JSON: backend name, method, path, body length and sha256

--fail-status N answers every request with status N (and the JSON above).

Request bodies with Content-Length or chunked coding are read and hashed.
Stdlib only; one thread per connection; keep-alive.
"""
import argparse
import hashlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "moat-test-backend"

    def log_message(self, fmt, *args):  # quiet
        pass

    def read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if te.lower() == "chunked":
            body = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline(3)
        n = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(n) if n else b""

    def send_body(self, status, body, ctype="application/json"):
        if self.server.fail_status:
            status = self.server.fail_status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", self.server.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        body = self.read_body()
        path = self.path
        parts = path.split("?")[0].strip("/").split("/")
        if parts[0] == "size" and len(parts) > 1:
            self.send_body(200, b"x" * int(parts[1]), "application/octet-stream")
        elif parts[0] == "chunked" and len(parts) > 1:
            n = int(parts[1])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Backend", self.server.name)
            self.end_headers()
            if self.command == "HEAD":
                return
            left = n
            while left > 0:
                k = min(1000, left)
                self.wfile.write(b"%x\r\n" % k + b"y" * k + b"\r\n")
                left -= k
            self.wfile.write(b"0\r\n\r\n")
        elif parts[0] == "slow" and len(parts) > 1:
            time.sleep(int(parts[1]) / 1000.0)
            self.send_body(200, b'{"slow":true}')
        elif parts[0] == "close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.send_header("X-Backend", self.server.name)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b"z" * 5000)
            self.close_connection = True
        elif parts[0] == "headers":
            hdrs = [[k, v] for k, v in self.headers.items()]
            self.send_body(200, json.dumps({"backend": self.server.name, "headers": hdrs}).encode())
        else:
            info = {
                "backend": self.server.name,
                "method": self.command,
                "path": path,
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "peer_port": self.client_address[1],
            }
            self.send_body(200, json.dumps(info).encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = handle_any


class Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of new upstream
    # connections from moatd's pools would overflow it, the kernel would drop
    # SYNs and the retransmit (1 s, then 3 s) would outlast connectMs.
    request_queue_size = 1024
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default=None)
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--fail-status", type=int, default=0,
                    help="answer every request with this status (e.g. 500)")
    a = ap.parse_args()
    srv = Server((a.address, a.port), Handler)
    srv.name = a.name or f"backend-{a.port}"
    srv.fail_status = a.fail_status
    print(f"backend {srv.name} on {a.address}:{a.port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
