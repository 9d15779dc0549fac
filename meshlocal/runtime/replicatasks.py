"""Starting and stopping one replica's task: main container, sidecars, pause container.

The reconciler's part that turns a desired replica into running
containers (in `depends_on` order, sharing one network namespace) and
back: drain, stop, remove, and the task's other members with it. Apart
from the decisions of when to start or stop, which the other parts make.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerEvent, ContainerInfo
from meshlocal.runtime.reconcile import Observed, ReplicaTemplate, start_order
from meshlocal.runtime.replicastate import ReconcilerState
from meshlocal.runtime.tasks import ESSENTIAL, NETNS, TASK, TaskSpecs, wait_condition


class ReplicaTasks(ReconcilerState):
    def config_hash(self, template: ReplicaTemplate) -> str:
        return template.config_hash(*self.dns, self.network.name)

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

    async def _labels_of(self, cid: str) -> Mapping[str, str] | None:
        info = await self._thread(self.engine.inspect, cid)
        return info.labels if info is not None else None

    async def _address_of(self, info: ContainerInfo) -> str | None:
        """A replica's address; in a pause container's namespace, the pause's."""
        owner = info.labels.get(NETNS)
        if owner:
            pause = await self._thread(self.engine.inspect, owner)
            return pause.address_on(self.network.name) if pause is not None else None
        return info.address_on(self.network.name)

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
