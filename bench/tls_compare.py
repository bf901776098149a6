#!/usr/bin/env python3
"""TLS benchmark: Moat vs HAProxy, same certificate, same machine, side by side.

Each proxy runs one worker/thread pinned to CPU 0 in front of the same NGINX
backend as bench/l7_compare.py; the load generators run on CPU 1 (with the
backend). Workloads:

  full-ecdsa   full TLS 1.3 handshakes, ECDSA P-256 certificate, X25519
  full-rsa     full TLS 1.3 handshakes, RSA-2048 certificate, X25519
  resumed      TLS 1.3 resumptions (session ticket, ECDSA listener) + one
               HTTP/1.0 GET each: `openssl s_time -reuse` only receives the
               ticket when it reads a response (-www)
  keepalive    HTTPS keep-alive GETs with wrk (one TLS handshake per connection)

The handshake workloads use `openssl s_time` (--clients processes in
parallel; each is sequential: connect, handshake, close). Reported per
workload: operations/s over the run's wall clock, proxy CPU microseconds
per operation and operations per proxy CPU-second (utime+stime of the
proxy's processes over the run: the per-core figure), as medians of
interleaved rounds, with Moat/HAProxy ratios. On a 2-CPU machine the
client side is usually the bottleneck (an ECDSA verify costs the client
more than the signature costs the server), so compare per-core figures.

Usage: bench/tls_compare.py [--rounds 3] [--duration 6] [--clients 4]
                            [--connections 64] [--only haproxy,moat] [--write] [--json FILE]
"""
import argparse
import json
import os
import platform
import re
import shutil
import ssl
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from l7_compare import (MOATD, TICK, cpu_model, cpu_ticks, free_port, render, version,  # noqa: E402
                        wait_port, write_section)
import tls_pki  # noqa: E402

PROXIES = ("haproxy", "moat")
WORKLOADS = ("full-ecdsa", "full-rsa", "resumed", "keepalive")
LABELS = {
    "full-ecdsa": "full handshakes/s, ECDSA P-256 + X25519",
    "full-rsa": "full handshakes/s, RSA-2048 + X25519",
    "resumed": "resumed handshakes/s (+1 GET each)",
    "keepalive": "HTTPS keep-alive requests/s (wrk)",
}


def haproxy_config(path, port, backend_port, pem):
    with open(path, "w") as f:
        f.write(f"""# HAProxy terminating TLS in the TLS benchmark: one thread, TLS 1.3 only,
# X25519 then P-256, ALPN http/1.1, HTTP/1.1 keep-alive to the backend.
global
    nbthread 1
    maxconn 4096
    tune.bufsize 16384

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always

frontend fe
    bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1 ssl-min-ver TLSv1.3 curves X25519:P-256
    default_backend be

backend be
    balance roundrobin
    server s1 127.0.0.1:{backend_port}
""")
    return path


def moat_config(path, port, backend_port, cert, key):
    cfg = {
        "workers": 1,
        "listeners": [{"name": "bench", "address": "127.0.0.1", "port": port, "protocol": "https",
                       "tls": {"certificates": [{"cert": cert, "key": key}], "minVersion": "1.3",
                               "groups": "X25519:P-256", "alpn": ["http/1.1"]}}],
        "pools": [{"name": "be", "balance": "round_robin",
                   "backends": [{"address": "127.0.0.1", "port": backend_port}]}],
        "routes": [{"host": "*", "pathPrefix": "/", "pool": "be"}],
        "logging": {"level": "warn", "accessLog": ""},
        "rateLimit": {"enabled": False},
        "waf": {"enabled": False},
    }
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def start_proxy(name, tmp, port, backend_port, pki, key_type):
    if name == "haproxy":
        cfg = haproxy_config(os.path.join(tmp, f"haproxy-{key_type}.cfg"), port, backend_port,
                             pki[key_type + "_combined"])
        cmd = ["taskset", "-c", "0", "haproxy", "-db", "-f", cfg]
    else:
        cfg = moat_config(os.path.join(tmp, f"moat-{key_type}.json"), port, backend_port,
                          pki[key_type + "_cert"], pki[key_type + "_key"])
        cmd = ["taskset", "-c", "0", MOATD, "--config", cfg, "--admin", "off",
               "--state-dir", os.path.join(tmp, "state-" + key_type)]
    log = open(os.path.join(tmp, f"{name}-{key_type}.log"), "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_port(port)
    except RuntimeError:
        p.kill()
        p.wait()
        raise RuntimeError(f"{name} did not start; see {log.name}")
    return p


def stop_proxy(p):
    p.terminate()
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def preflight(name, port, key_type):
    """One s_client handshake and one HTTP/1.0 GET (what s_time -www sends):
    the proxy must speak TLS 1.3 with X25519 and the intended key, and
    forward the request. Returns a short description."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-noservername"],
                       input=b"", capture_output=True, timeout=30)
    out = r.stdout.decode(errors="replace")
    proto = re.search(r"^New, (\S+), Cipher is (\S+)", out, re.M)
    temp = re.search(r"Server Temp Key: (\S+?),", out)
    sig = re.search(r"Peer signature type: (\S+)", out)
    if not proto or proto.group(2) == "(NONE)":
        raise RuntimeError(f"{name}: TLS handshake failed:\n{out}\n{r.stderr.decode(errors='replace')}")
    desc = f"{proto.group(1)} {proto.group(2)} {temp.group(1) if temp else '?'} {sig.group(1) if sig else '?'}"
    want_sig = "ECDSA" if key_type == "ecdsa" else "RSA-PSS"
    if proto.group(1) != "TLSv1.3" or not temp or temp.group(1) != "X25519" or not sig or sig.group(1) != want_sig:
        raise RuntimeError(f"{name}: unexpected handshake {desc} (want TLSv1.3 X25519 {want_sig})")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
    if not re.match(rb"HTTP/1\.[01] 200", data):
        raise RuntimeError(f"{name}: HTTP/1.0 GET over TLS did not get a 200: {data[:200]!r}")
    return desc


def run_s_time(port, mode, duration, clients):
    """`clients` s_time processes in parallel on CPU 1. Returns (connections,
    resumed, wall seconds)."""
    cmd = ["taskset", "-c", "1", "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
           "-time", str(duration)]
    cmd += ["-new"] if mode == "new" else ["-reuse", "-www", "/"]
    t0 = time.time()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(clients)]
    outs = [p.communicate(timeout=duration + 60) for p in procs]
    wall = time.time() - t0
    total = resumed = 0
    for p, (out, err) in zip(procs, outs):
        text = out.decode(errors="replace")
        m = re.search(r"(\d+) connections in [\d.]+s;", text)
        if p.returncode != 0 or not m:
            raise RuntimeError(f"s_time failed ({p.returncode}):\n{text[-2000:]}\n{err.decode(errors='replace')}")
        total += int(m.group(1))
        if mode == "reuse":
            # One progress character per connection: 'r' resumed, '*' full.
            resumed += sum(line.count("r") for line in text.splitlines() if set(line) <= {"r", "*"})
    return total, resumed, wall


def run_wrk(port, duration, conns):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", f"https://127.0.0.1:{port}/"]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    wall = time.time() - t0
    m = re.search(r"(\d+) requests in", out)
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_errs = re.search(r"Socket errors: (.*)", out)
    if not m:
        raise RuntimeError("could not parse wrk output:\n" + out)
    return int(m.group(1)), int(errs.group(1)) if errs else 0, sock_errs.group(1) if sock_errs else "", wall


def measure(p, fn):
    t0 = cpu_ticks(p.pid)
    result = fn()
    t1 = cpu_ticks(p.pid)
    return result, (t1 - t0) / TICK


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6, help="seconds per workload run")
    ap.add_argument("--clients", type=int, default=4, help="parallel s_time processes")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--only", default=",".join(PROXIES), help="comma list of: " + ", ".join(PROXIES))
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write the medians as JSON")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n]
    if any(n not in PROXIES for n in names):
        sys.exit(f"--only takes {', '.join(PROXIES)}")
    for tool in ["nginx", "wrk", "taskset", "openssl"] + (["haproxy"] if "haproxy" in names else []):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: run scripts/install-deps.sh")
    if "moat" in names and not os.path.exists(MOATD):
        sys.exit(f"{MOATD} not built: cmake --preset release && cmake --build --preset release")
    if a.write and names != list(PROXIES):
        sys.exit("--write needs both proxies")

    tmp = tempfile.mkdtemp(prefix="moat-tls-bench-")
    pki = tls_pki.generate(os.path.join(tmp, "pki"))
    backend_port = free_port()
    bcfg = render("backend-nginx.conf.in", os.path.join(tmp, "backend.conf"),
                  BACKEND_PORT=backend_port, DIR=tmp)
    backend = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", bcfg, "-p", tmp],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(backend_port)

    # results[proxy][workload] = list of (ops/s, cpu us/op, ops per cpu-s)
    results = {n: {w: [] for w in WORKLOADS} for n in names}
    notes = {n: {} for n in names}
    resumed_frac = {n: [] for n in names}

    def record(name, workload, ops, wall, cpu_s, r, extra=""):
        row = (ops / wall, cpu_s * 1e6 / ops if ops else float("nan"),
               ops / cpu_s if cpu_s > 0 else float("nan"))
        results[name][workload].append(row)
        print(f"round {r + 1} {name:8s} {workload:10s} {row[0]:9.0f} ops/s  {row[1]:8.1f} us CPU/op  "
              f"{row[2]:9.0f} ops per CPU-s {extra}", flush=True)

    try:
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                for key_type in ("ecdsa", "rsa"):
                    port = free_port()
                    p = start_proxy(name, tmp, port, backend_port, pki, key_type)
                    try:
                        notes[name][key_type] = preflight(name, port, key_type)
                        (n, _, wall), cpu_s = measure(p, lambda: run_s_time(port, "new", a.duration, a.clients))
                        record(name, "full-" + key_type, n, wall, cpu_s, r)
                        if key_type != "ecdsa":
                            continue
                        (n, reused, wall), cpu_s = measure(
                            p, lambda: run_s_time(port, "reuse", a.duration, a.clients))
                        resumed_frac[name].append(reused / n if n else 0.0)
                        record(name, "resumed", n, wall, cpu_s, r, f"({reused}/{n} resumed)")
                        run_wrk(port, 1, a.connections)  # warm-up: handshakes done, pools filled
                        (n, non2xx, sockerr, wall), cpu_s = measure(
                            p, lambda: run_wrk(port, a.duration, a.connections))
                        record(name, "keepalive", n, wall, cpu_s, r, f"non-2xx {non2xx} {sockerr}")
                    finally:
                        stop_proxy(p)
    finally:
        backend.terminate()
        backend.wait(timeout=15)

    med = {n: {w: tuple(statistics.median(x[i] for x in results[n][w]) for i in range(3))
               for w in WORKLOADS} for n in names}
    lines = []
    if len(names) == 2:
        lines.append("| workload | HAProxy ops/s | Moat ops/s | HAProxy CPU µs/op | Moat CPU µs/op | "
                     "HAProxy ops per CPU-s | Moat ops per CPU-s | Moat/HAProxy per core | Moat/HAProxy ops/s |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for w in WORKLOADS:
            h, m = med["haproxy"][w], med["moat"][w]
            lines.append(f"| {LABELS[w]} | {h[0]:.0f} | {m[0]:.0f} | {h[1]:.1f} | {m[1]:.1f} | "
                         f"{h[2]:.0f} | {m[2]:.0f} | {m[2] / h[2]:.2f}x | {m[0] / h[0]:.2f}x |")
    else:
        lines.append("| proxy | workload | ops/s | CPU µs/op | ops per CPU-s |")
        lines.append("|---|---|---:|---:|---:|")
        for n in names:
            for w in WORKLOADS:
                ops, us, pc = med[n][w]
                lines.append(f"| {n} | {LABELS[w]} | {ops:.0f} | {us:.1f} | {pc:.0f} |")
    lines.append("")
    for n in names:
        frac = statistics.median(resumed_frac[n]) if resumed_frac[n] else float("nan")
        lines.append(f"{n}: handshakes seen: ECDSA `{notes[n].get('ecdsa', '?')}`, RSA `{notes[n].get('rsa', '?')}`; "
                     f"share of resumed handshakes in the resumption runs {frac * 100:.1f}% (s_time makes "
                     f"its first, full handshake before the timed loop).")
    table = "\n".join(lines)
    print(table)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rounds": a.rounds, "duration": a.duration, "clients": a.clients,
                       "connections": a.connections, "names": names, "workloads": list(WORKLOADS),
                       "labels": LABELS,
                       "median": {n: {w: {"ops_s": med[n][w][0], "cpu_us_per_op": med[n][w][1],
                                          "ops_per_cpu_s": med[n][w][2]} for w in WORKLOADS} for n in names},
                       "handshakes": notes}, f, indent=1)

    if a.write:
        cpu = cpu_model()
        section = f"""## TLS: Moat vs HAProxy

Command: `bench/tls_compare.py --rounds {a.rounds} --duration {a.duration} --clients {a.clients} --connections {a.connections} --write`
(run on {time.strftime('%Y-%m-%d')}; medians of {a.rounds} interleaved rounds).

Machine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}.
Versions: {version(['haproxy', '-v'])}; {version(['openssl', 'version'])}; {version(['wrk', '--version'])}.

Setup: each proxy runs one worker/thread pinned to CPU 0 (`taskset -c 0`), TLS 1.3 only, groups
X25519 then P-256, ALPN http/1.1, session tickets on (both defaults), logging off, in front of the
NGINX backend of the L7 benchmark; both load the same certificate and key (from
`tests/integration/tls_pki.py`). The clients run on CPU 1 with the backend: {a.clients} parallel
`openssl s_time` processes for handshakes (no SNI, no certificate verification), `wrk -t1
-c{a.connections}` for keep-alive. "ops per CPU-second" divides the operations by the proxy's own
utime+stime over the run and is the per-core figure to compare; ops/s is bounded by the client CPU
on this machine (the client's ECDSA verify and key share cost about what the server's signature
does). Limits of `s_time`: each process is sequential (connect, handshake, close, with no
close_notify), it cannot send SNI or choose groups, and with TLS 1.3 it only resumes when it reads a
response (`-reuse -www /`, an HTTP/1.0 GET per connection, answered by the backend), because the
session ticket arrives after the handshake; the resumed row therefore includes one proxied request
per handshake. Full-handshake runs do not read, so the server's tickets are written to a closing
socket by both proxies alike.

{table}
"""
        write_section("## TLS: Moat vs HAProxy", section)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
