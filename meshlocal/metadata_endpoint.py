"""The data plane's task metadata endpoint: HTTP around metadata.py's documents.

`/v4/<task>-<n>` (and `/task`, and v3) answers only the task's own address:
sidecars share it, any other replica gets 403. An id not known yet is waited
for briefly: the controller reports a container a few milliseconds after it
starts, and an app may ask at its first instruction.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from aiohttp import web

from meshlocal.metadata import (
    Context,
    TaskContainer,
    TaskRecord,
    Version,
    container_document,
    split_id,
    task_document,
)

UNKNOWN_WAIT_S = 2.0


class MetadataEndpoint:
    def __init__(
        self, context: Callable[[], Context | None], wait_s: float = UNKNOWN_WAIT_S
    ) -> None:
        self._context = context  # the current configuration's, read on every request
        self.tasks: dict[str, TaskRecord] = {}
        self.wait_s = wait_s
        self._updated = asyncio.Event()

    def update(self, records: Iterable[TaskRecord]) -> None:
        self.tasks = {r.task_id: r for r in records}
        self._updated.set()  # wakes the requests waiting for an id
        self._updated = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        for version in ("v3", "v4"):
            base = f"/{version}/{{ident}}"
            app.router.add_get(base, self._container)
            app.router.add_get(base + "/task", self._task)
            app.router.add_get(base + "/stats", self._no_stats)
            app.router.add_get(base + "/task/stats", self._no_stats)
        return app

    async def _find(self, ident: str) -> tuple[TaskRecord, TaskContainer] | None:
        parts = split_id(ident)
        if parts is None:
            return None
        deadline = time.monotonic() + self.wait_s
        while True:
            task = self.tasks.get(parts[0])
            found = task.container(parts[1]) if task is not None else None
            if task is not None and found is not None and task.address:
                return task, found
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._updated.wait(), left)

    async def _resolve(
        self, request: web.Request
    ) -> tuple[Context, TaskRecord, TaskContainer, Version] | web.Response:
        ctx = self._context()
        found = await self._find(request.match_info["ident"])
        if ctx is None or found is None:
            return web.json_response({"error": "no such container"}, status=404)
        task, container = found
        if _peer(request.remote) != task.address:
            # Fargate's endpoint tells tasks apart by their address; so does this one.
            return web.json_response(
                {"error": "the metadata of a task answers that task's own address only"},
                status=403,
            )
        version: Version = "v3" if request.path.startswith("/v3/") else "v4"
        return ctx, task, container, version

    async def _container(self, request: web.Request) -> web.Response:
        got = await self._resolve(request)
        if isinstance(got, web.Response):
            return got
        ctx, task, container, version = got
        return web.json_response(container_document(ctx, task, container, version))

    async def _task(self, request: web.Request) -> web.Response:
        got = await self._resolve(request)
        if isinstance(got, web.Response):
            return got
        ctx, task, _container, version = got
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response(task_document(ctx, task, now, version))

    async def _no_stats(self, request: web.Request) -> web.Response:
        got = await self._resolve(request)
        if isinstance(got, web.Response):
            return got
        # Docker stats need the engine, which the data plane never holds.
        return web.json_response({"error": "meshlocal serves no container stats"}, status=404)


def _peer(remote: str | None) -> str:
    if not remote:
        return ""
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)
