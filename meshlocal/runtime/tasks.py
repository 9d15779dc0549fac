"""One ECS task as Docker containers: the main container, its sidecars, a pause container.

Pure specs (what to create, with which labels) and the dependency wait
(`depends_on` conditions) that starting a task needs; the reconciler
decides when.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshlocal.errors import RuntimeFailure
from meshlocal.manifest.model import ContainerHealthCheck
from meshlocal.metadata import uri_vars
from meshlocal.registry import Health
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerSpec, Engine
from meshlocal.runtime.reconcile import ReplicaTemplate, SidecarTemplate

TASK = "meshlocal.task"  # one id per task: its main container, sidecars and pause
NETNS = "meshlocal.netns"  # on a main container: the pause container owning its namespace
ESSENTIAL = "meshlocal.essential"
# ECS ignores a Dockerfile's HEALTHCHECK: only the task definition's counts.
NO_HEALTHCHECK = ContainerHealthCheck(command=("NONE",))


@dataclass(frozen=True)
class TaskSpecs:
    """The containers of one environment's tasks."""

    project: str
    env: str
    network: str
    dns: tuple[str, ...]
    workspace: Path | None = None
    pause_image: str | None = None  # e.g. the busybox image; enables main-after-sidecar
    # `http://<data plane>:<port>`: the task metadata endpoint, None for no variables.
    metadata: str | None = None

    def environment(self, base: Mapping[str, str], task: str, name: str) -> dict[str, str]:
        """A container's variables: the template's, plus its own metadata URIs.

        Per container, so outside the template and its config hash.
        """
        env = dict(base)
        if self.metadata and task:
            env.update(uri_vars(self.metadata, task, name))
        return env

    def labels(
        self, template: ReplicaTemplate, index: int, task: str, role: L.Role
    ) -> dict[str, str]:
        lbl = L.base_labels(self.project, self.env, role, self.workspace)
        lbl.update({L.SERVICE: template.service, L.REPLICA: str(index)})
        if task:
            lbl[TASK] = task
        return lbl

    def replica(
        self,
        template: ReplicaTemplate,
        index: int,
        config_hash: str,
        *,
        task: str = "",
        netns: str | None = None,
        sc_view: frozenset[str] | None = None,
    ) -> ContainerSpec:
        """The main container; `netns`: the pause container whose namespace it joins.

        `sc_view`: the Service Connect endpoints it may resolve, stamped as a
        label outside the config hash (None stamps nothing).
        """
        name = L.container_name(self.project, self.env, template.service, index)
        lbl = self.labels(template, index, task, L.Role.REPLICA)
        lbl[L.CONFIG_HASH] = config_hash
        if template.port is not None:
            lbl[L.PORT] = str(template.port)
        if sc_view is not None:
            lbl[L.SC_VIEW] = ",".join(sorted(sc_view))
        if netns is not None:
            lbl[NETNS] = netns
        return ContainerSpec(
            name=name,
            image=template.image,
            labels=lbl,
            environment=self.environment(template.environment, task, template.service),
            command=template.command,
            entrypoint=template.entrypoint,
            network=None if netns else self.network,
            network_mode=f"container:{netns}" if netns else None,
            hostname=None if netns else L.hostname_for(name),
            dns=() if netns else self.dns,
            healthcheck=template.healthcheck or NO_HEALTHCHECK,
        )

    def pause(self, template: ReplicaTemplate, index: int, task: str) -> ContainerSpec:
        """Holds a task's network namespace when its main container waits for sidecars."""
        assert self.pause_image is not None
        name = L.sidecar_name(self.project, self.env, template.service, index, "pause")
        return ContainerSpec(
            name=name,
            image=self.pause_image,
            labels=self.labels(template, index, task, L.Role.PAUSE),
            command=("sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"),
            network=self.network,
            hostname=L.hostname_for(
                L.container_name(self.project, self.env, template.service, index)
            ),
            dns=self.dns,
            healthcheck=NO_HEALTHCHECK,
        )

    def sidecar(
        self, template: ReplicaTemplate, index: int, sc: SidecarTemplate, netns: str, task: str = ""
    ) -> ContainerSpec:
        lbl = self.labels(template, index, task, L.Role.SIDECAR)
        lbl[L.SIDECAR] = sc.name
        lbl[ESSENTIAL] = "true" if sc.essential else "false"
        return ContainerSpec(
            name=L.sidecar_name(self.project, self.env, template.service, index, sc.name),
            image=sc.image,
            labels=lbl,
            environment=self.environment(sc.environment, task, sc.name),
            command=sc.command,
            entrypoint=sc.entrypoint,
            network_mode=f"container:{netns}",  # one task, one network namespace
            healthcheck=sc.healthcheck or NO_HEALTHCHECK,
        )


async def wait_condition(engine: Engine, cid: str, condition: str, timeout: float = 60.0) -> None:
    """ECS container dependency conditions, checked with the engine's own state."""
    import asyncio  # the controller's: the CLI builds specs only

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await asyncio.to_thread(engine.inspect, cid)
        if info is None:
            return
        if condition == "start" and info.state != "created":
            return
        if condition == "healthy" and info.health in (Health.HEALTHY, None):
            return
        if condition in ("complete", "success") and info.state in ("exited", "dead"):
            if condition == "success" and info.exit_code not in (0, None):
                raise RuntimeFailure(
                    f"container {info.name} exited with {info.exit_code}; "
                    "a dependant needs it to succeed"
                )
            return
        # Bounded wait for a state change; Docker has no per-condition event to await.
        await asyncio.sleep(0.2)
    raise RuntimeFailure(f"timed out waiting for {cid[:12]} to be {condition}")
