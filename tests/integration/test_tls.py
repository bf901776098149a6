#!/usr/bin/env python3
"""TLS end to end: moatd with https listeners, driven by openssl s_client,
curl, python's ssl module and raw sockets, in front of real backends.

The test PKI (tls_pki.py) is generated once per run into a temporary
directory. Each class starts the moatd (and backends) it needs and stops
them; classes that change files on disk work on their own copies. Every
check is about behaviour: waits are bounded polls, and a timeout only ever
means "did not happen".
"""
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tls_pki
from test_proxy import MOATD, NO_RATE_LIMIT, Backend, Moatd, base_config, free_port, wait_port

PKI = {}
PKI_DIR = None


def setUpModule():
    global PKI_DIR
    PKI_DIR = tempfile.mkdtemp(prefix="moat-tls-pki-")
    PKI.update(tls_pki.generate(PKI_DIR))


def tearDownModule():
    if PKI_DIR:
        shutil.rmtree(PKI_DIR, ignore_errors=True)


# ---------------------------------------------------------------------------
# Config helpers


def tls_listener(name, port, certificates, **tls):
    return {"name": name, "address": "127.0.0.1", "port": port, "protocol": "https",
            "tls": dict({"certificates": certificates}, **tls)}


def standard_certs():
    """default.test first (the default certificate), then a.test/*.b.test
    as ECDSA and as RSA, side by side."""
    return [{"cert": PKI["default_cert"], "key": PKI["default_key"]},
            {"cert": PKI["ecdsa_cert"], "key": PKI["ecdsa_key"]},
            {"cert": PKI["rsa_cert"], "key": PKI["rsa_key"]}]


def start_moatd(listeners, pools, routes=None, workers=2):
    """Starts moatd with these listeners (the first is the one Moatd waits
    for) and waits until every listener accepts connections."""
    cfg = base_config(listeners[0]["port"], pools, routes, rate_limit=NO_RATE_LIMIT)
    cfg["listeners"] = listeners
    m = Moatd(cfg, workers=workers)
    try:
        for l in listeners[1:]:
            wait_port(l["port"], proc=m.proc)
    except RuntimeError:
        m.stop()
        raise
    return m


def backend_pool(backend, name="main"):
    return {"name": name, "backends": [{"address": "127.0.0.1", "port": backend.port}]}


def read_stats(moatd, done, timeout=15):
    """Sends SIGUSR1 until the last stats line satisfies done(stats) (workers
    publish their counters about once a second); returns the last stats."""
    deadline = time.time() + timeout
    stats = None
    while time.time() < deadline:
        time.sleep(1.1)
        moatd.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.2)
        for line in reversed(moatd.log().splitlines()):
            if line.startswith("{"):
                try:
                    stats = json.loads(line)
                except ValueError:
                    continue
                break
        if stats is not None and done(stats):
            break
    return stats


def poll(fn, timeout=15.0, interval=0.2):
    """Calls fn until it returns something truthy or the time is up; returns
    the last value. The bound only limits how long we wait to see it."""
    deadline = time.time() + timeout
    value = fn()
    while not value and time.time() < deadline:
        time.sleep(interval)
        value = fn()
    return value


# ---------------------------------------------------------------------------
# openssl s_client


def request_bytes(path="/", host="a.test", extra=""):
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n").encode()


class SClient:
    """One `openssl s_client` run and what its output says."""

    def __init__(self, port, *args, servername=None, request=None, timeout=30):
        cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", PKI["ca_cert"]]
        cmd += ["-noservername"] if servername is None else ["-servername", servername]
        cmd += list(args)
        if request is not None:
            # Keep reading after stdin ends, until moatd closes (the request
            # says Connection: close); TLS 1.3 tickets arrive on the way.
            cmd.append("-ign_eof")
        self.cmd = cmd
        r = subprocess.run(cmd, input=request or b"", capture_output=True, timeout=timeout)
        self.rc = r.returncode
        self.out = r.stdout.decode(errors="replace")
        self.err = r.stderr.decode(errors="replace")
        m = re.search(r"^(New|Reused), (\S+), Cipher is (\S+)", self.out, re.M)
        self.ok = bool(m) and m.group(3) != "(NONE)"
        self.reused = self.ok and m.group(1) == "Reused"
        self.protocol = m.group(2) if self.ok else None
        self.cipher = m.group(3) if self.ok else None
        self._cert = None

    def __str__(self):
        return f"{' '.join(self.cmd)}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-2000:]}"

    def client_side_failure(self):
        """True when the client refused to even offer what was asked
        (then the test proves nothing about the server)."""
        return any(s in self.err for s in ("no protocols available", "no ciphers available",
                                            "Error with command", "Call to SSL_CONF_cmd"))

    @property
    def alpn(self):
        m = re.search(r"^ALPN protocol: (\S+)", self.out, re.M)
        return m.group(1) if m else None

    @property
    def cert(self):
        """The server's leaf certificate: subject, SANs, serial, key type."""
        if self._cert is None:
            m = re.search(r"Server certificate\n(-----BEGIN CERTIFICATE-----\n.*?"
                          r"-----END CERTIFICATE-----\n)", self.out, re.S)
            if not m:
                raise AssertionError(f"no server certificate in output:\n{self}")
            self._cert = parse_cert(m.group(1))
        return self._cert

    @property
    def http(self):
        """(status, body) of the HTTP response read over the connection."""
        m = re.search(r"^HTTP/1\.1 (\d{3}) ", self.out, re.M)
        if not m:
            return None, None
        rest = self.out[m.start():]
        body = rest.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in rest else ""
        return int(m.group(1)), body

    def json_body(self):
        status, body = self.http
        return json.JSONDecoder().raw_decode(body[body.index("{"):])[0]

    def ocsp(self):
        """Dict of the stapled OCSP response's fields, or None."""
        if "OCSP Response Data:" not in self.out:
            return None
        section = self.out.split("OCSP Response Data:", 1)[1].split("======", 1)[0]
        fields = {}
        for key in ("OCSP Response Status", "Cert Status", "This Update", "Next Update", "Serial Number"):
            m = re.search(rf"^\s*{key}: (.*)$", section, re.M)
            if m:
                fields[key] = m.group(1).strip()
        return fields


def parse_cert(pem):
    r = subprocess.run(["openssl", "x509", "-noout", "-text", "-serial"], input=pem.encode(),
                       capture_output=True, check=True)
    text = r.stdout.decode()
    sans = []
    m = re.search(r"X509v3 Subject Alternative Name:.*?\n\s*(.*)\n", text)
    if m:
        sans = [s.strip().split(":", 1)[1] for s in m.group(1).split(",")]
    algo = re.search(r"Public Key Algorithm: (\S+)", text).group(1)
    return {
        "subject": re.search(r"Subject: (.*)", text).group(1).strip(),
        "sans": sans,
        "serial": int(re.search(r"^serial=([0-9A-F]+)", text, re.M).group(1), 16),
        "key": {"id-ecPublicKey": "EC", "rsaEncryption": "RSA"}.get(algo, algo),
    }


# ---------------------------------------------------------------------------
# python ssl


def client_ctx(cert=None, key=None, cafile=None):
    ctx = ssl.create_default_context(cafile=cafile or PKI["ca_cert"])
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class HTTPSConn(http.client.HTTPConnection):
    """http.client over TLS to 127.0.0.1 with a chosen SNI / verified name."""

    def __init__(self, port, sni="a.test", ctx=None, timeout=10):
        super().__init__("127.0.0.1", port, timeout=timeout)
        self.sni = sni
        self.ctx = ctx or client_ctx()

    def connect(self):
        super().connect()
        self.sock = self.ctx.wrap_socket(self.sock, server_hostname=self.sni)

    def get(self, path, headers=None):
        h = {"Host": self.sni}
        h.update(headers or {})
        self.request("GET", path, headers=h)
        r = self.getresponse()
        return r, r.read()


def https_get(port, path, sni="a.test", ctx=None, headers=None):
    c = HTTPSConn(port, sni, ctx)
    try:
        return c.get(path, headers)
    finally:
        c.close()


def served_cert(port, sni="a.test"):
    """The certificate moatd serves for `sni` on a new connection (verified)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_ctx().wrap_socket(raw, server_hostname=sni) as s:
            return s.getpeercert()


def served_serial(port, sni="a.test"):
    try:
        return int(served_cert(port, sni)["serialNumber"], 16)
    except (OSError, ssl.SSLError):
        return None


def header_values(body, name):
    return [v for k, v in json.loads(body)["headers"] if k.lower() == name.lower()]


def try_request(port, ctx, headers=None):
    """Connects, sends one request and reads. Returns ("response", status,
    body) or ("refused", reason). In TLS 1.3 the client's handshake may
    complete before the server has checked its certificate; the refusal
    then shows up as an alert or a close instead of a response."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s = ctx.wrap_socket(raw, server_hostname="a.test")
    except (ssl.SSLError, OSError) as e:
        raw.close()
        return ("refused", f"handshake: {e!r}")
    data = b""
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        s.sendall(request_bytes("/headers", extra=extra))
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    except (ssl.SSLError, OSError) as e:
        if not data.startswith(b"HTTP/"):
            return ("refused", f"after handshake: {e!r}")
    finally:
        s.close()
    if not data.startswith(b"HTTP/"):
        return ("refused", f"closed, read {data[:60]!r}")
    status = int(data.split(b" ", 2)[1])
    return ("response", status, data.split(b"\r\n\r\n", 1)[1])


# ---------------------------------------------------------------------------


class TlsListenerTest(unittest.TestCase):
    """Versions, ciphers, SNI, key types, ALPN and session resumption on a
    listener with the default certificate plus a.test/*.b.test as ECDSA and
    RSA. Three listeners: defaults, minVersion 1.2, session tickets off."""

    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("t1")
        cls.port, cls.port12, cls.port_nt = free_port(), free_port(), free_port()
        cls.moatd = start_moatd([
            tls_listener("tls", cls.port, standard_certs()),
            tls_listener("tls12", cls.port12, standard_certs(), minVersion="1.2"),
            tls_listener("notickets", cls.port_nt, standard_certs(), sessionTickets=False),
        ], [backend_pool(cls.backend)])
        cls.tmp = tempfile.mkdtemp(prefix="moat-tls-sess-")

    @classmethod
    def tearDownClass(cls):
        rc = cls.moatd.stop()
        cls.backend.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert rc == 0, f"moatd exited {rc}"

    def test_tls13_get_through_to_backend(self):
        r = SClient(self.port, servername="a.test", request=request_bytes("/hello"))
        self.assertTrue(r.ok, r)
        self.assertEqual(r.protocol, "TLSv1.3", r)
        self.assertIn("Verify return code: 0 (ok)", r.out)
        self.assertIn("Server Temp Key: X25519", r.out)  # default groups: X25519 first
        status, _ = r.http
        self.assertEqual(status, 200, r)
        info = r.json_body()
        self.assertEqual(info["backend"], "t1")
        self.assertEqual(info["path"], "/hello")

    def test_curl_gets_http11(self):
        r = subprocess.run(["curl", "-sS", "--cacert", PKI["ca_cert"],
                            "--resolve", f"a.test:{self.port}:127.0.0.1",
                            "-w", "\n%{http_code} %{http_version}",
                            f"https://a.test:{self.port}/curl"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        body, status_line = r.stdout.rsplit("\n", 1)
        self.assertEqual(status_line, "200 1.1")
        self.assertEqual(json.loads(body)["path"], "/curl")

    def test_python_keep_alive_and_forwarded_proto(self):
        c = HTTPSConn(self.port, "x.b.test")
        try:
            r, body = c.get("/headers")
            self.assertEqual(r.status, 200)
            self.assertEqual(c.sock.version(), "TLSv1.3")
            self.assertEqual(header_values(body, "X-Forwarded-Proto"), ["https"])
            sock = c.sock
            for i in range(5):
                r, body = c.get(f"/ka/{i}")
                self.assertEqual(r.status, 200)
                self.assertEqual(json.loads(body)["path"], f"/ka/{i}")
            self.assertIs(c.sock, sock)  # one TLS connection throughout
        finally:
            c.close()

    def assertRefused(self, r):
        self.assertFalse(r.client_side_failure(), f"the client never offered it:\n{r}")
        self.assertFalse(r.ok, f"handshake should have failed:\n{r}")
        self.assertIsNone(r.http[0], r)

    def test_tls12_refused_by_default(self):
        self.assertRefused(SClient(self.port, "-tls1_2", servername="a.test"))

    def test_tls12_accepted_with_min_version_12(self):
        r = SClient(self.port12, "-tls1_2", servername="a.test", request=request_bytes("/v12"))
        self.assertTrue(r.ok, r)
        self.assertEqual(r.protocol, "TLSv1.2")
        self.assertRegex(r.cipher, r"^ECDHE-(ECDSA|RSA)-(AES\d+-GCM|CHACHA20-POLY1305)", r)
        self.assertEqual(r.http[0], 200, r)
        # TLS 1.3 still preferred there.
        self.assertEqual(SClient(self.port12, servername="a.test").protocol, "TLSv1.3")

    def test_tls11_and_tls10_always_refused(self):
        for port in (self.port, self.port12):
            for flag in ("-tls1_1", "-tls1"):
                with self.subTest(port=port, version=flag):
                    self.assertRefused(SClient(port, flag, "-cipher", "DEFAULT:@SECLEVEL=0",
                                               servername="a.test"))

    def test_weak_tls12_ciphers_refused(self):
        offered = []
        # Static RSA + CBC, 3DES, and ECDHE but CBC: none is offered by default.
        for cipher in ("AES128-SHA", "DES-CBC3-SHA", "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384"):
            r = SClient(self.port12, "-tls1_2", "-cipher", cipher + ":@SECLEVEL=0", servername="a.test")
            if r.client_side_failure():
                continue  # this openssl build cannot offer it (3DES in OpenSSL 3)
            offered.append(cipher)
            with self.subTest(cipher=cipher):
                self.assertRefused(r)
        self.assertIn("AES128-SHA", offered)

    SNI_CASES = [
        ("a.test", "a.test"),
        ("A.TEST", "a.test"),          # server names compare case-insensitively
        ("x.b.test", "*.b.test"),
        ("a.b.c.test", "default.test"),
        ("unknown.test", "default.test"),
        ("y.x.b.test", "default.test"),  # a wildcard covers exactly one label
        ("b.test", "default.test"),      # ... and never zero labels
        (None, "default.test"),
    ]

    def test_sni_selects_certificate(self):
        for sni, want in self.SNI_CASES:
            with self.subTest(sni=sni):
                r = SClient(self.port, servername=sni)
                self.assertTrue(r.ok, r)
                self.assertIn(want, r.cert["sans"], r.cert)
                if want == "default.test":
                    self.assertEqual(r.cert["sans"], ["default.test"])

    def test_python_verifies_wildcard_name(self):
        r, body = https_get(self.port, "/w", sni="x.b.test")
        self.assertEqual(r.status, 200)
        self.assertIn("*.b.test", [v for k, v in served_cert(self.port, "x.b.test")["subjectAltName"]])

    def test_ecdsa_and_rsa_side_by_side(self):
        for sni in ("a.test", "x.b.test"):
            with self.subTest(sni=sni, client="default"):
                r = SClient(self.port, servername=sni)
                self.assertTrue(r.ok, r)
                self.assertEqual(r.cert["key"], "EC")
            with self.subTest(sni=sni, client="RSA signatures only"):
                r = SClient(self.port, "-sigalgs", "rsa_pss_rsae_sha256:rsa_pkcs1_sha256",
                            servername=sni, request=request_bytes("/rsa"))
                self.assertTrue(r.ok, r)
                self.assertEqual(r.cert["key"], "RSA")
                self.assertIn("a.test", r.cert["sans"])
                self.assertEqual(r.http[0], 200, r)
            with self.subTest(sni=sni, client="ECDSA signatures only"):
                r = SClient(self.port, "-sigalgs", "ecdsa_secp256r1_sha256", servername=sni)
                self.assertTrue(r.ok, r)
                self.assertEqual(r.cert["key"], "EC")
        with self.subTest(client="TLS 1.2 with an RSA cipher suite"):
            r = SClient(self.port12, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256",
                        servername="a.test")
            self.assertTrue(r.ok, r)
            self.assertEqual(r.cert["key"], "RSA")

    def test_alpn(self):
        r = SClient(self.port, "-alpn", "http/1.1", servername="a.test", request=request_bytes("/alpn"))
        self.assertTrue(r.ok, r)
        self.assertEqual(r.alpn, "http/1.1")
        self.assertEqual(r.http[0], 200)
        r = SClient(self.port, "-alpn", "h2,http/1.1", servername="a.test")
        self.assertEqual(r.alpn, "http/1.1", r)
        r = SClient(self.port, servername="a.test")
        self.assertTrue(r.ok, r)
        self.assertIn("No ALPN negotiated", r.out)
        r = SClient(self.port, "-alpn", "h2", servername="a.test", request=request_bytes("/h2"))
        self.assertFalse(r.ok, r)
        self.assertIn("no application protocol", r.err, r)
        self.assertIsNone(r.http[0])

    def resume_chain(self, port, n, tag):
        """One full handshake then n resumption attempts, each offering the
        newest ticket received so far (a fresh one if the previous
        connection got one, else the last one). Returns the SClient runs, or
        only the first if it received no ticket at all."""
        sess = os.path.join(self.tmp, f"{tag}-0.sess")
        first = SClient(port, "-sess_out", sess, servername="a.test", request=request_bytes("/s0"))
        self.assertTrue(first.ok, first)
        runs = [first]
        if not os.path.exists(sess) or os.path.getsize(sess) == 0:
            return runs
        for i in range(1, n + 1):
            nxt = os.path.join(self.tmp, f"{tag}-{i}.sess")
            r = SClient(port, "-sess_in", sess, "-sess_out", nxt, servername="a.test",
                        request=request_bytes(f"/s{i}"))
            runs.append(r)
            if os.path.exists(nxt) and os.path.getsize(nxt) > 0:
                sess = nxt
        return runs

    def test_session_resumption_across_workers(self):
        runs = self.resume_chain(self.port, 8, "tickets")
        self.assertEqual(len(runs), 9, "no session ticket was received:\n" + str(runs[0]))
        self.assertFalse(runs[0].reused)
        for i, r in enumerate(runs[1:], 1):
            self.assertTrue(r.reused, f"resumption {i} of 8 was a full handshake:\n{r}")
            self.assertEqual(r.protocol, "TLSv1.3")
            self.assertEqual(r.http[0], 200, r)
        stats = read_stats(self.moatd, lambda s: s.get("tls_resumed", 0) >= 8)
        self.assertGreaterEqual(stats.get("tls_resumed", 0), 8, stats)
        self.assertGreater(stats.get("tls_handshakes", 0), stats.get("tls_resumed", 0), stats)

    def test_resumed_connection_gets_fresh_ticket(self):
        # RFC 8446 C.4: clients SHOULD NOT reuse a ticket, so a server that
        # issues none after a resumption makes such clients (browsers, curl)
        # do a full handshake every other connection. OpenSSL's default and
        # HAProxy send one new ticket after each resumption.
        sess = os.path.join(self.tmp, "fresh-0.sess")
        nxt = os.path.join(self.tmp, "fresh-1.sess")
        r = SClient(self.port, "-sess_out", sess, servername="a.test", request=request_bytes("/f0"))
        self.assertTrue(os.path.exists(sess), r)
        r = SClient(self.port, "-sess_in", sess, "-sess_out", nxt, servername="a.test",
                    request=request_bytes("/f1"))
        self.assertTrue(r.reused, r)
        self.assertTrue("Post-Handshake New Session Ticket arrived" in r.out,
                        f"no new session ticket after a resumed handshake:\n{r}")
        self.assertTrue(os.path.exists(nxt) and os.path.getsize(nxt) > 0)

    def test_no_resumption_without_session_tickets(self):
        runs = self.resume_chain(self.port_nt, 3, "notickets")
        self.assertTrue(runs[0].ok, runs[0])
        for r in runs[1:]:
            self.assertTrue(r.ok, r)
            self.assertFalse(r.reused, f"resumed although sessionTickets is false:\n{r}")
            self.assertEqual(r.http[0], 200, r)
        # A ticket from the sibling listener (tickets on) is not accepted either.
        sess = os.path.join(self.tmp, "sibling.sess")
        r = SClient(self.port, "-sess_out", sess, servername="a.test", request=request_bytes("/sib"))
        self.assertTrue(r.ok, r)
        if os.path.exists(sess) and os.path.getsize(sess) > 0:
            r = SClient(self.port_nt, "-sess_in", sess, servername="a.test", request=request_bytes("/sib2"))
            self.assertTrue(r.ok, r)
            self.assertFalse(r.reused, r)


class ClientAuthTest(unittest.TestCase):
    """mTLS: one listener requiring a client certificate from the client CA,
    one where it is optional. moatd passes the verified subject on in
    X-Client-Cert-Subject and never lets a client set that header."""

    HEADER = "X-Client-Cert-Subject"

    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("m1")
        cls.port, cls.port_opt = free_port(), free_port()
        certs = standard_certs()[:2]

        def auth(required):
            return {"caFile": PKI["client_ca_cert"], "required": required, "subjectHeader": cls.HEADER}

        cls.moatd = start_moatd([
            tls_listener("mtls", cls.port, certs, clientAuth=auth(True)),
            tls_listener("mtls-optional", cls.port_opt, certs, clientAuth=auth(False)),
        ], [backend_pool(cls.backend)])

    @classmethod
    def tearDownClass(cls):
        rc = cls.moatd.stop()
        cls.backend.stop()
        assert rc == 0, f"moatd exited {rc}"

    def good_ctx(self):
        return client_ctx(PKI["client_cert"], PKI["client_key"])

    def test_required_no_client_cert_refused(self):
        res = try_request(self.port, client_ctx())
        self.assertEqual(res[0], "refused", res)

    def test_required_untrusted_ca_refused(self):
        res = try_request(self.port, client_ctx(PKI["rogue_client_cert"], PKI["rogue_client_key"]))
        self.assertEqual(res[0], "refused", res)

    def test_required_good_cert_passes_subject(self):
        res = try_request(self.port, self.good_ctx())
        self.assertEqual(res[:2], ("response", 200), res)
        values = header_values(res[2], self.HEADER)
        self.assertEqual(len(values), 1, values)
        self.assertIn("CN=client-one", values[0].replace(" = ", "="))

    def test_subject_header_cannot_be_spoofed(self):
        res = try_request(self.port, self.good_ctx(),
                          headers={self.HEADER: "CN=admin,O=Evil", self.HEADER.lower(): "CN=root"})
        self.assertEqual(res[:2], ("response", 200), res)
        values = header_values(res[2], self.HEADER)
        self.assertEqual(len(values), 1, values)
        self.assertIn("CN=client-one", values[0].replace(" = ", "="))
        self.assertNotIn("admin", values[0])
        self.assertNotIn("root", values[0])

    def test_optional_without_cert(self):
        res = try_request(self.port_opt, client_ctx())
        self.assertEqual(res[:2], ("response", 200), res)
        self.assertEqual(header_values(res[2], self.HEADER), [])
        # Nor can a client without a certificate claim a subject.
        res = try_request(self.port_opt, client_ctx(), headers={self.HEADER: "CN=client-one,O=Moat Tests"})
        self.assertEqual(res[:2], ("response", 200), res)
        self.assertEqual(header_values(res[2], self.HEADER), [])

    def test_optional_with_good_cert_passes_subject(self):
        res = try_request(self.port_opt, self.good_ctx())
        self.assertEqual(res[:2], ("response", 200), res)
        values = header_values(res[2], self.HEADER)
        self.assertEqual(len(values), 1, values)
        self.assertIn("CN=client-one", values[0].replace(" = ", "="))


# ---------------------------------------------------------------------------
# Malformed ClientHellos


def _ext(kind, data):
    return struct.pack("!HH", kind, len(data)) + data


def client_hello(extensions):
    """A TLS 1.3 ClientHello handshake message with these extensions."""
    body = (b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32)
            + struct.pack("!H", 6) + b"\x13\x01\x13\x02\x13\x03"
            + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions)
    return b"\x01" + struct.pack("!I", len(body))[1:] + body


def as_records(handshake):
    out = b""
    for i in range(0, len(handshake), 16384):
        frag = handshake[i:i + 16384]
        out += b"\x16\x03\x01" + struct.pack("!H", len(frag)) + frag
    return out


def huge_extension_hello():
    name = b"a" * 60000
    sni = struct.pack("!H", len(name) + 3) + b"\x00" + struct.pack("!H", len(name)) + name
    exts = (_ext(0x0000, sni)
            + _ext(0x002b, b"\x02\x03\x04")                          # supported_versions: 1.3
            + _ext(0x000a, b"\x00\x02\x00\x1d")                      # groups: x25519
            + _ext(0x000d, b"\x00\x02\x04\x03")                      # sigalgs: ecdsa p256
            + _ext(0x0033, b"\x00\x24\x00\x1d\x00\x20" + os.urandom(32)))  # key_share
    return as_records(client_hello(exts))


def server_closes(port, data, shut_wr=False, timeout=10):
    """Sends data and reads until the server closes. Returns (how, bytes):
    how is "eof", "reset" or "timeout" (the server kept the connection)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    received = b""
    try:
        s.sendall(data)
        if shut_wr:
            s.shutdown(socket.SHUT_WR)
        while True:
            b = s.recv(65536)
            if not b:
                return "eof", received
            received += b
    except socket.timeout:
        return "timeout", received
    except (ConnectionResetError, BrokenPipeError):
        return "reset", received
    finally:
        s.close()


class MalformedHelloTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("g1")
        cls.port = free_port()
        cls.moatd = start_moatd([tls_listener("tls", cls.port, standard_certs())],
                                [backend_pool(cls.backend)])

    @classmethod
    def tearDownClass(cls):
        rc = cls.moatd.stop()
        cls.backend.stop()
        assert rc == 0, f"moatd exited {rc}"

    def test_malformed_client_hellos_closed_and_server_survives(self):
        rnd = random.Random(7)
        cases = [
            ("random bytes", b"\x00" + rnd.randbytes(1023), False),
            ("truncated record", b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4" + rnd.randbytes(16), True),
            ("record of 0x4800 bytes", b"\x16\x03\x01\x48\x00" + rnd.randbytes(0x4800), False),
            ("60 kB server_name extension", huge_extension_hello(), False),
            ("handshake length 16 MB", b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", False),
            ("empty then close", b"", True),
        ]
        for name, data, shut_wr in cases:
            with self.subTest(case=name):
                how, got = server_closes(self.port, data, shut_wr)
                self.assertIn(how, ("eof", "reset"), f"moatd kept the connection open ({name})")
                if got:
                    self.assertEqual(got[0], 0x15, f"expected only a TLS alert, got {got[:40]!r}")
                # Still serving, every time.
                r, body = https_get(self.port, "/after")
                self.assertEqual(r.status, 200)
        stats = read_stats(self.moatd, lambda s: s.get("tls_handshake_errors", 0) >= 5)
        self.assertGreaterEqual(stats.get("tls_handshake_errors", 0), 5, stats)
        self.assertGreaterEqual(stats.get("tls_handshakes", 0), len(cases), stats)


class OcspTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="moat-tls-ocsp-")
        cls.ocsp = os.path.join(cls.dir, "default.ocsp")
        shutil.copy(PKI["ocsp_resp"], cls.ocsp)
        cls.backend = Backend("o1")
        cls.port = free_port()
        certs = standard_certs()
        certs[0]["ocsp"] = cls.ocsp
        cls.moatd = start_moatd([tls_listener("tls", cls.port, certs)], [backend_pool(cls.backend)])

    @classmethod
    def tearDownClass(cls):
        rc = cls.moatd.stop()
        cls.backend.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)
        assert rc == 0, f"moatd exited {rc}"

    @staticmethod
    def response_fields(der):
        out = subprocess.run(["openssl", "ocsp", "-respin", der, "-resp_text", "-noverify"],
                             capture_output=True, text=True, check=True).stdout
        return {k: re.search(rf"{k}: (.*)", out).group(1).strip() for k in ("This Update", "Next Update")}

    def test_stapling_and_file_replacement(self):
        first = self.response_fields(PKI["ocsp_resp"])
        second = self.response_fields(PKI["ocsp_resp2"])
        self.assertNotEqual(first["Next Update"], second["Next Update"])
        serial = "%X" % tls_pki.cert_serial(PKI["default_cert"])

        r = SClient(self.port, "-status", servername="default.test")
        self.assertTrue(r.ok, r)
        o = r.ocsp()
        self.assertIsNotNone(o, f"no OCSP response stapled:\n{r}")
        self.assertEqual(o["OCSP Response Status"], "successful (0x0)")
        self.assertEqual(o["Cert Status"], "good")
        self.assertEqual(o["Serial Number"].lstrip("0"), serial.lstrip("0"))
        self.assertEqual(o["Next Update"], first["Next Update"])

        # No SNI: the default certificate, stapled too.
        r = SClient(self.port, "-status")
        self.assertEqual((r.ocsp() or {}).get("Cert Status"), "good", r)
        # A client that does not ask gets nothing.
        r = SClient(self.port, servername="default.test")
        self.assertTrue(r.ok, r)
        self.assertNotIn("OCSP response", r.out)
        # A certificate without an ocsp file staples nothing.
        r = SClient(self.port, "-status", servername="a.test")
        self.assertTrue(r.ok, r)
        self.assertIsNone(r.ocsp(), r)

        # Atomically replace the file; new connections staple the new one.
        tmp = self.ocsp + ".new"
        shutil.copy(PKI["ocsp_resp2"], tmp)
        os.replace(tmp, self.ocsp)

        def stapled_next_update():
            o = SClient(self.port, "-status", servername="default.test").ocsp() or {}
            return o.get("Next Update") == second["Next Update"]

        self.assertTrue(poll(stapled_next_update, timeout=20, interval=0.25),
                        "the replaced OCSP response was never stapled")


class ReloadTest(unittest.TestCase):
    """Certificates reloaded on SIGHUP: new connections get the new one,
    open connections keep working, a broken file changes nothing."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="moat-tls-reload-")
        self.cert = os.path.join(self.dir, "reload-a.pem")
        self.key = os.path.join(self.dir, "reload-a.key")
        c, k = self.mint("v0")
        shutil.copy(c, self.cert)
        shutil.copy(k, self.key)
        self.backend = Backend("r1")
        self.port = free_port()
        self.moatd = start_moatd([tls_listener("tls", self.port, [
            {"cert": PKI["default_cert"], "key": PKI["default_key"]},
            {"cert": self.cert, "key": self.key}])], [backend_pool(self.backend)])

    def tearDown(self):
        rc = self.moatd.stop()
        self.backend.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.assertEqual(rc, 0)

    def mint(self, tag, key=None):
        """A new a.test certificate (new serial) in a staging directory."""
        d = os.path.join(self.dir, "staging")
        os.makedirs(d, exist_ok=True)
        return tls_pki.issue_server_cert(d, "a-" + tag, ["a.test"], PKI["ca_cert"], PKI["ca_key"],
                                         "ec", key=key)

    def install(self, cert, key=None):
        """Atomically puts cert (and key) in place of the served files."""
        for src, dst in ((key, self.key), (cert, self.cert)):
            if src:
                shutil.copy(src, dst + ".tmp")
                os.replace(dst + ".tmp", dst)

    def wait_serial(self, serial):
        return poll(lambda: served_serial(self.port) == serial, timeout=20)

    def test_reload_new_cert_keeps_connections_and_refuses_broken_file(self):
        old = tls_pki.cert_serial(self.cert)
        self.assertEqual(served_serial(self.port), old)
        ka = HTTPSConn(self.port, "a.test")
        try:
            r, _ = ka.get("/before")
            self.assertEqual(r.status, 200)
            sock = ka.sock

            cert, key = self.mint("v1")  # new key too
            new = tls_pki.cert_serial(cert)
            self.assertNotEqual(new, old)
            self.install(cert, key)
            self.moatd.proc.send_signal(signal.SIGHUP)
            self.assertTrue(self.wait_serial(new), "new connections never got the new certificate")

            r, body = ka.get("/after")  # the connection from before the reload
            self.assertEqual(r.status, 200)
            self.assertEqual(json.loads(body)["path"], "/after")
            self.assertIs(ka.sock, sock)
        finally:
            ka.close()

        # A broken certificate file: an error naming it, old cert still served.
        offset = len(self.moatd.log())
        with open(self.cert + ".tmp", "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        os.replace(self.cert + ".tmp", self.cert)
        self.moatd.proc.send_signal(signal.SIGHUP)
        logged = poll(lambda: "reload-a.pem" in self.moatd.log()[offset:], timeout=15)
        self.assertTrue(logged, "no error naming reload-a.pem:\n" + self.moatd.log()[offset:])
        for _ in range(5):
            self.assertEqual(served_serial(self.port), new)
        r, _ = https_get(self.port, "/still")
        self.assertEqual(r.status, 200)

    def test_reload_under_load_loses_nothing(self):
        key = self.key  # same key, new serials: cert and key never disagree
        variants = [self.mint(f"load{i}", key=key)[0] for i in range(5)]
        failures, done = [], {"n": 0}
        signalled = [threading.Event() for _ in variants]

        def load():
            c = None
            for i in range(300):
                k = i // 50  # requests 50k.. run after reload k was signalled
                if 1 <= k <= len(signalled) and i % 50 == 0:
                    if not signalled[k - 1].wait(60):
                        failures.append(f"reload {k} never signalled")
                try:
                    if c is None or i % 3 == 0:  # a mix of new and kept connections
                        if c is not None:
                            c.close()
                        c = HTTPSConn(self.port, "a.test")
                    r, body = c.get(f"/load/{i}")
                    if r.status != 200 or json.loads(body)["path"] != f"/load/{i}":
                        failures.append((i, r.status))
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append((i, repr(e)))
                    if c is not None:
                        c.close()
                    c = None
                done["n"] = i + 1
            if c is not None:
                c.close()

        t = threading.Thread(target=load)
        t.start()
        try:
            for i, cert in enumerate(variants):
                while done["n"] < 50 * i + 20 and t.is_alive():  # let some load run first
                    time.sleep(0.02)
                self.install(cert)
                self.moatd.proc.send_signal(signal.SIGHUP)
                signalled[i].set()
                self.assertTrue(self.wait_serial(tls_pki.cert_serial(cert)), f"reload {i + 1} not applied")
        finally:
            for e in signalled:
                e.set()
            t.join(120)
        self.assertFalse(t.is_alive())
        self.assertEqual(done["n"], 300)
        self.assertEqual(failures, [])


class CheckTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="moat-tls-check-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def config(self, certs):
        p = os.path.join(self.dir, "moat.json")
        cfg = base_config(free_port(), [{"name": "p", "backends": [{"address": "127.0.0.1", "port": 9}]}])
        cfg["listeners"] = [tls_listener("tls", cfg["listeners"][0]["port"], certs)]
        with open(p, "w") as f:
            json.dump(cfg, f)
        return p

    def copy(self, src, name):
        dst = os.path.join(self.dir, name)
        shutil.copy(src, dst)
        return dst

    def check(self, path):
        r = subprocess.run([MOATD, "--check", path], capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout + r.stderr

    def test_valid_https_config_accepted(self):
        rc, out = self.check(self.config(standard_certs()))
        self.assertEqual(rc, 0, out)

    def test_broken_certificate(self):
        cert = self.copy(PKI["broken_cert"], "broken-leaf.pem")
        p = self.config([{"cert": cert, "key": PKI["ecdsa_key"]}])
        rc, out = self.check(p)
        self.assertNotEqual(rc, 0, out)
        self.assertIn("listeners[0].tls.certificates[0]", out)
        self.assertIn("broken-leaf.pem", out)
        # And it does not start with it.
        r = subprocess.run([MOATD, "--config", p], capture_output=True, text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)

    def test_key_does_not_match_certificate(self):
        cert = self.copy(PKI["ecdsa_cert"], "leaf-ok.pem")
        key = self.copy(PKI["mismatched_key"], "other-key.pem")
        rc, out = self.check(self.config([{"cert": cert, "key": key}]))
        self.assertNotEqual(rc, 0, out)
        self.assertIn("listeners[0].tls.certificates[0]", out)
        self.assertTrue("leaf-ok.pem" in out or "other-key.pem" in out, out)

    def test_missing_file_in_second_entry(self):
        missing = os.path.join(self.dir, "no-such-cert.pem")
        rc, out = self.check(self.config([{"cert": PKI["default_cert"], "key": PKI["default_key"]},
                                          {"cert": missing, "key": PKI["ecdsa_key"]}]))
        self.assertNotEqual(rc, 0, out)
        self.assertIn("listeners[0].tls.certificates[1]", out)
        self.assertIn("no-such-cert.pem", out)


# ---------------------------------------------------------------------------
# TLS to backends


class _TlsBackendServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def finish_request(self, request, client_address):
        # The handshake runs here, in the connection's own thread.
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            self.failed_handshakes += 1
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


class _TlsBackendHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        body = json.dumps({"backend": "tls-backend", "path": self.path,
                           "tls": self.request.version()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class TlsBackend:
    """A python HTTPS server for backend.test, in a thread of this process.
    Records the SNI names it was asked for."""

    def __init__(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(PKI["backend_cert"], PKI["backend_key"])
        self.sni = []
        ctx.sni_callback = lambda sslobj, name, c: self.sni.append(name)
        self.srv = _TlsBackendServer(("127.0.0.1", 0), _TlsBackendHandler)
        self.srv.ctx = ctx
        self.srv.failed_handshakes = 0
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


class UpstreamTlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = TlsBackend()
        cls.port = free_port()

        def pool(name, **tls):
            return {"name": name, "backends": [{"address": "127.0.0.1", "port": cls.backend.port}],
                    "tls": dict({"sni": "backend.test"}, **tls)}

        pools = [pool("good", caFile=PKI["ca_cert"]),
                 pool("wrongca", caFile=PKI["client_ca_cert"]),
                 pool("noverify", caFile=PKI["client_ca_cert"], verify=False)]
        routes = [{"host": "*", "pathPrefix": f"/{p['name']}", "pool": p["name"]} for p in pools]
        cls.moatd = start_moatd([tls_listener("tls", cls.port, standard_certs())], pools, routes)

    @classmethod
    def tearDownClass(cls):
        rc = cls.moatd.stop()
        cls.backend.stop()
        assert rc == 0, f"moatd exited {rc}"

    def test_verified_backend(self):
        r, body = https_get(self.port, "/good/x")
        self.assertEqual(r.status, 200, body)
        info = json.loads(body)
        self.assertEqual(info["path"], "/good/x")
        self.assertIn(info["tls"], ("TLSv1.2", "TLSv1.3"))
        self.assertIn("backend.test", self.backend.sni)

    def test_wrong_ca_is_502(self):
        r, body = https_get(self.port, "/wrongca/x")
        self.assertEqual(r.status, 502, body)
        stats = read_stats(self.moatd, lambda s: s.get("upstream_tls_errors", 0) >= 1)
        self.assertGreaterEqual(stats.get("upstream_tls_errors", 0), 1, stats)

    def test_verify_false_accepts_wrong_ca(self):
        r, body = https_get(self.port, "/noverify/x")
        self.assertEqual(r.status, 200, body)
        self.assertEqual(json.loads(body)["path"], "/noverify/x")


# ---------------------------------------------------------------------------


class SslscanTest(unittest.TestCase):
    """A third-party scanner's view of a minVersion 1.2 listener. The full
    output is kept as sslscan-tls.txt in $MOAT_TEST_ARTIFACTS."""

    BAD = ("RC4", "DES", "NULL", "EXP", "ANON", "ADH", "AECDH", "MD5", "CBC")

    def test_sslscan(self):
        exe = shutil.which("sslscan")
        if exe is None:
            self.skipTest("sslscan not installed (Debian package sslscan)")
        backend = Backend("s1")
        port = free_port()
        m = start_moatd([tls_listener("tls", port, standard_certs(), minVersion="1.2")],
                        [backend_pool(backend)])
        try:
            r = subprocess.run([exe, "--no-colour", "--sni-name=a.test", f"127.0.0.1:{port}"],
                               capture_output=True, text=True, timeout=600)
        finally:
            rc = m.stop()
            backend.stop()
        out = r.stdout + r.stderr
        art = os.environ.get("MOAT_TEST_ARTIFACTS", tempfile.gettempdir())
        os.makedirs(art, exist_ok=True)
        with open(os.path.join(art, "sslscan-tls.txt"), "w") as f:
            f.write(out)
        self.assertEqual(rc, 0)

        for proto in ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"):
            self.assertNotRegex(out, rf"(?m)^{re.escape(proto)}\s+enabled", proto)
        for proto in ("TLSv1.2", "TLSv1.3"):
            self.assertRegex(out, rf"(?m)^{re.escape(proto)}\s+enabled", f"{proto} should be enabled:\n{out}")

        accepted = re.findall(r"(?m)^(?:Preferred|Accepted)\s+(\S+)\s+\d+ bits\s+(\S+)", out)
        self.assertTrue(accepted, f"sslscan found no cipher at all:\n{out}")
        for proto, cipher in accepted:
            name = cipher.upper()
            self.assertFalse(any(b in name for b in self.BAD), f"weak cipher accepted: {proto} {cipher}")
            if proto != "TLSv1.3":
                # OpenSSL names CBC suites without "CBC" (ECDHE-ECDSA-AES128-SHA256):
                # anything not AEAD is CBC here.
                self.assertTrue(any(a in name for a in ("GCM", "CHACHA20-POLY1305", "CCM")),
                                f"non-AEAD (CBC) cipher accepted: {proto} {cipher}")
            self.assertIn(proto, ("TLSv1.2", "TLSv1.3"))

        # Debian's sslscan may be built without zlib and then says it cannot
        # test compression; either way it must never find it enabled.
        self.assertNotRegex(out, r"(?m)^Compression enabled")
        self.assertTrue("Compression disabled" in out or "does not support compression" in out, out)
        self.assertNotIn("Insecure session renegotiation supported", out)
        self.assertNotRegex(out, r"(?m)^TLSv1\.\d vulnerable to heartbleed")


if __name__ == "__main__":
    unittest.main(verbosity=2)
