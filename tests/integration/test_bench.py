#!/usr/bin/env python3
"""moat-bench, the bundled load generator, against a recording server.

The server (in this process, loopback only) records every request it gets:
peer address, method, target, headers and body. Each test runs moat-bench
with --json and checks its counts against what the server saw: bodies of
every framing parsed, errors sorted into the right class, mixes, source
addresses, open-loop latency counted from intended send times, and the three
TLS modes (a real OpenSSL handshake on the server side, Python's ssl).

Env: MOAT_BENCH = path of the moat-bench binary (CTest sets it).
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tls_pki  # noqa: E402

BENCH = os.environ.get("MOAT_BENCH", os.path.join(HERE, "..", "..", "build", "release", "bench", "moat-bench"))


class Recorder:
    """A threaded HTTP/1.1 server with misbehaving endpoints:
    /ok, /chunked, /close (close-delimited), /status/N, /garbage, /hang,
    /cut (closes mid-body), /stall-once (first request waits 0.5 s)."""

    def __init__(self, tls_ctx=None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.tls_ctx = tls_ctx
        self.lock = threading.Lock()
        self.requests = []
        self.connections = 0
        self.stalled = False
        self.stopping = False
        self.thread = threading.Thread(target=self.accept_loop, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping = True
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self.thread.join(5)
        self.sock.close()

    def accept_loop(self):
        while not self.stopping:
            conn, peer = self.sock.accept()
            if self.stopping:
                conn.close()
                return
            threading.Thread(target=self.serve, args=(conn, peer), daemon=True).start()

    def serve(self, conn, peer):
        with self.lock:
            self.connections += 1
        try:
            if self.tls_ctx is not None:
                conn.settimeout(10)
                conn = self.tls_ctx.wrap_socket(conn, server_side=True)
            conn.settimeout(30)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0"))
                while len(buf) < n:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:n], buf[n:]
                with self.lock:
                    self.requests.append({"peer": peer[0], "method": method, "target": target,
                                          "headers": headers, "body": body})
                if not self.answer(conn, method, target, headers):
                    return
        except (OSError, ValueError, ssl.SSLError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def answer(self, conn, method, target, headers):
        close = headers.get("connection", "").lower() == "close"
        tail = b"Connection: close\r\n" if close else b""
        if target == "/chunked":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + tail +
                         b"\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        elif target == "/close":
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close")
            return False
        elif target.startswith("/status/"):
            code = int(target.split("/")[2])
            conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n" % code + tail + b"\r\nno")
        elif target == "/garbage":
            conn.sendall(b"THIS IS NOT HTTP\r\n\r\n")
            return False
        elif target == "/hang":
            time.sleep(3)
            return False
        elif target == "/cut":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
            return False
        else:
            if target == "/stall-once":
                with self.lock:
                    first = not self.stalled
                    self.stalled = True
                if first:
                    time.sleep(0.5)
            body = b"" if method == "HEAD" else b"ok"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + tail + b"\r\n" + body)
        return not close


def bench(*args, timeout=60):
    r = subprocess.run([BENCH, "--json", *args], capture_output=True, text=True, timeout=timeout)
    out = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None
    return r, out


def setUpModule():
    if not os.path.exists(BENCH):
        raise unittest.SkipTest(f"{BENCH} not built")


class PlainTest(unittest.TestCase):
    def setUp(self):
        self.srv = Recorder()
        self.url = f"http://127.0.0.1:{self.srv.port}"

    def tearDown(self):
        self.srv.stop()

    def assertNoErrors(self, out):
        self.assertEqual(out["errors"], {"connect": 0, "tls": 0, "timeout": 0, "closed": 0, "parse": 0}, out)

    def test_closed_loop_request_count_matches_the_server(self):
        r, out = bench("-c", "4", "-n", "300", self.url + "/ok")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(out["mode"], "closed")
        self.assertEqual(out["requests"], 300)
        self.assertEqual(out["status"]["2xx"], 300)
        self.assertNoErrors(out)
        # The server saw every measured request (and at most the few that
        # were in flight when the limit was reached).
        self.assertGreaterEqual(len(self.srv.requests), 300)
        self.assertLessEqual(len(self.srv.requests), 304)
        self.assertEqual(self.srv.connections, 4 + 1)  # + moat-bench's start-up probe
        lat = out["latency_us"]
        self.assertTrue(0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"], lat)
        self.assertEqual(r.stderr, "")  # no progress line when stderr is not a terminal

    def test_every_body_framing_is_parsed(self):
        for path, extra in (("/chunked", []), ("/close", []), ("/ok", ["-m", "HEAD"])):
            with self.subTest(path=path):
                r, out = bench("-c", "2", "-n", "50", *extra, self.url + path)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(out["requests"], 50, out)
                self.assertEqual(out["status"]["2xx"], 50)
                self.assertNoErrors(out)
        # /close ends every connection: one connection per response.
        self.assertGreaterEqual(self.srv.connections, 2 + 50 + 2)

    def test_pipelining_keeps_several_requests_in_flight(self):
        r, out = bench("-c", "2", "-p", "8", "-n", "400", self.url + "/ok")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(out["requests"], 400)
        self.assertNoErrors(out)
        self.assertEqual(self.srv.connections, 2 + 1)  # + the start-up probe

    def test_new_connection_per_request(self):
        r, out = bench("-c", "2", "-n", "40", "--close", self.url + "/ok")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(out["requests"], 40)
        self.assertNoErrors(out)
        self.assertGreaterEqual(self.srv.connections, 40)
        self.assertTrue(all(q["headers"].get("connection") == "close" for q in self.srv.requests))

    def test_status_classes_are_counted(self):
        for code, cls in ((404, "4xx"), (503, "5xx"), (302, "3xx")):
            with self.subTest(code=code):
                r, out = bench("-c", "2", "-n", "20", f"{self.url}/status/{code}")
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(out["status"][cls], 20, out)
                self.assertEqual(out["status"]["2xx"], 0)

    def test_errors_by_class(self):
        r, out = bench("-c", "2", "-d", "0.5", self.url + "/garbage")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertGreater(out["errors"]["parse"], 0, out)
        self.assertEqual(out["requests"], 0)

        r, out = bench("-c", "2", "-d", "0.5", self.url + "/cut")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertGreater(out["errors"]["closed"], 0, out)
        self.assertEqual(out["errors"]["parse"], 0, out)
        self.assertEqual(out["requests"], 0)

        r, out = bench("-c", "2", "-d", "1", "--timeout", "0.2", self.url + "/hang")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertGreaterEqual(out["errors"]["timeout"], 2, out)
        self.assertEqual(out["requests"], 0)

    def test_warmup_is_not_measured(self):
        r, out = bench("-c", "2", "-w", "0.3", "-d", "0.3", self.url + "/ok")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertGreater(out["requests"], 0)
        self.assertGreater(len(self.srv.requests), out["requests"])

    def test_mix_file_methods_targets_headers_bodies_and_weights(self):
        mix = [
            {"method": "GET", "target": "/ok?a=1", "headers": {"X-Kind": "benign"}, "weight": 3},
            {"method": "POST", "target": "/ok?attack=%27%20or%201=1--", "headers": {"X-Kind": "attack"},
             "body": "q=<script>alert(1)</script>", "weight": 1},
        ]
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(mix, f)
        try:
            r, out = bench("-c", "2", "-n", "400", "-H", "X-Run: 7", "--mix", f.name, self.url + "/")
        finally:
            os.unlink(f.name)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(out["requests"], 400)
        self.assertNoErrors(out)
        gets = [q for q in self.srv.requests if q["method"] == "GET"]
        posts = [q for q in self.srv.requests if q["method"] == "POST"]
        self.assertTrue(all(q["target"] == "/ok?a=1" and q["headers"]["x-kind"] == "benign" for q in gets))
        self.assertTrue(all(q["body"] == b"q=<script>alert(1)</script>" and q["headers"]["x-kind"] == "attack"
                            for q in posts))
        self.assertTrue(all(q["headers"]["x-run"] == "7" for q in self.srv.requests))
        self.assertTrue(all(q["headers"]["host"] == f"127.0.0.1:{self.srv.port}" for q in self.srv.requests))
        ratio = len(gets) / max(1, len(posts))
        self.assertTrue(2.0 <= ratio <= 4.5, f"{len(gets)} GET vs {len(posts)} POST for weights 3:1")

    def test_source_address_spread(self):
        r, out = bench("-c", "12", "--close", "-n", "60", "--source", "127.3.0.0/29", self.url + "/ok")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(out["requests"], 60)
        peers = {q["peer"] for q in self.srv.requests}
        self.assertEqual(peers, {f"127.3.0.{i}" for i in range(1, 7)})

    def test_open_loop_counts_latency_from_intended_send_times(self):
        # One 0.5 s stall at the start. Closed loop: only the request that
        # hit it is slow. Open loop at 100 req/s on one connection: the ~50
        # requests due during the stall are late, and their latency counts
        # from when they were due, so the stall shows in p90.
        r, closed = bench("-c", "1", "-n", "100", self.url + "/stall-once")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertLess(closed["latency_us"]["p90"], 100000, closed)
        self.assertGreaterEqual(closed["latency_us"]["max"], 500000, closed)

        self.srv.stalled = False
        r, opened = bench("-c", "1", "-R", "100", "-n", "150", self.url + "/stall-once")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(opened["mode"], "open")
        self.assertEqual(opened["requests"], 150)
        self.assertGreaterEqual(opened["latency_us"]["p90"], 100000, opened)
        # The schedule, not the server, sets the pace: 150 requests at
        # 100/s take about 1.5 s even though each answer is immediate.
        self.assertGreater(opened["duration_s"], 1.2, opened)


class UsageErrorTest(unittest.TestCase):
    def run_bench(self, *args):
        return subprocess.run([BENCH, *args], capture_output=True, text=True, timeout=30)

    def test_bad_url(self):
        for url, why in (("ftp://x/", "need http:// or https://"), ("http://127.0.0.1:99999/", "port"),
                         ("http://[::1/", "unclosed"), ("http://no-such-host.invalid/", "cannot resolve")):
            with self.subTest(url=url):
                r = self.run_bench(url)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn("bad URL", r.stderr)
                self.assertIn(why, r.stderr)

    def test_refused_connection(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        r = self.run_bench("-d", "1", f"http://127.0.0.1:{port}/")
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot connect", r.stderr)
        self.assertIn("Connection refused", r.stderr)

    def test_bad_mix_files(self):
        cases = (
            ("not json", "not valid JSON"),
            ("[]", "non-empty JSON array"),
            ('[{"method": "GET"}]', "entry 0: \"target\" is required"),
            ('[{"target": "/"}, {"target": "/", "weight": 0}]', "entry 1: \"weight\""),
            ('[{"target": "no-slash"}]', "\"target\" must be"),
            ('[{"target": "/", "headers": {"X": "a\\r\\nInjected: 1"}}]', "header \"X\""),
            ('[{"target": "/", "colour": "red"}]', "unknown key \"colour\""),
        )
        for text, why in cases:
            with self.subTest(text=text):
                with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                    f.write(text)
                try:
                    r = self.run_bench("--mix", f.name, "http://127.0.0.1:1/")
                finally:
                    os.unlink(f.name)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn("mix file", r.stderr)
                self.assertIn(why, r.stderr)
        r = self.run_bench("--mix", "/nonexistent/mix.json", "http://127.0.0.1:1/")
        self.assertEqual(r.returncode, 2)
        self.assertIn("No such file", r.stderr)

    def test_bad_options(self):
        for args, why in ((["-c", "0"], "-c 0"), (["--tls-mode", "resume"], "needs an https"),
                          (["--source", "10.0.0.0/40"], "prefix length"), (["--frobnicate"], "unknown option"),
                          (["-H", "NoColon"], "Name: value"), (["--close", "-p", "4"], "--pipeline")):
            with self.subTest(args=args):
                r = self.run_bench(*args, "http://127.0.0.1:1/")
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(why, r.stderr)


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.pki = tls_pki.generate(cls.tmp.name)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cls.pki["backend_cert"], cls.pki["backend_key"])
        cls.srv = Recorder(tls_ctx=ctx)
        cls.url = f"https://127.0.0.1:{cls.srv.port}/ok"

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.tmp.cleanup()

    def test_keepalive_reuses_connections(self):
        r, out = bench("-c", "2", "-n", "100", "--cafile", self.pki["ca_cert"], self.url)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(out["requests"], 100)
        self.assertEqual(out["tls"], {"full_handshakes": 2, "resumed_handshakes": 0})
        self.assertEqual(out["errors"]["tls"], 0)

    def test_full_handshake_per_request(self):
        r, out = bench("-c", "2", "-n", "30", "--tls-mode", "handshake", self.url)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(out["requests"], 30)
        self.assertGreaterEqual(out["tls"]["full_handshakes"], 30)
        self.assertEqual(out["tls"]["resumed_handshakes"], 0)

    def test_resumed_handshake_per_request(self):
        r, out = bench("-c", "1", "-n", "30", "--tls-mode", "resume", self.url)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(out["requests"], 30)
        # Only the first connection has no ticket to offer.
        self.assertEqual(out["tls"]["full_handshakes"], 1, out)
        self.assertGreaterEqual(out["tls"]["resumed_handshakes"], 29, out)

    def test_verification_failure_is_a_tls_error(self):
        r, out = bench("-c", "1", "-d", "0.5", "--cafile", self.pki["client_ca_cert"], self.url)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertGreater(out["errors"]["tls"], 0, out)
        self.assertEqual(out["requests"], 0)


if __name__ == "__main__":
    unittest.main()
