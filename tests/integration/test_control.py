#!/usr/bin/env python3
"""The admin REST API end to end (spec: the routes in `moatd --list-routes`,
docs/openapi.json, docs/config.md): moatd in front of real backend processes,
driven over HTTP on its admin listener.

Covers auth on every route, the OpenAPI document against the route table
(the route-coverage check), every endpoint's success and failure answers,
versions / rollback / restart, config pushes under load, active health checks
and outlier detection, geo policies with live zone-file edits, and /metrics.

Every wait is a bounded poll; a timeout only ever means "did not happen".
Load loops are bounded in count and time (the tests run on small shared
machines).
"""
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

import tls_pki
from test_proxy import (MOATD, NO_RATE_LIMIT, Backend, Moatd, base_config, free_port, read_response,
                        wait_port)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OPENAPI_DOC = os.path.join(REPO, "docs", "openapi.json")
CRS_RULES = "/usr/share/modsecurity-crs/rules"
UNICODE_MAP = os.path.join(REPO, "..", "shared", "data", "unicode.mapping")

_DEFAULT = object()


# ---------------------------------------------------------------------------
# Helpers


def list_routes():
    """(METHOD, path) pairs from `moatd --list-routes`, in its order."""
    r = subprocess.run([MOATD, "--list-routes"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"moatd --list-routes exited {r.returncode}: {r.stderr}")
    out = []
    for line in r.stdout.splitlines():
        line = line.strip()
        if line:
            method, path = line.split(None, 1)
            out.append((method, path))
    return out


def poll(fn, timeout=10.0, interval=0.1):
    """Calls fn until it returns something truthy or the time is up; returns
    the last value."""
    deadline = time.time() + timeout
    value = fn()
    while not value and time.time() < deadline:
        time.sleep(interval)
        value = fn()
    return value


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body

    @property
    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def __repr__(self):
        return f"<{self.status} {self.body[:600]!r}>"


class Api:
    """Client for one moatd's admin listener (a new connection per call)."""

    def __init__(self, moatd):
        self.port = moatd.admin_port
        with open(moatd.token_file) as f:
            self.token = f.read().strip()

    def call(self, method, path, body=None, token=_DEFAULT, headers=None, timeout=120):
        h = dict(headers or {})
        if token is _DEFAULT:
            token = self.token
        if token is not None:
            h["Authorization"] = "Bearer " + token
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            c.close()

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def ok(self, method, path, body=None, status=200):
        """A call that must succeed; returns its JSON body."""
        r = self.call(method, path, body)
        if r.status != status:
            raise AssertionError(f"{method} {path} {json.dumps(body)[:300] if body is not None else ''} "
                                 f"-> {r.status} (expected {status}): {r.body[:2000]!r}")
        return r.json

    def config(self):
        r = self.get("/api/v1/config")
        assert r.status == 200, r
        return r.json

    def version(self):
        return self.ok("GET", "/api/v1/status")["version"]

    def backend(self, pool, key):
        for p in self.ok("GET", "/api/v1/status")["pools"]:
            if p["name"] == pool:
                for b in p["backends"]:
                    if b["key"] == key:
                        return b
        return None

    def health(self, pool, key):
        b = self.backend(pool, key)
        return b and b["health"]


def proxy_get(port, path="/", source=None, headers=None, timeout=10):
    """One request on a new connection (Connection: close), optionally from
    a chosen loopback source address. Returns (status, headers, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    try:
        lines = [f"GET {path} HTTP/1.1", "Host: control.test", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        f = s.makefile("rb")
        resp = read_response(f)
        f.close()
        if resp is None:
            raise ConnectionError("connection closed without a response")
        return resp
    finally:
        s.close()


def backend_of(port, path="/", source=None):
    status, headers, body = proxy_get(port, path, source)
    return status, headers.get("x-backend")


def key(b):
    return f"127.0.0.1:{b.port}"


def pool(name, backends, **extra):
    """backends: list of (Backend, weight)."""
    p = {"name": name, "balance": "round_robin",
         "backends": [{"address": "127.0.0.1", "port": b.port, "weight": w} for b, w in backends]}
    p.update(extra)
    return p


def set_weight(doc, pool_name, port, weight):
    for p in doc["pools"]:
        if p["name"] == pool_name:
            for b in p["backends"]:
                if b["port"] == port:
                    b["weight"] = weight
                    return doc
    raise KeyError((pool_name, port))


class AdminCase(unittest.TestCase):
    """Base: start() launches a moatd that is stopped (exit 0 asserted) when
    the test ends."""

    def start(self, cfg, workers=2, workdir=None, start_timeout=300.0):
        m = Moatd(cfg, workers=workers, workdir=workdir, start_timeout=start_timeout)
        try:
            wait_port(m.admin_port, proc=m.proc)
            poll(lambda: os.path.exists(m.token_file), timeout=5)
            for l in (cfg or {}).get("listeners", [])[1:]:
                wait_port(l["port"], proc=m.proc)
        except Exception:
            self.stop(m)
            raise
        self.addCleanup(self.stop, m)
        return m, Api(m)

    def stop(self, m):
        if m.proc.poll() is None:
            log = m.log()
            rc = m.stop()
            self.assertEqual(rc, 0, f"moatd exited {rc}:\n{log[-3000:]}")

    def assertRejected(self, api, resp, before, paths=(), status=400):
        """resp is a refusal (status, {"error"}, errors[] naming `paths`) and
        the running config did not change."""
        self.assertEqual(resp.status, status, resp)
        body = resp.json
        self.assertIsInstance(body, dict, resp)
        self.assertIsInstance(body.get("error"), str, resp)
        self.assertTrue(body["error"], resp)
        if paths:
            self.assertIsInstance(body.get("errors"), list, resp)
            got = [e["path"] for e in body["errors"]]
            for e in body["errors"]:
                self.assertIsInstance(e.get("message"), str, resp)
            for p in paths:
                self.assertIn(p, got, resp)
        after = api.get("/api/v1/config")
        self.assertEqual(after.json, before.json, "config changed by a refused request")
        self.assertEqual(after.headers.get("moat-config-version"), before.headers.get("moat-config-version"))


# ---------------------------------------------------------------------------
# 1. Auth, 2. OpenAPI


class AuthTest(AdminCase):
    @classmethod
    def setUpClass(cls):
        cls.b1 = Backend("a1")

    @classmethod
    def tearDownClass(cls):
        cls.b1.stop()

    def setUp(self):
        self.port = free_port()
        self.m, self.api = self.start(base_config(self.port, [pool("main", [(self.b1, 1)])],
                                                  rate_limit=NO_RATE_LIMIT))

    def fill(self, path):
        values = {"version": "1", "pool": "main", "backend": key(self.b1), "name": "default",
                  "rule": "default", "key": "127.0.0.1", "listener": "public", "index": "0",
                  "address": "127.0.0.1"}
        out = path
        for k, v in values.items():
            out = out.replace("{" + k + "}", urllib.parse.quote(v, safe=""))
        self.assertNotIn("{", out, f"no value for a parameter of {path}")
        return out

    def test_every_route_refuses_missing_or_wrong_token(self):
        routes = list_routes()
        self.assertGreater(len(routes), 20)
        open_routes = {("GET", "/healthz"), ("GET", "/readyz")}
        self.assertLessEqual(open_routes, set(routes))
        body = {"weight": 2}  # plausible; never looked at without a token
        checked = 0
        for method, path in routes:
            if (method, path) in open_routes:
                continue
            target = self.fill(path)
            send = body if method in ("POST", "PUT", "PATCH") else None
            for label, token in (("no token", None), ("wrong token", "0" * 64),
                                 ("token as basic", _DEFAULT)):
                hdrs = None
                if label == "token as basic":
                    hdrs = {"Authorization": "Basic " + self.api.token}
                    token = None
                r = self.api.call(method, target, send, token=token, headers=hdrs)
                with self.subTest(route=f"{method} {path}", case=label):
                    self.assertEqual(r.status, 401, r)
                    self.assertTrue(r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers)
                    self.assertEqual(r.json, {"error": "missing or invalid bearer token"})
            checked += 1
        self.assertEqual(checked, len(routes) - 2)
        # Nothing the refused requests asked for happened.
        self.assertEqual(self.api.version(), 1)
        # And the right token opens them (one cheap read).
        self.assertEqual(self.api.get("/api/v1/status").status, 200)

    def test_probes_need_no_token(self):
        r = self.api.get("/healthz", token=None)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"status": "ok"})
        r = self.api.get("/readyz", token=None)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"ready": True, "version": 1})

    def test_token_file_is_0600_in_state_dir(self):
        self.assertEqual(os.path.dirname(self.m.token_file), self.m.state_dir)
        st = os.stat(self.m.token_file)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, oct(st.st_mode))
        self.assertRegex(self.api.token, r"^[0-9a-f]{64}$")


class OpenApiTest(AdminCase):
    """The route-coverage check: the served OpenAPI document is docs/openapi.json
    and names exactly the routes moatd serves."""

    @classmethod
    def setUpClass(cls):
        cls.b1 = Backend("o1")

    @classmethod
    def tearDownClass(cls):
        cls.b1.stop()

    def test_served_document_equals_docs_file(self):
        m, api = self.start(base_config(free_port(), [pool("main", [(self.b1, 1)])]))
        r = api.get("/api/v1/openapi.json")
        self.assertEqual(r.status, 200, r)
        self.assertIn("json", r.headers.get("content-type", ""))
        with open(OPENAPI_DOC) as f:
            self.assertEqual(r.json, json.load(f))

    def test_document_paths_equal_list_routes(self):
        with open(OPENAPI_DOC) as f:
            doc = json.load(f)
        self.assertTrue(str(doc.get("openapi", "")).startswith("3"), doc.get("openapi"))
        methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
        documented = {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in methods}
        served = set(list_routes())
        self.assertEqual(sorted(served - documented), [], "served but not in docs/openapi.json")
        self.assertEqual(sorted(documented - served), [], "in docs/openapi.json but not served")
        self.assertEqual(len(served), len(list_routes()), "a route is listed twice")


# ---------------------------------------------------------------------------
# 3. Endpoints


class ConfigApiTest(AdminCase):
    @classmethod
    def setUpClass(cls):
        cls.b1 = Backend("c1")
        cls.b2 = Backend("c2")

    @classmethod
    def tearDownClass(cls):
        cls.b1.stop()
        cls.b2.stop()

    def setUp(self):
        self.port = free_port()
        self.m, self.api = self.start(base_config(self.port, [pool("main", [(self.b1, 1)])],
                                                  rate_limit=NO_RATE_LIMIT))

    def test_get_config_every_field_and_version_header(self):
        r = self.api.get("/api/v1/config")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("moat-config-version"), "1")
        doc = r.json
        # Defaults written out.
        self.assertEqual(doc["timeouts"]["connectMs"], 2000)
        self.assertEqual(doc["limits"]["maxHeaders"], 100)
        self.assertEqual(doc["pools"][0]["backends"][0],
                         {"address": "127.0.0.1", "port": self.b1.port, "weight": 1, "drain": False})
        self.assertEqual(doc["listeners"][0]["port"], self.port)
        self.assertIn("waf", doc)
        self.assertIn("rateLimit", doc)
        status = self.api.ok("GET", "/api/v1/status")
        self.assertEqual(status["version"], 1)
        self.assertEqual(status["workers"], 2)
        self.assertRegex(status["startedAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(status["listeners"], [{"name": "public", "address": "127.0.0.1",
                                                "port": self.port, "protocol": "http"}])
        b = status["pools"][0]["backends"][0]
        self.assertEqual(b["key"], key(self.b1))
        self.assertEqual(b["health"], "unknown")  # no checks configured
        self.assertEqual(self.api.ok("GET", "/api/v1/pools")["pools"], status["pools"])

    def test_put_config_new_version_and_routing_changes(self):
        self.assertEqual(backend_of(self.port), (200, "c1"))
        doc = self.api.config()
        doc["pools"][0]["backends"] = [{"address": "127.0.0.1", "port": self.b2.port}]
        self.assertEqual(self.api.ok("PUT", "/api/v1/config", doc), {"version": 2})
        self.assertEqual(self.api.version(), 2)
        r = self.api.get("/api/v1/config")
        self.assertEqual(r.headers.get("moat-config-version"), "2")
        self.assertEqual(r.json["pools"][0]["backends"][0]["port"], self.b2.port)
        poll(lambda: backend_of(self.port) == (200, "c2"), timeout=5)
        self.assertEqual([backend_of(self.port) for _ in range(10)], [(200, "c2")] * 10)
        # The same document again is still a change request: a new version.
        self.assertEqual(self.api.ok("PUT", "/api/v1/config", doc), {"version": 3})

    def test_put_invalid_config_400_with_paths_nothing_changes(self):
        before = self.api.get("/api/v1/config")
        doc = before.json
        doc["pools"][0]["backends"].append({"address": "127.0.0.1", "port": 70000})
        doc["pools"][0]["balance"] = "random"
        doc["routes"][0]["pool"] = "nope"
        r = self.api.call("PUT", "/api/v1/config", doc)
        self.assertRejected(self.api, r, before,
                            ["pools[0].backends[1].port", "pools[0].balance", "routes[0].pool"])
        msgs = {e["path"]: e["message"] for e in r.json["errors"]}
        self.assertIn("70000 is not a port", msgs["pools[0].backends[1].port"])
        # Unknown field and missing required field.
        doc = before.json
        doc["pools"][0]["bogus"] = 1
        del doc["listeners"][0]["port"]
        self.assertRejected(self.api, self.api.call("PUT", "/api/v1/config", doc), before,
                            ["pools[0].bogus", "listeners[0].port"])
        self.assertEqual(self.api.version(), 1)
        self.assertEqual(backend_of(self.port), (200, "c1"))

    def test_malformed_json_400_everywhere(self):
        before = self.api.get("/api/v1/config")
        bad = "{not json"
        for method, path in [("PUT", "/api/v1/config"),
                             ("POST", "/api/v1/pools/main/backends"),
                             ("PUT", f"/api/v1/pools/main/backends/{key(self.b1)}/weight"),
                             ("PATCH", "/api/v1/waf"),
                             ("POST", "/api/v1/ratelimit/rules")]:
            with self.subTest(route=f"{method} {path}"):
                self.assertRejected(self.api, self.api.call(method, path, bad), before)
                # An empty body is no document either.
                self.assertRejected(self.api, self.api.call(method, path, ""), before)
        # validate answers malformed JSON as a validation result (or 400).
        r = self.api.call("POST", "/api/v1/config/validate", bad)
        if r.status == 200:
            self.assertFalse(r.json["valid"], r)
            self.assertEqual(r.json["errors"][0]["path"], "", r)
            self.assertIn("JSON", r.json["errors"][0]["message"], r)
        else:
            self.assertEqual(r.status, 400, r)
        self.assertEqual(self.api.version(), 1)

    def test_body_over_8_mib_413(self):
        # The head announces 9 MiB; moatd may answer before reading it all.
        s = socket.create_connection(("127.0.0.1", self.api.port), timeout=30)
        s.sendall((f"PUT /api/v1/config HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {self.api.token}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {9 * 1024 * 1024}\r\n\r\n").encode())
        try:
            chunk = b" " * 65536
            for _ in range(9 * 16):
                s.sendall(chunk)
        except OSError:
            pass  # closed after the answer: fine
        f = s.makefile("rb")
        resp = read_response(f)
        f.close()
        s.close()
        self.assertIsNotNone(resp)
        self.assertEqual(resp[0], 413, resp)
        self.assertIn("error", json.loads(resp[2]))
        self.assertEqual(self.api.version(), 1)

    def test_validate_errors_and_diff(self):
        doc = self.api.config()
        doc["pools"][0]["backends"][0]["weight"] = 5
        doc["pools"][0]["backends"].append({"address": "127.0.0.1", "port": self.b2.port})
        r = self.api.ok("POST", "/api/v1/config/validate", doc)
        self.assertTrue(r["valid"], r)
        self.assertEqual(r["errors"], [])
        self.assertIn({"path": "pools[0].backends[0].weight", "old": 1, "new": 5}, r["diff"])
        added = [d for d in r["diff"] if d["path"] == "pools[0].backends[1]"]
        self.assertEqual(len(added), 1, r["diff"])
        self.assertNotIn("old", added[0])
        # An unchanged document: valid, no diff.
        r = self.api.ok("POST", "/api/v1/config/validate", self.api.config())
        self.assertEqual((r["valid"], r["errors"], r["diff"]), (True, [], []))
        # Errors with paths; nothing applied.
        doc["pools"][0]["backends"][0]["weight"] = 5000
        doc["timeouts"]["connectMs"] = 0
        r = self.api.ok("POST", "/api/v1/config/validate", doc)
        self.assertFalse(r["valid"])
        paths = [e["path"] for e in r["errors"]]
        self.assertIn("pools[0].backends[0].weight", paths)
        self.assertIn("timeouts.connectMs", paths)
        self.assertEqual(self.api.version(), 1)
        self.assertEqual(self.api.config()["pools"][0]["backends"][0]["weight"], 1)

    def test_versions_list_get_and_rollback(self):
        v1 = self.api.config()
        doc = self.api.config()
        doc["pools"][0]["backends"] = [{"address": "127.0.0.1", "port": self.b2.port}]
        self.assertEqual(self.api.ok("PUT", "/api/v1/config", doc)["version"], 2)
        self.api.ok("PUT", f"/api/v1/pools/main/backends/{key(self.b2)}/weight", {"weight": 4})
        v3 = self.api.config()
        lst = self.api.ok("GET", "/api/v1/config/versions")
        self.assertEqual(lst["current"], 3)
        self.assertEqual([v["version"] for v in lst["versions"]], [3, 2, 1])  # newest first
        self.assertEqual([v["source"] for v in lst["versions"]], ["api", "api", "startup"])
        for v in lst["versions"]:
            self.assertRegex(v["appliedAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            self.assertIsInstance(v["summary"], str)
        self.assertEqual(lst["versions"][1]["summary"], "PUT /api/v1/config")
        self.assertEqual(self.api.ok("GET", "/api/v1/config/versions/1"), v1)
        self.assertEqual(self.api.ok("GET", "/api/v1/config/versions/3"), v3)
        self.assertEqual(self.api.get("/api/v1/config/versions/99").status, 404)
        self.assertEqual(self.api.get("/api/v1/config/versions/abc").status, 400)
        before = self.api.get("/api/v1/config")
        self.assertRejected(self.api, self.api.call("POST", "/api/v1/config/rollback/99"), before, status=404)
        self.assertRejected(self.api, self.api.call("POST", "/api/v1/config/rollback/x1"), before)
        poll(lambda: backend_of(self.port) == (200, "c2"), timeout=5)

        self.assertEqual(self.api.ok("POST", "/api/v1/config/rollback/1"), {"version": 4, "rolledBackTo": 1})
        self.assertEqual(self.api.config(), v1)
        lst = self.api.ok("GET", "/api/v1/config/versions")
        self.assertEqual(lst["current"], 4)
        self.assertEqual(lst["versions"][0]["version"], 4)
        self.assertEqual(lst["versions"][0]["source"], "rollback")
        poll(lambda: backend_of(self.port) == (200, "c1"), timeout=5)
        self.assertEqual([backend_of(self.port) for _ in range(5)], [(200, "c1")] * 5)

    def test_unknown_route_404_wrong_method_405(self):
        for path in ("/api/v1/nope", "/api/v2/config", "/api/v1/config/extra/segments", "/"):
            r = self.api.get(path)
            self.assertEqual(r.status, 404, (path, r))
            self.assertIn("error", r.json)
        for method, path, allow in [("DELETE", "/api/v1/config", {"GET", "PUT"}),
                                    ("POST", "/api/v1/status", {"GET"}),
                                    ("GET", "/api/v1/config/validate", {"POST"}),
                                    ("PUT", "/api/v1/waf", {"GET", "PATCH"}),
                                    ("GET", f"/api/v1/pools/main/backends/{key(self.b1)}", {"DELETE"}),
                                    ("PATCH", "/api/v1/ratelimit/rules", {"GET", "POST"}),
                                    ("POST", "/healthz", {"GET"})]:
            with self.subTest(route=f"{method} {path}"):
                r = self.api.call(method, path, "{}" if method in ("POST", "PUT", "PATCH") else None)
                self.assertEqual(r.status, 405, r)
                self.assertIn("error", r.json or {}, r)
                got = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
                self.assertEqual(got, allow, r.headers)
        self.assertEqual(self.api.version(), 1)


class BackendApiTest(AdminCase):
    @classmethod
    def setUpClass(cls):
        cls.b1 = Backend("k1")
        cls.b2 = Backend("k2")

    @classmethod
    def tearDownClass(cls):
        cls.b1.stop()
        cls.b2.stop()

    def start_pool(self, backends):
        self.port = free_port()
        self.m, self.api = self.start(base_config(self.port, [pool("main", backends)], rate_limit=NO_RATE_LIMIT))

    def seen(self, n=12):
        return [backend_of(self.port) for _ in range(n)]

    def test_add_and_remove_backend(self):
        self.start_pool([(self.b1, 1)])
        base = "/api/v1/pools/main/backends"
        before = self.api.get("/api/v1/config")
        self.assertRejected(self.api, self.api.call("POST", "/api/v1/pools/nope/backends",
                                                    {"address": "127.0.0.1", "port": self.b2.port}),
                            before, status=404)
        self.assertRejected(self.api, self.api.call("POST", base, {"address": "127.0.0.1", "port": 70000}),
                            before, ["pools[0].backends[1].port"])
        self.assertRejected(self.api, self.api.call("POST", base, {"address": "localhost", "port": 80}),
                            before, ["pools[0].backends[1].address"])
        self.assertRejected(self.api, self.api.call("POST", base, {"address": "127.0.0.1", "port": self.b1.port}),
                            before, status=409)
        self.assertRejected(self.api, self.api.call("POST", base, [1, 2]), before)

        self.assertEqual(self.api.ok("POST", base, {"address": "127.0.0.1", "port": self.b2.port, "weight": 2},
                                     status=201), {"version": 2})
        b = self.api.backend("main", key(self.b2))
        self.assertEqual((b["weight"], b["drain"]), (2, False))
        poll(lambda: (200, "k2") in self.seen(3), timeout=5)
        self.assertEqual({s for s, _ in self.seen(9)}, {200})
        self.assertEqual({n for _, n in self.seen(9)}, {"k1", "k2"})
        # Already there now: 409, nothing changes.
        before = self.api.get("/api/v1/config")
        self.assertRejected(self.api, self.api.call("POST", base, {"address": "127.0.0.1", "port": self.b2.port}),
                            before, status=409)

        self.assertEqual(self.api.ok("DELETE", f"{base}/{key(self.b2)}"), {"version": 3})
        self.assertIsNone(self.api.backend("main", key(self.b2)))
        before = self.api.get("/api/v1/config")
        self.assertRejected(self.api, self.api.call("DELETE", f"{base}/{key(self.b2)}"), before, status=404)
        self.assertRejected(self.api, self.api.call("DELETE", f"/api/v1/pools/nope/backends/{key(self.b1)}"),
                            before, status=404)
        self.assertRejected(self.api, self.api.call("DELETE", f"{base}/not-a-backend"), before)
        poll(lambda: set(self.seen(4)) == {(200, "k1")}, timeout=5)
        self.assertEqual(set(self.seen()), {(200, "k1")})

    def test_backend_key_url_encoded(self):
        self.start_pool([(self.b1, 1), (self.b2, 1)])
        enc = urllib.parse.quote(key(self.b2), safe="")
        self.assertIn("%3A", enc)
        self.assertEqual(self.api.ok("POST", f"/api/v1/pools/main/backends/{enc}/drain")["version"], 2)
        self.assertTrue(self.api.backend("main", key(self.b2))["drain"])

    def test_drain_and_enable(self):
        self.start_pool([(self.b1, 1), (self.b2, 1)])
        self.assertEqual({n for _, n in self.seen(6)}, {"k1", "k2"})
        path = f"/api/v1/pools/main/backends/{key(self.b2)}"
        self.assertEqual(self.api.ok("POST", path + "/drain"), {"version": 2})
        b = self.api.backend("main", key(self.b2))
        self.assertEqual((b["drain"], b["weight"]), (True, 1))
        self.assertIs(self.api.config()["pools"][0]["backends"][1]["drain"], True)
        poll(lambda: set(self.seen(4)) == {(200, "k1")}, timeout=5)
        self.assertEqual(set(self.seen(20)), {(200, "k1")})  # no new requests reach k2

        self.assertEqual(self.api.ok("POST", path + "/enable"), {"version": 3})
        b = self.api.backend("main", key(self.b2))
        self.assertEqual((b["drain"], b["weight"]), (False, 1))
        poll(lambda: (200, "k2") in self.seen(4), timeout=5)
        self.assertEqual({n for _, n in self.seen(6)}, {"k1", "k2"})

        before = self.api.get("/api/v1/config")
        self.assertRejected(self.api, self.api.call("POST", "/api/v1/pools/main/backends/127.0.0.1:1/drain"),
                            before, status=404)
        self.assertRejected(self.api, self.api.call("POST", f"/api/v1/pools/nope/backends/{key(self.b2)}/enable"),
                            before, status=404)
        self.assertRejected(self.api, self.api.call("POST", "/api/v1/pools/main/backends/nonsense/drain"), before)

    def test_drain_lets_in_flight_request_finish(self):
        self.start_pool([(self.b2, 1)])
        result = {}

        def slow():
            result["r"] = backend_of(self.port, "/slow/1500")

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)  # the request is at the backend (its answer takes 1.5 s)
        self.api.ok("POST", f"/api/v1/pools/main/backends/{key(self.b2)}/drain")
        t.join(timeout=30)
        self.assertEqual(result.get("r"), (200, "k2"))
        # New requests: nothing left to take them.
        self.assertEqual(proxy_get(self.port)[0], 503)

    def test_weight(self):
        self.start_pool([(self.b1, 1), (self.b2, 1)])
        path = f"/api/v1/pools/main/backends/{key(self.b1)}/weight"
        self.assertEqual(self.api.ok("PUT", path, {"weight": 3}), {"version": 2})
        self.assertEqual(self.api.backend("main", key(self.b1))["weight"], 3)
        self.assertEqual(self.api.config()["pools"][0]["backends"][0]["weight"], 3)
        # Smooth weighted round robin per worker: 3:1 over a few rounds.
        names = [n for _, n in self.seen(40)]
        self.assertGreater(names.count("k1"), names.count("k2"), names)
        before = self.api.get("/api/v1/config")
        self.assertRejected(self.api, self.api.call("PUT", path, {"weight": 5000}), before,
                            ["pools[0].backends[0].weight"])
        self.assertRejected(self.api, self.api.call("PUT", path, {"weight": "heavy"}), before,
                            ["pools[0].backends[0].weight"])
        self.assertRejected(self.api, self.api.call("PUT", path, {"w": 2}), before)
        self.assertRejected(self.api, self.api.call("PUT", "/api/v1/pools/main/backends/127.0.0.1:1/weight",
                                                    {"weight": 2}), before, status=404)
        # Weight 0: the backend gets nothing new.
        self.api.ok("PUT", path, {"weight": 0})
        poll(lambda: set(self.seen(4)) == {(200, "k2")}, timeout=5)
        self.assertEqual(set(self.seen()), {(200, "k2")})


class WafApiTest(AdminCase):
    @classmethod
    def setUpClass(cls):
        cls.b1 = Backend("w1")
        cls.tmp = tempfile.mkdtemp(prefix="moat-ctl-waf-")

    @classmethod
    def tearDownClass(cls):
        cls.b1.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_get_and_unknown_field_without_crs(self):
        port = free_port()
        m, api = self.start(base_config(port, [pool("main", [(self.b1, 1)])], rate_limit=NO_RATE_LIMIT))
        self.assertEqual(api.ok("GET", "/api/v1/waf"),
                         {"enabled": False, "mode": "block", "paranoia": 1, "disableRules": [],
                          "excludeTargets": []})
        before = api.get("/api/v1/config")
        self.assertRejected(api, api.call("PATCH", "/api/v1/waf", {"bogus": 1}), before)
        self.assertRejected(api, api.call("PATCH", "/api/v1/waf", {"cacheDir": "/tmp"}), before)
        self.assertRejected(api, api.call("PATCH", "/api/v1/waf", [1]), before)
        self.assertRejected(api, api.call("PATCH", "/api/v1/waf", {"mode": "nope"}), before, ["waf.mode"])
        self.assertRejected(api, api.call("PATCH", "/api/v1/waf", {"paranoia": 9}), before, ["waf.paranoia"])

    def test_patch_mode_and_paranoia(self):
        if not os.path.isdir(CRS_RULES):
            self.skipTest(f"{CRS_RULES} missing (modsecurity-crs not installed)")
        waf = {"enabled": True, "cacheDir": os.path.join(self.tmp, "cache")}
        if os.path.exists(UNICODE_MAP):
            waf["unicodeMap"] = UNICODE_MAP
        port = free_port()
        cfg = base_config(port, [pool("main", [(self.b1, 1)])], rate_limit=NO_RATE_LIMIT)
        cfg["waf"] = waf
        m, api = self.start(cfg)
        attack = "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        self.assertEqual(proxy_get(port, attack)[0], 403)
        self.assertEqual(proxy_get(port, "/fine")[0], 200)
        got = api.ok("GET", "/api/v1/waf")
        self.assertEqual((got["enabled"], got["mode"], got["paranoia"]), (True, "block", 1))

        self.assertEqual(api.ok("PATCH", "/api/v1/waf", {"mode": "detect", "paranoia": 2}), {"version": 2})
        got = api.ok("GET", "/api/v1/waf")
        self.assertEqual((got["enabled"], got["mode"], got["paranoia"]), (True, "detect", 2))
        self.assertEqual(api.config()["waf"]["cacheDir"], waf["cacheDir"])
        self.assertTrue(poll(lambda: proxy_get(port, attack)[0] == 200, timeout=30))

        before = api.get("/api/v1/config")
        self.assertRejected(api, api.call("PATCH", "/api/v1/waf", {"unknownField": True}), before)
        self.assertRejected(api, api.call("PATCH", "/api/v1/waf", {"mode": "block", "paranoia": 0}), before,
                            ["waf.paranoia"])
        self.assertEqual(api.ok("GET", "/api/v1/waf")["mode"], "detect")

        self.assertEqual(api.ok("PATCH", "/api/v1/waf", {"mode": "block", "disableRules": [941100]})["version"], 3)
        got = api.ok("GET", "/api/v1/waf")
        self.assertEqual((got["mode"], got["disableRules"]), ("block", [941100]))
        self.assertTrue(poll(lambda: proxy_get(port, attack)[0] == 403, timeout=30))


class RateLimitApiTest(AdminCase):
    @classmethod
    def setUpClass(cls):
        cls.b1 = Backend("l1")

    @classmethod
    def tearDownClass(cls):
        cls.b1.stop()

    def start_rules(self, rules):
        self.port = free_port()
        self.m, self.api = self.start(base_config(self.port, [pool("main", [(self.b1, 1)])],
                                                  rate_limit={"rules": rules}))

    def test_rules_list_add_remove(self):
        self.start_rules([{"name": "base", "limit": 1000, "periodS": 60}])
        rules = self.api.ok("GET", "/api/v1/ratelimit/rules")["rules"]
        self.assertEqual([r["name"] for r in rules], ["base"])
        self.assertEqual((rules[0]["limit"], rules[0]["periodS"], rules[0]["key"]), (1000, 60, "ip"))

        self.assertEqual(self.api.ok("POST", "/api/v1/ratelimit/rules",
                                     {"name": "tiny", "limit": 2, "periodS": 3600}, status=201), {"version": 2})
        rules = self.api.ok("GET", "/api/v1/ratelimit/rules")["rules"]
        self.assertEqual([r["name"] for r in rules], ["base", "tiny"])
        # The new rule is live: a third request from one client is refused.
        self.assertEqual([proxy_get(self.port, source="127.0.0.21")[0] for _ in range(3)], [200, 200, 429])

        before = self.api.get("/api/v1/config")
        self.assertRejected(self.api, self.api.call("POST", "/api/v1/ratelimit/rules",
                                                    {"name": "tiny", "limit": 5}), before, status=409)
        self.assertRejected(self.api, self.api.call("POST", "/api/v1/ratelimit/rules",
                                                    {"name": "bad", "limit": 0}), before,
                            ["rateLimit.rules[2].limit"])
        self.assertRejected(self.api, self.api.call("POST", "/api/v1/ratelimit/rules",
                                                    {"name": "bad", "key": "magic"}), before,
                            ["rateLimit.rules[2].key"])
        self.assertRejected(self.api, self.api.call("POST", "/api/v1/ratelimit/rules",
                                                    {"name": "bad", "nope": 1}), before,
                            ["rateLimit.rules[2].nope"])

        self.assertEqual(self.api.ok("DELETE", "/api/v1/ratelimit/rules/tiny"), {"version": 3})
        self.assertEqual([r["name"] for r in self.api.ok("GET", "/api/v1/ratelimit/rules")["rules"]], ["base"])
        self.assertEqual(proxy_get(self.port, source="127.0.0.21")[0], 200)
        before = self.api.get("/api/v1/config")
        self.assertRejected(self.api, self.api.call("DELETE", "/api/v1/ratelimit/rules/tiny"), before, status=404)

    def test_keys_remaining_counts_down_exactly(self):
        self.start_rules([{"name": "small", "limit": 5, "periodS": 3600}])
        client = "127.0.0.9"
        kpath = f"/api/v1/ratelimit/keys/small/{client}"
        k = self.api.ok("GET", kpath)
        self.assertEqual((k["rule"], k["key"], k["limit"], k["blocked"]), ("small", client, 5, False))
        # Looking must not count: a key no request has used is untracked, full.
        self.assertEqual((k["tracked"], k["remaining"]), (False, 5), k)
        self.assertEqual(self.api.ok("GET", kpath)["remaining"], 5)
        self.assertEqual([proxy_get(self.port, source=client)[0] for _ in range(2)], [200, 200])
        k = self.api.ok("GET", kpath)
        self.assertEqual((k["tracked"], k["remaining"]), (True, 3), k)
        self.assertGreater(k["resetS"], 0)
        self.assertEqual([proxy_get(self.port, source=client)[0] for _ in range(3)], [200] * 3)
        self.assertEqual(self.api.ok("GET", kpath)["remaining"], 0)
        self.assertEqual(proxy_get(self.port, source=client)[0], 429)

    def test_keys_get_reset_and_top(self):
        self.start_rules([{"name": "small", "limit": 5, "periodS": 3600}])
        client = "127.0.0.9"
        kpath = f"/api/v1/ratelimit/keys/small/{client}"
        remaining = [self.api.ok("GET", kpath)["remaining"]]
        statuses = []
        for _ in range(5):
            statuses.append(proxy_get(self.port, source=client)[0])
            remaining.append(self.api.ok("GET", kpath)["remaining"])
        self.assertEqual(statuses, [200] * 5)
        self.assertEqual(remaining[1:], sorted(remaining[1:], reverse=True), remaining)
        self.assertGreater(remaining[1], remaining[-1], remaining)  # goes down
        self.assertTrue(self.api.ok("GET", kpath)["tracked"])
        self.assertEqual([proxy_get(self.port, source=client)[0] for _ in range(2)], [429, 429])
        self.assertEqual(self.api.ok("GET", kpath)["remaining"], 0)
        # Another client is untouched.
        other = self.api.ok("GET", "/api/v1/ratelimit/keys/small/127.0.0.10")["remaining"]
        self.assertEqual(other, remaining[0])

        def top():
            t = self.api.ok("GET", "/api/v1/ratelimit/top")["top"]
            return [e for e in t if e["rule"] == "small" and e["key"] == client]
        # Workers publish their summaries about once a second, each on its
        # own clock: wait until both refusals are in the merged view.
        entries = poll(lambda: [e for e in top() if e["refused"] >= 2], timeout=10, interval=0.3)
        self.assertTrue(entries, self.api.ok("GET", "/api/v1/ratelimit/top"))
        self.assertGreaterEqual(entries[0]["refused"], 2)

        v = self.api.version()
        self.assertEqual(self.api.ok("DELETE", kpath), {"reset": True})
        self.assertEqual(self.api.version(), v)  # state, not config
        self.assertEqual(self.api.ok("GET", kpath)["remaining"], remaining[0])
        self.assertEqual(proxy_get(self.port, source=client)[0], 200)  # the refused client passes again
        self.assertEqual(self.api.ok("GET", kpath)["remaining"], remaining[1])
        self.assertIn("reset by the admin API", self.m.log())

        self.assertEqual(self.api.get("/api/v1/ratelimit/keys/nope/127.0.0.9").status, 404)
        self.assertEqual(self.api.call("DELETE", "/api/v1/ratelimit/keys/nope/127.0.0.9").status, 404)
        self.assertEqual(self.api.get("/api/v1/ratelimit/keys/small/not-an-ip").status, 400)


class TlsApiTest(AdminCase):
    @classmethod
    def setUpClass(cls):
        cls.b1 = Backend("t1")
        cls.pki_dir = tempfile.mkdtemp(prefix="moat-ctl-pki-")
        cls.pki = tls_pki.generate(cls.pki_dir)

    @classmethod
    def tearDownClass(cls):
        cls.b1.stop()
        shutil.rmtree(cls.pki_dir, ignore_errors=True)

    def read(self, name):
        with open(self.pki[name]) as f:
            return f.read()

    def served_der(self, port, sni):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.pki["ca_cert"])
        if sni is None:
            ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as s:
                return s.getpeercert(binary_form=True)

    def der(self, name):
        return ssl.PEM_cert_to_DER_cert(self.read(name))

    def test_put_and_delete_certificates(self):
        port, tport = free_port(), free_port()
        cfg = base_config(port, [pool("main", [(self.b1, 1)])], rate_limit=NO_RATE_LIMIT)
        cfg["listeners"].append({"name": "secure", "address": "127.0.0.1", "port": tport, "protocol": "https",
                                 "tls": {"certificates": [{"cert": self.pki["default_cert"],
                                                           "key": self.pki["default_key"]}]}})
        m, api = self.start(cfg)
        self.assertEqual(self.served_der(tport, None), self.der("default_cert"))
        base = "/api/v1/tls/listeners/secure/certificates"

        before = api.get("/api/v1/config")
        self.assertRejected(api, api.call("PUT", f"{base}/0", {"cert": self.read("broken_cert"),
                                                              "key": self.read("ecdsa_key")}), before)
        self.assertRejected(api, api.call("PUT", f"{base}/0", {"cert": self.read("ecdsa_cert"),
                                                              "key": self.read("mismatched_key")}), before)
        self.assertRejected(api, api.call("PUT", f"{base}/0", {"cert": self.read("ecdsa_cert")}), before)
        self.assertRejected(api, api.call("PUT", f"{base}/5", {"cert": self.read("ecdsa_cert"),
                                                              "key": self.read("ecdsa_key")}), before, status=404)
        self.assertRejected(api, api.call("PUT", "/api/v1/tls/listeners/nope/certificates/0",
                                          {"cert": self.read("ecdsa_cert"), "key": self.read("ecdsa_key")}),
                            before, status=404)
        self.assertRejected(api, api.call("PUT", "/api/v1/tls/listeners/public/certificates/0",
                                          {"cert": self.read("ecdsa_cert"), "key": self.read("ecdsa_key")}),
                            before, status=409)
        self.assertEqual(self.served_der(tport, None), self.der("default_cert"))

        # Replace the only certificate.
        self.assertEqual(api.ok("PUT", f"{base}/0", {"cert": self.read("ecdsa_cert"),
                                                     "key": self.read("ecdsa_key")}), {"version": 2})
        self.assertTrue(poll(lambda: self.served_der(tport, None) == self.der("ecdsa_cert"), timeout=5))
        self.assertEqual(self.served_der(tport, "a.test"), self.der("ecdsa_cert"))
        certs = api.config()["listeners"][1]["tls"]["certificates"]
        self.assertEqual(len(certs), 1)
        for f in (certs[0]["cert"], certs[0]["key"]):
            self.assertTrue(f.startswith(os.path.join(m.state_dir, "certs") + "/"), f)
            self.assertEqual(stat.S_IMODE(os.stat(f).st_mode), 0o600, f)

        # Deleting the last one is refused.
        before = api.get("/api/v1/config")
        self.assertRejected(api, api.call("DELETE", f"{base}/0"), before, status=409)

        # Append (index == count), served by SNI; then remove it again.
        self.assertEqual(api.ok("PUT", f"{base}/1", {"cert": self.read("default_cert"),
                                                     "key": self.read("default_key")}), {"version": 3})
        self.assertTrue(poll(lambda: self.served_der(tport, "default.test") == self.der("default_cert"), timeout=5))
        self.assertEqual(self.served_der(tport, "a.test"), self.der("ecdsa_cert"))
        before = api.get("/api/v1/config")
        self.assertRejected(api, api.call("DELETE", f"{base}/2"), before, status=404)
        self.assertEqual(api.ok("DELETE", f"{base}/0"), {"version": 4})
        self.assertTrue(poll(lambda: self.served_der(tport, None) == self.der("default_cert"), timeout=5))
        before = api.get("/api/v1/config")
        self.assertRejected(api, api.call("DELETE", f"{base}/0"), before, status=409)
        # Plain traffic still flows through the https listener.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.pki["ca_cert"])
        ctx.check_hostname = False
        c = http.client.HTTPSConnection("127.0.0.1", tport, timeout=10, context=ctx)
        c.request("GET", "/x")
        r = c.getresponse()
        r.read()
        c.close()
        self.assertEqual(r.status, 200)


# ---------------------------------------------------------------------------
# 7. Geo (also the geo endpoints of 3.)


class GeoTest(AdminCase):
    @classmethod
    def setUpClass(cls):
        cls.b1 = Backend("g1")

    @classmethod
    def tearDownClass(cls):
        cls.b1.stop()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="moat-ctl-geo-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.zones = os.path.join(self.tmp, "zones")
        os.makedirs(self.zones)

    def zone(self, cc, text):
        with open(os.path.join(self.zones, cc + ".zone"), "w") as f:
            f.write(text)

    def start_geo(self, policy):
        self.port = free_port()
        cfg = base_config(self.port, [pool("main", [(self.b1, 1)])], rate_limit=NO_RATE_LIMIT)
        cfg["geo"] = {"sources": [{"type": "zones", "path": self.zones}]}
        cfg["listeners"][0]["geo"] = policy
        self.m, self.api = self.start(cfg)

    def status_from(self, source):
        return proxy_get(self.port, source=source)[0]

    def test_deny_country_live_zone_edits_and_bad_line(self):
        self.zone("zz", "# test zone\n127.0.0.2/32\n")
        self.zone("xx", "127.0.0.3/32\n")
        self.start_geo({"mode": "deny", "countries": ["ZZ"]})
        status, headers, body = proxy_get(self.port, source="127.0.0.2")
        self.assertEqual(status, 403, body)
        self.assertIn(b"ZZ", body)
        self.assertEqual(proxy_get(self.port, source="127.0.0.1")[0], 200)
        self.assertEqual(proxy_get(self.port, source="127.0.0.3")[0], 200)

        # Move 127.0.0.2 to XX: the verdict flips without a restart or reload call.
        self.zone("xx", "127.0.0.3/32\n127.0.0.2/32\n")
        self.zone("zz", "# nobody\n")
        self.assertTrue(poll(lambda: self.status_from("127.0.0.2") == 200, timeout=10, interval=0.2),
                        self.m.log()[-2000:])
        self.assertEqual(self.api.ok("GET", "/api/v1/geo/lookup/127.0.0.2")["country"], "XX")
        self.assertEqual(self.api.version(), 1)

        # A corrupted line: the previous data stays, the error names file and line.
        self.zone("zz", "127.0.0.2/32\nthis is not a cidr\n")

        def source_error():
            st = self.api.ok("GET", "/api/v1/status")
            errs = [s["error"] for s in st["geo"]["sources"] if s["error"]]
            return errs and errs[0]
        err = poll(source_error, timeout=10, interval=0.2)
        self.assertTrue(err, self.api.ok("GET", "/api/v1/status")["geo"])
        self.assertIn("zz.zone", err)
        self.assertRegex(err, r"\b2\b", "error does not name line 2")
        self.assertTrue(poll(lambda: err in self.m.log(), timeout=5), (err, self.m.log()[-2000:]))
        self.assertEqual(self.status_from("127.0.0.2"), 200)
        self.assertEqual(self.api.ok("GET", "/api/v1/geo/lookup/127.0.0.2")["country"], "XX")
        self.assertEqual(self.status_from("127.0.0.3"), 200)

        # Fixed again: the error clears and ZZ is denied once more.
        self.zone("zz", "127.0.0.2/32\n")
        self.assertTrue(poll(lambda: self.status_from("127.0.0.2") == 403, timeout=10, interval=0.2))
        self.assertTrue(poll(lambda: not source_error(), timeout=10, interval=0.2))

    def test_allow_mode_allow_and_deny_cidrs(self):
        self.zone("zz", "127.0.0.2/32\n")
        self.zone("xx", "127.0.0.3/32\n127.0.0.5/32\n")
        self.start_geo({"mode": "allow", "countries": ["xx"], "allowCidrs": ["127.0.0.1/32"],
                        "denyCidrs": ["127.0.0.5/32"]})
        self.assertEqual(self.api.config()["listeners"][0]["geo"]["countries"], ["XX"])  # stored uppercase
        self.assertEqual(self.status_from("127.0.0.3"), 200)   # allowed country
        self.assertEqual(self.status_from("127.0.0.2"), 403)   # other country
        self.assertEqual(self.status_from("127.0.0.4"), 403)   # unknown country
        self.assertEqual(self.status_from("127.0.0.1"), 200)   # allowCidrs, country unknown
        self.assertEqual(self.status_from("127.0.0.5"), 403)   # denyCidrs beats the country

    def test_lookup_and_reload(self):
        self.zone("zz", "127.0.0.2/32\n10.0.0.0/8\n")
        self.zone("xx", "127.0.0.3/32\n2001:db8::/32\n")
        self.start_geo({"mode": "deny", "countries": ["ZZ"]})
        self.assertEqual(self.api.ok("GET", "/api/v1/geo/lookup/127.0.0.2"), {"address": "127.0.0.2", "country": "ZZ"})
        self.assertEqual(self.api.ok("GET", "/api/v1/geo/lookup/10.1.2.3")["country"], "ZZ")
        self.assertEqual(self.api.ok("GET", "/api/v1/geo/lookup/2001%3Adb8%3A%3A1")["country"], "XX")
        self.assertEqual(self.api.ok("GET", "/api/v1/geo/lookup/127.0.0.1")["country"], "")
        self.assertEqual(self.api.get("/api/v1/geo/lookup/not-an-address").status, 400)
        st = self.api.ok("GET", "/api/v1/status")["geo"]
        self.assertEqual(st["entries"], 4)
        self.assertEqual(len(st["sources"]), 1)
        s = st["sources"][0]
        self.assertEqual((s["type"], s["path"], s["entries"], s["error"]), ("zones", self.zones, 4, ""))
        self.assertRegex(s["loadedAt"], r"^\d{4}-\d\d-\d\dT")

        self.zone("yy", "192.0.2.0/24\n")
        r = self.api.ok("POST", "/api/v1/geo/reload")
        self.assertEqual(r["entries"], 5, r)
        self.assertEqual(r["sources"][0]["entries"], 5)
        self.assertEqual(r["sources"][0]["error"], "")
        self.assertEqual(self.api.ok("GET", "/api/v1/geo/lookup/192.0.2.7")["country"], "YY")
        self.assertEqual(self.api.version(), 1)  # state, not config

    def test_reload_without_sources(self):
        self.port = free_port()
        m, api = self.start(base_config(self.port, [pool("main", [(self.b1, 1)])], rate_limit=NO_RATE_LIMIT))
        self.assertEqual(api.ok("GET", "/api/v1/geo/lookup/127.0.0.2")["country"], "")
        self.assertEqual(api.call("POST", "/api/v1/geo/reload").status, 404)

    def test_countries_need_sources_and_codes_are_checked(self):
        self.zone("zz", "127.0.0.2/32\n")
        self.start_geo({"mode": "deny", "countries": ["ZZ"]})
        before = self.api.get("/api/v1/config")
        doc = before.json
        doc["listeners"][0]["geo"]["countries"] = ["ZZ", "DEU"]
        self.assertRejected(self.api, self.api.call("PUT", "/api/v1/config", doc), before,
                            ["listeners[0].geo.countries[1]"])
        doc = before.json
        doc["geo"]["sources"] = []
        self.assertRejected(self.api, self.api.call("PUT", "/api/v1/config", doc), before,
                            ["listeners[0].geo.countries"])


# ---------------------------------------------------------------------------
# 4. Restart


class RestartTest(AdminCase):
    @classmethod
    def setUpClass(cls):
        cls.b1 = Backend("s1")
        cls.b2 = Backend("s2")

    @classmethod
    def tearDownClass(cls):
        cls.b1.stop()
        cls.b2.stop()

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="moat-ctl-restart-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.port = free_port()
        self.cfg = base_config(self.port, [pool("main", [(self.b1, 1), (self.b2, 1)])], rate_limit=NO_RATE_LIMIT)

    def make_changes(self, api):
        api.ok("PUT", f"/api/v1/pools/main/backends/{key(self.b1)}/weight", {"weight": 7})
        api.ok("POST", f"/api/v1/pools/main/backends/{key(self.b2)}/drain")
        self.assertEqual(api.version(), 3)
        return api.config()

    def test_restart_resumes_last_applied_version(self):
        m, api = self.start(self.cfg, workdir=self.workdir)
        token = api.token
        last = self.make_changes(api)
        self.stop(m)

        m2, api2 = self.start(None, workdir=self.workdir)  # same file, same state dir
        self.assertEqual(api2.token, token)
        self.assertEqual(api2.version(), 3)
        self.assertEqual(api2.config(), last)
        self.assertEqual([v["version"] for v in api2.ok("GET", "/api/v1/config/versions")["versions"]], [3, 2, 1])
        self.assertIn("resuming config version 3", m2.log())
        # The resumed config is the one that runs: b2 is still drained.
        self.assertEqual({backend_of(self.port) for _ in range(8)}, {(200, "s1")})

    def test_changed_bootstrap_file_becomes_new_version(self):
        m, api = self.start(self.cfg, workdir=self.workdir)
        self.make_changes(api)
        self.stop(m)

        with open(m.config_path) as f:
            doc = json.load(f)
        set_weight(doc, "main", self.b2.port, 5)
        with open(m.config_path, "w") as f:
            json.dump(doc, f)
        m2, api2 = self.start(None, workdir=self.workdir)
        self.assertEqual(api2.version(), 4)
        cfg = api2.config()
        backends = cfg["pools"][0]["backends"]
        self.assertEqual([(b["port"], b["weight"], b["drain"]) for b in backends],
                         [(self.b1.port, 1, False), (self.b2.port, 5, False)])
        lst = api2.ok("GET", "/api/v1/config/versions")
        self.assertEqual([v["version"] for v in lst["versions"]], [4, 3, 2, 1])
        self.assertIn(lst["versions"][0]["source"], ("startup", "file"))
        self.assertEqual(api2.ok("GET", "/api/v1/config/versions/4"), cfg)
        self.assertIn({n for _, n in (backend_of(self.port) for _ in range(8))}, [{"s1", "s2"}])

        # And a third start with the file unchanged resumes version 4.
        self.stop(m2)
        m3, api3 = self.start(None, workdir=self.workdir)
        self.assertEqual(api3.version(), 4)
        self.assertEqual(api3.config(), cfg)


# ---------------------------------------------------------------------------
# 5. Pushes under load


class PushUnderLoadTest(AdminCase):
    def test_100_pushes_while_serving(self):
        b1, b2 = Backend("p1"), Backend("p2")
        self.addCleanup(b2.stop)
        self.addCleanup(b1.stop)
        port = free_port()
        m, api = self.start(base_config(port, [pool("main", [(b1, 1), (b2, 1)])], rate_limit=NO_RATE_LIMIT))
        max_requests = 3000
        failures = []
        counts = {"ok": 0, "keepalive": 0, "new": 0}
        seen = set()
        stop = threading.Event()

        def load():
            n = 0
            deadline = time.time() + 120
            while not stop.is_set() and n < max_requests and time.time() < deadline:
                # A keep-alive connection for 5 requests, then one on a new
                # connection that closes.
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:
                    for i in range(5):
                        n += 1
                        c.request("GET", f"/ka/{n}")
                        r = c.getresponse()
                        r.read()
                        counts["keepalive"] += 1
                        if r.status != 200:
                            failures.append(("keep-alive", n, r.status))
                        else:
                            counts["ok"] += 1
                            seen.add(r.getheader("X-Backend"))
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append(("keep-alive", n, repr(e)))
                finally:
                    c.close()
                n += 1
                try:
                    st, hdrs, _ = proxy_get(port, f"/new/{n}")
                    counts["new"] += 1
                    if st != 200:
                        failures.append(("new", n, st))
                    else:
                        counts["ok"] += 1
                        seen.add(hdrs.get("x-backend"))
                except Exception as e:  # noqa: BLE001
                    failures.append(("new", n, repr(e)))

        t = threading.Thread(target=load)
        t.start()
        try:
            poll(lambda: counts["ok"] > 10, timeout=10)
            for i in range(100):
                w1, w2 = (1, 3) if i % 2 == 0 else (3, 1)
                if i % 4 < 2:
                    doc = api.config()
                    set_weight(doc, "main", b1.port, w1)
                    set_weight(doc, "main", b2.port, w2)
                    r = api.ok("PUT", "/api/v1/config", doc)
                else:
                    r = api.ok("PUT", f"/api/v1/pools/main/backends/{key(b1)}/weight", {"weight": w1})
                self.assertEqual(r, {"version": i + 2})
                # Let the client send something on this version before the next push.
                done = counts["keepalive"] + counts["new"] + len(failures)
                poll(lambda: counts["keepalive"] + counts["new"] + len(failures) > done, timeout=5, interval=0.005)
        finally:
            stop.set()
            t.join(timeout=60)
        self.assertFalse(t.is_alive())
        self.assertEqual(api.version(), 101)
        self.assertEqual(failures, [])
        total = counts["keepalive"] + counts["new"]
        self.assertLessEqual(total, max_requests + 6)
        self.assertGreaterEqual(counts["ok"], 100)
        self.assertGreater(counts["new"], 10)
        self.assertEqual(counts["ok"], total)
        self.assertEqual(seen, {"p1", "p2"})
        self.assertEqual(len(api.ok("GET", "/api/v1/config/versions")["versions"]), 100)  # last 100 kept


# ---------------------------------------------------------------------------
# 6. Health checks and outlier detection


class HealthTest(AdminCase):
    HC = {"type": "http", "path": "/", "intervalMs": 100, "timeoutMs": 80, "rise": 2, "fall": 2}

    def test_active_checks_take_backend_out_and_back(self):
        b1, b2 = Backend("h1"), Backend("h2")
        backends = {"b2": b2}
        self.addCleanup(lambda: backends["b2"].proc.poll() is None and backends["b2"].stop())
        self.addCleanup(b1.stop)
        port = free_port()
        m, api = self.start(base_config(port, [pool("main", [(b1, 1), (b2, 1)], healthCheck=self.HC)],
                                        rate_limit=NO_RATE_LIMIT))
        k1, k2 = key(b1), key(b2)
        self.assertTrue(poll(lambda: api.health("main", k1) == "healthy" and api.health("main", k2) == "healthy",
                             timeout=10), api.ok("GET", "/api/v1/pools"))
        self.assertEqual({n for _, n in (backend_of(port) for _ in range(6))}, {"h1", "h2"})

        records = []  # (start time, status or error, backend)
        stop = threading.Event()

        def loop():
            n = 0
            while not stop.is_set() and n < 1500:
                n += 1
                t0 = time.time()
                try:
                    st, name = backend_of(port)
                except Exception as e:  # noqa: BLE001
                    st, name = repr(e), None
                records.append((t0, st, name))
                time.sleep(0.01)

        t = threading.Thread(target=loop)
        t.start()
        try:
            time.sleep(0.3)
            b2.stop()
            self.assertTrue(poll(lambda: api.health("main", k2) == "unhealthy", timeout=10),
                            api.ok("GET", "/api/v1/pools"))
            t_unhealthy = time.time()
            b = api.backend("main", k2)
            self.assertTrue(b["lastCheck"], b)
            self.assertEqual(api.health("main", k1), "healthy")
            after = [backend_of(port) for _ in range(20)]
            self.assertEqual(set(after), {(200, "h1")})
            time.sleep(0.5)
            t_restart = time.time()
            backends["b2"] = Backend("h2", port=b2.port)
            self.assertTrue(poll(lambda: api.health("main", k2) == "healthy", timeout=10),
                            api.ok("GET", "/api/v1/pools"))
            self.assertTrue(poll(lambda: backend_of(port) == (200, "h2"), timeout=5))
            self.assertEqual({n for _, n in (backend_of(port) for _ in range(6))}, {"h1", "h2"})
        finally:
            stop.set()
            t.join(timeout=60)
        between = [r for r in records if t_unhealthy < r[0] < t_restart]
        self.assertTrue(between, "the loop sent nothing while h2 was down")
        self.assertEqual({(st, n) for _, st, n in between}, {(200, "h1")}, between[:20])
        self.assertLessEqual(len(records), 1500)
        # Metrics agree.
        text = api.get("/metrics").body.decode()
        self.assertIn(f'moat_backend_health{{pool="main",backend="{k2}",state="healthy"}} 1', text)

    def test_outlier_detection_ejects_failing_backend(self):
        good = Backend("good")
        bad = Backend("bad", extra_args=("--fail-status", "500"))
        self.addCleanup(bad.stop)
        self.addCleanup(good.stop)
        port = free_port()
        od = {"consecutiveFailures": 3, "baseEjectMs": 60000}
        m, api = self.start(base_config(port, [pool("main", [(good, 1), (bad, 1)], outlierDetection=od)],
                                        rate_limit=NO_RATE_LIMIT))
        kb = key(bad)
        self.assertEqual(api.health("main", kb), "unknown")
        statuses = []

        def ejected():
            for _ in range(4):
                statuses.append(backend_of(port))
            return api.health("main", kb) == "ejected"
        self.assertTrue(poll(ejected, timeout=15, interval=0.2),
                        (api.ok("GET", "/api/v1/pools"), statuses[-10:]))
        self.assertLessEqual(len(statuses), 400)
        self.assertIn((500, "bad"), statuses)
        self.assertNotIn(api.health("main", key(good)), ("ejected", "unhealthy"))
        after = [backend_of(port) for _ in range(20)]
        self.assertEqual(set(after), {(200, "good")})
        text = api.get("/metrics").body.decode()
        self.assertIn(f'moat_backend_health{{pool="main",backend="{kb}",state="ejected"}} 1', text)
        self.assertIn(f'moat_backend_up{{pool="main",backend="{kb}"}} 0', text)
        self.assertRegex(text, rf'moat_backend_ejections_total{{pool="main",backend="{re.escape(kb)}"}} [1-9]')

    def test_health_check_fields_validated(self):
        b1 = Backend("hv")
        self.addCleanup(b1.stop)
        port = free_port()
        m, api = self.start(base_config(port, [pool("main", [(b1, 1)])], rate_limit=NO_RATE_LIMIT))
        before = api.get("/api/v1/config")
        doc = before.json
        doc["pools"][0]["healthCheck"] = {"type": "http", "intervalMs": 1000, "timeoutMs": 1500,
                                          "expectStatus": "2xx"}
        doc["pools"][0]["outlierDetection"] = {"consecutiveFailures": 0}
        self.assertRejected(api, api.call("PUT", "/api/v1/config", doc), before,
                            ["pools[0].healthCheck.timeoutMs", "pools[0].healthCheck.expectStatus",
                             "pools[0].outlierDetection.consecutiveFailures"])


# ---------------------------------------------------------------------------
# 8. Metrics


def parse_metrics(text):
    """{name: [(labels dict, value)]} and {name: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
            continue
        if line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return samples, types


class MetricsTest(AdminCase):
    def test_prometheus_text(self):
        b1, b2 = Backend("m1"), Backend("m2")
        self.addCleanup(b2.stop)
        self.addCleanup(b1.stop)
        port = free_port()
        m, api = self.start(base_config(port, [pool("main", [(b1, 1), (b2, 1)])], rate_limit=NO_RATE_LIMIT))
        api.ok("PUT", f"/api/v1/pools/main/backends/{key(b1)}/weight", {"weight": 2})
        n = 25
        for i in range(n):
            self.assertEqual(proxy_get(port, f"/m/{i}")[0], 200)

        def scrape():
            r = api.get("/metrics")
            self.assertEqual(r.status, 200, r)
            s, t = parse_metrics(r.body.decode())
            return r, s, t
        got = poll(lambda: (lambda x: x if x[1].get("moat_requests_total", [({}, 0)])[0][1] >= n else None)(scrape()),
                   timeout=10, interval=0.3)
        self.assertTrue(got, "moat_requests_total never reached the requests sent")
        r, s, t = got
        self.assertTrue(r.headers.get("content-type", "").startswith("text/plain"), r.headers)
        self.assertIn("version=0.0.4", r.headers.get("content-type", ""))
        self.assertEqual(s["moat_config_version"], [({}, 2.0)])
        self.assertEqual(t["moat_config_version"], "gauge")
        self.assertEqual(t["moat_requests_total"], "counter")
        self.assertGreaterEqual(s["moat_requests_total"][0][1], n)

        self.assertEqual(t["moat_request_duration_seconds"], "histogram")
        buckets = s["moat_request_duration_seconds_bucket"]
        self.assertGreater(len(buckets), 3)
        les = [b[0]["le"] for b in buckets]
        self.assertEqual(les[-1], "+Inf")
        bounds = [float(x) for x in les[:-1]]
        self.assertEqual(bounds, sorted(bounds))
        values = [b[1] for b in buckets]
        self.assertEqual(values, sorted(values), "buckets are not cumulative")
        count = s["moat_request_duration_seconds_count"][0][1]
        self.assertEqual(values[-1], count)
        self.assertGreaterEqual(count, n)
        self.assertIn("moat_request_duration_seconds_sum", s)

        health = s["moat_backend_health"]
        for b in (b1, b2):
            mine = [(l["state"], v) for l, v in health if l["backend"] == key(b) and l["pool"] == "main"]
            self.assertEqual(sorted(st for st, _ in mine), ["ejected", "healthy", "unhealthy", "unknown"])
            self.assertEqual([st for st, v in mine if v == 1], ["unknown"])

        # The version gauge follows changes.
        api.ok("POST", f"/api/v1/pools/main/backends/{key(b2)}/drain")
        s, _ = parse_metrics(api.get("/metrics").body.decode())
        self.assertEqual(s["moat_config_version"], [({}, 3.0)])
        up = {l["backend"]: v for l, v in s["moat_backend_up"]}
        self.assertEqual(up, {key(b1): 1, key(b2): 0})
        # Refused admin requests are counted.
        api.get("/api/v1/status", token="nope")
        s, _ = parse_metrics(api.get("/metrics").body.decode())
        self.assertGreaterEqual(s["moat_admin_unauthorized_total"][0][1], 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)


# ---------------------------------------------------------------------------
# Admin listener over TLS with client certificates; non-loopback refusal.


class AdminTlsTest(unittest.TestCase):
    def setUp(self):
        self.pki = tls_pki.generate(tempfile.mkdtemp(prefix="moat-admin-pki-"))
        self.addCleanup(shutil.rmtree, self.pki["dir"], True)

    def test_tls_and_client_certificates(self):
        p = self.pki
        cfg = base_config(free_port(), [{"name": "p", "backends": []}], rate_limit=NO_RATE_LIMIT)
        m = Moatd(cfg, extra_args=["--admin-cert", p["backend_cert"], "--admin-key", p["backend_key"],
                                   "--admin-client-ca", p["client_ca_cert"]])
        try:
            wait_port(m.admin_port, proc=m.proc)
            poll(lambda: os.path.exists(m.token_file), timeout=5)
            with open(m.token_file) as f:
                token = f.read().strip()

            def get(ctx):
                c = http.client.HTTPSConnection("127.0.0.1", m.admin_port, context=ctx, timeout=10)
                c.request("GET", "/api/v1/status", headers={"Authorization": "Bearer " + token})
                r = c.getresponse()
                body = r.read()
                c.close()
                return r.status, body

            good = ssl.create_default_context(cafile=p["ca_cert"])
            good.load_cert_chain(p["client_cert"], p["client_key"])
            status, body = get(good)
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body)["version"], 1)
            # No client certificate, or one from a CA the listener does not
            # trust: the handshake (or the first read after it) fails.
            none = ssl.create_default_context(cafile=p["ca_cert"])
            rogue = ssl.create_default_context(cafile=p["ca_cert"])
            rogue.load_cert_chain(p["rogue_client_cert"], p["rogue_client_key"])
            for ctx in (none, rogue):
                with self.assertRaises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                    get(ctx)
            # Plain HTTP to the TLS listener gets no answer.
            with socket.create_connection(("127.0.0.1", m.admin_port), timeout=5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
                try:
                    data = s.recv(100)
                except (ConnectionError, socket.timeout):
                    data = b""
                self.assertFalse(data.startswith(b"HTTP/1.1 200"), data)
        finally:
            self.assertEqual(m.stop(), 0)

    def test_non_loopback_without_tls_is_refused_at_start(self):
        d = tempfile.mkdtemp(prefix="moat-admin-")
        self.addCleanup(shutil.rmtree, d, True)
        cfg_path = os.path.join(d, "moat.json")
        with open(cfg_path, "w") as f:
            json.dump(base_config(free_port(), [{"name": "p", "backends": []}], rate_limit=NO_RATE_LIMIT), f)
        r = subprocess.run([MOATD, "--config", cfg_path, "--state-dir", os.path.join(d, "state"),
                            "--admin", f"0.0.0.0:{free_port()}"], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("non-loopback", r.stderr)
        self.assertIn("without TLS", r.stderr)
