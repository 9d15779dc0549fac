"""Run the proxy in its own process so a test can watch its memory.

python tests/proxy/serve.py 127.0.0.42:PORT 127.0.0.41:BACKEND_PORT
"""

from __future__ import annotations

import asyncio
import sys
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


async def main(listen: str, backend: str) -> None:
    host, port = listen.rsplit(":", 1)
    svc = Service(
        name="api",
        type=ServiceType.BACKEND_SERVICE,
        manifest_path=Path("/ws/copilot/api/manifest.yml"),
        port=8080,
        target_port=8080,
        connect=Connect(enabled=True),
    )
    ws = Workspace(Path("/ws"), "shop", {}, {"api": svc.manifest_path})
    registry = ReplicaRegistry()
    address, bport = backend.rsplit(":", 1)
    registry.upsert(Replica("api", 1, "c1", address, int(bport)))
    proxy = ServiceConnectProxy(
        NamingModel(EnvironmentSpec(ws, Environment("test", None), (svc,))),
        registry,
        host,
        ProxySettings(port_map={8080: int(port)}),
    )
    await proxy.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    await proxy.stop()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main(sys.argv[1], sys.argv[2]))
