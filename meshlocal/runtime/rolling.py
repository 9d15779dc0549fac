"""Rolling replacement: a service's new replicas serve before its old ones stop.

The reconciler's part for a changed service (or `up --replace`): like ECS
with maximumPercent 200, each stale replica gets its successor at once,
and when one does not become ready the old replicas keep serving
(circuit breaker). Apart from the converge loop that decides to roll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from meshlocal.errors import RuntimeFailure
from meshlocal.runtime.reconcile import Observed
from meshlocal.runtime.restarts import Restarts


class Rolling(Restarts):
    async def _serving(
        self, cids: Sequence[str], timeout: float, superseded: asyncio.Event | None
    ) -> bool:
        """Until every container in `cids` is in rotation; False if one leaves or time runs out."""
        changed = asyncio.Event()
        unsubscribe = self._on_any_change(changed.set)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if any(self.registry.get(cid) is None for cid in cids):
                    return False  # died, or never joined
                served = [self.view.get(cid) for cid in cids]
                if all(r is not None and r.in_rotation for r in served):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or (superseded is not None and superseded.is_set()):
                    return False
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=min(left, 0.5))
        finally:
            unsubscribe()

    async def _roll(
        self, service: str, stale: list[Observed], superseded: asyncio.Event | None = None
    ) -> None:
        """Replace stale replicas: the new ones are ready before the old ones stop.

        Like ECS with maximumPercent 200: every stale replica gets its
        successor at once; when one does not become ready the old replica
        keeps serving (circuit breaker) and the roll fails.
        """
        for old in stale:
            # Free the names for the successors: the main container, sidecars, pause.
            labels = await self._labels_of(old.container_id) or {}
            for info in await self._task_containers(labels):
                suffix = f"-old-{old.container_id[:8]}"
                if not info.name.endswith(suffix):  # renamed by an earlier, failed roll
                    await self._thread(self.engine.rename, info.id, info.name + suffix)
        futures: list[asyncio.Future[bool]] = []
        cids: list[str] = []
        for old in stale:
            cid = await self._start_replica(service, old.index, wait_ready=True)
            cids.append(cid)
            fut = self._ready_waiters.get(cid)
            if fut is None:  # already resolved (joined healthy, or died) before we looked
                fut = asyncio.get_running_loop().create_future()
                fut.set_result(self.registry.get(cid) is not None)
            futures.append(fut)
        roll_deadline = time.monotonic() + self.roll_timeout_s
        everything = asyncio.gather(*futures)
        waits: list[asyncio.Future[Any]] = [everything]
        if superseded is not None:
            waits.append(asyncio.ensure_future(superseded.wait()))
        await asyncio.wait(waits, timeout=self.roll_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for w in waits[1:]:
            w.cancel()
        if not everything.done() and superseded is not None and superseded.is_set():
            everything.cancel()
            # A newer desired state: the old replicas keep serving, and the next
            # converge rolls them again; successors not yet serving would look
            # fresh to it and push the old ones out first.
            await self._drop_unserving(service, stale, cids)
            return
        done = everything.result() if everything.done() else [False]
        if not everything.done():
            everything.cancel()
        if all(done):
            # Joined is not yet in rotation: the data plane's own probes (the
            # port accepting, http.healthcheck) may still hold it out. The old
            # replica goes only once its successor serves.
            left = max(1.0, roll_deadline - time.monotonic())
            done = [await self._serving(cids, left, superseded)]
        if all(done):
            await asyncio.gather(*(self._retire(old) for old in stale))
            self.on_change(f"{service}: rolled {len(stale)} replica(s)")
            return
        await self._drop_unserving(service, stale, cids)  # circuit breaker: back to the old
        if superseded is not None and superseded.is_set():
            return  # not a failure: a newer desired state took over
        why = [
            f"{service}-{old.index} {c.status()}; last log lines:\n"
            + "\n".join(f"    {line}" for line in c.last_logs[-10:])
            for old in stale
            for c in self.restarting()
            if c.service == service and c.index == old.index
        ]
        raise RuntimeFailure(
            f"the new replicas of {service} did not become healthy; the old ones keep running",
            hint="\n".join(why) or f"`meshlocal logs {service}` shows why",
        )

    async def _drop_unserving(self, service: str, stale: list[Observed], cids: list[str]) -> None:
        """Remove the successors of a roll that stopped short which are not serving."""
        for cid, old in zip(cids, stale, strict=True):
            replica = self.view.get(cid)
            if (replica is not None and replica.in_rotation) or cid not in self._hash_of:
                continue  # serving, or dead already (its crash is kept for `logs`)
            await self._retire(replace(old, container_id=cid, config_hash=self._hash_of.get(cid)))
