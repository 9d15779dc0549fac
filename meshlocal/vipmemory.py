"""The Service Connect addresses an environment's endpoints keep across data planes.

Apart from Deployment (and from vips.py, which hands out the addresses)
because keeping them is a matter of memory: a replica keeps the address it
was told an endpoint has, so a restarted or replaced data plane must hand
out the same ones. They are read from the running data plane, else from
the `.vips` state file, which outlives one replaced while it doesn't answer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshlocal.errors import MeshlocalError


def current(state: Callable[[], dict[str, Any]], files: Callable[[str], Path]) -> dict[str, str]:
    """Endpoint -> address: the running data plane's (`state`), else the last one remembered.

    `files`: the environment's state file of a suffix, asked only when needed.
    """
    try:
        services = state()["services"]
    except MeshlocalError:
        with contextlib.suppress(OSError, ValueError):
            kept = json.loads(files(".vips").read_text())
            if isinstance(kept, dict):
                return {str(k): str(v) for k, v in kept.items()}
        return {}
    return {
        s["connect"]["name"]: s["connect"]["vip"]
        for s in services.values()
        if s.get("connect") and s["connect"].get("vip")
    }


def remember(vips: Mapping[str, str], files: Callable[[str], Path]) -> None:
    """Keep `vips` in the `.vips` state file, when there are any."""
    if vips:
        path = files(".vips")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(vips, sort_keys=True))
