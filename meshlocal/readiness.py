"""Why a mesh is not ready, in words: for `up -d` and `scale` when they give up.

Pure: it reads the agent's state (`/v1/state`) and, for replicas still
starting, the health reports the caller fetched from the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshlocal.errors import RuntimeFailure
from meshlocal.runtime.backoff import HealthReport

NO_CHECK_HINT = (
    "A replica without a health check joins once its port accepts connections: "
    "does it listen on image.port, on 0.0.0.0?"
)


def not_ready(state: Mapping[str, Any]) -> str:
    """`api 1/3 healthy (1 starting, 1 not started)` for each service short of its count."""
    parts = []
    for name, svc in sorted((state.get("services") or {}).items()):
        replicas = svc.get("replicas", [])
        ready = sum(1 for r in replicas if r["in_rotation"])
        if ready >= svc["desired"]:
            continue
        more = []
        starting = sum(1 for r in replicas if not r["in_rotation"] and not r.get("draining"))
        if starting:
            more.append(f"{starting} starting")
        if svc.get("not_started"):
            more.append(f"{svc['not_started']} not started")
        crashed = [c for c in svc.get("restarting", []) if c.get("retry_in", 0) >= 1]
        if crashed:
            more.append(f"{len(crashed)} waiting to restart")
        detail = f" ({', '.join(more)})" if more else ""
        parts.append(f"{name} {ready}/{svc['desired']} healthy{detail}")
    return ", ".join(parts) or "the data plane did not report"


def starting_replicas(state: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, container id) of replicas running but not in rotation: whose check to read."""
    return [
        (r["name"], r["container_id"])
        for svc in (state.get("services") or {}).values()
        for r in svc.get("replicas", [])
        if not r["in_rotation"] and not r.get("draining")
    ]


def timeout_failure(
    state: Mapping[str, Any], timeout: float, checks: Mapping[str, HealthReport]
) -> RuntimeFailure:
    """`up -d`/`scale` ran out of time: who is missing, and each failing check's own words.

    `checks`: replica name -> its health report, for replicas still starting.
    """
    lines = [f"    {name}: {report.describe()}" for name, report in sorted(checks.items())]
    for name, svc in sorted((state.get("services") or {}).items()):
        for crash in svc.get("restarting", []):
            replica = f"{name}-{crash['index']}"
            if crash.get("health") and replica not in checks:
                lines.append(f"    {replica} (replaced): {crash['health']}")
    queued = {
        name: svc["not_started"]
        for name, svc in sorted((state.get("services") or {}).items())
        if svc.get("not_started")
    }
    if lines:
        hint = "the failing health checks:\n" + "\n".join(lines)
    elif queued:
        counts = ", ".join(f"{n} of {name}" for name, n in queued.items())
        hint = (
            f"{counts} not started yet: meshlocal starts a few containers at a time; "
            "they go on starting in the background (`meshlocal ps`), or `meshlocal scale` "
            "to a smaller count takes over at once"
        )
    else:
        hint = "`meshlocal logs` shows what the replicas print. " + NO_CHECK_HINT
    return RuntimeFailure(
        f"replicas were not healthy after {timeout:.0f}s: {not_ready(state)}", hint=hint
    )


def crash_failure(crashes: list[dict[str, Any]]) -> RuntimeFailure:
    """A replica that keeps dying: its exit code or failing check, and its last log lines."""
    first = crashes[0]
    logs = "\n".join(f"    {line}" for line in first.get("last_logs", [])[-15:])
    name = f"{first['service']}-{first['index']}"
    if first.get("health"):
        return RuntimeFailure(
            f"{name} keeps failing its health check ({first['count']} times in a row)",
            hint=f"{first['health']}\n  its last log lines:\n{logs or '    (none)'}",
        )
    return RuntimeFailure(
        f"{name} keeps crashing (exit code {first['exit_code']}, {first['count']} times in a row)",
        hint="fix the service and run `meshlocal up` again; its last log lines:\n" + logs,
    )
