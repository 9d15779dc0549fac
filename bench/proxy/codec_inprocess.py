"""Benchmark: Python time per HTTP/1 request in the proxy, no sockets, side by side.

    .venv/bin/python bench/proxy/codec_inprocess.py --base 371a1ce [--requests 200000]
        [--rounds 7] [--out bench/results/codec-inprocess.md]

The wrk benchmarks (bench/proxy/codec.py) measure the whole proxy, where the
kernel's loopback TCP is half the CPU and the 2-core machine's noise swings
rounds by ±20 %. This isolates the proxy's own Python: one client connection
(`forward.Downstream`) and one pooled replica connection, both on in-memory
transports, driven request by request: a client head (`GET /` as wrk sends
it) goes in, the forwarded head comes out, nginx's response head and 19-byte
body go in, the client's response comes out. Every round times
`--requests` exchanges per target; targets alternate within each round.

Targets: `--base`'s proxy (extracted with `git archive`, run in a child
process with it first on PYTHONPATH) and this checkout's, each with the
parsed-head cache on (256) and off (0, every head parsed). Reported:
µs per request (median of rounds) and ratios per round.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from faults_overhead import extract
from sidebyside import emit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.131:18080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 05 Dec 2026 01:40:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 19\r\nConnection: keep-alive\r\n\r\n"
    b"hello from backend\n"
)

# Run in the child, with the tree under test first on sys.path.
CHILD = r"""
import asyncio, gc, json, sys, time
from meshlocal.proxy.balancer import Balancer
from meshlocal.proxy.forward import Forwarder, Route
from meshlocal.proxy.metrics import Metrics
from meshlocal.proxy.settings import ProxySettings
from meshlocal.proxy.upstream import UpstreamConn, UpstreamPool
from meshlocal.registry import Replica, ReplicaRegistry

REQUEST, RESPONSE, N, CACHE = (
    bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
)


class Sink:
    def __init__(self):
        self.n = 0
    def write(self, data):
        self.n += len(data)
    def writelines(self, parts):
        for p in parts:
            self.n += len(p)
    def get_extra_info(self, name, default=None):
        return ("127.0.0.9", 40000) if name == "peername" else default
    def is_closing(self):
        return False
    def pause_reading(self): pass
    def resume_reading(self): pass
    def close(self): raise AssertionError("closed")
    def abort(self): raise AssertionError("aborted")
    def can_write_eof(self): return True


async def main():
    registry = ReplicaRegistry()
    replica = Replica("api", 1, "c1", "127.0.0.121", 18081)
    registry.upsert(replica)
    settings = ProxySettings(head_cache=CACHE)
    metrics = Metrics()
    pool = UpstreamPool(settings, metrics)
    fwd = Forwarder(Balancer(registry), pool, metrics, settings)
    up = UpstreamConn(pool, replica)
    up_sink, client = Sink(), Sink()
    up.connection_made(up_sink)
    pool.release(up)
    route = Route("api", b"service-connect")
    down = fwd.factory(lambda req, port: route, 80, b"service-connect")()
    down.connection_made(client)
    feed, answer = down.data_received, up.data_received
    for _ in range(2000):  # warm-up
        feed(REQUEST)
        answer(RESPONSE)
    gc.collect()
    sent, got = up_sink.n, client.n
    t0 = time.perf_counter()
    for _ in range(N):
        feed(REQUEST)
        answer(RESPONSE)
    elapsed = time.perf_counter() - t0
    assert up_sink.n - sent >= N * len(REQUEST), "requests were not forwarded"
    assert client.n - got >= N * len(RESPONSE), "responses did not reach the client"
    assert metrics.services["api"].codes[2] >= N
    print(json.dumps({"us": elapsed / N * 1e6}))


asyncio.run(main())
"""

# The two parse functions alone, in the child: µs per head.
HEADS = r"""
import json, sys, time
from meshlocal.proxy import http1
request, response, n = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3])
head = response[: response.find(b"\r\n\r\n") + 4]
out = {}
for name, call in (
    ("request head", lambda: http1.parse_request_head(request)),
    ("response head", lambda: http1.parse_response_head(head, b"GET")),
):
    for _ in range(2000):
        call()
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    out[name] = (time.perf_counter() - t0) / n * 1e6
print(json.dumps(out))
"""


def child(code: str, tree: Path, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, REQUEST.hex(), RESPONSE.hex(), *args],
        env=dict(os.environ, PYTHONPATH=str(tree)),
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {k: float(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def run(tree: Path, cache: int, n: int) -> float:
    return child(CHILD, tree, str(n), str(cache))["us"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the commit with the hand-written parser")
    parser.add_argument("--requests", type=int, default=200000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench/results/codec-inprocess.md"))
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "bench/proxy/codec_inprocess.py", *sys.argv[1:]])
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    tmp = Path(tempfile.mkdtemp(prefix="meshlocal-bench-codec-"))
    try:
        before = extract(args.base, tmp / "before")
        targets = {
            "before-http": (before, 256),
            "before-http-nocache": (before, 0),
            "after-http": (ROOT, 256),
            "after-http-nocache": (ROOT, 0),
        }
        results: dict[str, list[float]] = {n: [] for n in targets}
        heads: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        names = list(targets)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                tree, cache = targets[name]
                us = run(tree, cache, args.requests)
                results[name].append(us)
                print(f"round {r + 1} {name:22s} {us:6.2f} µs/request", flush=True)
            for side, tree in (("before", before), ("after", ROOT)):
                heads[side].append(child(HEADS, tree, str(args.requests)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [
        f"# Proxy Python time per HTTP/1 request, in-process ({started})",
        "",
        f"Command: `{command}`",
        "",
        f"before = `{args.base}` (hand-written parser), after = this checkout (llhttp). "
        f"{args.rounds} rounds x {args.requests} requests per target; in-memory transports, "
        f"load average {os.getloadavg()[0]:.2f} at the end.",
        "",
        "| target | µs/request (median) | per round |",
        "|---|---|---|",
    ]
    for name, values in results.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {name} | {statistics.median(values):.2f} | {each} |")
    lines += [
        "",
        "The parse functions alone (`parse_request_head` of the request above,",
        "`parse_response_head` of the response's head), µs per head, median of rounds:",
        "",
        "| head | before | after | after / before |",
        "|---|---|---|---|",
    ]
    for kind in ("request head", "response head"):
        b = statistics.median(x[kind] for x in heads["before"])
        a = statistics.median(x[kind] for x in heads["after"])
        lines.append(f"| {kind} | {b:.2f} | {a:.2f} | {a / b:.3f}x |")
    lines += ["", "| ratio (time) | median of per-round ratios |", "|---|---|"]
    for a, b in [
        ("after-http", "before-http"),
        ("after-http-nocache", "before-http-nocache"),
        ("after-http-nocache", "after-http"),
        ("before-http-nocache", "before-http"),
    ]:
        ratio = statistics.median(x / y for x, y in zip(results[a], results[b], strict=True))
        lines.append(f"| {a} / {b} | {ratio:.3f}x |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
