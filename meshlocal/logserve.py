"""The controller's answer to the data plane asking for a replica's last log lines.

The mesh page shows them (dashboard/logs.py says what may be shown). Only
containers of this mesh are read: replicas and client-only members the
controller runs, never any other container on the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from meshlocal.dashboard.logs import redact, redactor, secret_values, tail_of
from meshlocal.link import LinkClosed, send

if TYPE_CHECKING:
    from meshlocal.mesh import Controller

# Engine reads at once; past it a request is answered "busy" at once: a data
# plane (which a hostile replica could take over) cannot queue work without end.
MAX_READS = 4
_reading = 0


async def answer(message: dict[str, Any], writer: asyncio.StreamWriter, mesh: Controller) -> None:
    cid = str(message.get("container_id") or "")
    registry = mesh.registry
    # Starting replicas are not in the registry yet, and their logs matter most.
    starting = mesh.reconciler.starting() if mesh.reconciler else []
    ours = bool(cid) and (
        registry.get(cid) is not None
        or any(r.container_id == cid for r in [*registry.clients(), *starting])
    )
    global _reading
    lines: list[str] = []
    error: str | None = None
    if not ours:
        error = f"container {cid[:12]!r} is no replica of this mesh"
    elif _reading >= MAX_READS:
        error = "busy: too many log reads at once, try again"
    else:
        _reading += 1
        try:
            raw = await asyncio.to_thread(mesh.engine.logs, cid, tail_of(message.get("tail")))
        finally:
            _reading -= 1
        lines = redact(raw, redactor(secret_values(mesh.config.spec)))
        if not raw:
            error = "it printed nothing (or it is gone)"
    reply = {"t": "logs", "id": message.get("id"), "lines": lines, "error": error, "ours": ours}
    with contextlib.suppress(ConnectionError, RuntimeError, LinkClosed):
        await send(writer, reply)
