"""One environment of one workspace, as the CLI and the pytest plugin drive it.

`Deployment` is the client side of a mesh: it loads the workspace, builds
images, starts the data plane (the agent of mesh.py) and talks to it over
its admin API. Everything it creates is labelled, so `down` needs nothing
but the workspace to find it, even after meshlocal was SIGKILLed.

Each part `up` and `down` use has its module: dataplanes (finding the data
plane), planestart (its container), hostagent (the host-mode process),
publicport, vipmemory, statedir. Thin methods here keep their callers'
names (the CLI, the pytest plugin, undo, the watcher).
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshlocal import control, faultcarry, publicport, swarmup, vipmemory
from meshlocal.adminapi import admin_call, remote_message
from meshlocal.agentconfig import AgentConfig
from meshlocal.builds import build_images
from meshlocal.dataplanes import DataPlane as DataPlane
from meshlocal.dataplanes import PlaneFinder
from meshlocal.errors import (
    DataPlaneDown,
    DataPlaneError,
    MeshlocalError,
    MeshNotRunning,
    RuntimeFailure,
)
from meshlocal.hostagent import HostAgent
from meshlocal.hostagent import stop_host_agents as stop_host_agents
from meshlocal.manifest import check, find_workspace, read_env_file
from meshlocal.manifest.diagnostics import ManifestErrors, Note
from meshlocal.manifest.model import EnvironmentSpec, Workspace
from meshlocal.manifest.validate import over_replica_limit, runnable_hint
from meshlocal.naming import NamingModel
from meshlocal.overrides import NO_OVERRIDES, EnvOverride, Overrides, PortOverride
from meshlocal.overrides import apply as apply_overrides
from meshlocal.overrides import check as check_overrides
from meshlocal.paths import CONTAINER_STATE_FILE
from meshlocal.planestart import start_container
from meshlocal.ports import Mode as Mode  # re-exported: callers type `mode` with it
from meshlocal.readiness import crash_failure, starting_replicas, timeout_failure
from meshlocal.runtime import images
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import (
    Engine,
    NetworkInfo,
    Removed,
)
from meshlocal.runtime.enginehost import require_local
from meshlocal.runtime.reconcile import DesiredService, template_for
from meshlocal.statedir import STATE_DIR, state_file
from meshlocal.teardown import remove_images, teardown
from meshlocal.vips import vip_block

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# How long `up -d` and `scale` see a service ready before they believe it: longer
# than one status push (mesh.STATUS_EVERY_S), so two different documents agree.
READY_SETTLE_S = 0.6
# What a host-mode environment keeps in STATE_DIR (`<project>-<env><suffix>`); down removes it.
STATE_SUFFIXES = (".vips", ".ports", ".port-override", ".faults.json")


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
        # "swarm": services on a swarm (swarmup.py); None: as the running mesh runs.
        self.orchestrator: str | None = None
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
        driver = "overlay" if self.orchestrator == "swarm" else "bridge"
        net = self.engine.ensure_network(self.project, self.env, self.workspace.root, driver=driver)
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
        from meshlocal.runtime import pubsub

        # `up SERVICE...` leaves the other services running: their topics and queues stay.
        emulator = pubsub.start(
            self.engine,
            self.project,
            self.spec,
            network,
            self.workspace.root,
            progress,
            subset=bool(self.services),
        )
        self.emulator_id = emulator.container_id if emulator is not None else None
        return emulator.endpoint if emulator is not None else None

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
                public_host_port=public_port,
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
        the admin API instead (the agent applies it hot). See planestart.
        """
        plane, runs = start_container(
            self._planes(),
            self.spec,
            self.workspace.root,
            config,
            network,
            public_port=public_port,
            progress=progress,
            ports_file=self._state_file(".ports"),
            phase=self._enter,
        )
        if not runs:
            progress("data plane already running: applying the new configuration")
            done = self.control(plane, "apply", json.loads(config.to_json()), 60.0)
            for note in done.get("notes") or [] if isinstance(done, dict) else []:
                progress(f"warning: {note}")  # a fault the new configuration dropped
        return plane

    def _enter(self, phase: str) -> None:
        self.phase = phase

    def start_dataplane_process(self, config: AgentConfig, *, log_file: Path) -> DataPlane:
        """Host mode, detached: a `meshlocal agent` process on the gateway address."""
        pid = self._host_agent().start(config, log_file=log_file)
        return DataPlane("host", "", None, pid=pid)

    def stop_dataplane_process(self) -> bool:
        return self._host_agent().stop()

    def control_path(self) -> Path:
        """Host mode: the controller's socket; short, as a unix socket path must be."""
        return self._host_agent().control_path()

    def _host_agent(self) -> HostAgent:
        return HostAgent(self._state_file)

    def _state_file(self, suffix: str) -> Path:
        return state_file(self.project, self.env, suffix)

    def _planes(self) -> PlaneFinder:
        return PlaneFinder(self.engine, self.project, self.env)

    def dataplane(self) -> DataPlane:
        """The running data plane of this environment, or MeshNotRunning."""
        return self._planes().find(
            admin_file=self._state_file(".admin"), workspace=self.workspace.root
        )

    def record_host_admin(self, admin_url: str, public_url: str | None, control: str) -> None:
        self._host_agent().record_admin(admin_url, public_url, control)

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
        self.orchestrator = swarmup.orchestrator(
            self.engine, self.project, self.env, self.orchestrator
        )
        if self.orchestrator == "swarm":
            swarmup.check(self.engine, self.spec)
        if mode == "host":
            require_local(
                self.engine.host,
                "host mode runs the data plane on this machine, on the network's bridge",
                "leave out `--dataplane host`: the data plane container runs beside the engine",
            )
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
        config = replace(config, vips=self.current_vips(), orchestrator=self.orchestrator)
        if self.orchestrator == "swarm":
            swarmup.distribute(self.engine, [d.template.image for d in desired.values()], progress)
        self.applied_config = config.to_json()
        self.images_run = {ref: image_id for ref, image_id in built.values() if image_id}
        carried = faultcarry.runtime_faults(self)  # before the data plane may be replaced
        if mode == "container":
            plane = self.start_dataplane_container(
                config, network, public_port=public_port, progress=progress
            )
        else:
            started = self.start_dataplane_process(config, log_file=self._state_file(".log"))
            plane = self._wait_dataplane(timeout, started.pid)
        if replace_services:
            self._planes().wait_admin(plane.admin_url, timeout)  # a data plane started just now
        for service in replace_services:
            progress(f"replacing every replica of {service}")
            self.control(plane, "replace", {"service": service}, timeout)
        if self.spec.environment.faults or carried.faults or carried.unread:
            faultcarry.restore(self._planes(), plane, carried, timeout, progress)
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
        """The public endpoint's host port: `--port`, else the one it has, else a free one."""
        return publicport.resolve(self, mode, public_port)

    def current_vips(self) -> dict[str, str]:
        """Endpoint -> address: the running data plane's, else the last one remembered."""
        return vipmemory.current(self.state, self._state_file)

    def _remember_vips(self) -> None:
        vipmemory.remember(self.current_vips(), self._state_file)

    def _wait_dataplane(self, timeout: float, pid: int | None = None) -> DataPlane:
        return self._host_agent().wait(self.dataplane, timeout, pid)

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
            info = self._planes().controller_container()
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
        # Ready for READY_SETTLE_S on end: a replica that dies just after it joins (a
        # crash at start) is ready for a moment, and polls 50 ms apart can read the
        # same status document (the controller pushes it every 0.5 s or on a change).
        ready_since: float | None = None
        while True:
            try:
                if plane is not None:
                    last = admin_call(plane.admin_url, "/v1/state", timeout=5.0)
                else:
                    last = self.state()
            except (DataPlaneError, MeshNotRunning):
                self._planes().check_alive()
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
                now = time.monotonic()
                if not ready:
                    ready_since = None
                elif ready_since is None:
                    ready_since = now
                elif now - ready_since >= READY_SETTLE_S:
                    return last
            if time.monotonic() > deadline:
                checks = {
                    name: report
                    for name, cid in starting_replicas(last)
                    if (report := self.engine.health_report(cid)) is not None
                    and report.exit_code != 0  # a passing check: merely not healthy yet
                }
                raise timeout_failure(last, timeout, checks)
            time.sleep(0.05)

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
            for suffix in STATE_SUFFIXES:
                self._state_file(suffix).unlink(missing_ok=True)
        except MeshlocalError:
            # No --env and manifests that no longer load (a variable unset, a
            # typo): stop every host-mode agent of the project instead.
            stop_host_agents(self.project)
            for suffix in STATE_SUFFIXES:
                for kept in STATE_DIR.glob(f"{self.project}-*{suffix}"):
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
        """Fail before anything is built or replaced when `--port` is taken by someone else."""
        publicport.check(self, public_port)

    def use_overrides(
        self, env: Sequence[EnvOverride], ports: Sequence[PortOverride], public_port: int = 0
    ) -> int:
        """Check `up`'s overrides against the spec and keep them for desired() and the config.

        Returns the public endpoint's host port: `--port`, else the port override's.
        """
        self.overrides = check_overrides(self.spec, env, ports, public_port)
        return publicport.with_override(self, public_port, self.overrides.public_port)

    def remove_images(self) -> tuple[str, ...]:
        """Untag (and so delete) this workspace's service images: `meshlocal/<project>-*`."""
        return remove_images(self.engine, f"meshlocal/{self.base_project}-", self._env_arg)


def _among(service: str, services: Sequence[str]) -> bool:
    return not services or service in services
