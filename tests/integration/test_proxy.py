#!/usr/bin/env python3
"""Integration tests: moatd in front of real backend processes on loopback.

Each test class starts what it needs (backends, moatd with a generated
config) and stops it. Binaries come from MOAT_BIN_DIR (set by CTest).
"""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import http.client

HERE = os.path.dirname(os.path.abspath(__file__))
BIN_DIR = os.environ.get("MOAT_BIN_DIR", os.path.join(HERE, "..", "..", "build", "release", "apps"))
MOATD = os.path.join(BIN_DIR, "moatd")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


class Backend:
    # port: listen on this port (e.g. to bring a stopped backend back on the
    # same address); default a free one. extra_args go to backend.py (e.g.
    # ("--fail-status", "500")).
    def __init__(self, name, port=None, extra_args=()):
        self.port = port or free_port()
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "backend.py"), "--port", str(self.port), "--name", name]
            + list(extra_args),
            stdout=subprocess.DEVNULL)
        try:
            wait_port(self.port, proc=self.proc)
        except RuntimeError:
            self.proc.kill()
            self.proc.wait()
            raise

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Moatd:
    # start_timeout bounds how long moatd may take to listen. It is generous:
    # a WAF config that misses the Hyperscan cache compiles the CRS first
    # (seconds in release, a minute or more under sanitizers on a busy host).
    # If moatd never listens it is killed, so no orphan outlives the test.
    #
    # workdir: use this directory (config file, state dir, logs) instead of a
    # fresh temporary one, and leave it in place on stop(), so a second Moatd
    # can restart on the same state. config=None (with a workdir) starts from
    # the config file already there, unchanged.
    def __init__(self, config, workers=2, start_timeout=300.0, extra_args=(), workdir=None):
        self.owns_dir = workdir is None
        self.dir = tempfile.mkdtemp(prefix="moat-it-") if workdir is None else workdir
        self.config_path = os.path.join(self.dir, "moat.json")
        self.access_log = os.path.join(self.dir, "access.log")
        self.workers = workers
        if config is None:
            with open(self.config_path) as f:
                config = json.load(f)
        else:
            self.write(config)
        self.port = config["listeners"][0]["port"]
        self.stderr = open(os.path.join(self.dir, "stderr.log"), "w+")
        # Each moatd keeps its versions and admin token in its own directory
        # and serves the admin API on its own port.
        self.state_dir = os.path.join(self.dir, "state")
        self.admin_port = free_port()
        self.token_file = os.path.join(self.state_dir, "admin.token")
        self.proc = subprocess.Popen([MOATD, "--config", self.config_path, "--state-dir", self.state_dir,
                                      "--admin", f"127.0.0.1:{self.admin_port}"] + list(extra_args),
                                     stderr=self.stderr)
        try:
            wait_port(self.port, timeout=start_timeout, proc=self.proc)
        except RuntimeError as e:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{e}; moatd said:\n{self.log()[-4000:]}") from None

    def write(self, config):
        config.setdefault("logging", {})["accessLog"] = self.access_log
        config["workers"] = self.workers
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(config, f)
        os.replace(tmp, self.config_path)

    def wait_log(self, text, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.log():
                return
            time.sleep(0.02)
        raise AssertionError(f"moatd never logged {text!r}:\n{self.log()}")

    def log(self):
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=20)
        self.stderr.close()
        if self.owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return rc


# Load from one address would trip the default rule (2000 requests per
# 5 minutes per client IP); load tests switch rate limiting off.
NO_RATE_LIMIT = {"enabled": False}


def base_config(port, pools, routes=None, timeouts=None, rate_limit=None):
    cfg = {
        "listeners": [{"name": "public", "address": "127.0.0.1", "port": port, "protocol": "http"}],
        "pools": pools,
        "routes": routes or [{"host": "*", "pathPrefix": "/", "pool": pools[0]["name"]}],
    }
    if timeouts:
        cfg["timeouts"] = timeouts
    if rate_limit is not None:
        cfg["rateLimit"] = rate_limit
    return cfg


def raw_exchange(port, data, read_until_close=True, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    chunks = []
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
            if not read_until_close:
                break
    except socket.timeout:
        pass
    s.close()
    return b"".join(chunks)


def read_response(sock_file):
    """Reads one HTTP/1.1 response (CL or chunked) from a file-like socket."""
    status_line = sock_file.readline()
    if not status_line:
        return None
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = sock_file.readline()
        if line in (b"\r\n", b""):
            break
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(sock_file.readline().split(b";")[0], 16)
            if size == 0:
                sock_file.readline()
                break
            body += sock_file.read(size)
            sock_file.readline()
    elif "content-length" in headers:
        body = sock_file.read(int(headers["content-length"]))
    return status, headers, body


class ProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.b1 = Backend("b1")
        cls.b2 = Backend("b2")
        cls.dead_port = free_port()  # nothing listens here
        cls.port = free_port()
        pools = [
            {"name": "main", "balance": "round_robin", "backends": [
                {"address": "127.0.0.1", "port": cls.b1.port},
                {"address": "127.0.0.1", "port": cls.b2.port}]},
            {"name": "dead", "backends": [{"address": "127.0.0.1", "port": cls.dead_port}]},
            {"name": "empty", "backends": []},
            {"name": "sticky", "balance": "maglev", "backends": [
                {"address": "127.0.0.1", "port": cls.b1.port},
                {"address": "127.0.0.1", "port": cls.b2.port}]},
        ]
        routes = [
            {"host": "*", "pathPrefix": "/dead", "pool": "dead"},
            {"host": "*", "pathPrefix": "/empty", "pool": "empty"},
            {"host": "sticky.example", "pathPrefix": "/", "pool": "sticky"},
            {"host": "*", "pathPrefix": "/", "pool": "main"},
        ]
        cls.config = base_config(cls.port, pools, routes,
                                 {"upstreamResponseMs": 700, "connectMs": 1000,
                                  "requestHeaderMs": 1000, "idleMs": 5000})
        cls.moatd = Moatd(cls.config)

    @classmethod
    def tearDownClass(cls):
        rc = cls.moatd.stop()
        cls.b1.stop()
        cls.b2.stop()
        assert rc == 0, f"moatd exited {rc}"

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def request(self, method, path, body=None, headers=None):
        c = self.conn()
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r, data

    def test_get_empty_body_round_robin(self):
        seen = set()
        for _ in range(4):
            r, data = self.request("GET", "/hello")
            self.assertEqual(r.status, 200)
            info = json.loads(data)
            self.assertEqual(info["path"], "/hello")
            self.assertEqual(info["body_length"], 0)
            seen.add(info["backend"])
        self.assertEqual(seen, {"b1", "b2"})

    def test_post_bodies(self):
        for size in (0, 1024, 10 * 1024 * 1024):
            body = os.urandom(size)
            r, data = self.request("POST", "/upload", body=body,
                                   headers={"Content-Type": "application/octet-stream"})
            self.assertEqual(r.status, 200, size)
            info = json.loads(data)
            self.assertEqual(info["body_length"], size)
            self.assertEqual(info["body_sha256"], hashlib.sha256(body).hexdigest())

    def test_large_response(self):
        r, data = self.request("GET", "/size/10485760")
        self.assertEqual(r.status, 200)
        self.assertEqual(len(data), 10485760)

    def test_chunked_request_body(self):
        payload = b"".join(os.urandom(n) for n in (1, 100, 5000, 70000))
        chunks = b""
        off = 0
        for n in (1, 100, 5000, 70000):
            chunks += b"%x;ext=1\r\n" % n + payload[off:off + n] + b"\r\n"
            off += n
        req = (b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n" + chunks + b"0\r\n\r\n")
        resp = raw_exchange(self.port, req)
        self.assertTrue(resp.startswith(b"HTTP/1.1 200"), resp[:200])
        info = json.loads(resp.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(info["body_length"], len(payload))
        self.assertEqual(info["body_sha256"], hashlib.sha256(payload).hexdigest())

    def test_chunked_response(self):
        r, data = self.request("GET", "/chunked/123457")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Transfer-Encoding"), "chunked")
        self.assertEqual(data, b"y" * 123457)

    def test_response_until_close(self):
        r, data = self.request("GET", "/close")
        self.assertEqual(r.status, 200)
        self.assertEqual(data, b"z" * 5000)

    def test_keep_alive_reuses_client_connection(self):
        c = self.conn()
        for i in range(20):
            c.request("GET", f"/ka/{i}")
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            self.assertEqual(json.loads(r.read())["path"], f"/ka/{i}")
        # Still the same TCP connection: http.client reconnects silently, so
        # check the socket object stayed.
        sock = c.sock
        c.request("GET", "/ka/last")
        c.getresponse().read()
        self.assertIs(c.sock, sock)
        c.close()

    def test_pipelining_in_order(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        reqs = b"".join(b"GET /p/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
        s.sendall(reqs)
        f = s.makefile("rb")
        for i in range(5):
            status, headers, body = read_response(f)
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body)["path"], f"/p/{i}")
        s.close()

    def test_split_request_across_reads(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        req = b"GET /split HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n"
        for i in range(0, len(req), 777):
            s.sendall(req[i:i + 777])
            time.sleep(0.001)
        status, headers, body = read_response(s.makefile("rb"))
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["path"], "/split")
        s.close()

    def test_forwarding_headers(self):
        r, data = self.request("GET", "/headers", headers={
            "X-Forwarded-For": "203.0.113.7", "Connection": "keep-alive, X-Secret",
            "X-Secret": "hop", "Keep-Alive": "timeout=5", "TE": "trailers"})
        self.assertEqual(r.status, 200)
        hdrs = {k.lower(): v for k, v in json.loads(data)["headers"]}
        self.assertEqual(hdrs["x-forwarded-for"], "203.0.113.7, 127.0.0.1")
        self.assertEqual(hdrs["x-forwarded-proto"], "http")
        self.assertRegex(hdrs["x-request-id"], r"^[0-9a-f]{32}$")
        for hop in ("x-secret", "keep-alive", "te"):
            self.assertNotIn(hop, hdrs)
        self.assertEqual(r.getheader("X-Request-Id"), None)  # backend does not echo it

    def test_many_connection_tokens_all_dropped(self):
        names = [f"X-T{i}" for i in range(20)]
        headers = {n: "v" for n in names}
        headers["Connection"] = ", ".join(names)
        headers["X-Kept"] = "yes"
        r, data = self.request("GET", "/headers", headers=headers)
        hdrs = {k.lower(): v for k, v in json.loads(data)["headers"]}
        for n in names:
            self.assertNotIn(n.lower(), hdrs)
        self.assertEqual(hdrs["x-kept"], "yes")

    def test_request_id_kept_when_given(self):
        r, data = self.request("GET", "/headers", headers={"X-Request-Id": "abc-123"})
        hdrs = {k.lower(): v for k, v in json.loads(data)["headers"]}
        self.assertEqual(hdrs["x-request-id"], "abc-123")

    def test_backend_down_502(self):
        r, data = self.request("GET", "/dead/x")
        self.assertEqual(r.status, 502)
        self.assertIn(b"127.0.0.1:%d" % self.dead_port, data)
        self.assertIn(b"refused", data.lower())

    def test_no_backends_503(self):
        r, data = self.request("GET", "/empty/x")
        self.assertEqual(r.status, 503)
        self.assertIn(b"empty", data)

    def test_slow_backend_504(self):
        r, data = self.request("GET", "/slow/3000")
        self.assertEqual(r.status, 504)
        self.assertIn(b"did not respond", data)

    def test_bad_request_400_and_close(self):
        resp = raw_exchange(self.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertTrue(resp.startswith(b"HTTP/1.1 400"), resp)
        self.assertIn(b"Connection: close", resp)
        self.assertEqual(resp.count(b"HTTP/1.1"), 1)  # nothing smuggled through

    def test_unknown_coding_501(self):
        resp = raw_exchange(self.port, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        self.assertTrue(resp.startswith(b"HTTP/1.1 501"), resp)

    def test_header_too_large_431(self):
        resp = raw_exchange(self.port, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 40000 + b"\r\n\r\n")
        self.assertTrue(resp.startswith(b"HTTP/1.1 431"), resp[:100])

    # Raw requests the parser must refuse before anything reaches a backend:
    # (bytes, expected status). Each closes the connection and nothing
    # after the refused head (a smuggled request) is ever answered.
    STRICT_CASES = [
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"fffffffffffffffff\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3\r\nabcX\r\n0\r\n\r\n", 400),
    ]

    def test_strict_parser_refuses_and_closes(self):
        smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        for raw, status in self.STRICT_CASES:
            with self.subTest(raw=raw[:60]):
                resp = raw_exchange(self.port, raw + smuggled)
                self.assertTrue(resp.startswith(b"HTTP/1.1 %d" % status), resp[:120])
                self.assertNotIn(b"/smuggled", resp)
                # Chunked framing errors are found after the head went
                # upstream; still exactly one response and a close.
                self.assertEqual(resp.count(b"HTTP/1.1 "), 1, resp[:300])

    def test_header_timeout_408(self):
        resp = raw_exchange(self.port, b"GET / HTTP/1.1\r\nHost: a\r\n")
        self.assertTrue(resp.startswith(b"HTTP/1.1 408"), resp)

    def test_maglev_is_sticky_per_client(self):
        backends = set()
        for _ in range(6):
            r, data = self.request("GET", "/m", headers={"Host": "sticky.example"})
            backends.add(json.loads(data)["backend"])
        self.assertEqual(len(backends), 1)

    def test_counters_on_sigusr1(self):
        for _ in range(3):
            self.request("GET", "/counted")
        self.request("GET", "/dead/counted")
        deadline = time.time() + 10
        stats = None
        while time.time() < deadline:
            time.sleep(1.1)  # workers publish their counters once a second
            self.moatd.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
            lines = [l for l in self.moatd.log().splitlines() if l.startswith("{")]
            if lines:
                stats = json.loads(lines[-1])
                if stats["responses_5xx"] >= 1 and stats["requests"] >= 4:
                    break
        self.assertIsNotNone(stats)
        self.assertGreaterEqual(stats["requests"], 4)
        self.assertGreaterEqual(stats["upstream_connect_errors"], 1)
        self.assertGreaterEqual(stats["listeners"]["public"]["requests"], 4)
        self.assertGreaterEqual(stats["routes"]["*/dead"]["errors_5xx"], 1)
        self.assertGreaterEqual(stats["backends"][f"127.0.0.1:{self.dead_port}"]["errors_5xx"], 1)

    def test_access_log_json(self):
        self.request("GET", "/logged?q=1")
        deadline = time.time() + 5
        line = None
        while time.time() < deadline and line is None:
            with open(self.moatd.access_log) as f:
                for l in f:
                    rec = json.loads(l)
                    if rec["target"] == "/logged?q=1":
                        line = rec
            time.sleep(0.05)
        self.assertIsNotNone(line)
        self.assertEqual(line["status"], 200)
        self.assertEqual(line["method"], "GET")
        self.assertEqual(line["client"], "127.0.0.1")
        self.assertIn(line["upstream"], (f"127.0.0.1:{self.b1.port}", f"127.0.0.1:{self.b2.port}"))
        self.assertRegex(line["request_id"], r"^[0-9a-f]{32}$")
        self.assertNotIn("error", line)

    def test_access_log_names_the_error(self):
        raw_exchange(self.port, b"GET /logged-error HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                                b"Content-Length: 1\r\n\r\nab")
        r, _ = self.request("GET", "/dead/logged")
        self.assertEqual(r.status, 502)
        deadline = time.time() + 5
        found = {}
        while time.time() < deadline and len(found) < 2:
            with open(self.moatd.access_log) as f:
                for l in f:
                    rec = json.loads(l)
                    if rec["status"] == 400 and "Content-Length" in rec.get("error", ""):
                        found[400] = rec
                    if rec["target"] == "/dead/logged":
                        found[502] = rec
            time.sleep(0.05)
        self.assertIn(400, found)
        self.assertIn("refused", found[502]["error"])


class LeastConnectionsTest(unittest.TestCase):
    """Least connections is counted per worker (shared-nothing), so this runs
    one worker: two concurrent slow requests must land on different backends."""

    def test_least_connections_spreads_concurrent_requests(self):
        b1, b2 = Backend("b1"), Backend("b2")
        port = free_port()
        m = Moatd(base_config(port, [{"name": "least", "balance": "least_connections", "backends": [
            {"address": "127.0.0.1", "port": b1.port}, {"address": "127.0.0.1", "port": b2.port}]}]),
            workers=1)
        try:
            for _ in range(3):
                results = []

                def one():
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    c.request("GET", "/slow/400")
                    r = c.getresponse()
                    data = r.read()
                    results.append((r.status, r.getheader("X-Backend"), data))
                    c.close()

                ts = [threading.Thread(target=one) for _ in range(2)]
                for t in ts:
                    t.start()
                    time.sleep(0.1)
                for t in ts:
                    t.join()
                self.assertEqual(sorted(x[1] or "" for x in results), ["b1", "b2"], results)
        finally:
            self.assertEqual(m.stop(), 0)
            b1.stop()
            b2.stop()


class UpstreamPoolTest(unittest.TestCase):
    """Upstream keep-alive: with the default pool size one worker reuses its
    backend connection; with maxIdlePerWorker 0 every request connects anew."""

    def peer_ports(self, max_idle):
        b = Backend("u1")
        port = free_port()
        pool = {"name": "p", "backends": [{"address": "127.0.0.1", "port": b.port}]}
        if max_idle is not None:
            pool["maxIdlePerWorker"] = max_idle
        m = Moatd(base_config(port, [pool]), workers=1)
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            ports = []
            for _ in range(5):
                c.request("GET", "/p")
                r = c.getresponse()
                ports.append(json.loads(r.read())["peer_port"])
            c.close()
        finally:
            rc = m.stop()
            b.stop()
        self.assertEqual(rc, 0)
        return ports

    def test_default_pool_reuses_connection(self):
        self.assertEqual(len(set(self.peer_ports(None))), 1)

    def test_pool_size_zero_disables_reuse(self):
        self.assertEqual(len(set(self.peer_ports(0))), 5)


class ReloadTest(unittest.TestCase):
    def test_reload_under_load_loses_nothing(self):
        b1, b2 = Backend("r1"), Backend("r2")
        port = free_port()
        def cfg(w1, w2):
            return base_config(port, [{"name": "p", "balance": "round_robin", "backends": [
                {"address": "127.0.0.1", "port": b1.port, "weight": w1},
                {"address": "127.0.0.1", "port": b2.port, "weight": w2}]}], rate_limit=NO_RATE_LIMIT)
        m = Moatd(cfg(1, 1))
        failures = []
        counts = {"ok": 0}
        stop = threading.Event()

        def load():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            n = 0
            while not stop.is_set() and n < 3000:
                n += 1
                try:
                    c.request("GET", "/r")
                    r = c.getresponse()
                    r.read()
                    if r.status != 200:
                        failures.append(r.status)
                    else:
                        counts["ok"] += 1
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append(repr(e))
                    c.close()
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.close()

        ts = [threading.Thread(target=load) for _ in range(4)]
        for t in ts:
            t.start()
        try:
            for i in range(10):
                time.sleep(0.1)
                m.write(cfg(1 + i % 3, 3 - i % 3))
                m.proc.send_signal(signal.SIGHUP)
                m.wait_log(f"config version {i + 2} applied")
            # A broken document is refused and the old config keeps serving.
            with open(m.config_path, "w") as f:
                f.write('{"listeners": [], "pools": [{"name": 5}]}')
            m.proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)
        finally:
            stop.set()
            for t in ts:
                t.join()
        log = m.log()
        rc = m.stop()
        b1.stop()
        b2.stop()
        self.assertEqual(failures, [])
        self.assertGreater(counts["ok"], 100)
        self.assertIn("config version 11 applied", log)
        self.assertIn("reload rejected", log)
        self.assertEqual(rc, 0)


class MixedLoadTest(unittest.TestCase):
    """Bounded mixed load (methods, body sizes, chunked, close-delimited,
    slow responses, keep-alive and not), then a backend killed and brought
    back: only 200s while both run, only 200/502 while one is down, 200s
    again after, and moatd exits cleanly (0 also means no sanitizer report
    in the ASan+UBSan build)."""

    def run_load(self, port, seconds, threads=16):
        import random
        stats = {}
        lock = threading.Lock()
        end = time.time() + seconds

        def worker(seed):
            rnd = random.Random(seed)
            c = None
            n = 0
            while time.time() < end and n < 2000:
                n += 1
                try:
                    if c is None:
                        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    method = rnd.choice(["GET", "POST", "HEAD"])
                    path = rnd.choice(["/a", "/size/100000", "/chunked/5000", "/slow/20", "/close", "/headers"])
                    body = os.urandom(rnd.choice([0, 10, 70000])) if method == "POST" else None
                    c.request(method, path, body=body)
                    r = c.getresponse()
                    r.read()
                    key = r.status
                    if r.getheader("Connection", "").lower() == "close":
                        c.close()
                        c = None
                except Exception as e:  # noqa: BLE001 - any failure is counted
                    key = type(e).__name__
                    if c is not None:
                        c.close()
                    c = None
                with lock:
                    stats[key] = stats.get(key, 0) + 1
            if c is not None:
                c.close()

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return stats

    def test_mixed_load_and_backend_restart(self):
        b1, b2 = Backend("m1"), Backend("m2")
        port = free_port()
        m = Moatd(base_config(port, [{"name": "p", "backends": [
            {"address": "127.0.0.1", "port": b1.port}, {"address": "127.0.0.1", "port": b2.port}]}],
            rate_limit=NO_RATE_LIMIT))
        try:
            stats = self.run_load(port, 5)
            self.assertEqual(set(stats), {200}, stats)
            self.assertGreater(stats[200], 200)
            b1.stop()
            stats = self.run_load(port, 2)
            self.assertLessEqual(set(stats), {200, 502}, stats)
            self.assertIn(200, stats)
            b1_port = b1.port
            b1 = Backend("m1")  # new process, maybe a new port: reload to it
            cfg = base_config(port, [{"name": "p", "backends": [
                {"address": "127.0.0.1", "port": b1.port}, {"address": "127.0.0.1", "port": b2.port}]}],
                rate_limit=NO_RATE_LIMIT)
            m.write(cfg)
            m.proc.send_signal(signal.SIGHUP)
            m.wait_log("config version 2 applied")
            self.assertNotEqual(b1_port, 0)
            stats = self.run_load(port, 3)
            self.assertEqual(set(stats), {200}, stats)
        finally:
            rc = m.stop()
            b1.stop()
            b2.stop()
        self.assertEqual(rc, 0)


class CheckTest(unittest.TestCase):
    def test_check_reports_every_error_with_path(self):
        d = tempfile.mkdtemp()
        p = os.path.join(d, "bad.json")
        with open(p, "w") as f:
            json.dump({"listeners": [{"address": "127.0.0.1", "port": 8080}],
                       "pools": [{"name": "a", "backends": [
                           {"address": "127.0.0.1", "port": 1},
                           {"address": "127.0.0.1", "port": 2},
                           {"address": "127.0.0.1", "port": 70000}]}],
                       "routes": [{"pathPrefix": "/", "pool": "nope"}]}, f)
        r = subprocess.run([MOATD, "--check", p], capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("pools[0].backends[2].port: 70000 is not a port", r.stderr)
        self.assertIn("routes[0].pool", r.stderr)

    def test_check_accepts_example(self):
        ex = os.path.join(HERE, "..", "..", "examples", "moat.json")
        r = subprocess.run([MOATD, "--check", ex], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_invalid_config_does_not_start(self):
        d = tempfile.mkdtemp()
        p = os.path.join(d, "bad.json")
        with open(p, "w") as f:
            f.write("{not json")
        r = subprocess.run([MOATD, "--config", p], capture_output=True, text=True, timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("not starting", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
