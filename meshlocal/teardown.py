"""Removing what meshlocal created, found by label: containers, networks, images.

Needs no workspace, so it also cleans up after a workspace that is gone.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import docker.errors
import requests.exceptions

from meshlocal import swarmup
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import (
    ContainerInfo,
    Engine,
    Removed,
    engine_errors,
    map_docker_error,
)


def teardown(
    engine: Engine,
    project: str,
    env: str | None = None,
    *,
    image_prefix: str | None = None,
    image_project: str | None = None,
) -> Removed:
    """Remove a project's containers and networks by label, controller first.

    The controller goes first: a live one would replace what we remove.
    Needs no workspace, so it also cleans up after a workspace that is gone.
    With `image_prefix`, the service images tagged so go too. Superseded
    images (labelled with `image_project`, default `project`, and no longer
    tagged: a rebuild's predecessors) always go, as nothing can use them once
    the containers are gone.
    """
    services = swarmup.stop_services(engine, project, env)  # before their network
    first = _remove_containers(engine, project, env)
    # Networks and volumes, and any container the controller made meanwhile.
    removed = engine.remove_all(project, env)
    gone = remove_images(engine, image_prefix, env) if image_prefix else ()
    gone += remove_superseded_images(engine, image_project or project, env)
    if image_prefix and gone:
        gone += tuple(swarmup.remove_images_on_nodes(engine, gone))
    return Removed((*services, *first, *removed.containers), removed.networks, gone)


def _remove_containers(engine: Engine, project: str, env: str | None) -> list[str]:
    """Kill the controller, then every other container, then remove them; their names.

    Once killed (which also keeps its restart policy from starting it again)
    the controller replaces nothing. The others are all killed at once and
    removed only once they have exited, as compose stops then removes:
    force-removing many running containers of one network at once made
    Docker 20.10 keep a stale endpoint on it now and then (the network then
    can't be removed until the engine restarts). Sidecars still go before
    their replicas, and those before the pause containers whose network they
    share, as Engine.remove_all orders them.
    """
    containers = engine.list_containers(project, env)
    waves: dict[int, list[ContainerInfo]] = {}
    own: list[ContainerInfo] = []  # the controller and data plane: in the first wave
    for info in containers:
        if info.role == L.Role.CONTROLLER.value:
            if info.state == "running" and _killed(engine, info.id):
                own.append(info)
            else:
                engine.remove(info.id)
        elif info.role == L.Role.DATAPLANE.value:
            own.append(info)
        else:
            waves.setdefault(_WAVES.get(info.role or "", 1), []).append(info)
    if own:
        waves.setdefault(min(waves, default=0), []).extend(own)
    if waves:
        running = [c.id for wave in waves.values() for c in wave if c.running]
        with ThreadPoolExecutor(max_workers=min(16, len(containers))) as pool:
            list(pool.map(lambda cid: _killed(engine, cid), running))
            list(pool.map(lambda cid: _exited(engine, cid), running))
            for wave in sorted(waves):
                list(pool.map(lambda c: engine.remove(c.id), waves[wave]))
    first = {L.Role.CONTROLLER.value: 0, L.Role.DATAPLANE.value: 1}
    return [c.name for c in sorted(containers, key=lambda c: first.get(c.role or "", 2))]


def _exited(engine: Engine, container_id: str) -> None:
    """Until a killed container has exited (bounded: a stuck one is force-removed anyway)."""
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        engine.api.wait(container_id, timeout=10)


def _killed(engine: Engine, container_id: str) -> bool:
    """SIGKILL; False when the engine refused (not running any more, or gone)."""
    try:
        engine.api.kill(container_id)
    except docker.errors.APIError:
        return False
    return True


_WAVES = {
    L.Role.SIDECAR.value: 0,
    L.Role.PROBE.value: 0,
    L.Role.REPLICA.value: 1,
    L.Role.PAUSE.value: 2,
    # A one-off (`meshlocal run`): its command before the holder of its namespace.
    L.Role.RUN_COMMAND.value: 0,
    L.Role.RUN.value: 2,
}


def remove_superseded_images(engine: Engine, project: str, env: str | None) -> tuple[str, ...]:
    """Delete the untagged images meshlocal built for a project: predecessors of rebuilds.

    One a container still runs (another copy of the workspace) is kept: Docker refuses.
    """
    with engine_errors("listing images"):
        rows = engine.api.images(filters={"label": L.filters(project, env), "dangling": True})
    removed: list[str] = []
    for row in rows:
        image_id = str(row["Id"])
        if _remove_unused_image(engine, image_id, image_id[:19]):
            removed.append(f"{image_id.removeprefix('sha256:')[:12]} (superseded)")
    return tuple(removed)


def remove_images(engine: Engine, prefix: str, env: str | None) -> tuple[str, ...]:
    """Untag (and so delete) the service images tagged `<prefix>*[:<env>]`.

    Shared caches (the Python base, busybox, the data-plane image) are never
    matched: every project uses them. A tag still used by a container (another
    copy of the workspace, e.g. a pytest session) is kept too: Docker refuses,
    and that copy's own `down` removes it later.
    """
    suffix = None if env is None else f":{L.slug(env)}"
    removed: list[str] = []
    with engine_errors("listing images"):
        rows = engine.api.images()
    for row in rows:
        for tag in row.get("RepoTags") or ():
            if not tag.startswith(prefix) or (suffix and not tag.endswith(suffix)):
                continue
            if _remove_unused_image(engine, tag, tag):
                removed.append(tag)
    return tuple(removed)


def used_images(engine: Engine, project: str, env: str | None) -> tuple[str, ...]:
    """The images a project's containers run by name (`--rmi all`), before they go.

    meshlocal's own (`meshlocal/...`: service builds, shared caches) and bare
    ids are left out: the builds go by tag, the caches are kept.
    """
    refs = {
        info.image
        for info in engine.list_containers(project, env)
        if info.role in (L.Role.REPLICA.value, L.Role.SIDECAR.value)
    }
    return tuple(sorted(r for r in refs if r and not r.startswith(("meshlocal/", "sha256:"))))


def remove_refs(engine: Engine, refs: tuple[str, ...]) -> tuple[str, ...]:
    """Remove images by name; those still in use, or gone already, are skipped."""
    return tuple(ref for ref in refs if _remove_unused_image(engine, ref, ref))


def _remove_unused_image(engine: Engine, ref: str, shown: str) -> bool:
    """Remove an image (or untag a tag); False when gone already or a container uses it."""
    try:
        engine.api.remove_image(ref, force=False, noprune=False)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        if exc.status_code == 409:  # in use by a container
            return False
        raise map_docker_error(exc, f"removing image {shown}") from exc
    return True
