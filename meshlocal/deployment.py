"""One environment of one workspace, as the CLI and the pytest plugin drive it.

`Deployment` is the client side of a mesh: it loads the workspace, builds
images, starts the data plane (the agent of mesh.py) and talks to it over
its admin API. Everything it creates is labelled, so `down` needs nothing
but the workspace to find it, even after meshlocal was SIGKILLed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import docker.errors

from meshlocal import control
from meshlocal.adminapi import admin_call, remote_message
from meshlocal.agent import FIRST_START_ENV
from meshlocal.agentconfig import CONFIG_ENV, AgentConfig
from meshlocal.builds import build_images
from meshlocal.errors import (
    DataPlaneDown,
    DataPlaneError,
    MeshlocalError,
    MeshNotRunning,
    PortInUse,
    RuntimeFailure,
)
from meshlocal.manifest import check, find_workspace, read_env_file
from meshlocal.manifest.diagnostics import ManifestErrors, Note
from meshlocal.manifest.model import EnvironmentSpec, Workspace
from meshlocal.manifest.validate import over_replica_limit, runnable_hint
from meshlocal.naming import NamingModel, public_rules
from meshlocal.overrides import NO_OVERRIDES, EnvOverride, Overrides, PortOverride
from meshlocal.overrides import apply as apply_overrides
from meshlocal.overrides import check as check_overrides
from meshlocal.paths import CONTAINER_STATE_FILE
from meshlocal.ports import ADMIN_PORT, PUBLIC_PORT
from meshlocal.readiness import crash_failure, starting_replicas, timeout_failure
from meshlocal.runtime import images
from meshlocal.runtime import labels as L
from meshlocal.runtime.dataplane import (
    controller_spec,
    dataplane_spec,
    ensure_controller,
    ensure_dataplane,
    free_port,
    in_subnet,
    port_free,
    published_ports,
    with_identity,
)
from meshlocal.runtime.engine import (
    ContainerInfo,
    Engine,
    NetworkInfo,
    Removed,
)
from meshlocal.runtime.firststart import FirstStart, first_replicas, planned_address
from meshlocal.runtime.reconcile import DesiredService, template_for
from meshlocal.teardown import remove_images, teardown
from meshlocal.vips import vip_block

Progress = Callable[[str], None]
Mode = Literal["container", "host"]

_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "meshlocal"


def _quiet(_: str) -> None:
    pass


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


class Deployment:
    """`meshlocal up/down/ps/scale/resolve` for one environment."""

    # `up --env-var-override/--port-override`, set by use_overrides: this `up`'s only.
    overrides: Overrides = NO_OVERRIDES

    def __init__(
        self,
        start: Path,
        env: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        engine: Engine | None = None,
        project_suffix: str | None = None,
        lenient: bool = False,
        services: Sequence[str] = (),
    ) -> None:
        # `lenient`: find a running mesh even when copilot/.meshlocal.yml is broken.
        self.workspace: Workspace = find_workspace(start, lenient=lenient)
        self._env_arg = env
        self._environ = environ
        # `up SERVICE...`: only these are loaded (a broken manifest elsewhere is a warning).
        self.services = tuple(services)
        self._spec: EnvironmentSpec | None = None
        self._left_out: list[Note] = []
        self._engine = engine
        self.phase = "loading the workspace"  # where `up` is, for an interruption's message
        # What the last `up` ran: the controller's configuration and the images.
        self.applied_config: str | None = None
        self.images_run: dict[str, str] = {}
        self.stopped_watcher: int | None = None  # the pid `down` stopped
        self.emulator_id: str | None = None  # the SNS/SQS emulator `up` left running
        # Images are shared by every copy of a workspace; containers and
        # networks are not: a suffix (the pytest plugin's, one per session)
        # gives a second, independent mesh of the same workspace.
        self.base_project = L.project_id(self.workspace.app, self.workspace.root)
        self.project = (
            f"{self.base_project}-{L.slug(project_suffix)}" if project_suffix else self.base_project
        )

    # -- lazily loaded parts ----------------------------------------------

    @property
    def spec(self) -> EnvironmentSpec:
        if self._spec is None:
            report = check(self.workspace, self._env_arg, self._environ, self.services or None)
            if report.errors:
                raise ManifestErrors(report.errors, footer=runnable_hint(report))
            self._spec = report.spec
            self._left_out = [n for n in report.notes if n.kind == "left-out"]
        return self._spec

    def load_notes(self) -> list[str]:
        """The broken manifests of services `up SERVICE...` left out, one line each."""
        _ = self.spec
        return [note.render() for note in self._left_out]

    @property
    def env(self) -> str:
        if self._env_arg is not None:
            return self._env_arg
        return self.spec.env

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine.from_env()
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # -- images -----------------------------------------------------------

    def image_tag(self, service: str, sidecar: str | None = None) -> str:
        name = f"{service}-{sidecar}" if sidecar else service
        return f"meshlocal/{self.base_project}-{name}:{L.slug(self.env)}"

    def build(
        self, progress: Progress = _quiet, *, force_build: bool = False
    ) -> dict[str, tuple[str, str | None]]:
        """Every service's image: service -> (ref to run, image id for rolling)."""
        return build_images(
            self.engine.client,
            self.spec,
            tag=self.image_tag,
            labels=lambda role: L.base_labels(self.base_project, self.env, role),
            progress=progress,
            force_build=force_build,
        )

    # -- desired state ----------------------------------------------------

    def desired(
        self,
        built: Mapping[str, tuple[str, str | None]],
        public_port: int = 0,
        aws_endpoint: str | None = None,
    ) -> dict[str, DesiredService]:
        """`public_port`: the host port of the public endpoint, for COPILOT_LB_DNS;
        `aws_endpoint`: the local SNS/SQS's URL in the mesh, when one runs."""
        naming = NamingModel(self.spec, aws_endpoint=aws_endpoint)
        lb_dns = f"localhost:{public_port}" if public_port else None
        out: dict[str, DesiredService] = {}
        for svc in self.spec.services:
            if svc.name not in built:
                raise RuntimeFailure(
                    f"service {svc.name} has neither image.build nor image.location",
                    location=svc.where("image"),
                    hint="add image.build (a Dockerfile) or image.location (an image name)",
                )
            ref, image_id = built[svc.name]
            env_file = read_env_file(svc.env_file) if svc.env_file else None
            sidecar_images = {
                sc.name: built[f"{svc.name}/{sc.name}"][0]
                for sc in svc.sidecars
                if f"{svc.name}/{sc.name}" in built
            }
            template = template_for(
                naming,
                svc,
                ref,
                image_id=image_id,
                env_file=env_file,
                sidecar_images=sidecar_images,
                lb_dns=lb_dns,
                health_interval=self.workspace.health_check_interval,
            )
            template = apply_overrides(template, self.overrides.env)
            out[svc.name] = DesiredService(template, svc.count)
        return out

    # -- data plane -------------------------------------------------------

    def network(self) -> NetworkInfo:
        net = self.engine.ensure_network(self.project, self.env, self.workspace.root)
        # Fail here, before a data plane starts, when the network leaves no block
        # for Service Connect addresses (made by an older meshlocal, or too small).
        vip_block(net.subnet or "", net.ip_range, net.gateway)
        return net

    def _network_and_pubsub(self, progress: Progress) -> tuple[NetworkInfo, str | None]:
        network = self.network()
        return network, self.start_pubsub(network, progress)

    def start_pubsub(self, network: NetworkInfo, progress: Progress = _quiet) -> str | None:
        """The local SNS/SQS, holding Copilot's topics and queues; its URL in the mesh.

        Only when some service publishes or is a Worker Service (Copilot gives
        every worker its queue); otherwise a running one is removed. It starts
        before any replica, as a worker may read its queue at once.
        """
        from meshlocal.pubsubplan import plan as pubsub_plan
        from meshlocal.runtime import pubsub

        plan = pubsub_plan(self.spec)
        # `up SERVICE...` leaves the other services running: their topics and queues stay.
        subset = bool(self.services)
        if not plan:
            if subset:
                found = pubsub.find(self.engine, self.project, self.env)
                self.emulator_id = found.container_id if found is not None else None
                return found.endpoint if found is not None else None
            pubsub.remove(self.engine, self.project, self.env)
            return None
        emulator = pubsub.ensure(
            self.engine, self.project, self.env, network, self.workspace.root, progress
        )
        pubsub.provision(self.engine, emulator, plan, self.spec.workspace.region, prune=not subset)
        self.emulator_id = emulator.container_id
        return emulator.endpoint

    def agent_config(
        self,
        desired: Mapping[str, DesiredService],
        mode: Mode,
        network: NetworkInfo,
        *,
        public_port: int = 0,
    ) -> AgentConfig:
        # Only tasks with sidecars need a pause container (and so busybox).
        pause_image = (
            images.ensure_busybox_image(self.engine.client)
            if any(s.sidecars for s in self.spec.services)
            else None
        )
        if mode == "container":
            return AgentConfig(
                project=self.project,
                spec=self.spec,
                desired=desired,
                mode="container",
                self_container=L.dataplane_name(self.project, self.env),
                pause_image=pause_image,
                state_file=CONTAINER_STATE_FILE,
                helper_image=images.ensure_busybox_image(self.engine.client),
                overrides=self.overrides.describe(),
            )
        if not network.gateway:
            raise DataPlaneError(f"network {network.name} has no gateway address for host mode")

        return AgentConfig(
            project=self.project,
            spec=self.spec,
            desired=desired,
            mode="host",
            bind=network.gateway,
            advertise=network.gateway,
            public_host="127.0.0.1",
            public_port=public_port,
            admin_host="127.0.0.1",
            admin_port=0,
            pause_image=pause_image,
            overrides=self.overrides.describe(),
        )

    def start_dataplane_container(
        self, config: AgentConfig, network: NetworkInfo, *, public_port: int, progress: Progress
    ) -> DataPlane:
        """Start the data-plane container, or hand a running one the new configuration.

        A running data plane is kept whenever its image and published ports
        are unchanged: its address is every replica's DNS server, so keeping
        it keeps unchanged replicas running. The new configuration goes over
        the admin API instead (the agent applies it hot).
        """
        client = self.engine.client
        base = images.ensure_python_base(client, progress=progress)
        image = images.ensure_dataplane_image(client, base, progress)
        ports: dict[int, tuple[str, int]] = {ADMIN_PORT: ("127.0.0.1", 0)}
        if public_rules(NamingModel(self.spec)):
            ports[PUBLIC_PORT] = ("127.0.0.1", public_port)
        # Identity without the configuration: a config change is applied hot.
        identity = hashlib.sha256(
            json.dumps([image, sorted(ports.items()), str(network.id)], default=str).encode()
        ).hexdigest()[:16]
        # Concrete host ports, never 0: Docker re-draws ephemeral ports when a
        # container restarts, and the URLs a person has open must survive a
        # data-plane restart. A replaced data plane keeps its ports too.
        current = self._dataplane_container()
        kept = published_ports(self.engine, current.id) if current is not None else {}
        if not kept:  # a data plane that was removed: the ports it had, when still free
            with contextlib.suppress(OSError, ValueError):
                remembered = json.loads(self._state_file(".ports").read_text())
                kept = {int(k): int(v) for k, v in remembered.items() if port_free(int(v))}
        for inner, (host, port) in list(ports.items()):
            if port == 0:
                ports[inner] = (host, kept.get(inner) or free_port(host))
        path = self._state_file(".ports")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({str(k): v[1] for k, v in ports.items()}))
        # The link volume first: the data plane listens in it.
        self.engine.ensure_volume(
            L.link_volume_name(self.project, self.env),
            L.base_labels(self.project, self.env, L.Role.DATAPLANE),
        )
        address: str | None = None
        first: FirstStart | None = None
        if current is None or not current.running:
            # A data plane that was removed or stopped comes back on the address
            # the replicas ask for names, so it adopts them instead of rolling all.
            address, any_replica = self._replicas_dns(network)
            if address is None and not any_replica:
                # A mesh from nothing: the first replicas start beside the data plane.
                address = planned_address(network, self.engine.network_addresses(network.id))
                if address is not None:
                    first = FirstStart(
                        self.engine,
                        first_replicas(
                            config.desired,
                            project=self.project,
                            env=self.env,
                            network=network,
                            address=address,
                            sc_view=NamingModel(self.spec).endpoint_names,
                        ),
                    )
        spec = dataplane_spec(
            project=self.project,
            env=self.env,
            image=image,
            network=network,
            publish=ports,
            workspace=self.workspace.root,
            address=address,
        )
        # Docker restarts a crashed data plane by itself (restart policy in
        # dataplane_spec); `up` brings back one stopped, killed or removed.
        controller: list[tuple[str, bool]] = []

        def start_controller(dataplane_id: str) -> None:
            if first is not None:
                first.wait_created()  # the controller must find every replica it didn't start
            # Tied to this data plane (its address, its namespace): a new data
            # plane gets a new controller, started while it starts; a kept one keeps it.
            ctl = with_identity(
                controller_spec(
                    self.engine,
                    project=self.project,
                    env=self.env,
                    image=image,
                    environment={},
                    workspace=self.workspace.root,
                ),
                image,
                dataplane_id,
            )
            # The configuration is no part of its identity: a kept controller gets it hot.
            ctl = replace(ctl, environment={**ctl.environment, CONFIG_ENV: config.to_json()})
            if first is not None:  # no part of its identity either: it tells the first link
                ctl = replace(ctl, environment={**ctl.environment, FIRST_START_ENV: "1"})
            controller.append(ensure_controller(self.engine, ctl))

        try:
            cid, _address, _started = ensure_dataplane(
                self.engine,
                replace(spec, labels={**spec.labels, L.CONFIG_HASH: identity}),
                start_controller,
            )
        except BaseException:
            if first is not None:
                first.discard()  # settled before the caller's undo lists what to remove
            raise
        if first is not None:
            self.phase = "starting the replicas"
            first.start()
        ctl_id, ctl_started = controller[-1]
        info = self.engine.inspect(cid)
        if info is None:
            raise DataPlaneError("the data-plane container vanished after start")
        plane = replace(self._dataplane_from(info), controller_id=ctl_id)
        if not ctl_started and not self._runs_already(plane, config):
            progress("data plane already running: applying the new configuration")
            self.control(plane, "apply", json.loads(config.to_json()), 60.0)
        return plane

    def _runs_already(self, plane: DataPlane, config: AgentConfig) -> bool:
        """The controller runs exactly this configuration, converged, with no error.

        The configuration is read from the controller's own state file through
        the engine: what the data plane says never decides what runs.
        """
        if plane.controller_id is None:
            return False
        running = self.engine.read_file(plane.controller_id, CONTAINER_STATE_FILE)
        if running != config.to_json():
            return False
        try:
            state = admin_call(plane.admin_url, "/v1/state", timeout=5.0)
        except MeshlocalError:
            return False
        return bool(state.get("ready") and not state.get("error"))

    def _replicas_dns(self, network: NetworkInfo) -> tuple[str | None, bool]:
        """(the DNS server the running replicas were created with if on `network`, any replica?)"""
        replicas = self.engine.list_containers(self.project, self.env, role=L.Role.REPLICA)
        for info in replicas:
            if not info.running:
                continue
            with contextlib.suppress(docker.errors.DockerException):
                servers = self.engine.api.inspect_container(info.id)["HostConfig"].get("Dns")
                if servers and in_subnet(servers[0], network):
                    return str(servers[0]), True
        return None, bool(replicas)

    def _wait_admin(self, admin_url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                admin_call(admin_url, "/healthz", timeout=2.0)
                return
            except DataPlaneError:
                if time.monotonic() > deadline:
                    raise
                self._check_dataplane_alive()
                time.sleep(0.2)

    def start_dataplane_process(self, config: AgentConfig, *, log_file: Path) -> DataPlane:
        """Host mode, detached: a `meshlocal agent` process on the gateway address."""
        _STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.stop_dataplane_process()
        cfg_path = self._state_file(".json")
        cfg_path.write_text(config.to_json())
        with log_file.open("ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "meshlocal",
                    "agent",
                    "--config-file",
                    str(cfg_path),
                    "--admin-file",
                    str(self._state_file(".admin")),
                    "--control-socket",
                    str(self.control_path()),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._state_file(".pid").write_text(str(proc.pid))
        return DataPlane("host", "", None, pid=proc.pid)

    def stop_dataplane_process(self) -> bool:
        pid_file = self._state_file(".pid")
        self._state_file(".admin").unlink(missing_ok=True)
        self._state_file(".json").unlink(missing_ok=True)
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                # Started by this very process (in-process `up`, the pytest plugin):
                # reap it, or its zombie answers kill(pid, 0) until the deadline.
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        break
                os.kill(pid, 0)
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        self._state_file(".admin").unlink(missing_ok=True)
        self.control_path().unlink(missing_ok=True)  # left by a controller SIGKILLed
        return True

    def control_path(self) -> Path:
        """Host mode: the controller's socket; short, as a unix socket path must be."""
        path = self._state_file(".control")
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"meshlocal-{os.getuid()}" / f"{digest}.control"

    def _state_file(self, suffix: str) -> Path:
        return _STATE_DIR / f"{self.project}-{L.slug(self.env)}{suffix}"

    def _dataplane_container(self) -> ContainerInfo | None:
        found = self.engine.list_containers(self.project, self.env, role=L.Role.DATAPLANE)
        return found[0] if found else None

    def _controller_container(self) -> ContainerInfo | None:
        found = self.engine.list_containers(self.project, self.env, role=L.Role.CONTROLLER)
        return found[0] if found else None

    def _dataplane_from(self, info: ContainerInfo) -> DataPlane:
        ports = published_ports(self.engine, info.id)
        admin = ports.get(ADMIN_PORT)
        if admin is None:
            raise DataPlaneError(f"the data plane {info.name} publishes no admin port")
        public = ports.get(PUBLIC_PORT)
        ctl = self._controller_container()
        return DataPlane(
            "container",
            f"http://127.0.0.1:{admin}",
            f"http://127.0.0.1:{public}" if public else None,
            container_id=info.id,
            controller_id=ctl.id if ctl is not None and ctl.running else None,
        )

    def dataplane(self) -> DataPlane:
        """The running data plane of this environment, or MeshNotRunning."""
        info = self._dataplane_container()
        if info is not None and info.running:
            return self._dataplane_from(info)
        admin = self._state_file(".admin")
        host_pid: int | None = None
        if admin.exists():
            data = json.loads(admin.read_text())
            host_pid = data.get("pid")
            if not _exited(host_pid):  # a stale file outlives an agent that was killed
                return DataPlane(
                    "host",
                    data["admin_url"],
                    data.get("public_url"),
                    pid=host_pid,
                    control_socket=data.get("control"),
                )
        raise self._not_running(info, host_pid)

    def _not_running(self, plane: ContainerInfo | None, host_pid: int | None) -> MeshNotRunning:
        """No mesh at all, or replicas left without their data plane (DataPlaneDown)."""
        replicas = tuple(
            c
            for c in self.engine.list_containers(self.project, self.env, role=L.Role.REPLICA)
            if c.state != "removing"
        )
        if plane is None and not replicas:
            return MeshNotRunning(
                f"no mesh is running for environment {self.env} of {self.workspace.root}",
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
            f"unreachable by name (environment {self.env} of {self.workspace.root})",
            hint="`meshlocal up -d` restores it; `meshlocal down` removes what is left",
            containers=replicas,
        )

    def record_host_admin(self, admin_url: str, public_url: str | None, control: str) -> None:
        _STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._state_file(".admin").write_text(
            json.dumps(
                {
                    "admin_url": admin_url,
                    "public_url": public_url,
                    "pid": os.getpid(),
                    "control": control,
                }
            )
        )

    # -- the whole of `up -d` ---------------------------------------------

    def up(
        self,
        *,
        mode: Mode = "container",
        public_port: int = 0,
        timeout: float = 180.0,
        wait: bool = True,
        progress: Progress = _quiet,
        force_build: bool = False,
        replace_services: Sequence[str] = (),
    ) -> DataPlane:
        """Build, start the data plane, and (with `wait`) return once all replicas are ready.

        Idempotent: run again, it rolls changed services and keeps the rest.
        `replace_services` rolls those services' replicas even when unchanged.
        """
        self.check_replica_limit()
        # Known before the replicas are made: COPILOT_LB_DNS names it.
        public_port = self.resolve_public_port(mode, public_port)
        self.phase = "building images"
        # The network is made while the images are checked or built: Docker
        # takes a while to create one, and neither waits on the other.
        # The SNS/SQS emulator, when one is needed, starts there too, once the network is made.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="network") as pool:
            made = pool.submit(self._network_and_pubsub, progress)
            try:
                built = self.build(progress, force_build=force_build)
            except BaseException:
                # Created or not, it is settled before the caller undoes `up`.
                concurrent.futures.wait([made])
                raise
            self.phase = "starting the data plane"
            network, aws_endpoint = made.result()
            desired = self.desired(built, public_port, aws_endpoint)
        config = self.agent_config(desired, mode, network, public_port=public_port)
        # Endpoints keep their addresses when the agent is restarted or replaced.
        config = replace(config, vips=self.current_vips())
        self.applied_config = config.to_json()
        self.images_run = {ref: image_id for ref, image_id in built.values() if image_id}
        if mode == "container":
            plane = self.start_dataplane_container(
                config, network, public_port=public_port, progress=progress
            )
        else:
            started = self.start_dataplane_process(config, log_file=self._state_file(".log"))
            plane = self._wait_dataplane(timeout, started.pid)
        if replace_services:
            self._wait_admin(plane.admin_url, timeout)  # a data plane started just now
        for service in replace_services:
            progress(f"replacing every replica of {service}")
            self.control(plane, "replace", {"service": service}, timeout)
        if wait:
            self.phase = "waiting for the replicas"
            self.wait_ready(timeout, plane=plane)
        self._remember_vips()
        return plane

    def inputs(self) -> list[str]:
        """What `up` reads outside copilot/: build contexts, Dockerfiles, env files."""
        paths: list[str] = []
        for svc in self.spec.services:
            for build in (svc.build, *(sc.build for sc in svc.sidecars)):
                if build is not None:
                    paths += [str(build.context), str(build.dockerfile)]
            if svc.env_file is not None:
                paths.append(str(svc.env_file))
        return paths

    def running_services(self) -> list[str]:
        """The services of the running mesh, or none when it isn't running."""
        try:
            return sorted(self.state()["services"])
        except MeshlocalError:
            return []

    def resolve_public_port(self, mode: Mode, public_port: int) -> int:
        """The public endpoint's host port: `--port`, else the one it has, else a free one.

        Concrete, never 0: the URLs a person has open survive a data-plane
        restart, and replicas are told it in COPILOT_LB_DNS.
        """
        if public_port or not public_rules(NamingModel(self.spec)):
            return public_port
        if mode == "container":
            current = self._dataplane_container()
            kept = published_ports(self.engine, current.id) if current is not None else {}
            if not kept:  # a data plane that was removed: its port, when still free
                with contextlib.suppress(OSError, ValueError):
                    remembered = json.loads(self._state_file(".ports").read_text())
                    kept = {int(k): int(v) for k, v in remembered.items() if port_free(int(v))}
            return kept.get(PUBLIC_PORT) or free_port("127.0.0.1")
        with contextlib.suppress(OSError, ValueError, KeyError, AttributeError):
            admin = json.loads(self._state_file(".admin").read_text())
            return int(str(admin["public_url"]).rsplit(":", 1)[1].rstrip("/"))
        return free_port("127.0.0.1")

    def current_vips(self) -> dict[str, str]:
        """Endpoint -> address: the running data plane's, else the last one remembered.

        The file outlives a data plane that is replaced while it doesn't answer.
        """
        try:
            services = self.state()["services"]
        except MeshlocalError:
            with contextlib.suppress(OSError, ValueError):
                kept = json.loads(self._state_file(".vips").read_text())
                if isinstance(kept, dict):
                    return {str(k): str(v) for k, v in kept.items()}
            return {}
        return {
            s["connect"]["name"]: s["connect"]["vip"]
            for s in services.values()
            if s.get("connect") and s["connect"].get("vip")
        }

    def _remember_vips(self) -> None:
        vips = self.current_vips()
        if vips:
            path = self._state_file(".vips")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(vips, sort_keys=True))

    def _wait_dataplane(self, timeout: float, pid: int | None = None) -> DataPlane:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(MeshNotRunning):
                return self.dataplane()
            # An agent that died (a taken port, a bad config) fails at once, not at the deadline.
            if time.monotonic() > deadline or _exited(pid):
                log = self._state_file(".log")
                tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
                raise DataPlaneError(
                    "the host-mode data plane did not start",
                    hint="its last log lines:\n" + "\n".join(f"    {t}" for t in tail),
                )
            time.sleep(0.1)

    def public_url(self) -> str | None:
        return self.dataplane().public_url

    # -- admin API --------------------------------------------------------

    def call(self, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        plane = self.dataplane()
        return admin_call(plane.admin_url, path, body, timeout)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.call("/v1/state")
        return state

    def scale(self, service: str, count: int) -> dict[str, Any]:
        state: dict[str, Any] = self.control(
            self.dataplane(), "scale", {"service": service, "count": count}, 120
        )
        return state

    def control(self, plane: DataPlane, op: str, body: Any = None, timeout: float = 60.0) -> Any:
        """A command for the controller (`apply`, `scale`, `replace`), never the data plane.

        Container mode: `docker exec` into the controller, so only who holds
        the engine can change the mesh. Host mode: its root-only socket.
        """
        if plane.control_socket is not None:
            return control.call_socket(plane.control_socket, op, body, timeout)
        ctl = plane.controller_id
        if ctl is None:
            info = self._controller_container()
            if info is None or not info.running:
                why = "was removed" if info is None else f"is {info.state}"
                raise DataPlaneDown(
                    f"the controller is not running (its container {why}): nothing can "
                    f"change the mesh of environment {self.env}",
                    hint="`meshlocal up -d` restores it; `meshlocal down` removes what is left",
                )
            ctl = info.id
        return control.call_container(self.engine, ctl, op, body, timeout)

    def wait_ready(
        self,
        timeout: float,
        on_poll: Callable[[dict[str, Any]], None] | None = None,
        *,
        services: Sequence[str] = (),
        plane: DataPlane | None = None,
    ) -> dict[str, Any]:
        """Until every replica is healthy; a crash loop or apply error fails at once.

        `services`: only those (`scale`): another service's crash loop is not this failure.
        `plane`: the data plane `up` just started, asked directly instead of
        looked up through the engine on every poll.
        """
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        # Ready on two polls in a row: a replica that dies just after it joins
        # (a crash at start) is ready for a moment, and one poll can land there.
        seen_ready = False
        while True:
            try:
                if plane is not None:
                    last = admin_call(plane.admin_url, "/v1/state", timeout=5.0)
                else:
                    last = self.state()
            except (DataPlaneError, MeshNotRunning):
                self._check_dataplane_alive()
            else:
                if on_poll is not None:
                    on_poll(last)
                if last.get("error"):
                    raise RuntimeFailure(remote_message(str(last["error"])))
                crashes = [c for c in last.get("crashes") or [] if _among(c["service"], services)]
                if crashes:
                    raise crash_failure(crashes)
                ready = (
                    all(last.get("services", {}).get(name, {}).get("ready") for name in services)
                    if services
                    else bool(last.get("ready"))
                )
                if ready and seen_ready:
                    return last
                seen_ready = ready
            if time.monotonic() > deadline:
                checks = {
                    name: report
                    for name, cid in starting_replicas(last)
                    if (report := self.engine.health_report(cid)) is not None
                    and report.exit_code != 0  # a passing check: merely not healthy yet
                }
                raise timeout_failure(last, timeout, checks)
            time.sleep(0.05)

    def _check_dataplane_alive(self) -> None:
        """A data plane or controller that crashed fails `up -d` at once, with its last words."""
        for info, what in (
            (self._dataplane_container(), "data plane"),
            (self._controller_container(), "controller"),
        ):
            if info is None or info.state not in ("exited", "dead", "restarting"):
                continue
            logs = "\n".join(f"    {line}" for line in self.engine.logs(info.id, tail=15))
            raise DataPlaneError(
                f"the {what} {info.name} is {info.state} (exit code {info.exit_code})",
                hint="this is a meshlocal bug or a bad configuration; its last log lines:\n" + logs,
            )

    # -- teardown ---------------------------------------------------------

    def down(self, *, images: bool = False) -> Removed:
        """Remove everything, controller first: a live agent would replace what we remove.

        With `images`, also the service images `build` tagged for this
        workspace (see remove_images). Works when the manifests no longer load.
        """
        from meshlocal import quickup, watch

        quickup.forget(self.workspace.root)
        # The watcher first: a rebuild it runs now would start what is being removed.
        try:
            self.stopped_watcher = watch.stop(watch.pid_file(self), log=True)
        except MeshlocalError:  # no --env, manifests that don't load: every one of the project
            watch.stop_all(self.project)
        try:
            self.stop_dataplane_process()
            for suffix in (".vips", ".ports", ".port-override"):
                self._state_file(suffix).unlink(missing_ok=True)
        except MeshlocalError:
            # No --env and manifests that no longer load (a variable unset, a
            # typo): stop every host-mode agent of the project instead.
            stop_host_agents(self.project)
            for kept in (
                *_STATE_DIR.glob(f"{self.project}-*.vips"),
                *_STATE_DIR.glob(f"{self.project}-*.ports"),
                *_STATE_DIR.glob(f"{self.project}-*.port-override"),
            ):
                kept.unlink(missing_ok=True)
        return teardown(
            self.engine,
            self.project,
            self._env_arg,
            image_prefix=f"meshlocal/{self.base_project}-" if images else None,
            image_project=self.base_project,
        )

    def check_replica_limit(self) -> None:
        """A count above max_replicas fails before anything is built or started."""
        over = over_replica_limit(self.spec)
        if over:
            raise ManifestErrors(over)

    def check_public_port(self, public_port: int) -> None:
        """Fail before anything is built or replaced when `--port` is taken by someone else.

        The running data plane's own port is no conflict: `up` keeps or hands it over.
        """
        if public_port == 0 or not public_rules(NamingModel(self.spec)):
            return
        current = self._dataplane_container()
        if (
            current is not None
            and current.running
            and published_ports(self.engine, current.id).get(PUBLIC_PORT) == public_port
        ):
            return
        with contextlib.suppress(OSError, ValueError, KeyError):
            admin = json.loads(self._state_file(".admin").read_text())
            if str(admin.get("public_url") or "").endswith(f":{public_port}"):
                return  # the host-mode agent's own, handed over on restart
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", public_port))
            except OSError:
                raise PortInUse(
                    f"port {public_port} on 127.0.0.1 is already in use",
                    hint=f"stop what listens there (`ss -ltnp 'sport = :{public_port}'`, "
                    "`docker ps`) or publish on another port (`--port`)",
                ) from None

    def use_overrides(
        self, env: Sequence[EnvOverride], ports: Sequence[PortOverride], public_port: int = 0
    ) -> int:
        """Check `up`'s overrides against the spec and keep them for desired() and the config.

        Returns the public endpoint's host port: `--port`, else the port override's.
        """
        self.overrides = check_overrides(self.spec, env, ports, public_port)
        chosen = public_port or self.overrides.public_port
        # An override lasts while it is given: the port the public endpoint had
        # before it is remembered, and a later `up` without it goes back there.
        before = self._state_file(".port-override")
        if public_port or not public_rules(NamingModel(self.spec)):
            before.unlink(missing_ok=True)  # `--port` decides, as it always did
        elif self.overrides.public_port:
            if not before.exists():
                before.parent.mkdir(parents=True, exist_ok=True)
                before.write_text(str(self._public_port_now() or 0))
        elif before.exists():
            with contextlib.suppress(OSError, ValueError):
                port = int(before.read_text())
                chosen = port if port and port_free(port) else free_port("127.0.0.1")
            before.unlink(missing_ok=True)
        return chosen

    def _public_port_now(self) -> int | None:
        """The running data plane's public host port, if any."""
        current = self._dataplane_container()
        if current is None or not current.running:
            return None
        return published_ports(self.engine, current.id).get(PUBLIC_PORT)

    def remove_images(self) -> tuple[str, ...]:
        """Untag (and so delete) this workspace's service images: `meshlocal/<project>-*`."""
        return remove_images(self.engine, f"meshlocal/{self.base_project}-", self._env_arg)


def stop_host_agents(project: str) -> int:
    """Stop every host-mode agent of a project, by its pid files."""
    files = list(_STATE_DIR.glob(f"{project}-*.pid"))
    for pid_file in files:
        _stop_pid_file(pid_file)
    return len(files)


def _stop_pid_file(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError, ProcessLookupError, PermissionError):
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
    pid_file.unlink(missing_ok=True)


def _exited(pid: int | None) -> bool:
    """Whether a process this one started has ended (and reap it)."""
    if pid is None:
        return False
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not our child: fall back to asking the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _among(service: str, services: Sequence[str]) -> bool:
    return not services or service in services
