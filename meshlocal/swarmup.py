"""The CLI's part of swarm mode: checks before `up`, images onto every node, `down`.

Images are built once, on the manager, and copied to each other node with
`docker save` | `docker load` through that node's engine: no registry, none
to pull from. meshlocal reaches a node's engine by $MESHLOCAL_NODE_ENGINE,
a URL with `{address}` (the address the node joined the swarm with) or
`{hostname}`, e.g. `ssh://admin@{address}` or `tcp://{address}:2375`. A
node it can't reach is named, with what to do: its tasks would fail with
"No such image" (a registry service on the swarm itself would need the
routing mesh, and so IPVS, which some kernels lack; docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence

import docker
import docker.errors

from meshlocal.errors import RuntimeFailure
from meshlocal.manifest.model import EnvironmentSpec
from meshlocal.runtime import labels as L
from meshlocal.runtime import swarmengine as S
from meshlocal.runtime.engine import Engine, engine_errors

NODE_ENGINE_ENV = "MESHLOCAL_NODE_ENGINE"
Progress = Callable[[str], None]


def orchestrator(engine: Engine, project: str, env: str, asked: str | None) -> str:
    """`--engine` as given, else how the running mesh runs (its network's driver)."""
    name = L.network_name(project, env)
    with engine_errors("listing networks"):
        nets = [n for n in engine.api.networks(names=[name]) if n.get("Name") == name]
    running = ("swarm" if nets[0].get("Driver") == "overlay" else "docker") if nets else None
    if asked is not None and running is not None and asked != running:
        raise RuntimeFailure(
            f"environment {env} runs with --engine {running}, not {asked}",
            hint="`meshlocal down` first, then `meshlocal up --engine " + asked + "`",
        )
    return asked or running or "docker"


def check(engine: Engine, spec: EnvironmentSpec) -> None:
    """Before anything is built: a manager, and nothing swarm mode can't run yet."""
    S.require_manager(engine)
    with_sidecars = sorted(s.name for s in spec.services if s.sidecars)
    if with_sidecars:
        raise RuntimeFailure(
            f"swarm mode runs no sidecars yet, and {', '.join(with_sidecars)} "
            f"{'has' if len(with_sidecars) == 1 else 'have'} some",
            location=next(s for s in spec.services if s.sidecars).where("sidecars"),
            hint="run this workspace on one engine (leave out `--engine swarm`)",
        )


@contextlib.contextmanager
def node_engines(engine: Engine) -> Iterator[list[tuple[str, docker.DockerClient | None]]]:
    """(hostname, client or None when unreachable) of every other ready node."""
    template = os.environ.get(NODE_ENGINE_ENV)
    with engine_errors("asking the engine about its swarm"):
        own = (engine.client.info().get("Swarm") or {}).get("NodeID")
    out: list[tuple[str, docker.DockerClient | None]] = []
    for node in S.nodes(engine):
        if node["id"] == own:
            continue
        name = str(node["hostname"] or node["id"])
        client = None
        if template:
            url = template.format(address=node["address"], hostname=node["hostname"])
            with contextlib.suppress(docker.errors.DockerException, OSError):
                client = docker.DockerClient(
                    base_url=url, timeout=120, use_ssh_client=url.startswith("ssh://")
                )
                client.ping()
        out.append((name, client))
    try:
        yield out
    finally:
        for _, client in out:
            if client is not None:
                client.close()


def distribute(engine: Engine, refs: Sequence[str], progress: Progress) -> None:
    """Every image in `refs` onto every other node that lacks it (by image id)."""
    wanted = {}
    for ref in dict.fromkeys(refs):
        with engine_errors(f"inspecting image {ref}"):
            wanted[ref] = str(engine.api.inspect_image(ref)["Id"])
    with node_engines(engine) as others:
        unreachable = [name for name, client in others if client is None]
        if unreachable:
            raise RuntimeFailure(
                f"swarm node(s) {', '.join(unreachable)} can't be given the images: "
                f"meshlocal reaches a node's engine through ${NODE_ENGINE_ENV}"
                + ("" if os.environ.get(NODE_ENGINE_ENV) else ", which is not set"),
                hint=f"export {NODE_ENGINE_ENV}='ssh://USER@{{address}}' (or "
                "tcp://{address}:2375), or drain those nodes "
                "(`docker node update --availability drain NODE`)",
            )
        for name, client in others:
            assert client is not None
            for ref, image_id in wanted.items():
                try:
                    if str(client.api.inspect_image(ref)["Id"]) == image_id:
                        continue
                except docker.errors.NotFound:
                    pass
                started = time.monotonic()
                with engine_errors(f"copying {ref} to node {name}"):
                    for said in client.api.load_image(engine.api.get_image(ref)):
                        if isinstance(said, dict) and said.get("error"):
                            raise RuntimeFailure(
                                f"copying {ref} to node {name}: {said['error']}",
                                hint="free space on that node, or drain it",
                            )
                progress(f"{ref} copied to node {name} ({time.monotonic() - started:.1f} s)")


def remove_images_on_nodes(engine: Engine, refs: Sequence[str]) -> list[str]:
    """`down --rmi` on the other nodes: the same tags removed there; what went."""
    gone: list[str] = []
    if not refs or not S.is_manager(engine):
        return gone
    with node_engines(engine) as others:
        for name, client in others:
            if client is None:
                continue
            for ref in refs:
                # Forced: the node removes the stopped task containers that hold
                # it only a moment after their service is gone.
                with contextlib.suppress(docker.errors.DockerException):
                    client.api.remove_image(ref, force=True)
                    gone.append(f"{ref} on {name}")
    return gone


def stop_services(
    engine: Engine, project: str, env: str | None, timeout: float = 60.0
) -> list[str]:
    """`down`: every task stopped on every node, then the services removed; their names.

    Scaled to zero first and waited for, so the overlay network has no
    endpoint left on any node when it is removed next.
    """
    if not S.is_manager(engine):
        return []
    found = S.services(engine, project, env)
    for svc in found:
        with contextlib.suppress(RuntimeFailure):
            S.scale_id(engine, str(svc["ID"]), 0)
    deadline = time.monotonic() + timeout
    names = [str(s["Spec"]["Name"]) for s in found]
    while names and time.monotonic() < deadline:
        with engine_errors("listing swarm tasks"):
            tasks = engine.api.tasks(filters={"service": names})
        if not any(t.get("Status", {}).get("State") in _BUSY for t in tasks):
            break
        time.sleep(0.3)
    for svc in found:
        S.remove_service(engine, str(svc["ID"]))
    return names


_BUSY = {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}
