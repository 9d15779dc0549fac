"""Run meshlocal's Service Connect proxy for one endpoint, for the benchmarks.

    python bench/proxy/serve_meshlocal.py --mode tcp --listen 127.0.0.134:18080 \
        --backend 127.0.0.121:18081 --backend 127.0.0.122:18081

One Service Connect endpoint, `api`, whose VIP and port are `--listen`
(the proxy listens on the endpoint's own address, as in ECS), proxied in
`--mode`:

- `tcp`: no AppProtocol (what Copilot deploys): a replica per client
  connection, round robin, bytes untouched (meshlocal/proxy/tcp.py);
- `http`: AppProtocol http: a replica per request, round robin, pooled
  keep-alive connections to the replicas (meshlocal/proxy/forward.py).

`--idle-fault` puts one fault in the table, on another service: the
table is no longer empty, but no call to `api` is affected (the cost of a
fault elsewhere in the mesh, for bench/proxy/faults_overhead.py).

The event loop is uvloop when the `speed` extra is installed, as in the data
plane. Prints `ready` once listening; exits on SIGTERM/SIGINT.
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

MODES = {"tcp": None, "http": "http"}  # --mode -> Service.app_protocol


async def main(
    listen: str, backends: list[str], mode: str, head_cache: int = 256, idle_fault: bool = False
) -> None:
    host, port = listen.rsplit(":", 1)
    svc = Service(
        name="api",
        type=ServiceType.BACKEND_SERVICE,
        manifest_path=Path("/dev/null"),
        port=int(port),
        target_port=int(port),
        connect=Connect(enabled=True),
        app_protocol=MODES[mode],
    )
    ws = Workspace(Path("/tmp"), "bench", {}, {"api": Path("/dev/null")})
    spec = EnvironmentSpec(ws, Environment("test", None), (svc,))
    naming = NamingModel(spec, vips={"api": host})
    (endpoint,) = naming.sc_endpoints
    assert endpoint.protocol.value == mode, endpoint
    registry = ReplicaRegistry()
    for i, b in enumerate(backends, 1):
        addr, bport = b.rsplit(":", 1)
        registry.upsert(Replica("api", i, f"c{i}", addr, int(bport)))
    proxy = ServiceConnectProxy(naming, registry, host, ProxySettings(head_cache=head_cache))
    if idle_fault:
        from meshlocal.faults import Fault, Kind

        proxy.engine.faults.add(Fault("other", Kind.LATENCY, latency_ms=100.0))
    await proxy.start()
    bound = proxy.bound("api")
    print(f"ready {mode} {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True, help="the endpoint's VIP:port")
    parser.add_argument("--backend", action="append", required=True, help="a replica's ip:port")
    parser.add_argument("--mode", choices=sorted(MODES), default="http")
    parser.add_argument("--head-cache", type=int, default=256, help="http: 0 parses every head")
    parser.add_argument("--idle-fault", action="store_true", help="a fault on another service")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main(args.listen, args.backend, args.mode, args.head_cache, args.idle_fault))
