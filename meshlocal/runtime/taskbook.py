"""The controller's record of every task's containers, for the task metadata endpoint.

Kept apart from the replica registry: a task is reported from its first
container's start, long before it is healthy, and its sidecars come and go
without touching DNS or the proxy. Fed by the engine's events of task
containers (a `meshlocal.task` label); each event only marks the container,
and the engine's own state (inspect) says what it is, so events that arrive
out of order, or a stream lost and resubscribed, cannot leave it wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from meshlocal.metadata import TaskContainer, TaskRecord
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerEvent, ContainerInfo, Engine
from meshlocal.runtime.tasks import TASK

log = logging.getLogger(__name__)

_ROLES = (L.Role.REPLICA.value, L.Role.SIDECAR.value, L.Role.PAUSE.value)
_ACTIONS = frozenset({"start", "die", "destroy", "rename"})


class TaskBook:
    def __init__(
        self,
        engine: Engine,
        project: str,
        env: str,
        network: str,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.project = project
        self.env = env
        self.network = network
        self.on_change = on_change
        self._infos: dict[str, ContainerInfo] = {}  # container id -> last inspect
        self._dirty: set[str] = set()
        self._reload = True  # the first pass lists every container
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._wake.set()
        self._worker = asyncio.create_task(self._work(), name="meshlocal-taskbook")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def on_event(self, event: ContainerEvent | None) -> None:
        """A task container's event; None: the event stream was lost, look at everything."""
        if event is None:
            self._reload = True
        elif event.labels.get(TASK) and event.action in _ACTIONS:
            self._dirty.add(event.container_id)
        else:
            return
        self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._refresh()
            except Exception:  # an engine hiccup: the next event looks again
                log.exception("task metadata: refreshing from the engine failed")
                continue
            self.on_change()

    async def _refresh(self) -> None:
        if self._reload:
            self._reload = False
            listed = await asyncio.to_thread(self.engine.list_containers, self.project, self.env)
            ids = {i.id for i in listed if i.labels.get(TASK) and i.role in _ROLES}
            for gone in set(self._infos) - ids:
                del self._infos[gone]
            self._dirty |= ids
        dirty, self._dirty = self._dirty, set()
        infos = await asyncio.gather(
            *(asyncio.to_thread(self.engine.inspect, cid) for cid in dirty)
        )
        for cid, info in zip(dirty, infos, strict=True):
            if info is None:
                self._infos.pop(cid, None)
            else:
                self._infos[cid] = info

    def records(self) -> list[TaskRecord]:
        """Every task whose main container (or, before it, a sidecar) runs."""
        by_task: dict[str, list[ContainerInfo]] = {}
        for info in self._infos.values():
            by_task.setdefault(info.labels[TASK], []).append(info)
        out = []
        for task_id, infos in sorted(by_task.items()):
            record = task_record(task_id, infos, self.network)
            if record is not None:
                out.append(record)
        return out


def task_record(task_id: str, infos: list[ContainerInfo], network: str) -> TaskRecord | None:
    """One task from its containers' inspects; None once it is over (its main one stopped)."""
    main = [i for i in infos if i.role == L.Role.REPLICA.value]
    if any(not i.running for i in main):
        return None  # dead or kept for its logs: a new task replaces it
    owner = next((i for i in infos if i.address_on(network)), None)
    if owner is None:
        return None
    service = owner.service or ""
    index = owner.index or 0
    containers = []
    for info in sorted(infos, key=lambda i: (i.role != L.Role.REPLICA.value, i.name)):
        if info.role == L.Role.PAUSE.value or not info.started_at:
            continue  # Fargate lists no pause container; one never started has no times
        name = info.labels.get(L.SIDECAR) or service
        containers.append(
            TaskContainer(
                name=name,
                docker_id=info.id,
                docker_name=info.name,
                image=info.image,
                image_id=info.image_id,
                created_at=info.created,
                started_at=info.started_at,
                finished_at=info.finished_at,
                exit_code=info.exit_code,
                running=info.running,
            )
        )
    if not containers:
        return None
    return TaskRecord(
        task_id=task_id,
        service=service,
        index=index,
        address=owner.address_on(network) or "",
        mac=owner.macs.get(network, ""),
        containers=tuple(containers),
    )
