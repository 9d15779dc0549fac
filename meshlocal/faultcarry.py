"""`up` and the faults of a running mesh (the CLI's side of faultstore.py).

A data plane replaced by `up` (a new meshlocal, new published ports) starts
with the declared faults only: the runtime faults of the one it replaces are
read before and handed to it after, so none is lost silently. A kept data
plane gets the declared faults `fault rm` removed back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshlocal.adminapi import admin_call
from meshlocal.errors import MeshlocalError

if TYPE_CHECKING:
    from meshlocal.dataplanes import DataPlane, PlaneFinder
    from meshlocal.deployment import Deployment


def runtime_faults(dep: Deployment) -> list[dict[str, Any]]:
    """The running data plane's runtime faults (none when nothing runs)."""
    try:
        doc = admin_call(dep.dataplane().admin_url, "/v1/faults", timeout=5.0)
    except MeshlocalError:
        return []
    faults = doc.get("faults") if isinstance(doc, dict) else None
    return [f for f in faults or [] if isinstance(f, dict) and not f.get("declared")]


def restore(
    planes: PlaneFinder,
    plane: DataPlane,
    carried: list[dict[str, Any]],
    timeout: float,
    progress: Callable[[str], None],
) -> None:
    """The declared faults back, the carried ones added; a warning for each dropped."""
    try:
        if carried:  # a new data plane may not answer yet
            planes.wait_admin(plane.admin_url, timeout)
        done = admin_call(plane.admin_url, "/v1/faults/restore", {"faults": carried}, 10.0)
    except MeshlocalError as exc:
        if carried:
            ids = ", ".join(str(f.get("id")) for f in carried)
            progress(f"warning: faults {ids} could not be carried over: {exc.message}")
        return
    for note in done.get("notes") or [] if isinstance(done, dict) else []:
        progress(f"warning: {note}")
