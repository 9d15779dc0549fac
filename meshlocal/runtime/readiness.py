"""Readiness: whether the desired replicas serve, and what `ps` and `up` report.

The reconciler's part that answers "converged yet?" (`all_ready`,
`wait_ready`) and counts replicas starting or not yet started. Apart from
the work that changes those answers.
"""

from __future__ import annotations

import asyncio
import time

from meshlocal.errors import RuntimeFailure
from meshlocal.registry import Replica
from meshlocal.runtime.backoff import Crash
from meshlocal.runtime.restarts import Restarts


class Readiness(Restarts):
    def starting(self) -> list[Replica]:
        """Running replicas not yet healthy: not in the registry, shown by `ps`."""
        return sorted(self._pending.values(), key=lambda r: (r.service, r.index))

    def pending_starts(self, service: str) -> int:
        """Replicas of `service` queued to start: neither running, starting nor backing off."""
        d = self.desired.get(service)
        if d is None:
            return 0
        here = {r.index for r in self.registry.for_service(service)}
        here |= {r.index for r in self._pending.values() if r.service == service}
        now = time.monotonic()
        waiting = {
            idx
            for (svc, idx), slot in self._slots.items()
            if svc == service and idx not in here and slot.waiting(now) > 0
        }
        return max(0, d.count - len(here) - len(waiting))

    def all_ready(self) -> bool:
        return all(self.service_ready(name) for name in self.desired)

    def service_ready(self, name: str) -> bool:
        """Converged: `count` replicas of the current definition in rotation, nothing under way."""
        d = self.desired.get(name)
        if d is None:
            return True
        if self._queued.get(name) or name in self._busy:
            return False  # a converge is under way: not settled yet
        ready = [
            r
            for r in self.view.in_rotation(name)
            if self._hash_of.get(r.container_id) == self._hashes[name]
        ]
        return len(ready) >= d.count

    async def wait_ready(self, timeout: float, settle_s: float = 1.0) -> None:
        """Return once every desired replica is in rotation; else RuntimeFailure saying why.

        Ready must hold for `settle_s` without a change: a replica without a
        health check counts as ready once running, and a crash-looping one is
        running for an instant.
        """
        changed = asyncio.Event()
        unsubscribe = self._on_any_change(changed.set)
        deadline = time.monotonic() + timeout
        try:
            while True:
                crashes = self.crashes()
                if crashes:
                    raise _crash_error(crashes)
                left = deadline - time.monotonic()
                ready = self.all_ready()
                if left <= 0:
                    if ready:
                        return
                    raise RuntimeFailure(
                        f"replicas were not healthy within {timeout:.0f} s: {self._summary()}",
                        hint="`meshlocal logs SVC` shows what they print",
                    )
                changed.clear()
                wait = min(left, settle_s if ready else 1.0)
                try:
                    await asyncio.wait_for(changed.wait(), timeout=wait)
                except TimeoutError:
                    if ready and self.all_ready() and not self.crashes():
                        return  # stayed ready for settle_s
        finally:
            unsubscribe()

    def _summary(self) -> str:
        parts = []
        for name, d in sorted(self.desired.items()):
            ready = len(self.view.in_rotation(name))
            starting = sum(1 for r in self._pending.values() if r.service == name)
            queued = self.pending_starts(name)
            more = f" ({starting} starting)" if starting else ""
            more += f" ({queued} not started)" if queued else ""
            parts.append(f"{name} {ready}/{d.count} healthy{more}")
        return ", ".join(parts)


def _crash_error(crashes: list[Crash]) -> RuntimeFailure:
    first = crashes[0]
    logs = "\n".join(f"    {line}" for line in first.last_logs[-10:]) or "    (no output)"
    return RuntimeFailure(
        f"{first.service}-{first.index} keeps crashing (exited {first.exit_code}, "
        f"{first.count} times in a row)",
        hint=f"its last log lines:\n{logs}",
    )
