"""Swarm mode's replicas, for the controller: what the Reconciler is on one engine.

The swarm keeps `count` tasks per service and replaces the ones that exit or
fail their health check; this mirrors the tasks into the registry, so DNS
and the proxy follow them. A task joins when the swarm reports it
`running`: with a health check, the swarm says `starting` until its first
healthy result, as a task joins Cloud Map only when healthy on ECS.

Tasks on other nodes raise no event on the manager, so the tasks are read
every POLL_S, and at once when a local container of the mesh starts or
dies. Other containers' events (the data plane's restarts) go on to the
controller as from the Reconciler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

from meshlocal.errors import MeshlocalError, RuntimeFailure
from meshlocal.manifest.model import MAX_REPLICAS
from meshlocal.registry import Health, Replica, ReplicaRegistry
from meshlocal.runtime import labels as L
from meshlocal.runtime import swarmengine as S
from meshlocal.runtime.backoff import Crash
from meshlocal.runtime.engine import Engine, NetworkInfo
from meshlocal.runtime.reconcile import DesiredService
from meshlocal.runtime.runclients import RunClients
from meshlocal.runtime.streams import EventStream
from meshlocal.runtime.swarm import SwarmTask, service_specs

log = logging.getLogger(__name__)

POLL_S = 0.25  # one `GET /tasks` per poll
ROLL_TIMEOUT_S = 300.0


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("scaling: %s", task.exception())


class SwarmReplicas(RunClients):
    """The Reconciler's interface (mesh.py, status.py), over a swarm's services.

    One-offs (`meshlocal run`) are clients as on one engine (RunClients): a
    one-off is a container on the manager, attached to the overlay.
    """

    def __init__(
        self,
        engine: Engine,
        registry: ReplicaRegistry,
        *,
        project: str,
        env: str,
        network: NetworkInfo,
        dns: Sequence[str],
        on_change: Callable[[str], None] | None = None,
        max_replicas: int = MAX_REPLICAS,
        view: ReplicaRegistry | None = None,
        pause_image: str | None = None,  # no sidecars in swarm mode (yet): unused
    ) -> None:
        super().__init__(
            engine,
            registry,
            project=project,
            env=env,
            network=network,
            dns=dns,
            on_change=on_change,
            max_replicas=max_replicas,
            view=view,
        )
        self._said: dict[str, list[str]] = {}  # failed task id -> its last log lines
        self._swarm: list[SwarmTask] = []  # the last read of the tasks
        self._poke = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._apply_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._events = self.engine.events(self.project, self.env)
        self._consumer = asyncio.create_task(self._consume(self._events), name="swarm-events")
        await self._sync()
        await self._adopt_clients()
        self._loop = asyncio.create_task(self._poll(), name="swarm-tasks")

    async def close(self, remove: bool = False) -> None:
        self._closing = True
        for task in (self._loop, self._consumer, *self._tasks):
            if task is not None:
                task.cancel()
        if self._events is not None:
            self._events.close()
        for task in (self._loop, self._consumer, *self._tasks):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, MeshlocalError):
                    await task
        if remove:
            await self._thread(S.remove_services, self.engine, self.project, self.env)

    async def _consume(self, events: EventStream) -> None:
        while True:
            async for event in events:
                if event.role == L.Role.REPLICA.value:
                    self._poke.set()  # a task on this node started, died or changed health
                elif event.role == L.Role.RUN.value:
                    await self._client_event(event)
                elif self.on_other_event is not None:
                    self.on_other_event(event)
            if self._closing:
                return
            log.warning("the Docker event stream ended (%s); resubscribing", events.error)
            await asyncio.sleep(1.0)
            with contextlib.suppress(MeshlocalError):
                events = self._events = self.engine.events(self.project, self.env)
                await self._adopt_clients()

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), POLL_S)
            self._poke.clear()
            try:
                await self._sync()
            except MeshlocalError as exc:
                log.warning("reading the swarm's tasks: %s", exc.message)

    # -- desired state ------------------------------------------------------------------

    def config_hash(self, desired: DesiredService) -> str:
        return desired.template.config_hash(*self.dns, self.network.name)  # as service_specs

    async def apply(self, desired: Mapping[str, DesiredService]) -> None:
        """Create or update a swarm service per Copilot service; remove the others."""
        async with self._apply_lock:
            self.desired = dict(desired)
            self._hashes = {name: self.config_hash(d) for name, d in desired.items()}
            specs = service_specs(
                desired,
                project=self.project,
                env=self.env,
                network=self.network.name,
                dns=self.dns,
                sc_view=self.sc_view,
            )
            # At once: each create is a round trip to the manager's raft store.
            await self._thread(S.apply_services, self.engine, specs)
            wanted = {L.swarm_service_name(self.project, self.env, n) for n in desired}
            for svc in await self._thread(S.services, self.engine, self.project, self.env):
                if svc["Spec"]["Name"] not in wanted:
                    await self._thread(S.remove_service, self.engine, str(svc["ID"]))
        self._poke.set()

    def request_scale(self, service: str, count: int) -> asyncio.Task[None]:
        """The service's replicas set now; the swarm converges (the admin API's scale)."""
        self._check_scale(service, count)
        self.desired[service] = DesiredService(self.desired[service].template, count)

        async def run() -> None:
            await self._thread(S.scale, self.engine, self.project, self.env, service, count)
            self._poke.set()

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def replace(self, service: str) -> None:
        """Every task replaced (rolling, start-first); returns once none of the old runs.

        The new tasks see the endpoints of now, as a replaced ECS task does.
        """
        before = {t.id for t in self._swarm if t.service == service and t.live}
        await self._thread(
            S.force_update, self.engine, self.project, self.env, service, self.sc_view
        )
        deadline = asyncio.get_running_loop().time() + ROLL_TIMEOUT_S
        while any(t.id in before and t.live for t in self._swarm):
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeFailure(
                    f"replacing {service}'s tasks took over {ROLL_TIMEOUT_S:.0f} s"
                )
            self._poke.set()
            await asyncio.sleep(POLL_S)

    def supersede(self, service: str | None = None) -> None:
        """Nothing queues here: the swarm takes each new spec as it comes."""

    # -- the tasks, into the registry ---------------------------------------------------

    async def _sync(self) -> None:
        tasks = await self._thread(S.tasks, self.engine, self.project, self.env, self.network.id)
        self._swarm = tasks
        for t in tasks:  # a failed task's last words, when it ran here (other nodes': its error)
            if t.failed and t.id not in self._said:
                said = await self._thread(self._last_words, t)
                self._said[t.id] = said or ([t.error] if t.error else [])
        known = {t.id for t in tasks}
        self._said = {k: v for k, v in self._said.items() if k in known}  # the swarm's history only
        live = {t.container_id: t for t in tasks if t.live and t.container_id and t.address}
        self._hash_of = {c: h for c, h in self._hash_of.items() if c in live}
        for replica in self.registry.all():
            if replica.container_id not in live:
                self.registry.remove(replica.container_id)
                self.on_change(f"{replica.name} left")
        for cid in [c for c in self._pending if c not in live]:
            del self._pending[cid]
        for cid, task in live.items():
            assert task.address is not None
            port = task.labels.get(L.PORT)
            replica = Replica(
                service=task.service,
                index=task.slot,
                container_id=cid,
                address=task.address,
                port=int(port) if port and port.isdigit() else None,
                health=Health.HEALTHY if task.state == "running" else Health.STARTING,
                sc_view=L.parse_view(task.labels.get(L.SC_VIEW)),
            )
            self._hash_of[cid] = task.config_hash
            if replica.health is Health.HEALTHY:
                self._pending.pop(cid, None)
                if self.registry.get(cid) is None:
                    self.registry.upsert(replica)
                    self.on_change(f"{replica.name} joined at {task.address} (task {task.id[:12]})")
            else:
                self._pending[cid] = replica

    def _last_words(self, task: SwarmTask) -> list[str]:
        if not task.container_id:
            return []
        try:
            return self.engine.logs(task.container_id, 15)
        except MeshlocalError:
            return []  # on another node, or removed already

    # -- what `ps` and `up` read --------------------------------------------------------

    def starting(self) -> list[Replica]:
        return sorted(self._pending.values(), key=lambda r: (r.service, r.index))

    def restarting(self) -> list[Crash]:
        """Slots whose tasks keep failing, none running now: the swarm's task history
        (5 per slot by default) counts the failures in a row."""
        out = []
        running = {(t.service, t.slot) for t in self._swarm if t.live and t.state == "running"}
        failed: dict[tuple[str, int], list[SwarmTask]] = {}
        for t in self._swarm:
            if t.failed and t.service in self.desired and (t.service, t.slot) not in running:
                failed.setdefault((t.service, t.slot), []).append(t)
        for (service, slot), tasks in sorted(failed.items()):
            last = tasks[-1]
            out.append(
                Crash(service, slot, last.exit_code, len(tasks), self._said.get(last.id, []))
            )
        return out

    def crashes(self) -> list[Crash]:
        return [c for c in self.restarting() if c.looping]

    def pending_starts(self, service: str) -> int:
        d = self.desired.get(service)
        if d is None:
            return 0
        live = sum(1 for t in self._swarm if t.service == service and t.live)
        return max(0, d.count - live)

    def service_ready(self, name: str) -> bool:
        """`count` tasks of the current spec in rotation, and none of an older one left."""
        d = self.desired.get(name)
        if d is None:
            return True
        current = self._hashes.get(name)
        ready = [
            r for r in self.view.in_rotation(name) if self._hash_of.get(r.container_id) == current
        ]
        old = [t for t in self._swarm if t.service == name and t.live and t.config_hash != current]
        return len(ready) >= d.count and not old

    def all_ready(self) -> bool:
        return all(self.service_ready(name) for name in self.desired)
