#!/usr/bin/env python3
"""The WAF end to end: moatd with Debian's OWASP CRS in front of a test backend.

Also replays the CRS regression tests (../shared/crs-tests, half of CRS 3.3.4's
own tests) through moatd the way the CRS project runs them: paranoia level 4,
detection only, every matched rule written to the audit log; each test's
expected / forbidden rule ids are looked up in that log by client port.
"""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from test_proxy import Backend, Moatd, base_config, free_port, raw_exchange

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("MOAT_SHARED_DIR", os.path.join(REPO, "..", "shared"))
CRS_RULES = "/usr/share/modsecurity-crs/rules"
UNICODE_MAP = os.path.join(SHARED, "data", "unicode.mapping")
# One compiled-database cache for the whole run: the first moatd compiles the
# CRS (seconds), the others load it.
CACHE = tempfile.mkdtemp(prefix="moat-waf-cache-")


def setUpModule():
    # Compile the CRS into the shared cache once, with no deadline: moatd then
    # starts from the cache within wait_port's time even under sanitizers.
    if os.path.isdir(CRS_RULES):
        cmd = [os.path.join(os.environ["MOAT_BIN_DIR"], "moat-waf"), "--rules", CRS_RULES,
               "--cache", CACHE]
        subprocess.run(cmd, capture_output=True, timeout=1200)


def waf_config(**over):
    w = {"enabled": True, "cacheDir": CACHE}
    if os.path.exists(UNICODE_MAP):
        w["unicodeMap"] = UNICODE_MAP
    w.update(over)
    return w


def status_of(resp):
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/1.1 ") else None


@unittest.skipUnless(os.path.isdir(CRS_RULES), "modsecurity-crs is not installed")
class WafTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("waf")

    @classmethod
    def tearDownClass(cls):
        cls.backend.stop()

    def start(self, waf, routes=None):
        port = free_port()
        self.audit = tempfile.mktemp(prefix="moat-audit-")
        waf.setdefault("auditLog", self.audit)
        cfg = base_config(port, [{"name": "p", "backends": [
            {"address": "127.0.0.1", "port": self.backend.port}]}], routes=routes,
            rate_limit={"enabled": False})
        cfg["waf"] = waf
        m = Moatd(cfg, workers=2)
        self.addCleanup(lambda: self.assertEqual(m.stop(), 0))
        return m, port

    def get(self, port, target, headers=None, method="GET", body=b""):
        h = {"Host": "shop.example", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
             "Accept": "text/html"}
        h.update(headers or {})
        if body and "Transfer-Encoding" not in h:
            h.setdefault("Content-Length", str(len(body)))
        req = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
        req += "Connection: close\r\n\r\n"
        return raw_exchange(port, req.encode() + body)

    def audit_lines(self):
        deadline = time.time() + 5
        while time.time() < deadline:
            if os.path.exists(self.audit) and os.path.getsize(self.audit) > 0:
                break
            time.sleep(0.05)
        time.sleep(0.2)  # workers flush with their access log
        with open(self.audit) as f:
            return [json.loads(l) for l in f if l.strip()]

    def test_blocks_attacks_passes_benign_and_logs(self):
        m, port = self.start(waf_config())
        ok = self.get(port, "/search?q=blue+shoes&page=2")
        self.assertEqual(status_of(ok), 200, ok[:300])
        bad = self.get(port, "/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--")
        self.assertEqual(status_of(bad), 403)
        self.assertIn(b"web application firewall (rule 949110", bad)
        xss = self.get(port, "/comment", {"Content-Type": "application/x-www-form-urlencoded"},
                       "POST", b"text=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        self.assertEqual(status_of(xss), 403)
        lines = self.audit_lines()
        blocked = [l for l in lines if l["action"] == "blocked"]
        self.assertEqual(len(blocked), 2)
        ids = {r["id"] for r in blocked[0]["rules"]}
        self.assertIn(942100, ids)
        self.assertIn(949110, ids)
        self.assertGreaterEqual(blocked[0]["anomaly_score"], 5)
        self.assertIn(941100, {r["id"] for r in blocked[1]["rules"]})

    def test_bodies_reach_the_backend_intact_and_are_inspected(self):
        m, port = self.start(waf_config())
        body = json.dumps({"order": {"items": [{"sku": "A-1", "qty": 2}], "note": "ring twice"}}).encode()
        r = self.get(port, "/api/orders", {"Content-Type": "application/json"}, "POST", body)
        self.assertEqual(status_of(r), 200, r[:300])
        info = json.loads(r.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(info["body_sha256"], hashlib.sha256(body).hexdigest())
        bad = json.dumps({"user": "admin' OR 1=1--"}).encode()
        r = self.get(port, "/api/login", {"Content-Type": "application/json"}, "POST", bad)
        self.assertEqual(status_of(r), 403)
        # Chunked form body carrying a path traversal.
        payload = b"file=../../../../etc/passwd"
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
        r = self.get(port, "/upload", {"Content-Type": "application/x-www-form-urlencoded",
                                       "Transfer-Encoding": "chunked"}, "POST", chunked)
        self.assertEqual(status_of(r), 403)
        # A body sent in two pieces, the attack in the second.
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        tail = b"&q=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        head_part = b"a=" + b"x" * 3000
        s.sendall(b"POST /f HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: t/1\r\nAccept: */*\r\n"
                  b"Content-Type: application/x-www-form-urlencoded\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (len(head_part) + len(tail)) + head_part)
        time.sleep(0.3)
        s.sendall(tail)
        resp = s.recv(4096)
        s.close()
        self.assertEqual(status_of(resp), 403)

    def test_route_off_detect_mode_and_exclusions(self):
        routes = [{"host": "*", "pathPrefix": "/", "pool": "p"},
                  {"host": "*", "pathPrefix": "/internal/", "pool": "p", "waf": False}]
        m, port = self.start(waf_config(), routes=routes)
        attack = "?q=1%27%20UNION%20SELECT%20password%20FROM%20users--"
        self.assertEqual(status_of(self.get(port, "/internal/x" + attack)), 200)
        self.assertEqual(status_of(self.get(port, "/x" + attack)), 403)

        m2, port2 = self.start(waf_config(mode="detect"))
        self.assertEqual(status_of(self.get(port2, "/x" + attack)), 200)
        with open(m2.access_log) as f:
            self.assertIn('"waf":"detected:949110"', f.read())

        # Excluding the one argument from the SQLi rules lets the request through.
        sqli = [942100, 942190, 942200, 942260, 942270, 942340, 942360, 942370, 942380, 942390, 942400,
                942430, 942440, 942480, 942490, 942510]
        m3, port3 = self.start(waf_config(excludeTargets=[{"rule": r, "target": "ARGS:q"} for r in sqli]))
        r = self.get(port3, "/x" + attack)
        self.assertEqual(status_of(r), 200, self.audit_lines())
        m4, port4 = self.start(waf_config(disableRules=[949110]))
        self.assertEqual(status_of(self.get(port4, "/x" + attack)), 200)

    def test_body_limit_reject_or_inspect(self):
        m, port = self.start(waf_config(requestBodyLimit=1024))
        big = b"a=" + b"x" * 2000
        r = self.get(port, "/b", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", big)
        self.assertEqual(status_of(r), 413)
        m2, port2 = self.start(waf_config(requestBodyLimit=1024, bodyLimitAction="inspect"))
        r = self.get(port2, "/b", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", big)
        self.assertEqual(status_of(r), 200)
        attack_first = b"q=%3Cscript%3Ealert(1)%3C%2Fscript%3E&a=" + b"x" * 2000
        r = self.get(port2, "/b", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", attack_first)
        self.assertEqual(status_of(r), 403)

    def test_bad_rules_refuse_start_and_reload(self):
        bad = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
        bad.write('SecRule ARGS "@rx (unclosed" "id:1,phase:2,deny"\n')
        bad.close()
        self.addCleanup(os.unlink, bad.name)
        m, port = self.start(waf_config())
        with open(m.config_path) as f:
            cfg = json.load(f)
        cfg["waf"]["rules"] = [bad.name]
        m.write(cfg)
        m.proc.send_signal(signal.SIGHUP)
        m.wait_log("reload rejected: waf rules did not compile")
        self.assertIn(bad.name + ":1:", m.log())
        # The old rule set keeps working.
        self.assertEqual(status_of(self.get(port, "/x?q=1%27%20UNION%20SELECT%20a%20FROM%20b--")), 403)
        self.assertEqual(status_of(self.get(port, "/x?q=shoes")), 200)


@unittest.skipUnless(os.path.isdir(CRS_RULES), "modsecurity-crs is not installed")
class BenignCorpus(unittest.TestCase):
    """tests/waf/benign: real-looking traffic that must raise no anomaly at PL1."""

    def test_no_anomaly_at_paranoia_1(self):
        corpus = os.path.join(REPO, "tests", "waf", "benign")
        files = sorted(os.path.join(corpus, f) for f in os.listdir(corpus) if f.endswith(".http"))
        clean = [f for f in files if not f.endswith(".fp.http")]
        self.assertGreaterEqual(len(clean), 30)
        cmd = [os.path.join(os.environ["MOAT_BIN_DIR"], "moat-waf"), "--rules", CRS_RULES,
               "--paranoia", "1", "--cache", CACHE]
        if os.path.exists(UNICODE_MAP):
            cmd += ["--unicode-map", UNICODE_MAP]
        out = subprocess.run(cmd + files, capture_output=True, text=True, timeout=600)
        self.assertEqual(out.returncode, 0, out.stderr)
        results = {json.loads(l)["file"]: json.loads(l) for l in out.stdout.splitlines()}
        self.assertEqual(len(results), len(files))
        for f in clean:
            self.assertEqual((results[f]["rules"], results[f]["score"], results[f]["verdict"]),
                             ([], 0, "pass"), f)
        # The known CRS false positives (see the corpus README) are still
        # flagged: the corpus documents them, the WAF does not hide them.
        for f in files:
            if f.endswith(".fp.http"):
                self.assertNotEqual(results[f]["rules"], [], f)


@unittest.skipUnless(os.path.isdir(CRS_RULES), "modsecurity-crs is not installed")
class CrsRegressionThroughMoatd(unittest.TestCase):
    """CRS 3.3.4's own regression tests (the half in ../shared) through moatd."""

    def test_crs_regression(self):
        tests_dir = os.path.join(SHARED, "crs-tests")
        if not os.path.isdir(tests_dir):
            self.skipTest(f"{tests_dir} not found: the CRS regression tests live beside the repo")
        sys.path.insert(0, os.path.join(REPO, "tools"))
        import crs_requests
        tests = [t for t in crs_requests.load_tests(tests_dir) if t["enabled"]]
        backend = Backend("crs")
        self.addCleanup(backend.stop)
        port = free_port()
        audit = tempfile.mktemp(prefix="moat-crs-audit-")
        setup = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
        # As the CRS project's test setup: every uploaded byte counted.
        setup.write('SecAction "id:900130,phase:1,nolog,pass,t:none,setvar:tx.combined_file_sizes=65535"\n')
        setup.close()
        self.addCleanup(os.unlink, setup.name)
        cfg = base_config(port, [{"name": "p", "backends": [
            {"address": "127.0.0.1", "port": backend.port}]}], rate_limit={"enabled": False})
        cfg["waf"] = waf_config(mode="detect", paranoia=4, inboundThreshold=5, outboundThreshold=4,
                                rules=[setup.name, CRS_RULES], auditLog=audit)
        cfg["limits"] = {"maxHeaderBytes": 65536}
        m = Moatd(cfg, workers=1)
        self.addCleanup(m.stop)
        by_port = {}
        for t in tests:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            by_port[s.getsockname()[1]] = t
            try:
                s.sendall(t["raw"])
                s.shutdown(socket.SHUT_WR)
                t["response"] = s.recv(200)
            except OSError:
                t["response"] = b""
            s.close()
        time.sleep(1.5)
        m.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        matched = {}
        with open(audit) as f:
            for line in f:
                if line.strip():
                    a = json.loads(line)
                    matched[a["client_port"]] = {r["id"] for r in a["rules"]}
        passed, failed, not_judged, refused = 0, [], 0, 0
        for p, t in by_port.items():
            if not t["log_contains"] and not t["no_log_contains"]:
                not_judged += 1
                continue
            ids = matched.get(p, set())
            missing = [i for i in t["expect_ids"] if i not in ids]
            forbidden = [i for i in t["forbid_ids"] if i in ids]
            if not missing and not forbidden:
                passed += 1
                continue
            st = status_of(t["response"]) if t["response"] else None
            why = f"missing {missing} " if missing else ""
            why += f"forbidden {forbidden}" if forbidden else ""
            if p not in matched and st in (400, 413, 414, 431, 501, 505):
                refused += 1
                why += f"(moatd's HTTP parser answered {st} before the WAF)"
            failed.append(f"{t['name']}: {why}")
        judged = passed + len(failed)
        rate = 100.0 * passed / judged
        report = (f"CRS regression through moatd: {passed}/{judged} judged tests pass ({rate:.2f}%), "
                  f"{not_judged} not judged, {refused} of the failures refused by the HTTP parser")
        print("\n" + report, file=sys.stderr)
        for f in sorted(failed):
            print("  " + f, file=sys.stderr)
        # Target from the WAF issue: at least 98.5% (ModSecurity v3.0.9's
        # figure for this half of the tests).
        self.assertGreaterEqual(rate, 98.5, report)


if __name__ == "__main__":
    unittest.main()
