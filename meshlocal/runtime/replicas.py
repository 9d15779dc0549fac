"""The replica lifecycle: keep `count` replicas per service alive, as ECS does.

The reconciler owns one environment's replica containers. It is driven by
Docker's event stream (never a polling loop):

- `start`: the replica joins the registry, healthy when it has no health
  check, else `starting` until its first `health_status: healthy`;
- `health_status`: updates the registry; an unhealthy replica is stopped and
  replaced, as ECS replaces a task whose essential container is unhealthy;
- `die`: the replica leaves the registry at once, and unless meshlocal
  stopped it, a replacement starts (backing off when it keeps crashing, see
  backoff.py); the dead container is kept, stopped, so `logs` shows why.

`apply()` converges to a desired state: missing replicas start, extra ones
drain then stop, and services whose config hash changed roll: the new
replica is ready before the old one drains and stops.

Work is bounded: at most `max_parallel` containers start or stop at once,
whatever the count, and a new desired state (`scale`, `up`) supersedes the
work still queued for the old one instead of waiting behind it.

Engine calls are synchronous and run in threads (asyncio.to_thread).

The reconciler's parts live beside this module, one concept each:
replicastate.py (the shared state), replicatasks.py (starting and stopping
a task), restarts.py (deaths, back-off, kept crashed containers),
rolling.py (rolling replacement), runclients.py (one-offs as clients),
replicaevents.py (the event stream), readiness.py (ready or not).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from meshlocal.errors import MeshlocalError, RuntimeFailure
from meshlocal.registry import Health
from meshlocal.runtime import labels as L
from meshlocal.runtime.backoff import KEPT_SUFFIX
from meshlocal.runtime.readiness import Readiness
from meshlocal.runtime.reconcile import DesiredService, Observed, plan
from meshlocal.runtime.replicaevents import ReplicaEvents
from meshlocal.runtime.rolling import Rolling

log = logging.getLogger(__name__)

START_BATCH = 64  # starts planned at a time per service
LEFT_CREATED_S = 15.0  # a replica the CLI created and did not start by then is ours


class Reconciler(ReplicaEvents, Readiness, Rolling):
    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to events, then adopt the replicas that already run."""
        self._events = self.engine.events(self.project, self.env)  # first: no gap
        self._consumer = asyncio.create_task(self._consume(self._events), name="meshlocal-events")
        for info in await self._thread(
            self.engine.list_containers, self.project, self.env, role=L.Role.REPLICA
        ):
            if info.running:
                self._join(info, await self._address_of(info))
            elif info.state == "created" and info.service and info.index:
                # Created by the CLI beside the data plane (firststart.py), which
                # starts it; one that stopped before doing so leaves it to us. Not
                # at once: two starts of one container race in the engine, which
                # then keeps a stale endpoint on the network.
                self._spawn(self._start_if_left(info.id))
            elif info.name.endswith(KEPT_SUFFIX) and info.service and info.index:
                # Kept by an agent before this one: ours to remove once it recovers.
                self._slot(info.service, info.index).kept = info.name
        await self._adopt_clients()

    async def _start_if_left(self, cid: str, grace_s: float = LEFT_CREATED_S) -> None:
        """Start a replica still "created" after `grace_s`: its creator stopped short."""
        await asyncio.sleep(grace_s)
        info = await self._thread(self.engine.inspect, cid)
        if info is not None and info.state == "created" and not self._closing:
            await self._thread(self.engine.start, cid)

    async def close(self, remove: bool = False) -> None:
        """Stop reacting to events; with remove=True also remove every replica."""
        self._closing = True
        for timer in self._timers:
            timer.cancel()
        if self._events is not None:
            self._events.close()
        for task in list(self._tasks):
            task.cancel()
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if remove:
            for info in await self._thread(self.engine.list_containers, self.project, self.env):
                if info.role in (L.Role.REPLICA.value, L.Role.SIDECAR.value, L.Role.PAUSE.value):
                    self._expected_stop.add(info.id)
                    await self._thread(self.engine.remove, info.id)
                    self.registry.remove(info.id)

    async def __aenter__(self) -> Reconciler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- desired state ------------------------------------------------------------------

    async def apply(self, desired: Mapping[str, DesiredService]) -> None:
        """Converge every service (and remove services that are no longer desired)."""
        gone = set(self.desired) - set(desired)
        hashes = {name: self.config_hash(d.template) for name, d in desired.items()}
        for (service, _), slot in self._slots.items():
            if hashes.get(service) != self._hashes.get(service):
                slot.unthrottle()  # a new task definition: no longer throttled, as on ECS
        self.desired = dict(desired)
        self._hashes = hashes
        for name in set(desired) | gone:
            self.supersede(name)
        observed = await self._observe(None)
        names = sorted(set(self.desired) | gone | {o.service for o in observed})
        await asyncio.gather(*(self.converge(name) for name in names))

    async def replace(self, service: str) -> None:
        """Roll every replica of `service`, changed or not (`up --replace`)."""
        self._known(service)
        lock = self._locks.setdefault(service, asyncio.Lock())
        async with lock:
            current = [o for o in await self._observe(service) if o.alive]
            if current:
                await self._roll(service, current)

    async def scale(self, service: str, count: int) -> None:
        """Set the count and converge; returns once the service matches it."""
        await self.request_scale(service, count)

    def request_scale(self, service: str, count: int) -> asyncio.Task[None]:
        """Set the count now and converge in the background (the admin API's scale).

        Work still queued for an earlier count is dropped, not waited for.
        """
        self._check_scale(service, count)
        current = self.desired[service]
        self.desired[service] = DesiredService(current.template, count)
        self.supersede(service)
        return self.request_converge(service)

    def supersede(self, service: str | None = None) -> None:
        """The desired state changed: running converges stop queuing work (None: all)."""
        for name, flag in self._superseded.items():
            if service is None or name == service:
                flag.set()

    def request_converge(self, service: str) -> asyncio.Task[None]:
        """Converge in the background; `all_ready` is false until it is done."""
        self._queued[service] = self._queued.get(service, 0) + 1

        async def run() -> None:
            try:
                await self.converge(service)
            finally:
                self._queued[service] -= 1

        task = asyncio.create_task(run(), name=f"meshlocal-converge-{service}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def converge(self, service: str) -> None:
        """Make one service match its desired state; serialized per service.

        Starts and removals go through the bounded queue; when the desired
        state changes meanwhile, the rest of this plan is dropped and the
        next converge plans afresh.
        """
        lock = self._locks.setdefault(service, asyncio.Lock())
        async with lock:
            if self._closing:
                return
            superseded = self._superseded[service] = asyncio.Event()
            self._busy.add(service)
            try:
                await self._converge(service, superseded)
            finally:
                self._busy.discard(service)

    async def _converge(self, service: str, superseded: asyncio.Event) -> None:
        errors: list[BaseException] = []
        while not (errors or superseded.is_set() or self._closing):
            observed = await self._observe(service)
            d = self.desired.get(service)
            want = {service: (d.count, self._hashes[service])} if d else {}
            # A batch at a time: a huge count never becomes a huge plan in memory.
            todo = plan(want, observed, services=[service], max_starts=START_BATCH)
            now = time.monotonic()
            starts = [
                i
                for _, i in todo.start
                if (slot := self._slots.get((service, i))) is None or slot.waiting(now) <= 0
            ]
            jobs: list[Callable[[], Awaitable[object]]] = [
                *(functools.partial(self._retire, o) for o in todo.remove),
                *(functools.partial(self._start_replica, service, i) for i in starts),
            ]
            errors = await self._bounded(jobs, superseded)
            if todo.roll and not superseded.is_set():
                try:
                    await self._roll(service, list(todo.roll), superseded)
                except MeshlocalError as exc:
                    errors.append(exc)
            if len(todo.start) < START_BATCH or not starts:
                break  # that was the last batch (or the rest waits out a back-off)
        await self._prune_slots(service)
        if errors:
            first = errors[0]
            if isinstance(first, MeshlocalError):
                raise first
            raise RuntimeFailure(f"reconciling {service} failed: {first}") from first

    async def _bounded(
        self, jobs: Sequence[Callable[[], Awaitable[object]]], superseded: asyncio.Event
    ) -> list[BaseException]:
        """Run `jobs` at most `max_parallel` at a time (across services); stop when superseded."""
        pending = iter(jobs)
        errors: list[BaseException] = []

        async def worker() -> None:
            for job in pending:  # one iterator shared by the workers: each job runs once
                if superseded.is_set() or self._closing:
                    return
                async with self._work:
                    try:
                        await job()
                    except Exception as exc:
                        errors.append(exc)

        await asyncio.gather(*(worker() for _ in range(min(self._max_parallel, len(jobs)))))
        return errors

    # -- observation ----------------------------------------------------------------------

    async def _observe(self, service: str | None) -> list[Observed]:
        infos = await self._thread(
            self.engine.list_containers,
            self.project,
            self.env,
            role=L.Role.REPLICA,
            service=service,
        )
        out = []
        for info in infos:
            if info.service is None or info.index is None:
                continue
            if info.id in self._expected_stop:
                continue  # already on its way out
            if info.name.endswith(KEPT_SUFFIX) and info.state in ("exited", "dead"):
                continue  # a crashed replica kept for its logs, not a replica
            out.append(
                Observed(
                    container_id=info.id,
                    service=info.service,
                    index=info.index,
                    config_hash=info.config_hash,
                    alive=info.state in ("created", "running", "restarting")
                    and info.id not in self._dead,
                    healthy=None if info.health is None else info.health is Health.HEALTHY,
                )
            )
        return out


def _log_failure(task: asyncio.Task[None]) -> None:
    if task.cancelled() or (exc := task.exception()) is None:
        return
    log.warning("%s", exc.message if isinstance(exc, MeshlocalError) else repr(exc))
