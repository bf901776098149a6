#!/usr/bin/env python3
"""Live config changes under load: Moat's REST API vs HAProxy's runtime API.

For each proxy (one worker/thread on CPU 0, wrk on CPU 1, the same NGINX
backend behind two server entries), wrk runs for DURATION seconds while this
script makes N weight changes, one every 50 ms:
  - Moat: PUT /api/v1/pools/be/backends/127.0.0.1:PORT/weight over the admin
    API (each one a new, persisted config version, published to the workers);
  - HAProxy: "set weight be/s1 N" on its admin stats socket (runtime only:
    not persisted, not versioned).
Reported: round trip per change (p50/p99), wrk's failed requests (non-2xx and
socket errors) and, for Moat, the worst delay between a snapshot's build and
a worker running it (moat_config_switch_lag_max_seconds).

    bench/control_compare.py [--changes 100] [--duration 12] [--rounds 2] [--write] [--json FILE]
"""
import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import l7_compare  # noqa: E402  (free_port, wait_port, run_wrk, write_section, cpu_model, version)

MOATD = l7_compare.MOATD

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
"""

HAPROXY_CFG = """
global
    nbthread 1
    maxconn 4096
    stats socket {sock} level admin
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
    server s1 127.0.0.1:{backend} weight 1
    server s2 127.0.0.1:{backend} weight 1
"""


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def start_moat(tmp, port, backend, admin_port):
    cfg = {
        "workers": 1,
        "listeners": [{"name": "bench", "address": "127.0.0.1", "port": port, "protocol": "http"}],
        # Two entries for the same backend: the weight moves load between them.
        "pools": [{"name": "be", "balance": "round_robin",
                   "backends": [{"address": "127.0.0.1", "port": backend, "weight": 1},
                                {"address": "::ffff:127.0.0.1", "port": backend, "weight": 1}]}],
        "routes": [{"host": "*", "pathPrefix": "/", "pool": "be"}],
        "logging": {"level": "warn", "accessLog": ""},
        "rateLimit": {"enabled": False},
    }
    path = os.path.join(tmp, "moat.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    state = tempfile.mkdtemp(prefix="state-", dir=tmp)
    p = subprocess.Popen(["taskset", "-c", "0", MOATD, "--config", path, "--state-dir", state,
                          "--admin", f"127.0.0.1:{admin_port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    l7_compare.wait_port(port)
    l7_compare.wait_port(admin_port)
    with open(os.path.join(state, "admin.token")) as f:
        token = f.read().strip()
    return p, token


def moat_changes(admin_port, token, backend, n, out):
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    hdr = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    for i in range(n):
        body = json.dumps({"weight": 1 + i % 3})
        t0 = time.perf_counter()
        conn.request("PUT", f"/api/v1/pools/be/backends/127.0.0.1:{backend}/weight", body, hdr)
        r = conn.getresponse()
        r.read()
        out.append((time.perf_counter() - t0) * 1000.0)
        if r.status != 200:
            raise RuntimeError(f"weight change answered {r.status}")
        time.sleep(0.05)
    conn.request("GET", "/metrics", headers=hdr)
    text = conn.getresponse().read().decode()
    m = re.search(r"^moat_config_switch_lag_max_seconds ([\d.]+)", text, re.M)
    return float(m.group(1)) * 1000.0 if m else float("nan")


def haproxy_changes(sock_path, n, out):
    for i in range(n):
        t0 = time.perf_counter()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        s.sendall(f"set weight be/s1 {1 + i % 3}\n".encode())
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
        s.close()
        out.append((time.perf_counter() - t0) * 1000.0)
        time.sleep(0.05)
    return float("nan")


def one_run(name, tmp, backend, changes, duration):
    port = l7_compare.free_port()
    if name == "haproxy":
        sock_path = os.path.join(tmp, "haproxy.sock")
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(sock=sock_path, port=port, backend=backend))
        proc = subprocess.Popen(["taskset", "-c", "0", "haproxy", "-db", "-f", cfg],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        l7_compare.wait_port(port)
        change = lambda out: haproxy_changes(sock_path, changes, out)  # noqa: E731
    else:
        admin_port = l7_compare.free_port()
        proc, token = start_moat(tmp, port, backend, admin_port)
        change = lambda out: moat_changes(admin_port, token, backend, changes, out)  # noqa: E731
    try:
        result = {}
        t = threading.Thread(target=lambda: result.update(
            wrk=l7_compare.run_wrk(port, duration, 32)))
        t.start()
        time.sleep(1.0)
        lat = []
        lag = change(lat)
        t.join()
        total, rps, non2xx, sock_errs = result["wrk"]
        return {"lat": lat, "lag": lag, "requests": total, "rps": rps, "failed": non2xx,
                "sock": sock_errs}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--duration", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    a = ap.parse_args()
    for tool in ("haproxy", "nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: run scripts/install-deps.sh")
    if a.duration < a.changes * 0.06 + 2:
        sys.exit("--duration too short for the changes (one every 50 ms plus their round trips)")
    tmp = tempfile.mkdtemp(prefix="moat-control-bench-")
    backend = l7_compare.free_port()
    ncfg = os.path.join(tmp, "nginx.conf")
    with open(ncfg, "w") as f:
        f.write(NGINX_CONF.format(dir=tmp, port=backend))
    nginx = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", ncfg, "-p", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    l7_compare.wait_port(backend)
    res = {"moat": [], "haproxy": []}
    try:
        for r in range(a.rounds):
            for name in (["moat", "haproxy"] if r % 2 == 0 else ["haproxy", "moat"]):
                res[name].append(one_run(name, tmp, backend, a.changes, a.duration))
                print(name, "round", r + 1, {k: v for k, v in res[name][-1].items() if k != "lat"}, flush=True)
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
    rows = []
    for name in ("moat", "haproxy"):
        lat = [x for run in res[name] for x in run["lat"]]
        failed = sum(run["failed"] for run in res[name])
        sock = "; ".join(run["sock"] for run in res[name] if run["sock"]) or "none"
        reqs = sum(run["requests"] for run in res[name])
        lag = max((run["lag"] for run in res[name]), default=float("nan"))
        rows.append((name, len(lat), statistics.median(lat), pct(lat, 99), reqs, failed, sock, lag))
    lines = ["| proxy | changes | change round trip p50 | p99 | requests during | failed (non-2xx) | socket errors | worst snapshot build-to-use on a worker |",
             "|---|---|---|---|---|---|---|---|"]
    for name, n, p50, p99, reqs, failed, sock, lag in rows:
        lag_s = "n/a (runtime change, nothing published)" if lag != lag else f"{lag:.2f} ms"
        lines.append(f"| {name} | {n} | {p50:.2f} ms | {p99:.2f} ms | {reqs} | {failed} | {sock} | {lag_s} |")
    m, h = rows[0], rows[1]
    lines.append("")
    lines.append(f"Moat / HAProxy change round trip (p50): {m[2] / h[2]:.1f}x. A Moat change is a whole new "
                 "config version: validated, built, published to every worker and fsynced to the state "
                 "directory before the answer; an HAProxy runtime change edits one server in memory and is "
                 "lost on restart.")
    table = "\n".join(lines)
    print(table)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"changes": a.changes, "duration": a.duration, "rounds": a.rounds,
                       "proxies": {name: {"changes": n, "p50_ms": p50, "p99_ms": p99, "requests": reqs,
                                          "failed": failed, "socket_errors": sock,
                                          "switch_lag_max_ms": None if lag != lag else lag}
                                   for name, n, p50, p99, reqs, failed, sock, lag in rows}}, f, indent=1)
    if a.write:
        section = ("## Live config changes under load (issue 7)\n\n"
                   f"`bench/control_compare.py --changes {a.changes} --duration {a.duration} --rounds {a.rounds} --write`"
                   f" on {l7_compare.cpu_model()}: one proxy worker on CPU 0; wrk (32 connections) and the NGINX "
                   f"backend on CPU 1; {l7_compare.version(['haproxy', '-v'])}. "
                   f"{a.changes} weight changes per run, one every 50 ms, during the wrk run.\n\n" + table + "\n")
        l7_compare.write_section("## Live config changes under load", section)


if __name__ == "__main__":
    main()
