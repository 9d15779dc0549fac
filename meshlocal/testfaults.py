"""Faults from tests: `with mesh.fault("api", latency="200ms", percent=30) as f: ...`.

The fault is added through the data plane's admin API when the `with` block
starts and removed when it ends, also when the block raises: a failing test
never leaves a fault for the next one. Field names are the CLI's and the
admin API's, in Python spelling (`from_`, `reset_after`, `grpc_status`,
`dns_name`); durations are strings (`"200ms"`, `"1.5s"`), numbers of
milliseconds, or `datetime.timedelta`; bandwidth `"64KB/s"` or a number of
KB/s (Toxiproxy's unit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any

from meshlocal.adminapi import AdminRefused, add_fault, fault_refusal, list_faults, remove_fault
from meshlocal.errors import FaultError, MeshlocalError

__all__ = ["ActiveFault", "FaultContext", "FaultError", "fault_fields"]

_PYTHON_NAMES = {"from_": "from", "source": "from"}


def fault_fields(service: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The admin API's fields for `mesh.fault(service, **fields)`; the shape checked here
    (FaultError for a typo or a bad value before anything is sent)."""
    from meshlocal.faultparse import parse_fault

    raw: dict[str, Any] = {"service": service}
    for key, value in fields.items():
        if value is None or value is False:
            continue  # not asked for: as the CLI leaves a flag out
        if isinstance(value, timedelta):
            value = value.total_seconds() * 1000
        raw[_PYTHON_NAMES.get(key, key)] = value
    parse_fault(raw)
    return raw


class ActiveFault:
    """A fault in force: its id and what it was when added; `hits()` and `seen()` live."""

    def __init__(self, admin: Callable[[], str], doc: Mapping[str, Any]) -> None:
        self._admin = admin
        self.fault: dict[str, Any] = dict(doc)  # Fault.to_json() + description, as added
        self.id: str = str(doc["id"])
        self.removed = False

    @property
    def description(self) -> str:
        return str(self.fault.get("description", self.fault["kind"]))

    def snapshot(self) -> dict[str, Any]:
        """The fault as the data plane has it now (`seen`, `hits` included)."""
        for doc in list_faults(self._admin()):
            if doc["id"] == self.id:
                return doc
        raise FaultError(
            f"fault {self.id} ({self.description}) is no longer active",
            hint="removed by `meshlocal fault rm`, mesh.clear_faults(), or `up` (declared ones)",
        )

    def hits(self) -> int:
        """Connections, requests or DNS queries it has affected."""
        return int(self.snapshot()["hits"])

    def seen(self) -> int:
        """Connections, requests or DNS queries it was drawn for (affected or not)."""
        return int(self.snapshot()["seen"])

    def remove(self) -> bool:
        """Remove it now; False when it was already gone. Idempotent."""
        if self.removed:
            return False
        try:
            remove_fault(self._admin(), self.id)
        except AdminRefused as exc:
            if exc.status != 404:
                raise
            self.removed = True
            return False
        self.removed = True  # not before: a data plane that didn't answer may be asked again
        return True

    def __repr__(self) -> str:
        return f"<ActiveFault {self.id}: {self.description}>"


class FaultContext:
    """What `mesh.fault(...)` returns: adds on `__enter__`, removes on `__exit__`."""

    def __init__(self, admin: Callable[[], str], fields: dict[str, Any]) -> None:
        self._admin = admin
        self.fields = fields
        self.active: ActiveFault | None = None

    def __enter__(self) -> ActiveFault:
        try:
            doc = add_fault(self._admin(), self.fields)
        except AdminRefused as exc:
            raise fault_refusal(exc) from None
        self.active = ActiveFault(self._admin, doc)
        return self.active

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.active is None:
            return
        try:
            self.active.remove()
        except MeshlocalError:
            if exc is None:
                raise
            # The body's own failure is the one to report (a mesh gone down, say).
