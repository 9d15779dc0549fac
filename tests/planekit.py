"""An in-process data plane on loopback for tests: a workspace, its serving
configuration, and the controller's end of a real link (a socket pair)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshlocal.link import LINE_LIMIT, ServingConfig, receive, send
from meshlocal.manifest.model import EnvironmentSpec
from meshlocal.manifest.validate import load_environment
from meshlocal.naming import NamingModel
from meshlocal.serving import DataPlane, Listen

MANIFEST = """\
name: {name}
type: Backend Service
image:
  location: busybox
{port}
network:
  connect: true
"""


def workspace(
    root: Path, faults: str = "", services: tuple[str, ...] = ("api", "front", "tcp")
) -> Path:
    copilot = root / "copilot"
    (copilot / "environments" / "test").mkdir(parents=True, exist_ok=True)
    (copilot / ".workspace").write_text("application: shop\n")
    (copilot / "environments" / "test" / "manifest.yml").write_text(
        "name: test\ntype: Environment\n"
    )
    ports = {"api": "  port: 18080", "tcp": "  port: 19000", "front": ""}
    for name in ("api", "front", "tcp"):
        path = copilot / name / "manifest.yml"
        if name in services:
            path.parent.mkdir(exist_ok=True)
            path.write_text(MANIFEST.format(name=name, port=ports[name]))
        elif path.exists():
            path.unlink()
            path.parent.rmdir()
    config = "services: {api: {app_protocol: http}}\n"
    if faults:
        config += "environments:\n  test:\n    faults:\n" + faults
    (copilot / ".meshlocal.yml").write_text(config)
    return root


def load(root: Path) -> EnvironmentSpec:
    return load_environment(root, "test", environ={})


def serving(spec: EnvironmentSpec, base: int = 60) -> ServingConfig:
    names = sorted(NamingModel(spec).endpoint_names)
    vips = {name: f"127.0.{base}.{i + 1}" for i, name in enumerate(names)}
    return ServingConfig("p", spec, "127.0.0.1", vips=vips)


def listen() -> Listen:
    return Listen(
        mode="host",
        bind="127.0.0.1",
        public_host="127.0.0.1",
        public_port=0,
        admin_host="127.0.0.1",
        admin_port=0,
        dns_port=0,
        metadata_port=0,
    )


class Controller:
    """The controller's end of one link, over a real socket pair."""

    def __init__(self, dp: DataPlane) -> None:
        self.dp = dp
        self.messages: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Controller:
        ours, theirs = socket.socketpair()
        r1, w1 = await asyncio.open_connection(sock=theirs, limit=LINE_LIMIT)
        self.reader, self.writer = await asyncio.open_connection(sock=ours, limit=LINE_LIMIT)
        self._task = asyncio.create_task(self.dp.handle_link(r1, w1))
        return self

    async def __aexit__(self, *_: object) -> None:
        self.writer.close()
        assert self._task is not None
        await asyncio.wait_for(self._task, 5)

    async def expect(
        self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda m: True
    ) -> dict[str, Any]:
        async with asyncio.timeout(5):
            while True:
                message = await receive(self.reader)
                self.messages.append(message)
                if message.get("t") == kind and where(message):
                    return message

    async def configure(self, config: ServingConfig, ident: int = 1) -> dict[str, Any]:
        await send(self.writer, {"t": "config", "id": ident, "config": config.to_jsonable()})
        return await self.expect("ack", lambda m: m.get("id") == ident)
