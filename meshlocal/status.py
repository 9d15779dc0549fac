"""The status document `ps`, `up -d` and the pytest plugin read.

The controller computes it and sends it to the data plane, which fills in
what only it knows (ejections, its ports) and serves it on its admin API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshlocal.registry import Replica
from meshlocal.runtime.backoff import Crash

if TYPE_CHECKING:
    from meshlocal.mesh import Controller


def status_document(c: Controller) -> dict[str, Any]:
    """What `ps`, `up -d` and the pytest plugin read (through the data plane)."""
    rec = c.reconciler
    services: dict[str, Any] = {}
    restarting = rec.restarting() if rec else []
    for svc in c.naming.services.values():
        desired = rec.desired.get(svc.name) if rec else None
        starting = [r for r in (rec.starting() if rec else []) if r.service == svc.name]
        replicas = sorted([*c.registry.for_service(svc.name), *starting], key=lambda r: r.index)
        services[svc.name] = {
            "type": svc.type.value,
            "desired": desired.count if desired else 0,
            "port": svc.target_port,
            "discovery_name": (
                c.naming.sd_name(svc.name) if svc.name in c.naming.registered else None
            ),
            "connect_endpoints": [e.url for e in c.naming.sc_endpoints if e.service == svc.name],
            "connect": _endpoint_state(c, svc.name),
            "shadowed_name": c.naming.shadowed_name(svc.name),
            # Endpoints some replica of this client can't resolve: it started
            # before they existed (replace it to see them, as on ECS).
            "unresolved_endpoints": sorted(
                {e.name for r in replicas for e in c.naming.missing_from(svc.name, r.sc_view)}
            ),
            # Replicas neither running nor starting: queued, or backing off.
            "not_started": rec.pending_starts(svc.name) if rec else 0,
            "ready": bool(rec and c.applied.is_set() and rec.service_ready(svc.name)),
            "restarting": [_crash_state(c) for c in restarting if c.service == svc.name],
            "replicas": [_replica_state(c, r) for r in replicas],
        }
    crashes = rec.crashes() if rec else []
    return {
        "project": c.config.project,
        "app": c.naming.app,
        "env": c.naming.env,
        "mode": c.config.mode,
        "address": c.address,
        "config_digest": c.config.digest(),
        "applied": c.applied.is_set(),
        "ready": bool(rec and c.applied.is_set() and rec.all_ready()),
        "error": c.apply_error.render() if c.apply_error else None,
        # The host port a container-mode data plane's public endpoint is published on
        # (it listens on its own port inside): for the mesh page's link.
        "public_host_port": c.config.public_host_port or None,
        # `up --env-var-override/--port-override`: they last until an `up` without them.
        "overrides": {"env": [], "ports": [], **c.config.overrides},
        "crashes": [
            {
                "service": c.service,
                "index": c.index,
                "exit_code": c.exit_code,
                "count": c.count,
                "last_logs": c.last_logs,
                "health": c.health.describe() if c.health else None,
            }
            for c in crashes
        ],
        "services": services,
        # One-offs (`meshlocal run`): Service Connect clients of their service, no replicas.
        "runs": [
            {"service": r.service, "container_id": r.container_id, "address": r.address}
            for r in c.registry.clients()
        ],
    }


def _replica_state(c: Controller, r: Replica) -> dict[str, Any]:
    served = c.view.get(r.container_id)
    shown = served or r
    return {
        "name": r.name,
        "index": r.index,
        "container_id": r.container_id,
        "address": r.address,
        "port": r.port,
        "health": shown.health.value,
        "draining": shown.draining,
        "in_rotation": served is not None and served.in_rotation,
        "sc_view": None if r.sc_view is None else sorted(r.sc_view),
    }


def _endpoint_state(c: Controller, service: str) -> dict[str, Any] | None:
    ep = c.naming.endpoint_of(service)
    return None if ep is None else ep.to_json()


def _crash_state(crash: Crash) -> dict[str, Any]:
    return {
        "index": crash.index,
        "exit_code": crash.exit_code,
        "count": crash.count,
        "looping": crash.looping,
        "retry_in": round(crash.retry_in, 1),
        "status": crash.status(),
        "kept": crash.kept,
        "last_log": crash.last_logs[-1] if crash.last_logs else None,
        "health": crash.health.describe() if crash.health else None,
    }
