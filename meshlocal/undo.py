"""Undo a failed `up`: remove what that attempt created, and only that.

`snapshot()` notes, before `up` touches anything, what the engine holds for
the environment (by meshlocal's labels), which service image each tag names,
which host-mode state files exist, and whether the mesh was already running
(with the configuration its data plane runs). `undo()` then puts things back
after a failure or an interruption at any phase:

- a mesh that was not running: the data plane this attempt started is
  removed first (a live agent would replace what is being removed), then
  every container and network that was not there before, and the host
  agent with its state files;
- a mesh that was running: it keeps running. Its data plane gets the
  configuration it ran before back, so it rolls back what the attempt had
  rolled (replicas are the live agent's to start and stop: removing them
  under it would only make it start them again); the data plane is never
  removed;
- in both cases, the images this attempt built are removed and every tag
  names the image it named before (a rebuilt service's predecessor gets its
  tag back).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from meshlocal import swarmup
from meshlocal.adminapi import admin_call
from meshlocal.deployment import Deployment
from meshlocal.errors import MeshlocalError
from meshlocal.paths import CONTAINER_STATE_FILE
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import Engine, Removed, engine_errors


@dataclass(frozen=True)
class Snapshot:
    """What an environment had before an `up` attempt."""

    running: bool
    containers: frozenset[str]  # ids, labelled with the project and env
    networks: frozenset[str]  # ids
    images: frozenset[str]  # ids of images labelled with the (base) project and env
    tags: Mapping[str, str] = field(default_factory=dict)  # the project's tags -> image id
    files: frozenset[str] = frozenset()  # host-mode state files (names)
    volumes: frozenset[str] = frozenset()  # names (the data plane's link)
    config: str | None = None  # the running data plane's configuration (JSON)

    @property
    def fresh(self) -> bool:
        return not self.running


def _image_rows(engine: Engine, dep: Deployment) -> list[dict[str, Any]]:
    with engine_errors("listing images"):
        rows: list[dict[str, Any]] = engine.api.images(
            filters={"label": L.filters(dep.base_project, dep.env)}
        )
    return rows


def _tags(engine: Engine, dep: Deployment) -> dict[str, str]:
    prefix = f"meshlocal/{dep.base_project}-"
    suffix = f":{L.slug(dep.env)}"
    with engine_errors("listing images"):
        rows = engine.api.images()
    return {
        str(tag): str(row["Id"])
        for row in rows
        for tag in row.get("RepoTags") or ()
        if str(tag).startswith(prefix) and str(tag).endswith(suffix)
    }


def _network_ids(engine: Engine, dep: Deployment) -> dict[str, str]:
    with engine_errors("listing networks"):
        nets = engine.api.networks(filters={"label": L.filters(dep.project, dep.env)})
    return {str(n["Id"]): str(n["Name"]) for n in nets}


def _state_files(dep: Deployment) -> frozenset[str]:
    folder = dep._state_file("").parent
    stem = dep._state_file("").name
    if not folder.is_dir():
        return frozenset()
    return frozenset(p.name for p in folder.glob(f"{stem}.*"))


def _running_config(dep: Deployment) -> tuple[bool, str | None]:
    """Whether the mesh runs, and the configuration its data plane runs.

    A running data-plane container is a running mesh even if its admin API is
    slow to answer: a failed `up` must never stop it. A host-mode agent counts
    when it answers (its admin file may be left from one that died).
    """
    try:
        plane = dep.dataplane()
    except MeshlocalError:
        return False, None
    if plane.container_id is not None:
        if plane.controller_id is None:
            return True, None
        return True, dep.engine.read_file(plane.controller_id, CONTAINER_STATE_FILE)
    try:
        admin_call(plane.admin_url, "/healthz", timeout=3.0)
    except MeshlocalError:
        return False, None
    with contextlib.suppress(OSError):
        return True, dep._state_file(".json").read_text()
    return True, None


def snapshot(dep: Deployment) -> Snapshot:
    """What the environment holds now, before `up` changes anything."""
    engine = dep.engine
    running, config = _running_config(dep)
    return Snapshot(
        running=running,
        containers=frozenset(c.id for c in engine.list_containers(dep.project, dep.env)),
        networks=frozenset(_network_ids(engine, dep)),
        images=frozenset(str(r["Id"]) for r in _image_rows(engine, dep)),
        tags=_tags(engine, dep),
        files=_state_files(dep),
        config=config,
        volumes=frozenset(engine.volumes(dep.project, dep.env)),
    )


def undo(dep: Deployment, before: Snapshot) -> Removed:
    """Remove what was created since `before`; a mesh that was running keeps running.

    Uses a fresh engine connection: the interrupted one may be mid-request.
    """
    dep.close()
    engine = dep.engine
    # Tags first: a data plane rolling back starts replicas from the tag.
    _restore_tags(engine, before)
    containers: list[str] = []
    if before.running:
        # The live agent owns the replicas: removing them under it only makes
        # it start them again. Given its old configuration, it rolls back.
        _restore_config(dep, before)
    else:
        containers += _stop_new_dataplane(dep, before)
        # Swarm mode: no mesh ran, so every service of it is this attempt's.
        containers += swarmup.stop_services(engine, dep.project, dep.env)
        containers += _remove_new_containers(engine, dep, before)
    networks: list[str] = []
    for net_id, name in _network_ids(engine, dep).items():
        if net_id in before.networks:
            continue
        with contextlib.suppress(docker.errors.NotFound), engine_errors(f"removing network {name}"):
            engine.api.remove_network(net_id)
        networks.append(name)
    for volume in engine.volumes(dep.project, dep.env):
        if volume not in before.volumes:
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_volume(volume, force=True)
    images = _remove_new_images(engine, dep, before)
    for name in _state_files(dep) - before.files:
        (dep._state_file("").parent / name).unlink(missing_ok=True)
    return Removed(tuple(containers), tuple(networks), tuple(images))


def _stop_new_dataplane(dep: Deployment, before: Snapshot) -> list[str]:
    """The controller first: a live agent would replace what undo removes."""
    if dep._state_file(".pid").name not in before.files:
        dep.stop_dataplane_process()
    removed: list[str] = []
    for role in (L.Role.CONTROLLER, L.Role.DATAPLANE):
        for info in dep.engine.list_containers(dep.project, dep.env, role=role):
            if info.id in before.containers:
                if info.running:
                    dep.engine.stop(info.id)  # it was stopped before this attempt
            else:
                dep.engine.remove(info.id)
                removed.append(info.name)
    return removed


def _restore_config(dep: Deployment, before: Snapshot, timeout: float = 30.0) -> None:
    """Give a running mesh's data plane back the configuration it ran before.

    Then wait (bounded) until it reports every replica ready again: a service
    the failed attempt had already rolled is rolled back.
    """
    if before.config is None:
        # The data plane ran without a controller: one this attempt started goes.
        for info in dep.engine.list_containers(dep.project, dep.env, role=L.Role.CONTROLLER):
            if info.id not in before.containers:
                dep.engine.remove(info.id)
        return
    if _running_config(dep)[1] == before.config:
        return  # the attempt failed before it changed anything (a build, --port)
    from meshlocal.agentconfig import AgentConfig

    try:
        config = AgentConfig.from_json(before.config)
    except (ValueError, KeyError, TypeError):
        return
    try:
        plane = dep.dataplane()
        if plane.container_id is not None:
            dep.control(plane, "apply", json.loads(before.config), 60.0)
        else:
            raise MeshlocalError("no data-plane container")
    except MeshlocalError:
        if config.mode != "host":
            raise  # a container-mode data plane that refused: say so, don't start a host agent
        # Host mode: `up` restarts the agent process; start it again on the old configuration.
        try:
            started = dep.start_dataplane_process(config, log_file=dep._state_file(".log"))
            dep._wait_dataplane(timeout, started.pid)
        except (MeshlocalError, ValueError):
            return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(MeshlocalError):
            if dep.state().get("ready"):
                return
        time.sleep(0.2)


def _remove_new_containers(engine: Engine, dep: Deployment, before: Snapshot) -> list[str]:
    order = {L.Role.SIDECAR.value: 0, L.Role.PROBE.value: 0, L.Role.PAUSE.value: 2}
    new = [
        c
        for c in engine.list_containers(dep.project, dep.env)
        if c.id not in before.containers
        and c.role not in (L.Role.DATAPLANE.value, L.Role.CONTROLLER.value)
    ]
    new.sort(key=lambda c: order.get(c.role or "", 1))
    for info in new:
        engine.remove(info.id)
    return [c.name for c in new]


def _restore_tags(engine: Engine, before: Snapshot) -> None:
    """Every tag back on the image it named before (a rebuilt service's predecessor)."""
    for tag, image_id in before.tags.items():
        repo, _, name = tag.rpartition(":")
        with contextlib.suppress(docker.errors.DockerException):
            engine.api.tag(image_id, repo, name, force=True)


def _remove_new_images(engine: Engine, dep: Deployment, before: Snapshot) -> list[str]:
    """The images built since `before`, now that no tag names them.

    An image a container still uses is kept. In a mesh that was running, the
    data plane may still be draining the replica it rolled back from: such an
    image is tried again for a few seconds.
    """
    removed: list[str] = []
    deadline = time.monotonic() + (15.0 if before.running else 0.0)
    while True:
        in_use = 0
        for row in _image_rows(engine, dep):
            image_id = str(row["Id"])
            if image_id in before.images:
                continue
            tags = [str(t) for t in row.get("RepoTags") or () if str(t) != "<none>:<none>"]
            try:
                for tag in tags:
                    engine.api.remove_image(tag, force=False, noprune=False)
                if not tags:
                    engine.api.remove_image(image_id, force=False, noprune=False)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                in_use += 1  # a container uses it
                continue
            removed.append(tags[0] if tags else image_id.removeprefix("sha256:")[:12])
        if not in_use or time.monotonic() >= deadline:
            return removed
        time.sleep(0.5)


def describe(removed: Removed) -> str:
    """`removed 3 containers, network kudos-test, 2 images` (or `nothing to remove`)."""
    parts: list[str] = []
    if removed.containers:
        n = len(removed.containers)
        parts.append(f"{n} container{'s' if n != 1 else ''}")
    for name in removed.networks:
        parts.append(f"network {name}")
    if removed.images:
        n = len(removed.images)
        parts.append(f"{n} image{'s' if n != 1 else ''}")
    return "removed " + ", ".join(parts) if parts else "nothing to remove"
