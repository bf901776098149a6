#!/usr/bin/env python3
"""Rate limiting end to end: moatd (2 workers) in front of a test backend.

Clients come from distinct loopback addresses (127.x.y.z: all of 127/8 is
local on Linux) to look like distinct clients.
"""
import json
import os
import signal
import socket
import threading
import time
import unittest

from test_proxy import Backend, Moatd, base_config, free_port, read_response


class Client:
    """A keep-alive HTTP/1.1 client bound to a chosen source address."""

    def __init__(self, port, source="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def get(self, path="/", headers=None):
        lines = [f"GET {path} HTTP/1.1", "Host: rl.example"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return read_response(self.file)

    def close(self):
        self.file.close()
        self.sock.close()


def statuses(port, n, source="127.0.0.1", path="/", headers=None):
    c = Client(port, source)
    out = [c.get(path, headers)[0] for _ in range(n)]
    c.close()
    return out


class RateLimitTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("rl")

    @classmethod
    def tearDownClass(cls):
        cls.backend.stop()

    def start(self, rate_limit, workers=2):
        port = free_port()
        cfg = base_config(port, [{"name": "p", "backends": [
            {"address": "127.0.0.1", "port": self.backend.port}]}], rate_limit=rate_limit)
        m = Moatd(cfg, workers=workers)
        self.addCleanup(lambda: self.assertEqual(m.stop(), 0))
        return m, port

    def stats(self, m, ready=lambda s: True):
        deadline = time.time() + 10
        s = None
        while time.time() < deadline:
            time.sleep(1.1)  # workers publish counters once a second
            m.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
            lines = [l for l in m.log().splitlines() if l.startswith("{")]
            if lines:
                s = json.loads(lines[-1])
                if ready(s):
                    return s
        return s

    def test_exactly_the_limit_passes_over_50_connections_and_2_workers(self):
        # A day-long period so refill during the test adds nothing: the count
        # must come out exact, whichever worker each connection lands on.
        m, port = self.start({"rules": [{"name": "per-ip", "limit": 2000, "periodS": 86400}]})
        counts = {}
        lock = threading.Lock()

        def run():
            c = Client(port)
            local = {}
            for _ in range(60):
                st = c.get("/x")[0]
                local[st] = local.get(st, 0) + 1
            c.close()
            with lock:
                for k, v in local.items():
                    counts[k] = counts.get(k, 0) + v

        threads = [threading.Thread(target=run) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(counts, {200: 2000, 429: 1000})
        s = self.stats(m, lambda s: s["rate_limited"] >= 1000)
        self.assertEqual(s["rate_limited"], 1000)
        self.assertEqual(s["rate_limit_rules"]["per-ip"], {"checked": 3000, "limited": 1000})
        self.assertEqual(s["rate_limit_top"][0]["key"], "127.0.0.1")
        self.assertEqual(s["rate_limit_top"][0]["rule"], "per-ip")

    def test_429_carries_retry_after_and_ratelimit_fields(self):
        m, port = self.start({"rules": [{"name": "r", "limit": 5, "periodS": 60, "headers": True}]})
        c = Client(port)
        for i in range(5):
            st, h, _ = c.get()
            self.assertEqual(st, 200)
            self.assertEqual(h["ratelimit-policy"], '"r";q=5;w=60')
            self.assertEqual(h["ratelimit"], f'"r";r={4 - i};t={12 * (i + 1)}')
        st, h, body = c.get()
        self.assertEqual(st, 429)
        self.assertEqual(h["retry-after"], "12")
        self.assertEqual(h["ratelimit-policy"], '"r";q=5;w=60')
        self.assertEqual(h["ratelimit"], '"r";r=0;t=60')
        self.assertIn(b"rate limit exceeded", body)
        # The connection stays usable (a 429 is an answer, not an error).
        self.assertEqual(c.get()[0], 429)
        c.close()
        deadline = time.time() + 5
        logged = []
        while time.time() < deadline and not logged:
            with open(m.access_log) as f:
                logged = [json.loads(l) for l in f if '"status":429' in l]
            time.sleep(0.05)
        self.assertEqual(logged[0]["rate_limit"], "r")

    def test_distinct_client_addresses_are_limited_independently(self):
        m, port = self.start({"rules": [{"name": "r", "limit": 3, "periodS": 600}]})
        for i in range(2, 12):
            src = f"127.0.{i}.{i + 1}"
            self.assertEqual(statuses(port, 5, src), [200, 200, 200, 429, 429], src)

    def test_trusted_proxy_forwarded_for(self):
        m, port = self.start({"trustedProxies": ["127.0.0.2/32"],
                              "rules": [{"name": "r", "limit": 2, "periodS": 600}]})
        # Through the trusted proxy, each forwarded client has its own bucket.
        for client in ("198.51.100.1", "198.51.100.2"):
            self.assertEqual(statuses(port, 3, "127.0.0.2", headers={"X-Forwarded-For": client}),
                             [200, 200, 429], client)
        # A spoofed left-most entry does not buy a new bucket.
        self.assertEqual(statuses(port, 1, "127.0.0.2",
                                  headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.1"}), [429])
        # An untrusted peer's X-Forwarded-For is ignored: counted by its address.
        self.assertEqual(statuses(port, 3, "127.0.0.3", headers={"X-Forwarded-For": "198.51.100.7"}),
                         [200, 200, 429])
        self.assertEqual(statuses(port, 1, "127.0.0.3", headers={"X-Forwarded-For": "198.51.100.8"}),
                         [429])

    def test_deny_and_allow_lists(self):
        m, port = self.start({"allow": ["127.0.5.0/24"], "deny": ["127.0.6.6"],
                              "rules": [{"name": "r", "limit": 1, "periodS": 600}]})
        self.assertEqual(statuses(port, 5, "127.0.5.9"), [200] * 5)
        c = Client(port, "127.0.6.6")
        st, _, body = c.get()
        c.close()
        self.assertEqual(st, 403)
        self.assertIn(b"denied", body)
        self.assertEqual(statuses(port, 2, "127.0.7.7"), [200, 429])
        s = self.stats(m, lambda s: s["rate_limit_deny_listed"] >= 1)
        self.assertEqual(s["rate_limit_deny_listed"], 1)

    def test_header_key(self):
        m, port = self.start({"rules": [{"name": "api", "limit": 2, "periodS": 600,
                                         "key": "header:X-Api-Key"}]})
        # One key from two addresses: one bucket.
        self.assertEqual(statuses(port, 1, "127.0.1.1", headers={"X-Api-Key": "k1"}), [200])
        self.assertEqual(statuses(port, 2, "127.0.1.2", headers={"X-Api-Key": "k1"}), [200, 429])
        self.assertEqual(statuses(port, 2, "127.0.1.2", headers={"X-Api-Key": "k2"}), [200, 200])
        # No key: the rule does not apply.
        self.assertEqual(statuses(port, 4, "127.0.1.2"), [200] * 4)

    def test_dry_run_counts_and_logs_only(self):
        m, port = self.start({"rules": [{"name": "trial", "limit": 2, "periodS": 600, "dryRun": True}]})
        self.assertEqual(statuses(port, 5), [200] * 5)
        s = self.stats(m, lambda s: s["rate_limit_dry_run"] >= 3)
        self.assertEqual(s["rate_limit_dry_run"], 3)
        self.assertEqual(s["rate_limited"], 0)
        with open(m.access_log) as f:
            recs = [json.loads(l) for l in f]
        self.assertEqual(sum(1 for r in recs if r.get("rate_limit") == "dry-run:trial"), 3)

    def test_repeat_offender_is_dropped_at_accept(self):
        m, port = self.start({"escalation": {"after": 3, "cooldownS": 600},
                              "rules": [{"name": "r", "limit": 1, "periodS": 600}]})
        self.assertEqual(statuses(port, 4, "127.0.9.9"), [200, 429, 429, 429])
        # Banned: the next connection is closed before a byte is read.
        s = socket.socket()
        s.settimeout(5)
        s.bind(("127.0.9.9", 0))
        s.connect(("127.0.0.1", port))
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            data = s.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        s.close()
        self.assertEqual(data, b"")
        # Others are unaffected.
        self.assertEqual(statuses(port, 1, "127.0.9.10"), [200])
        st = self.stats(m, lambda s: s["rate_limit_banned_connections"] >= 1)
        self.assertEqual(st["rate_limit_escalations"], 1)
        self.assertGreaterEqual(st["rate_limit_banned_connections"], 1)

    def test_reload_keeps_buckets(self):
        m, port = self.start({"rules": [{"name": "r", "limit": 2, "periodS": 600}]})
        self.assertEqual(statuses(port, 3, "127.0.2.2"), [200, 200, 429])
        with open(m.config_path) as f:
            cfg = json.load(f)
        cfg["routes"][0]["pathPrefix"] = "/"
        cfg["logging"]["level"] = "debug"
        m.write(cfg)
        m.proc.send_signal(signal.SIGHUP)
        m.wait_log("config version 2 applied")
        self.assertEqual(statuses(port, 1, "127.0.2.2"), [429])
        # A changed rule starts afresh.
        cfg["rateLimit"]["rules"][0]["limit"] = 3
        m.write(cfg)
        m.proc.send_signal(signal.SIGHUP)
        m.wait_log("config version 3 applied")
        self.assertEqual(statuses(port, 4, "127.0.2.2"), [200, 200, 200, 429])

    def test_proxy_protocol_from_trusted_proxies_only(self):
        port = free_port()
        cfg = base_config(port, [{"name": "p", "backends": [
            {"address": "127.0.0.1", "port": self.backend.port}]}],
            rate_limit={"trustedProxies": ["127.0.0.2"],
                        "rules": [{"name": "r", "limit": 1, "periodS": 600}]})
        cfg["listeners"][0]["proxyProtocol"] = True
        m = Moatd(cfg)
        self.addCleanup(lambda: self.assertEqual(m.stop(), 0))

        def exchange(source, preamble):
            s = socket.socket()
            s.settimeout(5)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            f = s.makefile("rb")
            try:
                s.sendall(preamble + b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                return read_response(f)
            except (ConnectionResetError, BrokenPipeError):
                return None
            finally:
                f.close()
                s.close()

        v1 = b"PROXY TCP4 198.51.100.9 127.0.0.1 4711 80\r\n"
        st, _, body = exchange("127.0.0.2", v1)
        self.assertEqual(st, 200)
        seen = dict((k.lower(), v) for k, v in json.loads(body)["headers"])
        self.assertEqual(seen["x-forwarded-for"], "198.51.100.9")
        # The rate limit counts the client the header named...
        self.assertEqual(exchange("127.0.0.2", v1)[0], 429)
        v2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([198, 51, 100, 10, 127, 0, 0, 1])
              + b"\x12\x67\x00\x50")
        self.assertEqual(exchange("127.0.0.2", v2)[0], 200)
        # ...an untrusted peer is cut off, and so is a malformed header.
        self.assertIsNone(exchange("127.0.0.3", v1))
        self.assertIsNone(exchange("127.0.0.2", b"PROXY TCP9 nonsense\r\n"))
        s = self.stats(m, lambda s: s["proxy_protocol_errors"] >= 1 and s["proxy_protocol_refused"] >= 1)
        # Two: the harness's readiness probe (from 127.0.0.1) and 127.0.0.3.
        self.assertEqual(s["proxy_protocol_refused"], 2)
        self.assertEqual(s["proxy_protocol_errors"], 1)

    def test_default_rule_is_on(self):
        m, port = self.start(None)
        c = Client(port, "127.0.3.3")
        st, h, _ = c.get()
        c.close()
        self.assertEqual(st, 200)
        s = self.stats(m, lambda s: s["rate_limit_rules"].get("default", {}).get("checked", 0) >= 1)
        self.assertEqual(s["rate_limit_rules"]["default"]["checked"], 1)
        self.assertEqual(s["rate_limit_table"]["capacity"], 1000008)


if __name__ == "__main__":
    unittest.main()
