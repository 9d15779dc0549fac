"""Where an environment's running data plane is: `DataPlane`, and finding it.

Apart from Deployment because every command that talks to a mesh (`ps`,
`scale`, the watcher, undo, the pytest plugin) first finds its data plane,
whoever started it: the engine's labelled data-plane and controller
containers, else the host-mode agent's admin file. Telling why none answers
(no mesh, or replicas left without their data plane) belongs to finding it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from meshlocal.adminapi import admin_call
from meshlocal.errors import DataPlaneDown, DataPlaneError, MeshNotRunning
from meshlocal.hostagent import exited
from meshlocal.ports import ADMIN_PORT, PUBLIC_PORT, Mode
from meshlocal.runtime import labels as L
from meshlocal.runtime.dataplane import published_ports
from meshlocal.runtime.engine import ContainerInfo, Engine
from meshlocal.runtime.tunnel import on_overlay, reach


@dataclass(frozen=True)
class DataPlane:
    """Where a running agent is: its admin URL and what it publishes."""

    mode: Mode
    admin_url: str
    public_url: str | None
    container_id: str | None = None
    pid: int | None = None
    controller_id: str | None = None  # container mode: where commands go (docker exec)
    control_socket: str | None = None  # host mode: the controller's socket


@dataclass(frozen=True)
class PlaneFinder:
    """The data plane and controller of one environment, as the engine and its files show them."""

    engine: Engine
    project: str
    env: str

    def dataplane_container(self) -> ContainerInfo | None:
        found = self.engine.list_containers(self.project, self.env, role=L.Role.DATAPLANE)
        return found[0] if found else None

    def controller_container(self) -> ContainerInfo | None:
        found = self.engine.list_containers(self.project, self.env, role=L.Role.CONTROLLER)
        return found[0] if found else None

    def dataplane_from(self, info: ContainerInfo) -> DataPlane:
        ports = published_ports(self.engine, info.id)
        admin = ports.get(ADMIN_PORT)
        if admin is None:
            raise DataPlaneError(f"the data plane {info.name} publishes no admin port")
        public = ports.get(PUBLIC_PORT)
        ctl = self.controller_container()
        overlay = on_overlay(self.engine, L.network_name(self.project, self.env))
        return DataPlane(
            "container",
            reach(self.engine, info.id, ADMIN_PORT, admin, overlay=overlay, spare=True),
            reach(self.engine, info.id, PUBLIC_PORT, public, overlay=overlay) if public else None,
            container_id=info.id,
            controller_id=ctl.id if ctl is not None and ctl.running else None,
        )

    def find(self, *, admin_file: Path, workspace: Path) -> DataPlane:
        """The running data plane, or MeshNotRunning.

        `admin_file`: where a host-mode agent says it answers; `workspace`: for the message.
        """
        info = self.dataplane_container()
        if info is not None and info.running:
            return self.dataplane_from(info)
        host_pid: int | None = None
        if admin_file.exists():
            data = json.loads(admin_file.read_text())
            host_pid = data.get("pid")
            if not exited(host_pid):  # a stale file outlives an agent that was killed
                return DataPlane(
                    "host",
                    data["admin_url"],
                    data.get("public_url"),
                    pid=host_pid,
                    control_socket=data.get("control"),
                )
        raise self.not_running(info, host_pid, workspace)

    def not_running(
        self, plane: ContainerInfo | None, host_pid: int | None, workspace: Path
    ) -> MeshNotRunning:
        """No mesh at all, or replicas left without their data plane (DataPlaneDown)."""
        replicas = tuple(
            c
            for c in self.engine.list_containers(self.project, self.env, role=L.Role.REPLICA)
            if c.state != "removing"
        )
        if plane is None and not replicas:
            return MeshNotRunning(
                f"no mesh is running for environment {self.env} of {workspace}",
                hint="start it with `meshlocal up -d`",
            )
        if plane is not None:
            code = f", exit code {plane.exit_code}" if plane.exit_code is not None else ""
            why = f"its container {plane.name} is {plane.state}{code}"
        elif host_pid is not None:
            why = f"its host-mode process {host_pid} has ended"
        else:
            why = "its container was removed"
        running = sum(1 for c in replicas if c.running)
        return DataPlaneDown(
            f"the data plane is not running ({why}); {running} replica(s) run and are "
            f"unreachable by name (environment {self.env} of {workspace})",
            hint="`meshlocal up -d` restores it; `meshlocal down` removes what is left",
            containers=replicas,
        )

    def check_alive(self) -> None:
        """A data plane or controller that crashed fails `up -d` at once, with its last words."""
        for info, what in (
            (self.dataplane_container(), "data plane"),
            (self.controller_container(), "controller"),
        ):
            if info is None or info.state not in ("exited", "dead", "restarting"):
                continue
            logs = "\n".join(f"    {line}" for line in self.engine.logs(info.id, tail=15))
            raise DataPlaneError(
                f"the {what} {info.name} is {info.state} (exit code {info.exit_code})",
                hint="this is a meshlocal bug or a bad configuration; its last log lines:\n" + logs,
            )

    def wait_admin(self, admin_url: str, timeout: float) -> None:
        """Until the admin API at `admin_url` answers; a crashed data plane fails at once."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                admin_call(admin_url, "/healthz", timeout=2.0)
                return
            except DataPlaneError:
                if time.monotonic() > deadline:
                    raise
                self.check_alive()
                time.sleep(0.2)
