"""The controller's answer to the data plane asking for a replica's last log lines.

The mesh page shows them (dashboard/logs.py says what may be shown). Only
containers of this mesh are read: replicas and client-only members the
controller runs, never any other container on the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from meshlocal.dashboard.logs import redact, redactor, secret_values, tail_of
from meshlocal.link import LinkClosed, send
from meshlocal.manifest.model import EnvironmentSpec
from meshlocal.registry import ReplicaRegistry
from meshlocal.runtime.engine import Engine


async def answer(
    message: dict[str, Any],
    writer: asyncio.StreamWriter,
    *,
    engine: Engine,
    registry: ReplicaRegistry,
    spec: EnvironmentSpec,
    starting: Iterable[str] = (),
) -> None:
    """`starting`: the replicas not in the registry yet (their logs matter most)."""
    cid = str(message.get("container_id") or "")
    ours = (
        registry.get(cid) is not None
        or any(c.container_id == cid for c in registry.clients())
        or (bool(cid) and cid in set(starting))
    )
    lines: list[str] = []
    error: str | None = None
    if not ours:
        error = f"container {cid[:12]!r} is no replica of this mesh"
    else:
        raw = await asyncio.to_thread(engine.logs, cid, tail_of(message.get("tail")))
        lines = redact(raw, redactor(secret_values(spec)))
        if not raw:
            error = "it printed nothing (or it is gone)"
    reply = {"t": "logs", "id": message.get("id"), "lines": lines, "error": error, "ours": ours}
    with contextlib.suppress(ConnectionError, RuntimeError, LinkClosed):
        await send(writer, reply)
