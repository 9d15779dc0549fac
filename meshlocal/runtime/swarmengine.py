"""The swarm manager's API calls meshlocal makes (synchronous, errors mapped).

Beside engine.py, which is about containers: services, tasks and nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from meshlocal.errors import RuntimeFailure
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import Engine, engine_errors
from meshlocal.runtime.swarm import SwarmTask, read_task


def require_manager(engine: Engine) -> None:
    """RuntimeFailure unless the engine is a swarm manager, with how to make one."""
    with engine_errors("asking the engine about its swarm"):
        swarm = engine.client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active":
        raise RuntimeFailure(
            f"--engine swarm needs a swarm, and the engine at {engine.host.url} is in none "
            f"({swarm.get('LocalNodeState') or 'unknown'})",
            hint="`docker swarm init` makes it a one-node swarm; `docker swarm join` adds nodes",
        )
    if not swarm.get("ControlAvailable"):
        raise RuntimeFailure(
            f"the engine at {engine.host.url} is a swarm worker: services are made on a manager",
            hint="point meshlocal at a manager (`--context`, DOCKER_HOST)",
        )


def services(engine: Engine, project: str, env: str | None = None) -> list[dict[str, Any]]:
    """meshlocal's swarm services of a project (and environment)."""
    with engine_errors("listing swarm services"):
        found: list[dict[str, Any]] = engine.api.services(
            filters={"label": L.filters(project, env)}
        )
    return found


def apply_service(engine: Engine, spec: Mapping[str, Any]) -> str:
    """Create the service, or update it when its spec differs: its id."""
    name = str(spec["Name"])
    with engine_errors(f"creating swarm service {name}"):
        found = [
            s for s in engine.api.services(filters={"name": name}) if s["Spec"]["Name"] == name
        ]
        if not found:
            resp = engine.api._post_json(engine.api._url("/services/create"), data=dict(spec))
            return str(engine.api._result(resp, True)["ID"])
        current = found[0]
        if _same(current["Spec"], spec):
            return str(current["ID"])
        _update(engine, current, dict(spec))
        return str(current["ID"])


def apply_services(engine: Engine, specs: Sequence[Mapping[str, Any]]) -> None:
    """Several at once: each create is a round trip to the manager's raft store."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda spec: apply_service(engine, spec), specs))


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    labels = (current.get("Labels") or {}).get(L.CONFIG_HASH)
    replicas = ((current.get("Mode") or {}).get("Replicated") or {}).get("Replicas")
    return bool(
        labels == wanted["Labels"].get(L.CONFIG_HASH)
        and replicas == (wanted["Mode"]["Replicated"]["Replicas"])
    )


def _update(engine: Engine, current: Mapping[str, Any], spec: dict[str, Any]) -> None:
    version = current["Version"]["Index"]
    url = engine.api._url("/services/{0}/update", current["ID"])
    resp = engine.api._post_json(url, data=spec, params={"version": version})
    engine.api._raise_for_status(resp)


def scale(engine: Engine, project: str, env: str, service: str, count: int) -> None:
    scale_id(engine, L.swarm_service_name(project, env, service), count)


def scale_id(engine: Engine, service: str, count: int) -> None:
    """`service`: its name or id."""
    with engine_errors(f"scaling swarm service {service}"):
        current = engine.api.inspect_service(service)
        spec = dict(current["Spec"])
        spec["Mode"] = {"Replicated": {"Replicas": count}}
        _update(engine, current, spec)


def force_update(
    engine: Engine, project: str, env: str, service: str, sc_view: frozenset[str] | None
) -> None:
    """Replace every task (rolling), as `docker service update --force`; the new tasks
    are stamped with the endpoints of now (`sc_view`), as a replaced ECS task sees them."""
    name = L.swarm_service_name(project, env, service)
    with engine_errors(f"replacing the tasks of {name}"):
        current = engine.api.inspect_service(name)
        spec = dict(current["Spec"])
        template = dict(spec["TaskTemplate"])
        template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
        container = dict(template["ContainerSpec"])
        labels = dict(container.get("Labels") or {})
        if sc_view is not None:
            labels[L.SC_VIEW] = ",".join(sorted(sc_view))
        container["Labels"] = labels
        template["ContainerSpec"] = container
        spec["TaskTemplate"] = template
        _update(engine, current, spec)


def remove_service(engine: Engine, service_id: str) -> None:
    with engine_errors("removing a swarm service"):
        try:
            engine.api.remove_service(service_id)
        except Exception as exc:  # already gone
            if "not found" not in str(exc).lower():
                raise


def remove_services(engine: Engine, project: str, env: str | None = None) -> list[str]:
    """Every swarm service of the project (env): names removed. Their tasks stop on every node."""
    if not is_manager(engine):
        return []
    removed = []
    for svc in services(engine, project, env):
        remove_service(engine, str(svc["ID"]))
        removed.append(str(svc["Spec"]["Name"]))
    return removed


def is_manager(engine: Engine) -> bool:
    with engine_errors("asking the engine about its swarm"):
        swarm = engine.client.info().get("Swarm") or {}
    return bool(swarm.get("LocalNodeState") == "active" and swarm.get("ControlAvailable"))


def tasks(engine: Engine, project: str, env: str, network_id: str) -> list[SwarmTask]:
    """The tasks of the environment's services, on every node."""
    names = [str(s["Spec"]["Name"]) for s in services(engine, project, env)]
    if not names:
        return []
    with engine_errors("listing swarm tasks"):
        raw = engine.api.tasks(filters={"service": names})
    out = [read_task(t, network_id) for t in raw]
    return [t for t in out if t is not None]


def nodes(engine: Engine) -> list[dict[str, Any]]:
    """The swarm's nodes that take tasks (ready, active): id, hostname, address, role."""
    with engine_errors("listing swarm nodes"):
        raw = engine.api.nodes()
    return [
        {
            "id": n["ID"],
            "hostname": (n.get("Description") or {}).get("Hostname"),
            "address": (n.get("Status") or {}).get("Addr"),
            "role": (n.get("Spec") or {}).get("Role"),
        }
        for n in raw
        if (n.get("Status") or {}).get("State") == "ready"
        and (n.get("Spec") or {}).get("Availability") == "active"  # drained: no tasks
    ]
