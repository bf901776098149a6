#!/usr/bin/env python3
"""L7 HTTP/1.1 keep-alive benchmark: Moat vs HAProxy vs NGINX, side by side.

Each proxy runs with one worker pinned to CPU 0 in front of the same NGINX
backend; wrk (one thread, pinned to CPU 1 with the backend) drives the same
load at each in turn, for several interleaved rounds. Reports requests/s,
proxy CPU microseconds per request (utime+stime of the proxy's processes
over the measured interval) and requests per proxy-CPU-second ("per core"),
as medians, with ratios to HAProxy. Writes a section into docs/BENCHMARKS.md
when --write is given.

Usage: bench/l7_compare.py [--rounds 3] [--duration 10] [--connections 64] [--write] [--json FILE]
"""
import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MOATD = os.path.join(ROOT, "build", "release", "apps", "moatd")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def render(template, out, **kw):
    with open(os.path.join(HERE, "peers", template)) as f:
        text = f.read()
    for k, v in kw.items():
        text = text.replace("@" + k + "@", str(v))
    with open(out, "w") as f:
        f.write(text)
    return out


def tree_pids(pid):
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        for line in out.split():
            pids += tree_pids(int(line))
    except OSError:
        pass
    return pids


def cpu_ticks(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def run_wrk(port, duration, conns):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s",
           f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    m = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_errs = re.search(r"Socket errors: (.*)", out)
    if not m or not rps:
        raise RuntimeError("could not parse wrk output:\n" + out)
    return int(m.group(1)), float(rps.group(1)), int(errs.group(1)) if errs else 0, \
        sock_errs.group(1) if sock_errs else ""


WAF_CACHE = os.path.join(tempfile.gettempdir(), "moat-bench-waf-cache")


def start_proxy(name, tmp, port, backend_port):
    if name == "haproxy":
        cfg = render("haproxy.cfg.in", os.path.join(tmp, "haproxy.cfg"), PORT=port,
                     BACKEND_PORT=backend_port)
        cmd = ["taskset", "-c", "0", "haproxy", "-db", "-f", cfg]
    elif name == "nginx":
        cfg = render("nginx.conf.in", os.path.join(tmp, "nginx.conf"), PORT=port,
                     BACKEND_PORT=backend_port, DIR=tmp)
        cmd = ["taskset", "-c", "0", "nginx", "-c", cfg, "-p", tmp]
    else:
        # "moat" runs without rate limiting; "moat-rl" with the default
        # per-IP token-bucket rule at a limit wrk cannot reach, so every
        # request pays the full check (hash, set lock, GCRA) and passes.
        rl = ('{ "rules": [ { "name": "default", "limit": 1000000000, "periodS": 300 } ] }'
              if name == "moat-rl" else '{ "enabled": false }')
        # "moat-waf": the OWASP CRS at paranoia level 1, blocking mode, on
        # wrk's benign GET (rate limiting off, as for "moat").
        waf = ('{ "enabled": true, "paranoia": 1, "cacheDir": "%s" }' % WAF_CACHE
               if name == "moat-waf" else '{ "enabled": false }')
        cfg = render("moat.json.in", os.path.join(tmp, name + ".json"), PORT=port,
                     BACKEND_PORT=backend_port, RATE_LIMIT=rl, WAF=waf)
        cmd = ["taskset", "-c", "0", MOATD, "--config", cfg, "--admin", "off",
               "--state-dir", os.path.join(tmp, "state-" + name)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        return "unknown"


def write_section(marker, section):
    """Replaces the docs/BENCHMARKS.md section starting with `marker` (up to
    the next "## " heading) by `section`, or appends it."""
    path = os.path.join(ROOT, "docs", "BENCHMARKS.md")
    head = ("# Moat benchmarks\n\nEvery figure here was produced by the command shown beside it, with the "
            "peers measured in the same run. Machines are shared and noisy: compare ratios, not absolute "
            "numbers.\n\n")
    body = ""
    if os.path.exists(path):
        with open(path) as f:
            body = f.read()
    if not body.startswith("# Moat benchmarks"):
        body = head
    if marker in body:
        start = body.index(marker)
        nxt = body.find("\n## ", start + 1)
        body = body[:start] + section + ("\n" + body[nxt + 1:] if nxt != -1 else "")
    else:
        body = body.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(body)
    print(f"wrote {path}")


def version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write the medians and every round as JSON")
    a = ap.parse_args()
    for tool in ("haproxy", "nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: run scripts/install-deps.sh")
    if not os.path.exists(MOATD):
        sys.exit(f"{MOATD} not built: cmake --preset release && cmake --build --preset release")

    tmp = tempfile.mkdtemp(prefix="moat-bench-")
    backend_port = free_port()
    bcfg = render("backend-nginx.conf.in", os.path.join(tmp, "backend.conf"),
                  BACKEND_PORT=backend_port, DIR=tmp)
    backend = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", bcfg, "-p", tmp],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(backend_port)
    names = ["haproxy", "nginx", "moat", "moat-rl"]
    if os.path.isdir("/usr/share/modsecurity-crs/rules"):
        names.append("moat-waf")
        # Compile the CRS once into the cache so moatd starts in ~0.1 s.
        subprocess.run([os.path.join(os.path.dirname(MOATD), "moat-waf"), "--rules",
                        "/usr/share/modsecurity-crs/rules", "--cache", WAF_CACHE],
                       capture_output=True, timeout=600)
    results = {n: [] for n in names}
    try:
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                port = free_port()
                p = start_proxy(name, tmp, port, backend_port)
                try:
                    run_wrk(port, 2, a.connections)  # warm-up
                    t0 = cpu_ticks(p.pid)
                    n, rps, non2xx, sockerr = run_wrk(port, a.duration, a.connections)
                    t1 = cpu_ticks(p.pid)
                finally:
                    p.terminate()
                    try:
                        p.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        p.kill()
                cpu_s = (t1 - t0) / TICK
                us_per_req = cpu_s * 1e6 / n if n else float("nan")
                per_core = n / cpu_s if cpu_s > 0 else float("nan")
                results[name].append((rps, us_per_req, per_core, non2xx, sockerr))
                print(f"round {r + 1} {name:8s} {rps:10.0f} req/s  {us_per_req:6.2f} us CPU/req  "
                      f"{per_core:10.0f} req per CPU-s  non-2xx {non2xx} {sockerr}", flush=True)
    finally:
        backend.terminate()
        backend.wait(timeout=15)

    med = {n: tuple(statistics.median(x[i] for x in results[n]) for i in range(3)) for n in names}
    base = med["haproxy"]
    lines = []
    lines.append("| proxy | req/s | proxy CPU µs/req | req per proxy CPU-second | req/s vs HAProxy | per-core vs HAProxy |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for n in names:
        rps, us, pc = med[n]
        lines.append(f"| {n} | {rps:.0f} | {us:.2f} | {pc:.0f} | {rps / base[0]:.2f}x | {pc / base[2]:.2f}x |")
    rl_cost = (med["moat-rl"][1] / med["moat"][1] - 1) * 100
    rl_rps = (med["moat-rl"][0] / med["moat"][0] - 1) * 100
    lines.append("")
    lines.append(f"Rate limiting on (moat-rl) vs off (moat): {rl_cost:+.1f}% proxy CPU per request, "
                 f"{rl_rps:+.1f}% requests/s (differences of a few percent either way are this "
                 f"machine's run-to-run noise).")
    if "moat-waf" in med:
        lines.append(f"WAF on (moat-waf, CRS paranoia 1, blocking) vs HAProxy without a WAF: "
                     f"{med['moat-waf'][0] / base[0]:.2f}x requests/s, "
                     f"{med['moat-waf'][2] / base[2]:.2f}x requests per CPU-second; "
                     f"WAF cost {(med['moat-waf'][1] / med['moat'][1] - 1) * 100:+.0f}% proxy CPU per request "
                     f"vs moat without it.")
    table = "\n".join(lines)
    print(table)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rounds": a.rounds, "duration": a.duration, "connections": a.connections,
                       "names": names,
                       "median": {n: {"rps": med[n][0], "us_per_req": med[n][1], "per_core": med[n][2]}
                                  for n in names},
                       "runs": {n: [{"rps": x[0], "us_per_req": x[1], "per_core": x[2], "non2xx": x[3],
                                     "socket_errors": x[4]} for x in results[n]] for n in names}}, f, indent=1)
    if a.write:
        cpu = cpu_model()
        section = f"""## L7 HTTP/1.1 keep-alive: Moat vs HAProxy vs NGINX

Command: `bench/l7_compare.py --rounds {a.rounds} --duration {a.duration} --connections {a.connections} --write`
(run on {time.strftime('%Y-%m-%d')}; medians of {a.rounds} interleaved rounds).

Machine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}.
Versions: {version(['haproxy', '-v'])}; {version(['nginx', '-v'])}; {version(['wrk', '--version'])}.

Setup: each proxy runs one worker pinned to CPU 0 (`taskset -c 0`), logging off, HTTP/1.1
keep-alive on both sides, in front of one NGINX backend returning a 33-byte body. wrk
(`-t1 -c{a.connections}`) and the backend share CPU 1, so on this 2-CPU machine the client side
can be the bottleneck and req/s ratios understate differences; "req per proxy CPU-second"
(requests divided by the proxy's own utime+stime over the run) is the per-core figure.
`moat` runs with rate limiting off; `moat-rl` with one per-client-IP token-bucket rule (the
default rule's code path) at a limit wrk cannot reach, so every request pays the full check.

{table}
"""
        write_section("## L7 HTTP/1.1 keep-alive", section)


if __name__ == "__main__":
    main()
