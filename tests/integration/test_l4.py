#!/usr/bin/env python3
"""L4 load balancing end to end, on real packets (issue: L4 on DPDK, with the
io_uring proxy as its software twin).

DPDK engine: the test builds a small network of namespaces joined by a
bridge -- a client, two backends -- and one veth end left in the test's own
namespace, which moatd opens with DPDK's net_af_packet virtual device
(--no-huge). The client resolves the VIP by ARP (moatd answers), connects,
and moatd forwards its packets to a backend by Maglev: IP-in-IP, GUE or L2
DSR. Backends decapsulate (tests/integration/l4_decap.py: this kernel has
no ipip module), hold the VIPs on their loopback and answer the client
directly. Asserts: fetches through each mode succeed; a connection's
requests all reach one backend; removing a backend moves only its flows
(the others keep working, its own are reset); a denied prefix is dropped and
counted.

io_uring twin: the same scenario on loopback with l4.engine "uring"
(forwarding "proxy").

Only addresses inside namespaces the test made (10.99.0.0/24) and loopback
are used. Skips with a message where namespaces cannot be made.
"""
import json
import os
import shutil
import subprocess
import sys
import time
import unittest
import urllib.request

from test_control import Api, poll
from test_proxy import NO_RATE_LIMIT, Backend, Moatd, free_port, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable


def sh(*args, check=True):
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def can_make_namespaces():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2"
    name = f"mlprobe{os.getpid()}"
    r = sh("ip", "netns", "add", name, check=False)
    if r.returncode != 0:
        return "cannot create network namespaces: " + r.stderr.strip()
    sh("ip", "netns", "del", name, check=False)
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


class Lab:
    """Namespaces: <p>sw (bridge), <p>cl client 10.99.0.2, <p>b1 / <p>b2
    backends 10.99.0.11 / .12; veth lb<tag> stays here for DPDK."""

    VIPS = ("10.99.0.100", "10.99.0.101", "10.99.0.102")

    def __init__(self):
        tag = str(os.getpid() % 100000)
        self.p = f"ml{tag}"
        self.sw, self.cl, self.b1, self.b2 = (self.p + s for s in ("sw", "cl", "b1", "b2"))
        self.lb = f"lb{tag}"
        self.procs = []
        self.hosts = {self.cl: "10.99.0.2", self.b1: "10.99.0.11", self.b2: "10.99.0.12"}
        try:
            self._build()
        except Exception:
            self.close()
            raise

    def ns(self, ns, *args, check=True):
        return sh("ip", "netns", "exec", ns, *args, check=check)

    def _quiet(self, ns, ifname):
        # veth offloads would hand af_packet unfinished checksums and 64 KB
        # segments; a NIC-like path needs plain frames.
        args = ["ethtool", "-K", ifname, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off"]
        if ns is None:
            sh(*args, check=False)
        else:
            self.ns(ns, *args, check=False)

    def _build(self):
        for ns in (self.sw, self.cl, self.b1, self.b2):
            sh("ip", "netns", "add", ns)
            self.ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", check=False)
            self.ns(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1", check=False)
            self.ns(ns, "ip", "link", "set", "lo", "up")
        self.ns(self.sw, "ip", "link", "add", "br0", "type", "bridge")
        self.ns(self.sw, "ip", "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(self.hosts.items()):
            a, b = f"{self.p}h{i}", f"{self.p}p{i}"
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", ns)
            sh("ip", "link", "set", b, "netns", self.sw)
            self.ns(ns, "ip", "link", "set", a, "name", "eth0")
            self.ns(ns, "ip", "addr", "add", addr + "/24", "dev", "eth0")
            self.ns(ns, "ip", "link", "set", "eth0", "up")
            self._quiet(ns, "eth0")
            self.ns(self.sw, "ip", "link", "set", b, "master", "br0")
            self.ns(self.sw, "ip", "link", "set", b, "up")
            self._quiet(self.sw, b)
        # The balancer's port: one veth end here (DPDK opens it), one on the bridge.
        sh("ip", "link", "add", self.lb, "type", "veth", "peer", "name", self.lb + "p")
        sh("ip", "link", "set", self.lb + "p", "netns", self.sw)
        self.ns(self.sw, "ip", "link", "set", self.lb + "p", "master", "br0")
        self.ns(self.sw, "ip", "link", "set", self.lb + "p", "up")
        self._quiet(self.sw, self.lb + "p")
        sh("sysctl", "-qw", f"net.ipv6.conf.{self.lb}.disable_ipv6=1", check=False)
        sh("ip", "link", "set", self.lb, "up")
        self._quiet(None, self.lb)
        for name, ns in (("b1", self.b1), ("b2", self.b2)):
            # The VIPs live on the backend's loopback and are never announced
            # by ARP (only the balancer answers for them).
            for vip in self.VIPS:
                self.ns(ns, "ip", "addr", "add", vip + "/32", "dev", "lo")
            self.ns(ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
            self.ns(ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2")
            decap = subprocess.Popen(["ip", "netns", "exec", ns, PY, os.path.join(HERE, "l4_decap.py")],
                                     stdout=subprocess.PIPE, text=True)
            self.procs.append(decap)
            if decap.stdout.readline().strip() != "ready":
                raise RuntimeError(f"decapsulator in {ns} did not start")
            web = subprocess.Popen(["ip", "netns", "exec", ns, PY, os.path.join(HERE, "backend.py"),
                                    "--address", "0.0.0.0", "--port", "80", "--name", name])
            self.procs.append(web)
        for ns in (self.b1, self.b2):
            if not poll(lambda ns=ns: "LISTEN" in self.ns(ns, "ss", "-ltn", "sport", "= :80").stdout, timeout=10):
                raise RuntimeError(f"backend in {ns} never listened on :80")

    def client(self, *args):
        r = self.ns(self.cl, PY, os.path.join(HERE, "l4_client.py"), *args)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def hold(self, vip, port, k):
        return subprocess.Popen(["ip", "netns", "exec", self.cl, PY, os.path.join(HERE, "l4_client.py"),
                                 "hold", vip, str(port), str(k)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        for ns in (self.sw, self.cl, self.b1, self.b2):
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.lb, check=False)


def metrics(api):
    out = {}
    for line in api.get("/metrics").body.decode().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = int(float(v))
    return out


def expect_only_removed_flows_moved(test, holder, first, kept):
    """One more request on each held connection after a backend was removed:
    connections on `kept` still reach it, the removed backend's are reset."""
    holder.stdin.write("\n")
    holder.stdin.flush()
    after = json.loads(holder.stdout.readline())
    for before, now in zip(first, after):
        if before == kept:
            test.assertEqual(now, kept, f"a {kept} flow moved: {first} -> {after}")
        else:
            test.assertTrue(now.startswith("error:"), f"a removed backend's flow was not reset: {first} -> {after}")


def l4_pool(name, ips):
    return {"name": name, "balance": "maglev", "backends": [{"address": ip, "port": 80} for ip in ips]}


class DpdkL4Test(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        why = can_make_namespaces()
        if why:
            raise unittest.SkipTest("L4 DPDK end-to-end test skipped: " + why)
        if (os.cpu_count() or 1) < 2:
            raise unittest.SkipTest("L4 DPDK end-to-end test skipped: needs 2 CPUs (main lcore + worker lcore)")
        cls.lab = Lab()
        cls.dummy = Backend("l7")
        port = free_port()
        cls.cfg = {
            "listeners": [{"address": "127.0.0.1", "port": port}],
            "pools": [
                {"name": "l7", "backends": [{"address": "127.0.0.1", "port": cls.dummy.port}]},
                l4_pool("ipip", ["10.99.0.11", "10.99.0.12"]),
                l4_pool("gue", ["10.99.0.11", "10.99.0.12"]),
                l4_pool("dsr", ["10.99.0.11", "10.99.0.12"]),
            ],
            "routes": [{"pathPrefix": "/", "pool": "l7"}],
            "rateLimit": NO_RATE_LIMIT,
            "l4": {
                "engine": "dpdk",
                "localIpv4": "10.99.0.1",
                "services": [
                    {"address": "10.99.0.100", "port": 80, "pool": "ipip", "forwarding": "ipip"},
                    {"address": "10.99.0.101", "port": 80, "pool": "gue", "forwarding": "gue", "guePort": 6080},
                    {"address": "10.99.0.102", "port": 80, "pool": "dsr", "forwarding": "dsr"},
                ],
                "dpdk": {"lcores": [1], "mainLcore": 0, "noHuge": True, "memoryMb": 256,
                         "mbufsPerLcore": 2048, "rxDescriptors": 256, "txDescriptors": 256,
                         "port": f"net_af_packet0,iface={cls.lab.lb}",
                         "exceptionTap": f"mt{os.getpid() % 100000}"},
            },
        }
        try:
            cls.m = Moatd(cls.cfg, workers=1, start_timeout=120)
            wait_port(cls.m.admin_port, proc=cls.m.proc)
            poll(lambda: os.path.exists(cls.m.token_file), timeout=5)
            cls.api = Api(cls.m)
        except Exception:
            cls.lab.close()
            cls.dummy.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        log = cls.m.log()
        rc = cls.m.stop()
        cls.lab.close()
        cls.dummy.stop()
        if rc != 0:
            raise AssertionError(f"moatd exited {rc}:\n{log[-4000:]}")

    def fetch(self, vip, n):
        # The first SYN can race ARP resolution of the backend (dropped and
        # counted, then retransmitted by the client after 1 s).
        return self.lab.client("fetch", vip, "80", str(n))

    def test_1_each_forwarding_mode_serves_fetches(self):
        for vip in Lab.VIPS:
            got = self.fetch(vip, 20)
            self.assertTrue(all(g in ("b1", "b2") for g in got), f"{vip}: {got}\n{self.m.log()[-3000:]}")
            self.assertEqual(set(got), {"b1", "b2"}, f"{vip}: Maglev should use both backends: {got}")
        # Lcores publish their counters every 100 ms: wait for the last ones.
        wanted = ("moat_l4_encap_ipip_total", "moat_l4_encap_gue_total", "moat_l4_dsr_forwarded_total",
                  "moat_l4_arp_replies_total",        # the client resolved the VIPs through moatd
                  "moat_l4_arp_requests_sent_total")  # moatd resolved the backends by ARP
        if not poll(lambda: all(metrics(self.api)[k] > 0 for k in wanted), timeout=5):
            m = metrics(self.api)
            self.fail("counters still 0: " + str({k: m[k] for k in wanted}))
        st = self.api.ok("GET", "/api/v1/status")["l4"]
        self.assertEqual(st["engine"], "dpdk")
        self.assertEqual(st["port"]["driver"], "net_af_packet")
        self.assertTrue(st["port"]["linkUp"])

    def test_2_connection_sticks_and_removal_moves_only_its_flows(self):
        h = self.lab.hold("10.99.0.100", 80, 16)
        try:
            first = json.loads(h.stdout.readline())
            self.assertTrue(all(g in ("b1", "b2") for g in first), first)
            self.assertEqual(set(first), {"b1", "b2"}, first)
            h.stdin.write("\n")
            h.stdin.flush()
            again = json.loads(h.stdout.readline())
            self.assertEqual(again, first, "each connection stays on its backend")
            # Remove b2 from the ipip pool.
            r = self.api.call("DELETE", "/api/v1/pools/ipip/backends/10.99.0.12:80")
            self.assertEqual(r.status, 200, r)
            expect_only_removed_flows_moved(self, h, first, kept="b1")
        finally:
            h.stdin.close()
            h.wait(timeout=20)
        got = self.fetch("10.99.0.100", 10)
        self.assertEqual(set(got), {"b1"}, got)
        self.assertTrue(poll(lambda: metrics(self.api)["moat_l4_backend_down_resets_total"] > 0, timeout=5))

    def test_3_denied_prefix_is_dropped_and_counted(self):
        before = metrics(self.api)["moat_l4_denied_cidr_total"]
        doc = self.api.config()
        doc["l4"]["denyCidrs"] = ["10.99.0.2/32"]
        self.api.ok("PUT", "/api/v1/config", doc)
        got = self.lab.client("fetch", "10.99.0.102", "80", "1")
        self.assertTrue(got[0].startswith("error:"), got)
        self.assertTrue(poll(lambda: metrics(self.api)["moat_l4_denied_cidr_total"] > before, timeout=5))
        doc["l4"]["denyCidrs"] = []
        self.api.ok("PUT", "/api/v1/config", doc)
        self.assertEqual(self.fetch("10.99.0.102", 2)[0] in ("b1", "b2"), True)

    def test_4_other_traffic_goes_to_the_kernel(self):
        # Traffic for an address that is not a VIP (here the ARP requests the
        # client broadcasts for 10.99.0.250) goes to the exception TAP, the
        # host's stack, instead of being dropped by the processor.
        before = metrics(self.api)["moat_l4_to_kernel_total"]
        self.lab.ns(self.lab.cl, PY, "-c",
                    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    "s.sendto(b'x', ('10.99.0.250', 9))", check=False)
        self.assertTrue(poll(lambda: metrics(self.api)["moat_l4_to_kernel_total"] > before, timeout=5))
        self.assertGreater(metrics(self.api)["moat_dpdk_to_kernel_total"], 0)


class UringL4Test(unittest.TestCase):
    """The software twin: l4.engine uring, forwarding proxy, on loopback."""

    @classmethod
    def setUpClass(cls):
        cls.backends = [Backend(f"u{i}") for i in range(2)]
        cls.vip_port = free_port()
        port = free_port()
        cls.cfg = {
            "listeners": [{"address": "127.0.0.1", "port": port}],
            "pools": [{"name": "l7", "backends": [{"address": "127.0.0.1", "port": cls.backends[0].port}]},
                      {"name": "l4", "balance": "maglev",
                       "backends": [{"address": "127.0.0.1", "port": b.port} for b in cls.backends]}],
            "routes": [{"pathPrefix": "/", "pool": "l7"}],
            "rateLimit": NO_RATE_LIMIT,
            "l4": {"engine": "uring",
                   "services": [{"address": "127.0.0.1", "port": cls.vip_port, "pool": "l4", "forwarding": "proxy"}]},
        }
        cls.m = Moatd(cls.cfg, workers=2)
        wait_port(cls.m.admin_port, proc=cls.m.proc)
        wait_port(cls.vip_port, proc=cls.m.proc)
        poll(lambda: os.path.exists(cls.m.token_file), timeout=5)
        cls.api = Api(cls.m)

    @classmethod
    def tearDownClass(cls):
        log = cls.m.log()
        rc = cls.m.stop()
        for b in cls.backends:
            b.stop()
        if rc != 0:
            raise AssertionError(f"moatd exited {rc}:\n{log[-4000:]}")

    def run_client(self, *args, stdin=None):
        return subprocess.Popen([PY, os.path.join(HERE, "l4_client.py"), *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def test_1_fetches_spread_and_stick(self):
        p = self.run_client("fetch", "127.0.0.1", str(self.vip_port), "30")
        got = json.loads(p.communicate(timeout=60)[0])
        self.assertEqual(set(got), {"u0", "u1"}, got)
        h = self.run_client("hold", "127.0.0.1", str(self.vip_port), "12")
        try:
            first = json.loads(h.stdout.readline())
            self.assertEqual(set(first), {"u0", "u1"}, first)
            doc = self.api.config()
            doc["pools"][1]["backends"] = [b for b in doc["pools"][1]["backends"]
                                           if b["port"] == self.backends[0].port]
            self.api.ok("PUT", "/api/v1/config", doc)
            expect_only_removed_flows_moved(self, h, first, kept="u0")
        finally:
            h.stdin.close()
            h.wait(timeout=20)
        self.assertTrue(poll(lambda: metrics(self.api)["moat_l4_sock_tcp_reset_backend_down_total"] > 0, timeout=5))
        # Restore both backends for the next test.
        doc = self.api.config()
        doc["pools"][1]["backends"] = [{"address": "127.0.0.1", "port": b.port} for b in self.backends]
        self.api.ok("PUT", "/api/v1/config", doc)

    def test_2_denied_prefix_is_refused_and_counted(self):
        doc = self.api.config()
        doc["l4"]["denyCidrs"] = ["127.0.0.1/32"]
        self.api.ok("PUT", "/api/v1/config", doc)
        p = self.run_client("fetch", "127.0.0.1", str(self.vip_port), "1")
        got = json.loads(p.communicate(timeout=60)[0])
        self.assertTrue(got[0].startswith("error:"), got)
        self.assertTrue(poll(lambda: metrics(self.api)["moat_l4_sock_tcp_denied_cidr_total"] > 0, timeout=5))
        doc["l4"]["denyCidrs"] = []
        self.api.ok("PUT", "/api/v1/config", doc)


if __name__ == "__main__":
    unittest.main()
