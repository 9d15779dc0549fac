"""Starting an environment's data-plane container and its controller, or keeping them.

Apart from Deployment because keeping a running data plane is its own
concern: its address is every replica's DNS server, so `up` keeps it (and
its host ports) whenever it can, brings one that stopped back on the
address the replicas ask, and starts the first replicas of a mesh from
nothing beside it. Deployment decides when; this is how.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker.errors

from meshlocal.adminapi import admin_call
from meshlocal.agent import FIRST_START_ENV
from meshlocal.agentconfig import CONFIG_ENV, AgentConfig
from meshlocal.dataplanes import DataPlane, PlaneFinder
from meshlocal.errors import DataPlaneError, MeshlocalError
from meshlocal.manifest.model import EnvironmentSpec
from meshlocal.naming import NamingModel, public_rules
from meshlocal.paths import CONTAINER_STATE_FILE
from meshlocal.ports import ADMIN_PORT, PUBLIC_PORT
from meshlocal.publicport import kept_ports, remember_ports
from meshlocal.runtime import images
from meshlocal.runtime import labels as L
from meshlocal.runtime.dataplane import (
    controller_spec,
    dataplane_spec,
    ensure_controller,
    ensure_dataplane,
    free_port,
    in_subnet,
    with_identity,
)
from meshlocal.runtime.engine import NetworkInfo
from meshlocal.runtime.firststart import FirstStart, first_replicas, planned_address
from meshlocal.runtime.swarm import service_specs
from meshlocal.runtime.swarmengine import apply_services
from meshlocal.vips import reserved_address


def start_container(
    where: PlaneFinder,
    spec: EnvironmentSpec,
    workspace: Path,
    config: AgentConfig,
    network: NetworkInfo,
    *,
    public_port: int,
    progress: Callable[[str], None],
    ports_file: Path,
    phase: Callable[[str], None],
) -> tuple[DataPlane, bool]:
    """Start the data-plane container, or keep a running one.

    Returns it and whether its controller runs `config` already (started
    with it, or running it converged); when not, the caller hands it over
    (the controller's `apply`: the agent applies it hot). A running data
    plane is kept whenever its image and published ports are unchanged.
    `ports_file`: the `.ports` state file; `phase`: told when the first
    replicas start.
    """
    engine, project, env = where.engine, where.project, where.env
    client = engine.client
    base = images.ensure_python_base(client, progress=progress)
    image = images.ensure_dataplane_image(client, base, progress)
    ports: dict[int, tuple[str, int]] = {ADMIN_PORT: ("127.0.0.1", 0)}
    if public_rules(NamingModel(spec)):
        ports[PUBLIC_PORT] = ("127.0.0.1", public_port)
    # Identity without the configuration: a config change is applied hot.
    identity = hashlib.sha256(
        json.dumps([image, sorted(ports.items()), str(network.id)], default=str).encode()
    ).hexdigest()[:16]
    # Concrete host ports, never 0: Docker re-draws ephemeral ports when a
    # container restarts, and the URLs a person has open must survive a
    # data-plane restart. A replaced data plane keeps its ports too.
    current = where.dataplane_container()
    kept = kept_ports(engine, current, ports_file)
    for inner, (host, port) in list(ports.items()):
        if port == 0:
            ports[inner] = (host, kept.get(inner) or free_port(host))
    remember_ports(ports_file, ports)
    # The link volume first: the data plane listens in it.
    engine.ensure_volume(
        L.link_volume_name(project, env),
        L.base_labels(project, env, L.Role.DATAPLANE),
    )
    address: str | None = None
    first: FirstStart | None = None
    swarm_first: list[dict[str, Any]] = []
    if current is None or not current.running:
        # A data plane that was removed or stopped comes back on the address
        # the replicas ask for names, so it adopts them instead of rolling all.
        address, any_replica = _replicas_dns(where, network)
        if config.orchestrator == "swarm" and network.subnet:
            # Always its reserved address, which no task can take: every node's
            # tasks ask it there. The services are made now (unchanged ones are
            # left as they run): their tasks take longer to be scheduled and
            # started than the data plane takes to bind its DNS port.
            address = reserved_address(network.subnet)
            swarm_first = service_specs(
                config.desired,
                project=project,
                env=env,
                network=network.name,
                dns=(address,),
                sc_view=NamingModel(spec).endpoint_names,
            )
        elif address is None and not any_replica:
            # A mesh from nothing: the first replicas start beside the data plane.
            address = planned_address(network, engine.network_addresses(network.id))
            if address is not None:
                first = FirstStart(
                    engine,
                    first_replicas(
                        config.desired,
                        project=project,
                        env=env,
                        network=network,
                        address=address,
                        sc_view=NamingModel(spec).endpoint_names,
                    ),
                )
    container = dataplane_spec(
        project=project,
        env=env,
        image=image,
        network=network,
        publish=ports,
        workspace=workspace,
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
                engine,
                project=project,
                env=env,
                image=image,
                environment={},
                workspace=workspace,
            ),
            image,
            dataplane_id,
        )
        # The configuration is no part of its identity: a kept controller gets it hot.
        ctl = replace(ctl, environment={**ctl.environment, CONFIG_ENV: config.to_json()})
        if first is not None:  # no part of its identity either: it tells the first link
            ctl = replace(ctl, environment={**ctl.environment, FIRST_START_ENV: "1"})
        controller.append(ensure_controller(engine, ctl))

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarm-first")
    services = pool.submit(apply_services, engine, swarm_first) if swarm_first else None
    try:
        cid, _address, _started = ensure_dataplane(
            engine,
            replace(container, labels={**container.labels, L.CONFIG_HASH: identity}),
            start_controller,
        )
    except BaseException:
        if first is not None:
            first.discard()  # settled before the caller's undo lists what to remove
        raise
    finally:
        pool.shutdown(wait=True)  # settled, made or not, before the undo lists what to remove
    if services is not None:
        services.result()
    if first is not None:
        phase("starting the replicas")
        first.start()
    ctl_id, ctl_started = controller[-1]
    info = engine.inspect(cid)
    if info is None:
        raise DataPlaneError("the data-plane container vanished after start")
    plane = replace(where.dataplane_from(info), controller_id=ctl_id)
    return plane, ctl_started or _runs_already(where, plane, config)


def _runs_already(where: PlaneFinder, plane: DataPlane, config: AgentConfig) -> bool:
    """The controller runs exactly this configuration, converged, with no error.

    The configuration is read from the controller's own state file through
    the engine: what the data plane says never decides what runs.
    """
    if plane.controller_id is None:
        return False
    running = where.engine.read_file(plane.controller_id, CONTAINER_STATE_FILE)
    if running != config.to_json():
        return False
    try:
        state = admin_call(plane.admin_url, "/v1/state", timeout=5.0)
    except MeshlocalError:
        return False
    return bool(state.get("ready") and not state.get("error"))


def _replicas_dns(where: PlaneFinder, network: NetworkInfo) -> tuple[str | None, bool]:
    """(the DNS server the running replicas were created with if on `network`, any replica?)"""
    replicas = where.engine.list_containers(where.project, where.env, role=L.Role.REPLICA)
    for info in replicas:
        if not info.running:
            continue
        with contextlib.suppress(docker.errors.DockerException):
            servers = where.engine.api.inspect_container(info.id)["HostConfig"].get("Dns")
            if servers and in_subnet(servers[0], network):
                return str(servers[0]), True
    return None, bool(replicas)
