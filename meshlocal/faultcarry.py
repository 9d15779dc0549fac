"""`up` and the faults of a running mesh (the CLI's side of faultstore.py).

A data plane replaced by `up` (a new meshlocal, new published ports) starts
with the declared faults only: the runtime faults of the one it replaces are
read before and handed to it after, so none is lost silently. A kept data
plane gets the declared faults `fault rm` removed back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meshlocal.adminapi import AdminRefused, admin_call
from meshlocal.errors import MeshlocalError, MeshNotRunning

if TYPE_CHECKING:
    from meshlocal.dataplanes import DataPlane, PlaneFinder
    from meshlocal.deployment import Deployment

RETRY_S = 0.2  # between two restore calls a data plane not yet configured refused (503)


@dataclass
class Carried:
    """The runtime faults read from the running data plane, or why they couldn't be."""

    faults: list[dict[str, Any]] = field(default_factory=list)
    unread: str | None = None  # a data plane ran and didn't answer: its faults are unknown


def runtime_faults(dep: Deployment) -> Carried:
    """The running data plane's runtime faults (none when nothing runs)."""
    try:
        admin = dep.dataplane().admin_url
    except MeshNotRunning:
        return Carried()
    try:
        doc = admin_call(admin, "/v1/faults", timeout=5.0)
    except MeshlocalError as exc:
        return Carried(unread=exc.message)
    faults = doc.get("faults") if isinstance(doc, dict) else None
    return Carried([f for f in faults or [] if isinstance(f, dict) and not f.get("declared")])


def restore(
    planes: PlaneFinder,
    plane: DataPlane,
    carried: Carried,
    timeout: float,
    progress: Callable[[str], None],
) -> None:
    """The declared faults back, the carried ones added; a warning for each dropped."""
    if carried.unread is not None:
        progress(
            "warning: the runtime faults of the running data plane could not be read "
            f"({carried.unread}): if it was replaced, they are gone (`meshlocal fault ls`)"
        )
    try:
        planes.wait_admin(plane.admin_url, timeout)  # a new data plane may not answer yet
        done = _restore(plane.admin_url, carried.faults, timeout)
    except MeshlocalError as exc:
        if carried.faults:
            ids = ", ".join(str(f.get("id")) for f in carried.faults)
            progress(f"warning: faults {ids} could not be carried over: {exc.message}")
        else:
            progress(f"warning: the declared faults could not be restored: {exc.message}")
        return
    for note in done.get("notes") or [] if isinstance(done, dict) else []:
        progress(f"warning: {note}")


def _restore(admin: str, faults: list[dict[str, Any]], timeout: float) -> Any:
    """POST /v1/faults/restore; a 503 (the data plane has no configuration yet) is
    asked again until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin_call(admin, "/v1/faults/restore", {"faults": faults}, 10.0)
        except AdminRefused as exc:
            if exc.status != 503 or time.monotonic() > deadline:
                raise
        time.sleep(RETRY_S)
