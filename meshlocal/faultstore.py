"""The data plane's faults: the live table, its admin API, and what survives a restart.

One `FaultStore` per data plane. Its table is the one the proxy and the DNS
server consult. Two sources fill it:

- declared faults, from copilot/.meshlocal.yml through the configuration
  (`declared=True`): every configuration replaces them; one removed through
  the API stays removed (`suppressed`) until the next `up` puts it back
  (`restore_declared`);
- runtime faults, from the admin API: kept across configurations as long
  as they still check against the workspace (a dropped one is a note `up`
  prints).

Restarts (link.py has the messages): after every change the data plane
reports its set to the controller, which keeps the last report (on its
disk too: a restart of both loses nothing). A data
plane that starts again gets that report back before its first
configuration and takes its runtime faults and suppressed ids; one that
already has its own set (the controller restarted) keeps it, and its next
report teaches the new controller. `up` reads a data plane it replaces and
hands its runtime faults to the new one (faultcarry.py). Counters start
again at 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from meshlocal.errors import FaultError
from meshlocal.faultparse import check, parse_fault, rebuild_all
from meshlocal.faults import Fault, FaultTable
from meshlocal.link import FaultReport
from meshlocal.naming import NamingModel

log = logging.getLogger("meshlocal.dataplane")


def merge_faults(
    declared: Iterable[Fault],
    runtime: Iterable[Fault],
    suppressed: Iterable[str],
    naming: NamingModel,
) -> tuple[list[Fault], list[str]]:
    """The set a data plane injects under `naming`, and a note for each fault it drops.

    Declared faults first (less the suppressed), then runtime ones; a runtime
    fault with a declared fault's id gives way to it. Every fault must still
    check against the workspace: a service or endpoint may have gone.
    """
    notes: list[str] = []
    keep: list[Fault] = []
    ids: set[str] = set()
    hidden = set(suppressed)
    for fault in declared:
        if fault.id in hidden:
            continue
        try:
            keep.append(check(fault, naming))
        except FaultError as exc:
            notes.append(
                f"declared fault {fault.id} ({_what(fault)}) is not injected: {exc.message}"
            )
            continue
        ids.add(fault.id)
    for fault in runtime:
        if fault.id in ids:
            notes.append(f"fault {fault.id} ({_what(fault)}) gives way to the declared one")
            continue
        try:
            keep.append(check(fault, naming))
        except FaultError as exc:
            notes.append(f"fault {fault.id} ({_what(fault)}) is removed: {exc.message}")
            continue
        ids.add(fault.id)
    return keep, notes


def _what(fault: Fault) -> str:
    return f"{fault.scope()}: {fault.describe()}"


class FaultStore:
    """The faults of one data plane, and the rules that change them."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.table = FaultTable()
        self.naming: NamingModel | None = None
        self.declared: tuple[Fault, ...] = ()  # the configuration's
        self.suppressed: set[str] = set()  # declared ids removed through the API
        self.loaded = False  # a configuration applied: the set is this process's own
        self._restored: list[Fault] = []  # runtime faults the controller kept for us
        self._on_change = on_change

    # -- the controller's side -----------------------------------------------------

    def restore(self, report: FaultReport) -> bool:
        """The set a previous run of this data plane had; taken only before the first
        configuration (a running data plane's own set wins)."""
        if self.loaded:
            return False
        self._restored = [f for f in report.faults if not f.declared]
        self.suppressed = set(report.suppressed)
        return True

    def configure(
        self, naming: NamingModel, declared: Iterable[Fault], carried: Iterable[Fault] = ()
    ) -> list[str]:
        """A (new) configuration: declared faults replaced, runtime ones re-checked;
        `carried`: runtime faults of a data plane this one replaced, unless it has their id."""
        declared = tuple(declared)
        runtime = (
            [f for f in self.table.faults() if not f.declared] if self.loaded else self._restored
        )
        ids = {f.id for f in runtime}
        runtime = [*runtime, *(f for f in carried if not f.declared and f.id not in ids)]
        self.suppressed &= {f.id for f in declared}
        keep, notes = merge_faults(declared, runtime, self.suppressed, naming)
        for note in notes:
            log.warning("%s", note)
        self.table.replace_all(keep, naming)
        self.naming, self.declared, self.loaded, self._restored = naming, declared, True, []
        self._on_change()
        return notes

    def report(self) -> FaultReport:
        return FaultReport(tuple(self.table.faults()), tuple(sorted(self.suppressed)))

    # -- the admin API's side ------------------------------------------------------

    def add(self, raw: Mapping[str, Any]) -> Fault:
        """A runtime fault from loose fields; FaultError and nothing changed if it's wrong."""
        fault = parse_fault(raw)
        if self.naming is None:
            raise FaultError("the data plane has no configuration yet", hint="try again")
        fault = check(fault, self.naming)
        current = self.table.get(fault.id) if fault.id else None
        if current is not None and current.fault.declared:
            raise FaultError(
                f"fault {fault.id} is declared in copilot/.meshlocal.yml",
                hint=f"pick another id, or remove it first (meshlocal fault rm {fault.id})",
            )
        fault = self.table.add(fault, self.naming)
        log.info("fault %s added: %s", fault.id, _what(fault))
        self._on_change()
        return fault

    def remove(self, ident: str) -> Fault | None:
        fault = self.table.remove(ident, self.naming)
        if fault is not None:
            if fault.declared:
                self.suppressed.add(fault.id)  # until the next `up`
            log.info("fault %s removed", fault.id)
            self._on_change()
        return fault

    def clear(self) -> list[Fault]:
        gone = self.table.clear(self.naming)
        if gone:
            self.suppressed |= {f.id for f in gone if f.declared}
            log.info("every fault removed (%d)", len(gone))
            self._on_change()
        return gone

    def restore_declared(self, carried: Iterable[Fault] = ()) -> list[str] | None:
        """`up`: the declared faults removed through the API come back, and the runtime
        faults of the data plane this one replaced (an upgrade) join its own. None, and
        nothing changed, before the first configuration: the caller asks again."""
        if self.naming is None:
            return None
        self.suppressed.clear()
        return self.configure(self.naming, self.declared, carried)


# -- the admin API's routes -----------------------------------------------------------


def add_routes(app: web.Application, store: FaultStore, prefix: str = "/v1") -> None:
    """GET/POST/DELETE {prefix}/faults, DELETE {prefix}/faults/{id}, and
    POST {prefix}/faults/restore {"faults": [...]} (`up`: the declared faults back,
    and those a replaced data plane had)."""

    async def listing(_: web.Request) -> web.Response:
        return web.json_response({"faults": store.table.snapshot()})

    async def add(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error("the body must be a JSON object of fault fields", 400)
        try:
            fault = store.add(body)
        except FaultError as exc:
            return _error(exc.render(), 400)
        active = store.table.get(fault.id)
        assert active is not None
        return web.json_response({"fault": active.snapshot()})

    async def remove(request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        active = store.table.get(ident)
        snapshot = active.snapshot() if active else None
        if snapshot is None or store.remove(ident) is None:
            known = ", ".join(f.id for f in store.table.faults()) or "none"
            return _error(FaultError(f"no fault {ident!r}", hint=f"faults: {known}").render(), 404)
        return web.json_response({"removed": [snapshot]})

    async def remove_all(_: web.Request) -> web.Response:
        snapshots = store.table.snapshot()
        store.clear()
        return web.json_response({"removed": snapshots})

    async def restore(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            body = None
        items = body.get("faults") or [] if isinstance(body, dict) else None
        if not isinstance(items, list):
            return _error('the body must be {"faults": [fault, ...]}', 400)
        skipped: list[str] = []
        carried = rebuild_all(items, skipped.append)
        for note in skipped:
            log.warning("restore: %s", note)
        notes = store.restore_declared(carried)
        if notes is None:
            return _error("the data plane has no configuration yet: try again", 503)
        return web.json_response({"faults": store.table.snapshot(), "notes": skipped + notes})

    app.router.add_get(f"{prefix}/faults", listing)
    app.router.add_post(f"{prefix}/faults", add)
    app.router.add_delete(f"{prefix}/faults", remove_all)
    app.router.add_post(f"{prefix}/faults/restore", restore)
    app.router.add_delete(f"{prefix}/faults/{{id}}", remove)


def _error(text: str, status: int) -> web.Response:
    return web.json_response({"error": text}, status=status)
