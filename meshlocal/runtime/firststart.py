"""A mesh started from nothing: its first replicas are created beside the data plane.

The controller adopts a replica that runs with the configuration it would
have given it (the same config hash, the same DNS server), so the CLI, which
holds the engine anyway, creates the first replicas while the data-plane and
controller containers are created, and starts them as soon as the data plane
has started, instead of after the controller has booted and connected: that
boot was a second of `up -d` spent waiting. From then on the controller owns
them, as it owns replicas it finds after a restart.

The data plane gets a planned address, so the replicas can be told their DNS
server before it runs; it binds its DNS port before importing anything else
(meshlocal/prebind.py), so a replica asking a name in its first milliseconds
waits for the answer instead of being refused.

Tasks with sidecars are left to the controller: their containers start in
`dependsOn` order, which needs the controller's waits.
"""

from __future__ import annotations

import contextlib
import ipaddress
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from meshlocal.errors import MeshlocalError
from meshlocal.metadata import METADATA_PORT
from meshlocal.runtime.engine import ContainerSpec, Engine, NetworkInfo
from meshlocal.runtime.reconcile import DesiredService
from meshlocal.runtime.tasks import TaskSpecs

MAX_PARALLEL = 8  # as the controller's own bound: the engine takes several at once


def planned_address(network: NetworkInfo, taken: Sequence[str] = ()) -> str | None:
    """The first address of the network's container range that nobody holds."""
    block = network.ip_range or network.subnet
    if not block:
        return None
    held = {*taken, network.gateway or ""}
    for host in ipaddress.ip_network(block, strict=False).hosts():
        if str(host) not in held:
            return str(host)
    return None


def first_replicas(
    desired: Mapping[str, DesiredService],
    *,
    project: str,
    env: str,
    network: NetworkInfo,
    address: str,
    sc_view: frozenset[str],
) -> list[ContainerSpec]:
    """The main container of every task the controller would start first, as it would.

    The same TaskSpecs, config hash and labels as the controller's
    `_start_replica`: anything else would make it roll them at once.
    """
    specs = TaskSpecs(
        project, env, network.name, (address,), metadata=f"http://{address}:{METADATA_PORT}"
    )
    out: list[ContainerSpec] = []
    for d in desired.values():
        if d.template.sidecars:
            continue
        config_hash = d.template.config_hash(address, network.name)
        for index in range(1, d.count + 1):
            task = uuid.uuid4().hex  # 32 hex digits, as an ECS task id
            out.append(specs.replica(d.template, index, config_hash, task=task, sc_view=sc_view))
    return out


class FirstStart:
    """Creates the containers at once, in threads; `start` runs them, `discard` undoes."""

    def __init__(self, engine: Engine, specs: Sequence[ContainerSpec]) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="first")
        self._created: list[Future[str]] = [
            self._pool.submit(engine.create_container, spec) for spec in specs
        ]

    def wait_created(self) -> list[str]:
        """Every container's id, once all exist; the first creation error otherwise."""
        ids = [f.result() for f in self._created]
        return ids

    def start(self) -> None:
        """Start them all; one that cannot start is removed, for the controller to retry.

        Left "created", it would look alive to the controller and never run.
        """
        ids = self.wait_created()
        list(self._pool.map(self._start_one, ids))
        self._pool.shutdown()

    def _start_one(self, cid: str) -> None:
        try:
            self.engine.start(cid)
        except MeshlocalError:
            with contextlib.suppress(MeshlocalError):
                self.engine.remove(cid)

    def discard(self) -> None:
        """`up` failed before the start: remove what was created (best effort)."""
        for f in self._created:
            with contextlib.suppress(Exception):
                self.engine.remove(f.result())
        self._pool.shutdown()
