"""Benchmark: meshlocal's Service Connect proxy vs nginx vs direct, side by side.

    .venv/bin/python bench/proxy/run.py [--rounds 3] [--duration 5] [--write]

Everything runs on loopback and is bounded in time (about
rounds x targets x duration + 4 x hey duration, plus start-up):

- backends: ONE nginx process (worker_processes 1) listening on
  127.0.0.21:8081 and 127.0.0.22:8081, answering a fixed 19-byte body
  (`return 200 "hello from backend\\n"`): fast and identical for everyone;
- nginx as a round-robin proxy over both backends with an HTTP/1.1
  keep-alive upstream pool, on 127.0.0.30:8080 (worker_processes 1) and on
  127.0.0.32:8080 (worker_processes auto = 2 here);
- meshlocal's proxy (uvloop, HTTP mode: `--mode http`) on 127.0.0.31:8080
  over the same two backends, and again with its parsed-head cache off
  (`--head-cache 0`, every head parsed) on 127.0.0.35:8080
  ("meshlocal-nocache");
- TCP mode against HAProxy: bench/proxy/modes.py;
- direct: clients straight to one backend, 127.0.0.21:8081.

Throughput: wrk -t1 -c50 -d{duration}s --latency, targets alternated in
rotated order every round; the median round per target is reported.
Fixed rate: hey -z {hey}s -c 10 -q 100 (10 workers x 100 req/s = 1,000 req/s),
direct, meshlocal and nginx-1w, two rounds in opposite orders; added p99 =
proxy p99 - direct p99 (medians of the runs).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {tmp}/nginx-{name}.pid;
error_log {tmp}/error-{name}.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  keepalive_requests 1000000;
  {body}
}}
"""
BACKENDS = """
  server {
    listen 127.0.0.21:8081; listen 127.0.0.22:8081;
    location / { default_type text/plain; return 200 "hello from backend\\n"; }
  }
"""
PROXY = """
  upstream api { server 127.0.0.21:8081; server 127.0.0.22:8081; keepalive 128; }
  server {
    listen %s;
    location / {
      proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection "";
    }
  }
"""

TARGETS = {
    "direct": "http://127.0.0.21:8081/",
    "meshlocal": "http://127.0.0.31:8080/",
    "meshlocal-nocache": "http://127.0.0.35:8080/",
    "nginx-1w": "http://127.0.0.30:8080/",
    "nginx-auto": "http://127.0.0.32:8080/",
}


def start_nginx(tmp: Path, name: str, workers: str, body: str) -> subprocess.Popen[bytes]:
    conf = tmp / f"{name}.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, tmp=tmp, name=name, body=body))
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)])


def wait_http(url: str, host: str = "api", deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        r = subprocess.run(
            ["curl", "-fsS", "-o", "/dev/null", "-H", f"Host: {host}", url],
            capture_output=True,
            timeout=5,
        )
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def to_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    assert m, value
    n = float(m.group(1))
    return {"us": n / 1000, "ms": n, "s": n * 1000}[m.group(2)]


def cpu_ticks(pids: list[int]) -> int:
    """user + system clock ticks used so far by these processes."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def workers_of(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def run_wrk(url: str, duration: int, pids: list[int] | None = None) -> dict[str, float]:
    cmd = ["wrk", "-t1", "-c50", f"-d{duration}s", "--latency", "-H", "Host: api", url]
    before = cpu_ticks(pids) if pids else 0
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    used = cpu_ticks(pids) - before if pids else 0
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    return {
        "rps": rps,
        "cpu_us": used * tick_us / total if pids and total else 0.0,
        "p50": p50,
        "p99": p99,
        "non2xx": float(errors.group(1)) if errors else 0.0,
        "sockerr": 1.0 if sock else 0.0,
    }


def run_hey(url: str, duration: int) -> dict[str, float]:
    cmd = ["hey", "-z", f"{duration}s", "-c", "10", "-q", "100", "-host", "api", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout

    def pct(p: int) -> float:
        m = re.search(rf"\s{p}% in ([\d.]+) secs", out)
        assert m, out
        return float(m.group(1)) * 1000

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    bad = sum(int(n) for code, n in codes if code != "200")
    return {"rps": rps, "p50": pct(50), "p90": pct(90), "p99": pct(99), "non200": bad}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--hey", type=int, default=10, help="seconds per fixed-rate run")
    parser.add_argument(
        "--write",
        action="store_true",
        help="write this run's raw output to bench/results/proxy-run-<UTC time>.md",
    )
    args = parser.parse_args()
    for tool in ("nginx", "wrk", "hey", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")

    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="meshlocal-bench-"))
    try:
        procs.append(start_nginx(tmp, "backends", "1", BACKENDS))
        procs.append(start_nginx(tmp, "proxy1", "1", PROXY % "127.0.0.30:8080"))
        procs.append(start_nginx(tmp, "proxyauto", "auto", PROXY % "127.0.0.32:8080"))
        meshlocal = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "serve_meshlocal.py"),
                "--mode",
                "http",
                "--listen",
                "127.0.0.31:8080",
                "--backend",
                "127.0.0.21:8081",
                "--backend",
                "127.0.0.22:8081",
            ],
            cwd=ROOT,
        )
        procs.append(meshlocal)
        nocache = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "serve_meshlocal.py"),
                "--mode",
                "http",
                "--listen",
                "127.0.0.35:8080",
                "--backend",
                "127.0.0.21:8081",
                "--backend",
                "127.0.0.22:8081",
                "--head-cache",
                "0",
            ],
            cwd=ROOT,
        )
        procs.append(nocache)
        for url in TARGETS.values():
            wait_http(url)
        # Whose CPU time counts for each target (the proxy's own processes).
        pids = {
            "direct": workers_of(procs[0].pid),
            "meshlocal": [meshlocal.pid],
            "meshlocal-nocache": [nocache.pid],
            "nginx-1w": workers_of(procs[1].pid),
            "nginx-auto": workers_of(procs[2].pid),
        }
        for url in TARGETS.values():  # warm-up: pools, caches
            run_wrk(url, 1)

        names = list(TARGETS)
        results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                res = run_wrk(TARGETS[name], args.duration, pids[name])
                results[name].append(res)
                print(
                    f"round {r + 1} {name:11s} {res['rps']:9.0f} req/s  "
                    f"cpu {res['cpu_us']:6.1f} us/req  "
                    f"p50 {res['p50']:.2f} ms  p99 {res['p99']:.2f} ms",
                    flush=True,
                )

        fixed: dict[str, list[dict[str, float]]] = {"direct": [], "meshlocal": [], "nginx-1w": []}
        for r in range(2):
            fixed_order = ["direct", "meshlocal", "nginx-1w"]
            for name in fixed_order if r == 0 else fixed_order[::-1]:
                res = run_hey(TARGETS[name], args.hey)
                fixed[name].append(res)
                print(
                    f"fixed {r + 1} {name:11s} {res['rps']:7.0f} req/s  p50 {res['p50']:.2f}"
                    f" ms  p99 {res['p99']:.2f} ms  non-200 {res['non200']:.0f}",
                    flush=True,
                )
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if p.args[0] != "nginx" else signal.SIGQUIT)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in results[name])

    lines = [
        "| target | req/s (median of rounds) | rounds | CPU us/request | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        rounds = ", ".join(f"{x['rps']:.0f}" for x in results[name])
        lines.append(
            f"| {name} | {med(name, 'rps'):.0f} | {rounds} | {med(name, 'cpu_us'):.1f} | "
            f"{med(name, 'p50'):.2f} | {med(name, 'p99'):.2f} |"
        )
    ml = med("meshlocal", "rps")
    ratios = [
        f"- meshlocal / nginx-1w: **{ml / med('nginx-1w', 'rps'):.2f}x**",
        f"- meshlocal / nginx-auto: **{ml / med('nginx-auto', 'rps'):.2f}x**",
        f"- meshlocal-nocache (every head parsed) / nginx-1w: "
        f"{med('meshlocal-nocache', 'rps') / med('nginx-1w', 'rps'):.2f}x",
        f"- meshlocal / direct: {ml / med('direct', 'rps'):.2f}x",
        "- CPU per request, nginx-1w / meshlocal (the ratio a dedicated core would give): "
        f"**{med('nginx-1w', 'cpu_us') / med('meshlocal', 'cpu_us'):.2f}x** "
        f"(nocache: {med('nginx-1w', 'cpu_us') / med('meshlocal-nocache', 'cpu_us'):.2f}x)",
        "- per-round meshlocal / nginx-1w: "
        + ", ".join(
            f"{a['rps'] / b['rps']:.2f}"
            for a, b in zip(results["meshlocal"], results["nginx-1w"], strict=True)
        ),
    ]
    fixed_lines = [
        "| target | achieved req/s | p50 ms | p90 ms | p99 ms | non-200 |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in fixed.items():
        for x in runs:
            fixed_lines.append(
                f"| {name} | {x['rps']:.0f} | {x['p50']:.2f} | {x['p90']:.2f} | "
                f"{x['p99']:.2f} | {x['non200']:.0f} |"
            )

    def added(name: str, key: str) -> float:
        return statistics.median(x[key] for x in fixed[name]) - statistics.median(
            x[key] for x in fixed["direct"]
        )

    report = "\n".join(
        [
            "### Throughput (wrk -t1 -c50, keep-alive, 19-byte body)",
            "",
            *lines,
            "",
            *ratios,
            "",
            "### Fixed rate 1,000 req/s (hey -c 10 -q 100)",
            "",
            *fixed_lines,
            "",
            f"- meshlocal added p50 / p99 (medians of runs): **{added('meshlocal', 'p50'):.2f} ms"
            f" / {added('meshlocal', 'p99'):.2f} ms**",
            f"- nginx-1w added p50 / p99, for reference: {added('nginx-1w', 'p50'):.2f} ms"
            f" / {added('nginx-1w', 'p99'):.2f} ms",
            "",
            f"Command: `.venv/bin/python bench/proxy/run.py --rounds {args.rounds} "
            f"--duration {args.duration} --hey {args.hey}`; "
            f"load average before: {os.getloadavg()[0]:.2f}.",
        ]
    )
    print()
    print(report)
    if args.write:
        # One file per run: a later run must never overwrite the raw output a doc cites.
        stamp = time.strftime("%Y%m%dT%H%MZ", time.gmtime())
        out = ROOT / "bench" / "results" / f"proxy-run-{stamp}.md"
        out.write_text(report + "\n")
        print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
