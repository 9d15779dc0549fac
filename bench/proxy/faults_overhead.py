"""Benchmark: the proxy's hot path before and after fault injection, side by side.

    .venv/bin/python bench/proxy/faults_overhead.py --base 12bd0bc [--rounds 5] [--duration 5]
        [--out bench/results/faults-overhead.md]

Issue 18 asks that with no fault configured the proxy does no extra work per
request. This runs, in one session over the SAME backend replicas:

- `before-tcp`, `before-http`: meshlocal's proxy from `--base` (the commit
  before fault injection), extracted with `git archive` into a temporary
  directory and run with it first on PYTHONPATH (the child prints the module
  path it loaded, checked below);
- `after-tcp`, `after-http`: the proxy of this checkout, no fault;
- `after-tcp-fault-elsewhere`, `after-http-fault-elsewhere`: this checkout with
  one fault in the table on another service (the table is not empty, api's
  calls are not affected);
- the peers of bench/proxy/modes.py for scale: `haproxy-tcp` and `nginx-1w`.

Each round runs every target back to back with `wrk -t1 -c50 -d{duration}s`
(keep-alive), the order rotated every round; CPU µs/request is the server
process's utime + stime over the run. Ratios are after / before per round,
reported as the median.
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

from modes import BACKENDS, NGINX_PROXY, start_haproxy, wait_http
from run import start_nginx, workers_of
from sidebyside import Results, emit, median, run_rounds, stop_all, target_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BACKEND_ADDRS = ("127.0.0.121:18081", "127.0.0.122:18081")
PEERS = {"haproxy-tcp": "127.0.0.133:18080", "nginx-1w": "127.0.0.130:18080"}
OURS = {
    # name: (tree, mode, listen, idle fault)
    "before-tcp": ("before", "tcp", "127.0.0.141:18080", False),
    "after-tcp": ("after", "tcp", "127.0.0.142:18080", False),
    "after-tcp-fault-elsewhere": ("after", "tcp", "127.0.0.143:18080", True),
    "before-http": ("before", "http", "127.0.0.144:18080", False),
    "after-http": ("after", "http", "127.0.0.145:18080", False),
    "after-http-fault-elsewhere": ("after", "http", "127.0.0.146:18080", True),
}
RATIOS = [
    ("after-tcp", "before-tcp"),
    ("after-http", "before-http"),
    ("after-tcp-fault-elsewhere", "before-tcp"),
    ("after-http-fault-elsewhere", "before-http"),
]


def extract(commit: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "meshlocal", "bench/proxy"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start(tree: Path, mode: str, listen: str, idle_fault: bool) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(tree / "bench/proxy/serve_meshlocal.py")]
    cmd += ["--mode", mode, "--listen", listen]
    for b in BACKEND_ADDRS:
        cmd += ["--backend", b]
    if idle_fault:
        cmd.append("--idle-fault")
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.Popen(cmd, cwd=tree, env=env)


def loaded_from(tree: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = "import meshlocal.proxy.app as m; print(m.__file__)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True, check=True
    ).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the commit before the change")
    parser.add_argument(
        "--change", default="fault injection", help="what changed since --base, for the title"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench/results/faults-overhead.md"))
    args = parser.parse_args()
    for tool in ("nginx", "haproxy", "wrk", "curl", "git"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y {tool})")
    command = shlex.join([".venv/bin/python", "bench/proxy/faults_overhead.py", *sys.argv[1:]])
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    tmp = Path(tempfile.mkdtemp(prefix="meshlocal-bench-faults-"))
    trees = {"before": extract(args.base, tmp / "before"), "after": ROOT}
    for name, tree in trees.items():
        path = loaded_from(tree)
        assert path.startswith(str(tree)), f"{name}: meshlocal loaded from {path}, not {tree}"
    targets = {**{n: v[2] for n, v in OURS.items()}, **PEERS}
    results: Results = {}
    procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    try:
        backends = start_nginx(tmp, "backends", "1", BACKENDS)
        nginx1 = start_nginx(tmp, "proxy1", "1", NGINX_PROXY)
        haproxy = start_haproxy(tmp)
        procs += [backends, nginx1, haproxy]
        pids: dict[str, list[int]] = {}
        for name, (tree, mode, listen, idle) in OURS.items():
            p = start(trees[tree], mode, listen, idle)
            procs.append(p)
            pids[name] = [p.pid]
        for addr in targets.values():
            wait_http(f"http://{addr}/")
        pids["haproxy-tcp"] = [haproxy.pid, *workers_of(haproxy.pid)]
        pids["nginx-1w"] = workers_of(nginx1.pid)
        results = run_rounds(targets, pids, args.rounds, args.duration)
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return median(results, name, key)

    lines = [
        f"# Proxy hot path before/after {args.change} ({started})",
        "",
        f"Command: `{command}`",
        "",
        f"before = `{args.base}`, after = this checkout. "
        f"{args.rounds} rounds x {args.duration} s per target, `wrk -t1 -c50`, loopback.",
        "",
    ]
    lines += target_table(results)
    lines += [
        "",
        "| ratio | req/s (median of per-round ratios) | CPU µs/request |",
        "|---|---|---|",
    ]
    for after, before in RATIOS:
        rps = statistics.median(
            a["rps"] / b["rps"] for a, b in zip(results[after], results[before], strict=True)
        )
        cpu = med(after, "cpu_us") / med(before, "cpu_us")
        lines.append(f"| {after} / {before} | {rps:.3f}x | {cpu:.3f}x |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
