"""The state every part of the replica reconciler shares, and its plumbing.

`Reconciler` (replicas.py) is assembled from parts, one concept each:
starting and stopping tasks (replicatasks.py), restarts after a crash
(restarts.py), rolling replacement (rolling.py), one-off clients
(runclients.py), Docker events (replicaevents.py), readiness
(readiness.py). They all read and write the one state built here, apart
so that each part's module can be checked on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from meshlocal.errors import MeshlocalError, RuntimeFailure
from meshlocal.manifest.model import MAX_REPLICAS
from meshlocal.manifest.validate import replica_limit_hint
from meshlocal.registry import Health, Replica, ReplicaRegistry
from meshlocal.runtime.backoff import Slot
from meshlocal.runtime.engine import ContainerEvent, Engine, NetworkInfo
from meshlocal.runtime.reconcile import DesiredService
from meshlocal.runtime.streams import EventStream

# One logger for every part of the reconciler, named as before the split.
log = logging.getLogger("meshlocal.runtime.replicas")
T = TypeVar("T")

MAX_PARALLEL = 8  # containers starting or stopping at once, per agent


class ReconcilerState:
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

    if TYPE_CHECKING:
        # Defined by Reconciler (replicas.py); the parts ask it to converge.
        async def converge(self, service: str) -> None: ...

        def request_converge(self, service: str) -> asyncio.Task[None]: ...

    def _on_any_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Subscribe to the registry and the served view; returns the unsubscriber."""
        offs = [reg.subscribe(lambda _b, _a: callback()) for reg in {self.registry, self.view}]

        def off() -> None:
            for unsubscribe in offs:
                unsubscribe()

        return off

    def _known(self, service: str) -> None:
        if service not in self.desired:
            raise RuntimeFailure(
                f"no service named {service} runs in {self.env}",
                hint="`meshlocal ps` lists the services",
            )

    def _check_scale(self, service: str, count: int) -> None:
        """`scale SERVICE=COUNT` refused before anything changes: unknown, or out of range."""
        self._known(service)
        if count < 0:
            raise RuntimeFailure(f"cannot scale {service} to {count} replicas")
        if count > self.max_replicas:
            raise RuntimeFailure(
                f"cannot scale {service} to {count} replicas: above meshlocal's limit of "
                f"{self.max_replicas} replicas per service",
                hint=replica_limit_hint(self.max_replicas),
            )

    def _resolve_waiter(self, cid: str, ok: bool) -> None:
        fut = self._ready_waiters.pop(cid, None)
        if fut is not None and not fut.done():
            fut.set_result(ok)

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
