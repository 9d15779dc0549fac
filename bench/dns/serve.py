"""Run meshlocal's DNS with the benchmark's environment (used by bench/dns/run.py).

    python bench/dns/serve.py --host 127.0.0.10 --port 5300 --client 127.0.0.20 [--no-uvloop]

The environment: N Backend Services with connect enabled, each with R
replicas, plus one service with 12 replicas (the random-8 path). The
benchmark client's address is registered as a replica of an SC client, so
it gets Service Connect answers for `svcN` and Service Discovery answers for
`svcN.bench.demo.local`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from meshlocal.dns.resolver import MeshResolver
from meshlocal.dns.server import DnsServer, run
from meshlocal.manifest.model import (
    Connect,
    Environment,
    EnvironmentSpec,
    Service,
    ServiceType,
    Workspace,
)
from meshlocal.naming import NamingModel
from meshlocal.registry import Replica, ReplicaRegistry

PROXY = "10.99.0.1"


def environment(services: int) -> EnvironmentSpec:
    root = Path("/nonexistent/bench")
    svcs = [
        Service(
            name=f"svc{i}",
            type=ServiceType.BACKEND_SERVICE,
            manifest_path=root / f"svc{i}.yml",
            port=8000 + i,
            target_port=8000 + i,
            connect=Connect(enabled=True),
        )
        for i in range(services)
    ]
    svcs.append(
        Service(
            name="big",
            type=ServiceType.BACKEND_SERVICE,
            manifest_path=root / "big.yml",
            port=7000,
            target_port=7000,
            connect=Connect(enabled=True),
        )
    )
    env = Environment("bench", None)
    ws = Workspace(root, "demo", {"bench": env}, {s.name: s.manifest_path for s in svcs})
    return EnvironmentSpec(ws, env, tuple(svcs))


def registry(services: int, replicas: int, client: str) -> ReplicaRegistry:
    reg = ReplicaRegistry()
    for i in range(services):
        for r in range(1, replicas + 1):
            reg.upsert(Replica(f"svc{i}", r, f"svc{i}-{r}", f"10.0.{i}.{r}", 8000 + i))
    for r in range(1, 13):
        reg.upsert(Replica("big", r, f"big-{r}", f"10.1.0.{r}", 7000))
    # the benchmark client is a replica of svc0: a Service Connect client
    reg.upsert(Replica("svc0", 99, "client", client, 8000))
    return reg


async def serve(args: argparse.Namespace) -> None:
    naming = NamingModel(environment(args.services))
    resolver = MeshResolver(naming, registry(args.services, args.replicas, args.client), PROXY)
    await serve_with(resolver, args)


async def serve_with(resolver: MeshResolver, args: argparse.Namespace) -> None:
    """Serve `resolver` on args.host:port until SIGTERM/SIGINT or args.max_seconds."""
    server = DnsServer(
        resolver, args.host, args.port, upstreams=None, udp_batching=not args.no_mmsg
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {type(loop).__module__} batching={server.udp_batching}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    await server.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.10")
    p.add_argument("--port", type=int, default=5300)
    p.add_argument("--client", default="127.0.0.20")
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--no-mmsg", action="store_true", help="DatagramProtocol, not recvmmsg")
    p.add_argument("--max-seconds", type=float, default=900.0)
    args = p.parse_args()
    run(serve(args), use_uvloop=False if args.no_uvloop else None)


if __name__ == "__main__":
    main()
