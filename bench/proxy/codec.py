"""Benchmark: the HTTP/1 codec before and after llhttp, with and without the head cache.

    .venv/bin/python bench/proxy/codec.py --base 371a1ce [--rounds 7] [--duration 5]
        [--out bench/results/codec.md]

Issue 20 asks for meshlocal's HTTP mode with every head parsed (the parsed-head
cache off) at >= 0.8x nginx (1 worker), and no regression in the default
configuration. This runs, in one session over the SAME backend replicas:

- `before-http`, `before-http-nocache`: meshlocal's proxy from `--base` (the
  hand-written parser), extracted with `git archive` and run with it first on
  PYTHONPATH (the module path it loads is checked), head cache 256 and 0;
- `after-http`, `after-http-nocache`: this checkout's proxy (llhttp), the same
  two settings;
- `nginx-1w`: nginx as a round-robin proxy, 1 worker, keep-alive upstream.

Each round runs every target back to back with `wrk -t1 -c50 -d{duration}s`
(keep-alive, one request head repeated: the cache's best case), the order
rotated every round and reversed every other one; CPU µs/request is the
server's utime + stime over the run. Ratios are per round, reported as the
median. Everything is on loopback (127.0.0.0/8) and bounded by
rounds x 5 x duration seconds plus start-up.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from faults_overhead import extract, loaded_from
from modes import BACKENDS, NGINX_PROXY, wait_http
from run import start_nginx, workers_of
from sidebyside import Results, emit, median, run_rounds, stop_all, target_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BACKEND_ADDRS = ("127.0.0.121:18081", "127.0.0.122:18081")
NGINX_1W = "127.0.0.130:18080"
OURS = {
    # name: (tree, head cache, listen)
    "before-http": ("before", 256, "127.0.0.151:18080"),
    "before-http-nocache": ("before", 0, "127.0.0.152:18080"),
    "after-http": ("after", 256, "127.0.0.153:18080"),
    "after-http-nocache": ("after", 0, "127.0.0.154:18080"),
}
RATIOS = [
    ("after-http-nocache", "nginx-1w"),
    ("before-http-nocache", "nginx-1w"),
    ("after-http", "nginx-1w"),
    ("before-http", "nginx-1w"),
    ("after-http", "before-http"),
    ("after-http-nocache", "before-http-nocache"),
    ("after-http-nocache", "after-http"),
]


def start(tree: Path, head_cache: int, listen: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(tree / "bench/proxy/serve_meshlocal.py"), "--mode", "http"]
    cmd += ["--listen", listen, "--head-cache", str(head_cache)]
    for b in BACKEND_ADDRS:
        cmd += ["--backend", b]
    return subprocess.Popen(cmd, cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the commit with the hand-written parser")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench/results/codec.md"))
    args = parser.parse_args()
    for tool in ("nginx", "wrk", "curl", "git"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y {tool})")
    command = shlex.join([".venv/bin/python", "bench/proxy/codec.py", *sys.argv[1:]])
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="meshlocal-bench-codec-"))
    trees = {"before": extract(args.base, tmp / "before"), "after": ROOT}
    for name, tree in trees.items():
        path = loaded_from(tree)
        assert path.startswith(str(tree)), f"{name}: meshlocal loaded from {path}, not {tree}"
    targets = {**{n: v[2] for n, v in OURS.items()}, "nginx-1w": NGINX_1W}
    results: Results = {}
    procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    try:
        backends = start_nginx(tmp, "backends", "1", BACKENDS)
        nginx1 = start_nginx(tmp, "proxy1", "1", NGINX_PROXY)
        procs += [backends, nginx1]
        pids: dict[str, list[int]] = {}
        for name, (tree, cache, listen) in OURS.items():
            p = start(trees[tree], cache, listen)
            procs.append(p)
            pids[name] = [p.pid]
        for addr in targets.values():
            wait_http(f"http://{addr}/")
        pids["nginx-1w"] = workers_of(nginx1.pid)
        results = run_rounds(targets, pids, args.rounds, args.duration)
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return median(results, name, key)

    lines = [
        f"# HTTP/1 codec: hand-written parser vs llhttp, head cache on and off ({started})",
        "",
        f"Command: `{command}`",
        "",
        f"before = `{args.base}` (hand-written parser), after = this checkout (llhttp via "
        f"httptools). {args.rounds} rounds x {args.duration} s per target, `wrk -t1 -c50`, "
        f"loopback, load average {load:.2f} at the start. `-nocache`: head cache 0, every "
        "request and response head parsed.",
        "",
    ]
    lines += target_table(results)
    lines += [
        "",
        "| ratio | req/s (median of per-round ratios) | per round | CPU µs/request |",
        "|---|---|---|---|",
    ]
    for a, b in RATIOS:
        per_round = [x["rps"] / y["rps"] for x, y in zip(results[a], results[b], strict=True)]
        cpu = med(a, "cpu_us") / med(b, "cpu_us")
        each = ", ".join(f"{v:.2f}" for v in per_round)
        lines.append(f"| {a} / {b} | {statistics.median(per_round):.3f}x | {each} | {cpu:.3f}x |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
