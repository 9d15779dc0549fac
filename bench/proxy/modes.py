"""Benchmark: meshlocal's proxy per mode vs its peer, side by side, one command.

    .venv/bin/python bench/proxy/modes.py [--rounds 5] [--duration 5] [--hey 8]
        [--hey-rounds 3] [--out bench/results/proxy-modes.md]

Pairs, over the SAME backend replicas:

- meshlocal-tcp (a Service Connect endpoint without AppProtocol: a replica per
  connection, bytes untouched) vs haproxy-tcp (`mode tcp`, `balance
  roundrobin`, `nbthread 1`);
- meshlocal-http (AppProtocol http: a replica per request, pooled keep-alive
  upstream) vs nginx-1w (`worker_processes 1`, `keepalive 128` upstream,
  HTTP/1.1);
- direct: the clients straight to one replica, the baseline for added latency.

Everything is on loopback (127.0.0.0/8 only) and bounded in time: about
rounds x 5 x duration + hey-rounds x 5 x hey seconds, plus start-up.

- backends: ONE nginx process (worker_processes 1) on 127.0.0.121:18081 and
  127.0.0.122:18081, answering a fixed 19-byte body;
- meshlocal: bench/proxy/serve_meshlocal.py, one process (one core, uvloop)
  per mode, listening on the endpoint's own address;
- throughput: `wrk -t1 -c50 -d{duration}s --latency` (keep-alive), each
  round running the pairs back to back, pair order rotated and who goes first
  within a pair alternated every round; CPU us/request = utime + stime of the
  server's own processes (from /proc/<pid>/stat) over the run / requests;
- fixed rate: `hey -z {hey}s -c 10 -q 100` (10 workers x 100 req/s = 1,000
  req/s) against every target, same rotation; added p50/p99 = a target's
  median minus direct's median.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Shared with the HTTP-only benchmark (this folder is on sys.path when run as a script).
from run import cpu_ticks, start_nginx, to_ms, workers_of

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

BACKEND_ADDRS = ("127.0.0.121:18081", "127.0.0.122:18081")
NGINX_1W = "127.0.0.130:18080"
MESHLOCAL_HTTP = "127.0.0.131:18080"
HAPROXY_TCP = "127.0.0.133:18080"
MESHLOCAL_TCP = "127.0.0.134:18080"

TARGETS = {
    "direct": BACKEND_ADDRS[0],
    "meshlocal-tcp": MESHLOCAL_TCP,
    "haproxy-tcp": HAPROXY_TCP,
    "meshlocal-http": MESHLOCAL_HTTP,
    "nginx-1w": NGINX_1W,
}
# Run back to back within a round; (ours, peer).
GROUPS: list[tuple[str, ...]] = [
    ("meshlocal-tcp", "haproxy-tcp"),
    ("meshlocal-http", "nginx-1w"),
    ("direct",),
]
PAIRS = [("meshlocal-tcp", "haproxy-tcp"), ("meshlocal-http", "nginx-1w")]

BACKENDS = (
    "server { "
    + " ".join(f"listen {a};" for a in BACKEND_ADDRS)
    + """
    location / { default_type text/plain; return 200 "hello from backend\\n"; }
  }"""
)
NGINX_PROXY = (
    "upstream api { "
    + " ".join(f"server {a};" for a in BACKEND_ADDRS)
    + f""" keepalive 128; }}
  server {{
    listen {NGINX_1W};
    location / {{
      proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}"""
)
HAPROXY_CONF = """
global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend fe
  bind {listen}
  default_backend be
backend be
  balance roundrobin
{servers}
"""


def haproxy_conf() -> str:
    servers = "\n".join(f"  server b{i} {a}" for i, a in enumerate(BACKEND_ADDRS, 1))
    return HAPROXY_CONF.format(listen=HAPROXY_TCP, servers=servers)


def start_haproxy(tmp: Path) -> subprocess.Popen[bytes]:
    conf = tmp / "haproxy.cfg"
    conf.write_text(haproxy_conf())
    return subprocess.Popen(["haproxy", "-db", "-f", str(conf)])  # -db: foreground


def start_meshlocal(mode: str, listen: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(HERE / "serve_meshlocal.py"), "--mode", mode, "--listen", listen]
    for b in BACKEND_ADDRS:
        cmd += ["--backend", b]
    return subprocess.Popen(cmd, cwd=ROOT)


def wait_http(url: str, deadline_s: float = 15.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        r = subprocess.run(["curl", "-fsS", "-o", "/dev/null", url], capture_output=True, timeout=5)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def run_wrk(url: str, duration: int, pids: list[int]) -> dict[str, float]:
    cmd = ["wrk", "-t1", "-c50", f"-d{duration}s", "--latency", url]
    before = cpu_ticks(pids)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    used = cpu_ticks(pids) - before

    def grab(pattern: str) -> str:
        m = re.search(pattern, out)
        assert m, f"{pattern!r} not in wrk output:\n{out}"
        return m.group(1)

    total = int(grab(r"(\d+) requests in"))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    return {
        "rps": float(grab(r"Requests/sec:\s+([\d.]+)")),
        "requests": float(total),
        "cpu_us": used * tick_us / total if total else 0.0,
        "p50": to_ms(grab(r"\s50%\s+(\S+)")),
        "p99": to_ms(grab(r"\s99%\s+(\S+)")),
        "errors": float(
            (int(non2xx.group(1)) if non2xx else 0)
            + (sum(int(x) for x in sock.groups()) if sock else 0)
        ),
    }


def run_hey(url: str, duration: int) -> dict[str, float]:
    cmd = ["hey", "-z", f"{duration}s", "-c", "10", "-q", "100", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout

    def pct(p: int) -> float:
        m = re.search(rf"\s{p}% in ([\d.]+) secs", out)
        assert m, out
        return float(m.group(1)) * 1000

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    bad = sum(int(n) for code, n in codes if code != "200")
    errs = out.split("Error distribution:", 1)[1] if "Error distribution:" in out else ""
    bad += sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", errs, re.M))
    return {"rps": rps, "p50": pct(50), "p90": pct(90), "p99": pct(99), "errors": bad}


def each(runs: list[dict[str, float]], key: str, fmt: str) -> str:
    return ", ".join(format(x[key], fmt) for x in runs)


def round_order(r: int) -> list[str]:
    groups = GROUPS[r % len(GROUPS) :] + GROUPS[: r % len(GROUPS)]
    return [name for g in groups for name in (g if r % 2 == 0 else g[::-1])]


def version(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    return (r.stdout + r.stderr).strip().splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--hey", type=int, default=8, help="seconds per fixed-rate run")
    parser.add_argument("--hey-rounds", type=int, default=3)
    parser.add_argument(
        "--out", default=str(ROOT / "bench" / "results" / "proxy-modes.md"), help="'-': none"
    )
    parser.add_argument("--append", action="store_true", help="add this run to --out")
    args = parser.parse_args()
    for tool in ("nginx", "haproxy", "wrk", "hey", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y {tool})")
    command = " \\\n    ".join(
        [".venv/bin/python bench/proxy/modes.py", shlex.join(sys.argv[1:])]
        if sys.argv[1:]
        else [".venv/bin/python bench/proxy/modes.py"]
    )
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")

    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="meshlocal-bench-modes-"))
    results: dict[str, list[dict[str, float]]] = {n: [] for n in TARGETS}
    fixed: dict[str, list[dict[str, float]]] = {n: [] for n in TARGETS}
    try:
        backends = start_nginx(tmp, "backends", "1", BACKENDS)
        nginx1 = start_nginx(tmp, "proxy1", "1", NGINX_PROXY)
        haproxy = start_haproxy(tmp)
        ml_tcp = start_meshlocal("tcp", MESHLOCAL_TCP)
        ml_http = start_meshlocal("http", MESHLOCAL_HTTP)
        procs += [backends, nginx1, haproxy, ml_tcp, ml_http]
        for addr in TARGETS.values():
            wait_http(f"http://{addr}/")
        # Whose CPU time counts for each target: the server's own processes.
        pids = {
            "direct": workers_of(backends.pid),
            "meshlocal-tcp": [ml_tcp.pid],
            "haproxy-tcp": [haproxy.pid, *workers_of(haproxy.pid)],
            "meshlocal-http": [ml_http.pid],
            "nginx-1w": workers_of(nginx1.pid),
        }
        print("cpu accounted to:", pids, flush=True)
        for name, addr in TARGETS.items():  # warm-up: pools, caches, page-ins
            run_wrk(f"http://{addr}/", 1, pids[name])

        for r in range(args.rounds):
            for name in round_order(r):
                res = run_wrk(f"http://{TARGETS[name]}/", args.duration, pids[name])
                results[name].append(res)
                print(
                    f"round {r + 1} {name:14s} {res['rps']:8.0f} req/s  "
                    f"cpu {res['cpu_us']:5.1f} us/req  p50 {res['p50']:.2f} ms  "
                    f"p99 {res['p99']:.2f} ms  errors {res['errors']:.0f}",
                    flush=True,
                )
        for r in range(args.hey_rounds):
            for name in round_order(r):
                res = run_hey(f"http://{TARGETS[name]}/", args.hey)
                fixed[name].append(res)
                print(
                    f"fixed {r + 1} {name:14s} {res['rps']:6.0f} req/s  "
                    f"p50 {res['p50']:.2f} ms  p90 {res['p90']:.2f} ms  "
                    f"p99 {res['p99']:.2f} ms  errors {res['errors']:.0f}",
                    flush=True,
                )
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGQUIT if "nginx" in str(p.args) else signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)
    load_end = os.getloadavg()
    print(f"load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")

    def med(table: dict[str, list[dict[str, float]]], name: str, key: str) -> float:
        return statistics.median(x[key] for x in table[name])

    def total(table: dict[str, list[dict[str, float]]], name: str) -> int:
        return int(sum(x["errors"] for x in table[name]))

    tput = [
        "| target | req/s median | req/s per round | CPU µs/request (median) "
        "| p50 ms | p99 ms | errors (all rounds) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in TARGETS:
        rounds = ", ".join(f"{x['rps']:.0f}" for x in results[name])
        tput.append(
            f"| {name} | {med(results, name, 'rps'):.0f} | {rounds} | "
            f"{med(results, name, 'cpu_us'):.1f} | {med(results, name, 'p50'):.2f} | "
            f"{med(results, name, 'p99'):.2f} | {total(results, name)} |"
        )
    ratios = []
    for ours, peer in PAIRS:
        per_round = [a["rps"] / b["rps"] for a, b in zip(results[ours], results[peer], strict=True)]
        ratios.append(
            f"- requests/s, {ours} / {peer}: "
            f"**{med(results, ours, 'rps') / med(results, peer, 'rps'):.2f}x**"
            f" (ratio of medians); per round "
            + ", ".join(f"{x:.2f}" for x in per_round)
            + f" (median {statistics.median(per_round):.2f}x)"
        )
        ratios.append(
            f"- CPU per request, {peer} / {ours}: "
            f"**{med(results, peer, 'cpu_us') / med(results, ours, 'cpu_us'):.2f}x** "
            f"({peer} {med(results, peer, 'cpu_us'):.1f} µs, "
            f"{ours} {med(results, ours, 'cpu_us'):.1f} µs)"
        )

    fixed_lines = [
        "| target | achieved req/s (per round) | p50 ms (per round) | p99 ms (per round) "
        "| p50 median | p99 median | added p50 | added p99 | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in TARGETS:
        runs = fixed[name]
        added_p50 = med(fixed, name, "p50") - med(fixed, "direct", "p50")
        added_p99 = med(fixed, name, "p99") - med(fixed, "direct", "p99")
        fixed_lines.append(
            f"| {name} | {each(runs, 'rps', '.0f')} | {each(runs, 'p50', '.2f')} | "
            f"{each(runs, 'p99', '.2f')} | "
            f"{med(fixed, name, 'p50'):.2f} | {med(fixed, name, 'p99'):.2f} | "
            + ("—" if name == "direct" else f"{added_p50:+.2f}")
            + " | "
            + ("—" if name == "direct" else f"{added_p99:+.2f}")
            + f" | {total(fixed, name)} |"
        )
    tcp_ratio = med(results, "meshlocal-tcp", "rps") / med(results, "haproxy-tcp", "rps")
    http_ratio = med(results, "meshlocal-http", "rps") / med(results, "nginx-1w", "rps")

    def added(name: str, key: str = "p99") -> float:
        return med(fixed, name, key) - med(fixed, "direct", key)

    mine = ("meshlocal-tcp", "meshlocal-http")
    ml_errors = sum(total(t, n) for t in (results, fixed) for n in mine)
    summary = [
        "| target | measured | met? |",
        "|---|---|---|",
        f"| TCP mode: ≥ 0.7x HAProxy requests/s, 0 errors | {tcp_ratio:.2f}x, "
        f"{total(results, 'meshlocal-tcp') + total(fixed, 'meshlocal-tcp')} errors | "
        + ("yes" if tcp_ratio >= 0.7 and not total(results, "meshlocal-tcp") else "no")
        + " |",
        f"| HTTP mode: ≥ 1.0x nginx (1 worker) requests/s | {http_ratio:.2f}x | "
        + ("yes" if http_ratio >= 1.0 else "no")
        + " |",
        f"| added p99 at 1,000 req/s ≤ +2 ms, TCP mode | {added('meshlocal-tcp'):+.2f} ms | "
        + ("yes" if added("meshlocal-tcp") <= 2 else "no")
        + " |",
        f"| added p99 at 1,000 req/s ≤ +2 ms, HTTP mode | {added('meshlocal-http'):+.2f} ms | "
        + ("yes" if added("meshlocal-http") <= 2 else "no")
        + " |",
        f"| errors, meshlocal (both modes, all runs) | {ml_errors} | "
        + ("yes" if not ml_errors else "no")
        + " |",
    ]
    paired_added = []
    for name in TARGETS:
        if name == "direct":
            continue
        diffs = [a["p99"] - b["p99"] for a, b in zip(fixed[name], fixed["direct"], strict=True)]
        paired_added.append(
            f"- {name}: added p99 per round (vs direct, same round) "
            + ", ".join(f"{d:+.2f}" for d in diffs)
            + f" ms; median {statistics.median(diffs):+.2f} ms"
        )

    hey_version = version(["dpkg-query", "-W", "-f=${Version}", "hey"])
    report = "\n".join(
        [
            "# Proxy modes: meshlocal tcp vs HAProxy, meshlocal http vs nginx",
            "",
            f"Run of {started}; load average at start {load_start[0]:.2f} "
            f"({load_start[1]:.2f}, {load_start[2]:.2f}), at end {load_end[0]:.2f} "
            f"({load_end[1]:.2f}, {load_end[2]:.2f}); {os.cpu_count()} cores, shared.",
            "",
            "Command:",
            "",
            "```",
            command,
            "```",
            "",
            f"Set-up: see the docstring of `bench/proxy/modes.py`. Backends: one nginx "
            f"(1 worker) on {' and '.join(BACKEND_ADDRS)}, 19-byte body; every proxy "
            "round-robins over both. "
            f"Tools: {version(['nginx', '-v'])}; {version(['haproxy', '-v'])}; "
            f"{version(['wrk', '-v'])}; hey (Debian {hey_version}); "
            f"Python {sys.version.split()[0]}, uvloop {uvloop_version()}.",
            "",
            "## Summary (medians of this run)",
            "",
            *summary,
            "",
            f"## Throughput: wrk -t1 -c50 -d{args.duration}s, keep-alive, {args.rounds} rounds",
            "",
            *tput,
            "",
            *ratios,
            "",
            f"## Fixed rate 1,000 req/s: hey -z {args.hey}s -c 10 -q 100, {args.hey_rounds} rounds",
            "",
            "Added = the target's median minus direct's median.",
            "",
            *fixed_lines,
            "",
            *paired_added,
            "",
            "## Peer configurations (generated)",
            "",
            "HAProxy (`haproxy -db -f haproxy.cfg`):",
            "",
            "```",
            haproxy_conf().strip("\n"),
            "```",
            "",
            "nginx-1w (`worker_processes 1`, `keepalive_requests 1000000`), http block:",
            "",
            "```",
            NGINX_PROXY.strip("\n"),
            "```",
            "",
        ]
    )
    print()
    print(report)
    if args.out != "-":
        out = Path(args.out)
        if args.append and out.exists():
            demoted = "#" + report.replace("\n## ", "\n### ")  # one level below the first run
            report = out.read_text().rstrip("\n") + "\n\n" + demoted
        out.write_text(report)
        print(f"written to {out}")


def uvloop_version() -> str:
    r = subprocess.run(
        [sys.executable, "-c", "import uvloop; print(uvloop.__version__)"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.stdout.strip() or "not installed (asyncio loop)"


if __name__ == "__main__":
    main()
