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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from meshlocal.errors import MeshlocalError, RuntimeFailure
from meshlocal.manifest.model import MAX_REPLICAS
from meshlocal.manifest.validate import replica_limit_hint
from meshlocal.registry import Health, Replica, ReplicaRegistry
from meshlocal.runtime import labels as L
from meshlocal.runtime.backoff import (
    KEPT_SUFFIX,
    STABLE_AFTER_S,
    Crash,
    Slot,
)
from meshlocal.runtime.engine import ContainerEvent, ContainerInfo, Engine, NetworkInfo
from meshlocal.runtime.reconcile import (
    DesiredService,
    Observed,
    ReplicaTemplate,
    plan,
    start_order,
)
from meshlocal.runtime.streams import EventStream
from meshlocal.runtime.tasks import ESSENTIAL, NETNS, TASK, TaskSpecs, wait_condition

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PARALLEL = 8  # containers starting or stopping at once, per agent
START_BATCH = 64  # starts planned at a time per service
LEFT_CREATED_S = 15.0  # a replica the CLI created and did not start by then is ours


class Reconciler:
    def __init__(
        self,
        engine: Engine,
        registry: ReplicaRegistry,
        *,
        project: str,
        env: str,
        network: NetworkInfo,
        dns: Sequence[str] = (),
        workspace: Path | None = None,
        drain_s: float = 1.0,
        stop_timeout_s: float = 5.0,
        roll_timeout_s: float = 120.0,
        replace_unhealthy: bool = True,
        pause_image: str | None = None,
        on_change: Callable[[str], None] | None = None,
        max_parallel: int = MAX_PARALLEL,
        max_replicas: int = MAX_REPLICAS,
        view: ReplicaRegistry | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry
        # Readiness is judged on what the data plane serves (its own probes may
        # hold a replica out); in one process that is the registry itself.
        self.view = view if view is not None else registry
        self.project = project
        self.env = env
        self.network = network
        self.dns = tuple(dns)
        self.workspace = workspace
        self.drain_s = drain_s
        self.stop_timeout_s = stop_timeout_s
        self.roll_timeout_s = roll_timeout_s
        self.replace_unhealthy = replace_unhealthy
        self.pause_image = pause_image  # e.g. the busybox image; enables main-after-sidecar
        self.on_change = on_change or (lambda _msg: None)
        self.desired: dict[str, DesiredService] = {}
        self._hashes: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._expected_stop: set[str] = set()  # container ids meshlocal stops on purpose
        self._slots: dict[tuple[str, int], Slot] = {}
        self.max_replicas = max_replicas
        # One bound for every service: a huge count queues, it never floods the engine.
        self._work = asyncio.Semaphore(max_parallel)
        self._max_parallel = max_parallel
        self._superseded: dict[str, asyncio.Event] = {}  # set: drop the queued work
        self._queued: dict[str, int] = {}  # converges asked for and not yet done
        self._busy: set[str] = set()  # services converging now
        self._timers: set[asyncio.TimerHandle] = set()  # back-off and recovery, cancelled at close
        self._recovering: set[str] = set()  # replicas with a recovery check pending
        self._tasks: set[asyncio.Task[Any]] = set()
        self._events: EventStream | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._ready_waiters: dict[str, asyncio.Future[bool]] = {}  # container id -> ready?
        self._hash_of: dict[str, str] = {}  # container id -> config hash, for ready checks
        self._pending: dict[str, Replica] = {}  # running, not yet healthy: out of the registry
        # Containers whose `die` event came: the engine's list may still say
        # "running" for a while (it updates after the network is torn down),
        # and a container listed so would be joined or kept, dead, for good.
        self._dead: set[str] = set()
        # The last health each container's events reported: newer than a list
        # taken before them, which would leave a healthy replica "starting".
        self._health_seen: dict[str, Health] = {}
        self._closing = False
        # The Service Connect endpoint names a replica started now would see.
        # Stamped on each new replica (a label, outside the config hash), so an
        # ECS-like snapshot survives data-plane restarts: None stamps nothing.
        self.sc_view: frozenset[str] | None = None
        # Events of meshlocal's own containers (the data plane's), for whoever runs this.
        self.on_other_event: Callable[[ContainerEvent], None] | None = None
        # Every event, for the task metadata record (None: the stream was lost).
        self.on_task_event: Callable[[ContainerEvent | None], None] | None = None
        # `http://<data plane>:<port>` of the task metadata endpoint; None: no variables.
        self.metadata: str | None = None

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

    async def _adopt_clients(self) -> None:
        """The one-offs (`meshlocal run`) that run now: the client-only set, afresh."""
        infos = await self._thread(
            self.engine.list_containers, self.project, self.env, role=L.Role.RUN
        )
        self.registry.set_clients(
            client for info in infos if info.running and (client := self._client(info)) is not None
        )

    def _client(self, info: ContainerInfo) -> Replica | None:
        """A one-off as a client-only member: its service's DNS view, nothing served."""
        address = info.address_on(self.network.name)
        if not address or info.service is None or info.id in self._dead:
            return None
        view = L.parse_view(info.labels.get(L.SC_VIEW))
        return Replica(
            service=info.service,
            index=0,
            container_id=info.id,
            address=address,
            port=None,
            # A new task sees the endpoints of the moment it starts.
            sc_view=view if view is not None else self.sc_view,
        )

    async def _client_event(self, event: ContainerEvent) -> None:
        cid = event.container_id
        if event.action in ("die", "destroy"):
            if event.action == "die":
                self._dead.add(cid)  # a list taken before this event may say "running"
            else:
                self._dead.discard(cid)  # gone for good: nothing to remember
            if self.registry.remove_client(cid) is not None:
                self.on_change(f"one-off {event.name} of {event.service} left")
        elif event.action == "start":
            self._dead.discard(cid)
            info = await self._thread(self.engine.inspect, cid)
            client = self._client(info) if info is not None and info.running else None
            if client is not None:
                self.registry.add_client(client)
                self.on_change(f"one-off {info.name if info else cid} of {client.service} joined")

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

    def config_hash(self, template: ReplicaTemplate) -> str:
        return template.config_hash(*self.dns, self.network.name)

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

    def _known(self, service: str) -> None:
        if service not in self.desired:
            raise RuntimeFailure(
                f"no service named {service} runs in {self.env}",
                hint="`meshlocal ps` lists the services",
            )

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
        self._known(service)
        if count < 0:
            raise RuntimeFailure(f"cannot scale {service} to {count} replicas")
        if count > self.max_replicas:
            raise RuntimeFailure(
                f"cannot scale {service} to {count} replicas: above meshlocal's limit of "
                f"{self.max_replicas} replicas per service",
                hint=replica_limit_hint(self.max_replicas),
            )
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

    # -- health -------------------------------------------------------------------------

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

    # -- events ---------------------------------------------------------------------------

    async def _consume(self, events: EventStream) -> None:
        while True:
            async for event in events:
                try:
                    await self._on_event(event)
                except MeshlocalError as exc:  # the engine refused something: keep going
                    log.warning("handling %s of %s: %s", event.action, event.name, exc.message)
            if self._closing:
                return
            # The stream broke (engine restart, socket closed): subscribe again, then
            # catch up on what happened meanwhile from the engine's own state.
            log.warning("the Docker event stream ended (%s); resubscribing", events.error)
            self.on_change("Docker event stream lost: resubscribing")
            events = await self._resubscribe()
            self._events = events
            await self._resync()

    async def _resubscribe(self, attempts: int = 60) -> EventStream:
        for attempt in range(attempts):
            try:
                return self.engine.events(self.project, self.env)
            except MeshlocalError:
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        raise RuntimeFailure("the Docker engine stopped answering: no more events")

    async def _resync(self) -> None:
        """Make the registry match the engine, then converge every desired service."""
        if self.on_task_event is not None:
            self.on_task_event(None)
        infos = await self._thread(
            self.engine.list_containers, self.project, self.env, role=L.Role.REPLICA
        )
        running = {i.id: i for i in infos if i.running}
        for replica in self.registry.all():
            if replica.container_id not in running:
                self.registry.remove(replica.container_id)
        for cid in [c for c in self._pending if c not in running]:
            del self._pending[cid]
        for cid, info in running.items():
            if self.registry.get(cid) is None:
                self._join(info, await self._address_of(info))
            elif info.health is not None:
                self.registry.set_health(cid, info.health)
        await self._adopt_clients()
        for name in list(self.desired):
            self._spawn(self.converge(name))

    async def _on_event(self, event: ContainerEvent) -> None:
        if self.on_task_event is not None:
            self.on_task_event(event)
        role = event.role
        if role in (L.Role.SIDECAR.value, L.Role.PAUSE.value):
            if event.action == "die" and event.container_id not in self._expected_stop:
                self._spawn(self._task_member_died(event))
            return
        if role == L.Role.RUN.value:
            await self._client_event(event)
            return
        if role != L.Role.REPLICA.value:
            if self.on_other_event is not None:
                self.on_other_event(event)
            return
        cid = event.container_id
        if event.action == "die":
            self._dead.add(cid)
        elif event.action in ("destroy", "start"):
            self._dead.discard(cid)
            self._health_seen.pop(cid, None)
        if event.action == "health_status" and event.health is not None:
            self._health_seen[cid] = event.health
        if event.action == "die" or event.action == "destroy":
            before = self.registry.remove(cid)  # first: out of DNS and proxy at once
            self._pending.pop(cid, None)
            self._resolve_waiter(cid, False)
            if before is not None:
                self.on_change(f"{before.name} left ({event.action})")
            if event.action == "die":
                self._spawn(self._died(event))
        elif event.action == "start":
            info = await self._thread(self.engine.inspect, cid)
            if info is not None and info.running:
                self._join(info, await self._address_of(info))
        elif event.action == "health_status" and event.health is not None:
            pending = self._pending.get(cid)
            if pending is not None and event.health is Health.HEALTHY:
                del self._pending[cid]
                self.registry.upsert(replace(pending, health=Health.HEALTHY))
                self.on_change(f"{pending.name} joined at {pending.address}")
            elif pending is not None:
                self._pending[cid] = replace(pending, health=event.health)
            else:
                self.registry.set_health(cid, event.health)
            if event.health is Health.HEALTHY:
                self._healthy(cid, event)
            elif (
                event.health is Health.UNHEALTHY
                and self.replace_unhealthy
                and cid not in self._expected_stop
            ):
                self._spawn(self._replace_unhealthy(event))

    async def _address_of(self, info: ContainerInfo) -> str | None:
        """A replica's address; in a pause container's namespace, the pause's."""
        owner = info.labels.get(NETNS)
        if owner:
            pause = await self._thread(self.engine.inspect, owner)
            return pause.address_on(self.network.name) if pause is not None else None
        return info.address_on(self.network.name)

    def _join(self, info: ContainerInfo, address: str | None) -> None:
        """A running replica: into the registry once healthy (at once without a check).

        Until its first healthy status it waits in `starting()`, out of DNS and
        proxy, as a task joins Cloud Map and Service Connect only when healthy.
        """
        if not address or info.service is None or info.index is None or info.id in self._dead:
            return
        port_label = info.labels.get(L.PORT)
        health = self._health_seen.get(info.id) or info.health or Health.HEALTHY
        self._hash_of[info.id] = info.config_hash or ""
        replica = Replica(
            service=info.service,
            index=info.index,
            container_id=info.id,
            address=address,
            port=int(port_label) if port_label and port_label.isdigit() else None,
            health=health,
            sc_view=L.parse_view(info.labels.get(L.SC_VIEW)),
        )
        if health is Health.HEALTHY:
            self._pending.pop(info.id, None)
            self.registry.upsert(replica)
            self._healthy(info.id, None)
            self.on_change(f"{info.service}-{info.index} joined at {address}")
        elif self.registry.get(info.id) is not None:
            self.registry.set_health(info.id, health)  # adopted or resynced: keep it listed
        else:
            self._pending[info.id] = replica
            self.on_change(f"{info.service}-{info.index} running at {address} ({health.value})")

    def starting(self) -> list[Replica]:
        """Running replicas not yet healthy: not in the registry, shown by `ps`."""
        return sorted(self._pending.values(), key=lambda r: (r.service, r.index))

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

    def _on_any_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Subscribe to the registry and the served view; returns the unsubscriber."""
        offs = [reg.subscribe(lambda _b, _a: callback()) for reg in {self.registry, self.view}]

        def off() -> None:
            for unsubscribe in offs:
                unsubscribe()

        return off

    def _slot(self, service: str, index: int) -> Slot:
        return self._slots.setdefault((service, index), Slot())

    def _resolve_waiter(self, cid: str, ok: bool) -> None:
        fut = self._ready_waiters.pop(cid, None)
        if fut is not None and not fut.done():
            fut.set_result(ok)

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

    async def _task_member_died(self, event: ContainerEvent) -> None:
        """An essential sidecar or the task's pause container ended.

        ECS stops the whole task then; stopping its main container makes the
        replica leave the registry and be replaced.
        """
        if event.labels.get(ESSENTIAL, "true") != "true":
            return
        for info in await self._task_containers(event.labels, L.Role.REPLICA):
            if info.running:
                await self._thread(self.engine.stop, info.id, self.stop_timeout_s)

    async def _task_containers(
        self, task_labels: Mapping[str, str], role: L.Role | None = None
    ) -> list[ContainerInfo]:
        """The containers of one task: by its task label, else (older ones) by index."""
        service, index = task_labels.get(L.SERVICE), task_labels.get(L.REPLICA)
        if service is None or not index:
            return []
        infos = await self._thread(
            self.engine.list_containers, self.project, self.env, role=role, service=service
        )
        task = task_labels.get(TASK)
        if task:
            return [i for i in infos if i.labels.get(TASK) == task]
        return [i for i in infos if i.labels.get(L.REPLICA) == index and TASK not in i.labels]

    async def _remove_task(self, task_labels: Mapping[str, str], keep: str | None = None) -> None:
        """Remove a task's sidecars and pause container (its main container is `keep`)."""
        for info in await self._task_containers(task_labels):
            if info.id == keep or info.role == L.Role.REPLICA.value:
                continue
            self._expected_stop.add(info.id)
            await self._thread(self.engine.remove, info.id)

    # -- actions ----------------------------------------------------------------------------

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

    @property
    def specs(self) -> TaskSpecs:
        return TaskSpecs(
            self.project,
            self.env,
            self.network.name,
            self.dns,
            self.workspace,
            self.pause_image,
            self.metadata,
        )

    async def _start_replica(self, service: str, index: int, wait_ready: bool = False) -> str:
        """Start one task: its containers in depends_on order, in one network namespace.

        The main container owns the namespace, unless it depends on a sidecar:
        then a pause container owns it, as the task ENI does on ECS. With
        `wait_ready`, a readiness future is registered before the start, so a
        fast join or death cannot be missed.
        """
        template = self.desired[service].template
        task = uuid.uuid4().hex  # 32 hex digits, as an ECS task id
        order = start_order(template)
        netns: str | None = None
        if template.sidecars and order[0] != template.service and self.pause_image:
            pause = self.specs.pause(template, index, task)
            await self._thread(self.engine.remove, pause.name)  # a dead leftover holds the name
            netns = await self._thread(self.engine.run_container, pause)
        elif order[0] != template.service:
            order = [template.service, *(n for n in order if n != template.service)]
        sidecars = {sc.name: sc for sc in template.sidecars}
        deps: dict[str, Mapping[str, str]] = {template.service: template.depends_on}
        deps.update({sc.name: sc.depends_on for sc in template.sidecars})
        started: dict[str, str] = {}
        main_id = ""
        for name in order:
            for dep, condition in deps.get(name, {}).items():
                if dep in started:
                    await wait_condition(self.engine, started[dep], condition)
            if name == template.service:
                config_hash = self._hashes.get(service) or self.config_hash(template)
                spec = self.specs.replica(
                    template, index, config_hash, task=task, netns=netns, sc_view=self.sc_view
                )
                await self._thread(self.engine.remove, spec.name)
                main_id = await self._thread(self.engine.create_container, spec)
                self._hash_of[main_id] = spec.labels[L.CONFIG_HASH]
                if wait_ready:
                    self._ready_waiters[main_id] = asyncio.get_running_loop().create_future()
                await self._thread(self.engine.start, main_id)
                started[name] = main_id
                netns = netns or main_id
                self.on_change(f"{service}-{index} started")
            else:
                assert netns is not None
                side = self.specs.sidecar(template, index, sidecars[name], netns, task)
                await self._thread(self.engine.remove, side.name)
                started[name] = await self._thread(self.engine.run_container, side)
        return main_id

    async def _retire(self, observed: Observed) -> None:
        """Drain (out of rotation, in-flight requests finish), then stop and remove."""
        cid = observed.container_id
        self._expected_stop.add(cid)
        if self.registry.get(cid) is not None and self.drain_s > 0:
            self.registry.set_draining(cid)
            await asyncio.sleep(self.drain_s)
        self.registry.remove(cid)
        labels = await self._labels_of(cid)
        await self._thread(self.engine.stop, cid, self.stop_timeout_s)
        await self._thread(self.engine.remove, cid)
        if labels is not None:
            await self._remove_task(labels)

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

    async def _labels_of(self, cid: str) -> Mapping[str, str] | None:
        info = await self._thread(self.engine.inspect, cid)
        return info.labels if info is not None else None

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

    # -- plumbing -----------------------------------------------------------------------------

    async def _thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except MeshlocalError as exc:
                log.warning("%s", exc.message)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _log_failure(task: asyncio.Task[None]) -> None:
    if task.cancelled() or (exc := task.exception()) is None:
        return
    log.warning("%s", exc.message if isinstance(exc, MeshlocalError) else repr(exc))


def _crash_error(crashes: list[Crash]) -> RuntimeFailure:
    first = crashes[0]
    logs = "\n".join(f"    {line}" for line in first.last_logs[-10:]) or "    (no output)"
    return RuntimeFailure(
        f"{first.service}-{first.index} keeps crashing (exited {first.exit_code}, "
        f"{first.count} times in a row)",
        hint=f"its last log lines:\n{logs}",
    )
