"""Docker's event stream, as the reconciler reacts to it (never a polling loop).

The reconciler's part that dispatches each event (`start` joins a replica,
`health_status` updates it, `die` hands it to restarts.py; one-offs and
task members go to their own parts) and, when the stream breaks,
subscribes again and catches up from the engine's state.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from meshlocal.errors import MeshlocalError, RuntimeFailure
from meshlocal.registry import Health, Replica
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerEvent, ContainerInfo
from meshlocal.runtime.replicastate import log
from meshlocal.runtime.restarts import Restarts
from meshlocal.runtime.runclients import RunClients
from meshlocal.runtime.streams import EventStream


class ReplicaEvents(RunClients, Restarts):
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
