"""Removing what meshlocal created, found by label: containers, networks, images.

Needs no workspace, so it also cleans up after a workspace that is gone.
"""

from __future__ import annotations

import docker.errors

from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import Engine, Removed, engine_errors, map_docker_error


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
    first: list[str] = []
    for role in (L.Role.CONTROLLER, L.Role.DATAPLANE):
        for info in engine.list_containers(project, env, role=role):
            engine.remove(info.id)
            first.append(info.name)
    removed = engine.remove_all(project, env)
    gone = remove_images(engine, image_prefix, env) if image_prefix else ()
    gone += remove_superseded_images(engine, image_project or project, env)
    return Removed((*first, *removed.containers), removed.networks, gone)


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
