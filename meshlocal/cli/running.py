"""What the commands that work on a running mesh check first, in one place.

`ps`, `stats`, `scale`, `logs`, `resolve` (and `down` for its environment)
tell the same story for the same mistake, before they touch the mesh:

1. an environment the workspace doesn't have is unknown, with the list of
   those it has (unless containers of it still run: a mesh whose folder
   under copilot/environments/ was deleted can still be inspected);
2. a service neither the workspace nor the running mesh has is unknown,
   with the list of those they have;
3. nothing running is `no mesh is running ...` (MeshNotRunning), and
   replicas without their data plane are DataPlaneDown (deployment.py).

Every one is a MeshlocalError: exit status 1, a message and a hint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from meshlocal.deployment import Deployment
from meshlocal.errors import MeshlocalError, ServiceNotFound
from meshlocal.manifest import find_workspace
from meshlocal.manifest.loader import select_environment
from meshlocal.manifest.model import Workspace
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import Engine, engine_errors


def environment(workspace: Workspace, env: str | None) -> str:
    """The environment's name: known to the workspace, or still on the engine.

    Reads no manifest, so `ps` works while a manifest is being edited.
    """
    if env is not None and env not in workspace.environments and _on_engine(workspace, env):
        return env
    return select_environment(workspace, env).name  # or EnvironmentNotFound, with the list


def _on_engine(workspace: Workspace, env: str) -> bool:
    """Whether containers or a network of this workspace's environment exist.

    False when no engine answers: the environment is then simply unknown.
    """
    project = L.project_id(workspace.app, workspace.root)
    try:
        engine = Engine.from_env()
    except MeshlocalError:
        return False
    try:
        with engine_errors("listing networks"):
            networks = engine.api.networks(filters={"label": L.filters(project, env)})
        return bool(networks or engine.list_containers(project, env))
    except MeshlocalError:
        return False
    finally:
        engine.close()


def check_services(dep: Deployment, names: Iterable[str]) -> None:
    """ServiceNotFound for the first name neither the workspace nor the engine knows."""
    wanted = list(dict.fromkeys(names))
    known = set(dep.workspace.service_manifests)
    if all(name in known for name in wanted):
        return
    with contextlib.suppress(MeshlocalError):  # no engine: the workspace's list alone
        known |= {
            c.service
            for c in dep.engine.list_containers(dep.project, dep.env, role=L.Role.REPLICA)
            if c.service
        }
    require_known(dep, wanted, known)


def require_known(dep: Deployment, names: Iterable[str], known: Iterable[str]) -> None:
    """ServiceNotFound, with the known services, for the first of `names` not in `known`."""
    known = sorted(set(known))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ServiceNotFound(
            f'no service "{unknown[0]}" in environment {dep.env} of application '
            f"{dep.workspace.app}",
            hint=f"services: {', '.join(known) or 'none'}",
        )


@contextlib.contextmanager
def running_mesh(
    directory: Path, env: str | None, services: Iterable[str] = (), *, dataplane: bool = True
) -> Iterator[Deployment]:
    """A Deployment of a known environment; with `dataplane`, one whose data plane runs.

    Raises EnvironmentNotFound, ServiceNotFound, MeshNotRunning or DataPlaneDown.
    """
    name = environment(find_workspace(directory, lenient=True), env)
    dep = Deployment(directory, name, lenient=True)
    try:
        check_services(dep, services)
        if dataplane:
            dep.dataplane()
        yield dep
    finally:
        dep.close()


def check_down_environment(directory: Path, env: str | None) -> None:
    """`down --env X`: X must be the workspace's, or still have something to remove."""
    if env is not None:
        environment(find_workspace(directory, lenient=True), env)
