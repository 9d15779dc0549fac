"""Replacing replicas that die or turn unhealthy, with back-off, as ECS does.

The reconciler's part that reacts to a replica's death (keeping the dead
container, stopped, for `logs`; restarting it now or after a back-off,
see backoff.py), stops a replica whose health check fails, and forgets a
replica's crashes once it stays up. Apart from the event dispatch that
calls it and the rolls that read its records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from meshlocal.errors import MeshlocalError
from meshlocal.registry import Replica
from meshlocal.runtime import labels as L
from meshlocal.runtime.backoff import KEPT_SUFFIX, STABLE_AFTER_S, Crash, Slot
from meshlocal.runtime.engine import ContainerEvent
from meshlocal.runtime.replicatasks import ReplicaTasks


class Restarts(ReplicaTasks):
    def crashes(self) -> list[Crash]:
        """Replicas that died CRASH_LOOP_AFTER times in a row without recovering."""
        return [c for c in self.restarting() if c.looping]

    def restarting(self) -> list[Crash]:
        """Every replica that died and has not recovered since: `ps` shows them."""
        now = time.monotonic()
        return [
            Crash(
                svc,
                idx,
                slot.last_exit,
                slot.failures,
                list(slot.last_logs),
                retry_in=slot.waiting(now),
                kept=slot.kept,
                health=slot.health,
            )
            for (svc, idx), slot in sorted(self._slots.items())
            if slot.failures and svc in self.desired and idx <= self.desired[svc].count
        ]

    def _healthy(self, cid: str, event: ContainerEvent | None) -> None:
        replica = self.registry.get(cid)
        if replica is not None and (replica.service, replica.index) in self._slots:
            self._recover_later(replica)
        self._resolve_waiter(cid, True)

    def _recover_later(self, replica: Replica) -> None:
        # Recovered only once it stays up: a crash loop is "healthy" for an instant.
        # One check per replica: every converge asks again while it waits.
        if replica.container_id in self._recovering:
            return
        self._recovering.add(replica.container_id)

        async def check() -> None:
            self._recovering.discard(replica.container_id)
            await self._recovered(replica)

        self._later(STABLE_AFTER_S, lambda: self._spawn(check()))

    def _later(self, delay: float, callback: Callable[[], object]) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            if not self._closing:
                callback()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    async def _recovered(self, replica: Replica) -> None:
        slot = self._slots.get((replica.service, replica.index))
        if slot is None or self.registry.get(replica.container_id) is None:
            return  # it died meanwhile: still crashing
        if self._hash_of.get(replica.container_id) != self._hashes.get(replica.service):
            return  # an old replica still serving during a roll: not the one that crashed
        kept = slot.kept
        del self._slots[(replica.service, replica.index)]
        if kept:
            await self._thread(self.engine.remove, kept)
        self.on_change(f"{replica.name} recovered")

    async def _replace_unhealthy(self, event: ContainerEvent) -> None:
        """Stop a replica whose check failed, keeping the check's own words for `ps`."""
        cid = event.container_id
        report = await self._thread(self.engine.health_report, cid)
        service, index = event.service, event.labels.get(L.REPLICA, "")
        if service is not None and index.isdigit():
            slot = self._slot(service, int(index))
            slot.health, slot.stopped = report, cid
        why = f": {report.describe()}" if report else ""
        self.on_change(f"{event.name} is unhealthy{why}; replacing it")
        await self._thread(self.engine.stop, cid, self.stop_timeout_s)

    async def _prune_slots(self, service: str) -> None:
        """Restart records of replicas no longer wanted go, with their kept containers;
        one whose index serves again recovers once it stays up."""
        d = self.desired.get(service)
        for (svc, idx), slot in list(self._slots.items()):
            if svc != service:
                continue
            if d is None or idx > d.count:
                del self._slots[(svc, idx)]
                if slot.kept:
                    await self._thread(self.engine.remove, slot.kept)
                continue
            current = self._hashes.get(svc)
            for r in self.view.for_service(svc):
                fresh = self._hash_of.get(r.container_id) == current
                if r.index == idx and r.in_rotation and fresh:
                    self._recover_later(r)

    def _slot(self, service: str, index: int) -> Slot:
        return self._slots.setdefault((service, index), Slot())

    async def _died(self, event: ContainerEvent) -> None:
        cid = event.container_id
        self._hash_of.pop(cid, None)
        await self._remove_task(event.labels, keep=cid)
        if cid in self._expected_stop or self._closing:
            self._expected_stop.discard(cid)
            await self._thread(self.engine.remove, cid)
            return
        service = event.service
        raw_index = event.labels.get(L.REPLICA, "")
        if service is None or not raw_index.isdigit() or service not in self.desired:
            return
        index = int(raw_index)
        logs = await self._thread(self.engine.logs, cid, 20)
        slot = self._slot(service, index)  # after the await: pruning may have replaced it
        delay = slot.died(event.exit_code, logs, time.monotonic(), unhealthy=cid == slot.stopped)
        # Keep the dead container, stopped and out of the way of its successor's
        # name, so `meshlocal logs` shows why; the one kept before it goes.
        kept = L.container_name(self.project, self.env, service, index) + KEPT_SUFFIX
        await self._thread(self.engine.remove, kept)
        try:
            await self._thread(self.engine.rename, cid, kept)
            slot.kept = kept
        except MeshlocalError:
            await self._thread(self.engine.remove, cid)  # gone already, or renamed meanwhile
            slot.kept = None
        when = f"in {delay:.0f} s" if delay else "now"
        self.on_change(f"{service}-{index} exited ({event.exit_code}): restarting it {when}")
        if delay:
            self._later(delay, lambda: self.request_converge(service))
            return
        await self.converge(service)
