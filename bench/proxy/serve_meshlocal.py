"""Run meshlocal's Service Connect proxy over given backends, for the benchmark.

    python bench/proxy/serve_meshlocal.py --listen 127.0.0.31:8080 \
        --backend 127.0.0.21:8081 --backend 127.0.0.22:8081

Routes Host `api` (any port) to the backends in round robin. Exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from meshlocal.manifest.model import (
    Connect,
    Environment,
    EnvironmentSpec,
    Service,
    ServiceType,
    Workspace,
)
from meshlocal.naming import NamingModel
from meshlocal.proxy.app import ServiceConnectProxy, new_event_loop
from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import Replica, ReplicaRegistry


async def main(listen: str, backends: list[str], head_cache: int = 256) -> None:
    host, port = listen.rsplit(":", 1)
    svc = Service(
        name="api",
        type=ServiceType.BACKEND_SERVICE,
        manifest_path=Path("/dev/null"),
        port=80,
        target_port=80,
        connect=Connect(enabled=True),
    )
    ws = Workspace(Path("/tmp"), "bench", {}, {"api": Path("/dev/null")})
    spec = EnvironmentSpec(ws, Environment("test", None), (svc,))
    registry = ReplicaRegistry()
    for i, b in enumerate(backends, 1):
        addr, bport = b.rsplit(":", 1)
        registry.upsert(Replica("api", i, f"c{i}", addr, int(bport)))
    proxy = ServiceConnectProxy(
        NamingModel(spec),
        registry,
        host,
        ProxySettings(port_map={80: int(port)}, head_cache=head_cache),
    )
    await proxy.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--backend", action="append", required=True)
    parser.add_argument("--head-cache", type=int, default=256, help="0: parse every head")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main(args.listen, args.backend, args.head_cache))
