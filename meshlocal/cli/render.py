"""How a running mesh's state reads in the terminal: `ps`, `up -d`'s summary, `stats` modes.

Pure rendering of the admin API's `/v1/state` document; the commands fetch it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from meshlocal.overrides import summary
from meshlocal.runtime.labels import network_name

if TYPE_CHECKING:
    from meshlocal.runtime.engine import ContainerInfo

out = Console(highlight=False, soft_wrap=True)
if not out.is_terminal:  # pipes and CI: don't squeeze tables into 80 columns
    out.width = 160
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_unresolved(state: dict[str, Any]) -> None:
    """Clients that started before an endpoint existed: ECS leaves them blind to it."""
    for name, svc in sorted(state["services"].items()):
        missing = svc.get("unresolved_endpoints") or []
        if missing:
            err.print(
                f"[!] {name}: replicas started before Service Connect endpoint(s) "
                f"{', '.join(missing)} existed and can't resolve them (as on ECS); "
                f"`meshlocal up -d --replace {name}` replaces them",
                markup=False,
                style="yellow",
            )


def endpoint_text(svc: dict[str, Any]) -> list[str]:
    sc = svc.get("connect")
    if sc:
        return [f"{sc['url']} ({sc['protocol']}, {sc['vip']})"]
    return [*svc["connect_endpoints"]]


def rotation_text(replica: dict[str, Any]) -> str:
    """`in`, `out`, `draining`; an `in` replica some clients' proxies eject says so
    (ejection is per client, as each ECS task has its own Envoy)."""
    if replica["draining"]:
        return "draining"
    if not replica["in_rotation"]:
        return "out"
    by = replica.get("ejected_by") or []
    if not by:
        return "in"
    if len(by) > 1:
        return f"in, ejected by {len(by)} clients"
    return "in, ejected by " + ("the public endpoint" if by[0] == "public" else by[0])


def print_ps(state: dict[str, Any], public_url: str | None, page_url: str | None = None) -> None:
    table = Table(title=f"{state['app']}/{state['env']} ({state['mode']} data plane)")
    for col in ("REPLICA", "ADDRESS", "HEALTH", "ROTATION", "ENDPOINTS"):
        table.add_column(col)
    for name, svc in sorted(state["services"].items()):
        endpoints = endpoint_text(svc)
        if svc["discovery_name"]:
            endpoints.append(f"{svc['discovery_name']}:{svc['port']}")
        restarting = svc.get("restarting") or []
        running = {r["index"] for r in svc["replicas"]}
        waiting = [c for c in restarting if c["index"] not in running]
        if not svc["replicas"] and not waiting:
            table.add_row(f"{name} (0/{svc['desired']})", "-", "-", "-", ", ".join(endpoints))
        for r in svc["replicas"]:
            table.add_row(
                r["name"], r["address"], r["health"], rotation_text(r), ", ".join(endpoints)
            )
        for c in waiting:
            table.add_row(f"{name}-{c['index']}", "-", c["status"], "out", ", ".join(endpoints))
        if svc.get("not_started"):
            table.add_row(f"{name} ({svc['not_started']} not started)", "-", "queued", "-", "")
    for run in state.get("runs") or []:
        # `meshlocal run`: a Service Connect client of its service, never in rotation.
        table.add_row(
            f"{run['service']} (run {run['container_id'][:12]})", run["address"], "-", "client", ""
        )
    out.print(table)
    print_faults(state.get("faults") or [])
    print_restarting(state)
    out.print(
        f"Data plane (DNS): {state['address']}; each Service Connect endpoint answers on "
        "its own address (ENDPOINTS)",
        markup=False,
    )
    print_unresolved(state)
    if public_url:
        out.print(f"Public endpoint: {public_url}", markup=False)
    if page_url:
        out.print(f"Mesh page: {page_url} (`meshlocal open`)", markup=False)
    engine = state.get("engine")
    if engine:
        out.print(engine_text(engine), markup=False)
    line = summary(state.get("overrides"))
    if line:
        out.print(line, markup=False)


def engine_text(engine: dict[str, Any]) -> str:
    """Where the mesh runs; for a remote engine, that the URLs above are forwarded."""
    named = f"context {engine['context']}, " if engine.get("context") else ""
    line = (
        f"Engine: {engine['url']} ({named}host {engine.get('host')}, "
        f"Docker {engine.get('version')})"
    )
    if engine.get("remote") or engine.get("forwarded"):
        why = "The engine is remote" if engine.get("remote") else "Swarm mode"
        line += (
            f"\n{why}: the URLs above are forwarded through the engine while this "
            "command runs; `meshlocal forward` keeps them open"
        )
    return line


def print_restarting(state: dict[str, Any]) -> None:
    """Why a replica keeps restarting: its exit code or failing check, and its last words."""
    for name, svc in sorted(state["services"].items()):
        for c in svc.get("restarting") or []:
            why = c.get("health") or (
                f"last log line: {c['last_log']}" if c.get("last_log") else "it printed nothing"
            )
            kept = f"; `meshlocal logs {name}` shows the crashed container" if c.get("kept") else ""
            err.print(
                f"[!] {name}-{c['index']}: {c['status']}; {why}{kept}",
                markup=False,
                style="yellow",
            )


def stats_modes(state: dict[str, Any]) -> dict[str, str]:
    """service -> the mode its metrics come from, for `meshlocal stats`."""
    services = state["services"]
    modes = {n: s["connect"]["protocol"] for n, s in services.items() if s.get("connect")}
    for _path, service in state.get("public_rules") or []:
        # The public endpoint (the ALB) counts HTTP requests, whatever the SC mode.
        modes[service] = f"{modes[service]}, ALB http" if service in modes else "ALB http"
    return modes


def print_dataplane_down(
    containers: Sequence[ContainerInfo], project: str, env: str, *, as_json: bool
) -> None:
    """`ps` without a data plane: the replicas the engine still has, by label."""
    network = network_name(project, env)
    rows: list[dict[str, Any]] = [
        {
            "name": f"{c.service}-{c.index}",
            "service": c.service,
            "index": c.index,
            "container_id": c.id,
            "address": c.address_on(network),
            "state": c.state,
            "health": c.health.value if c.health is not None else None,
        }
        for c in sorted(containers, key=lambda c: (c.service or "", c.index or 0))
    ]
    if as_json:
        doc = {"env": env, "project": project, "dataplane_running": False, "replicas": rows}
        out.print_json(data=doc, sort_keys=True)
        return
    table = Table(title=f"{project}/{env} (no data plane: as the engine lists them)")
    for col in ("REPLICA", "ADDRESS", "STATE", "HEALTH"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            str(row["name"]), row["address"] or "-", str(row["state"]), row["health"] or "-"
        )
    out.print(table)


# -- faults: `fault ls`, `ps`, `stats` ---------------------------------------------------


def fault_scope(doc: dict[str, Any]) -> str:
    """`front-end -> api-2`, `* -> api`: as Fault.scope(), from a snapshot (no model import)."""
    target = str(doc.get("dns_name") or doc["service"])
    if doc.get("replica"):
        target += f"-{doc['replica']}"
    return f"{doc.get('source') or '*'} -> {target}"


def fault_table(faults: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title)
    for col in ("ID", "SCOPE", "FAULT", "DECLARED", "HITS/SEEN"):
        table.add_column(col, justify="right" if col == "HITS/SEEN" else "left")
    for f in faults:
        table.add_row(
            str(f["id"]),
            fault_scope(f),
            str(f.get("description") or f["kind"]),
            "yes" if f.get("declared") else "no",
            f"{f.get('hits', 0)}/{f.get('seen', 0)}",
        )
    return table


def fault_line(doc: dict[str, Any], *, counts: bool = True) -> str:
    """One fault in a sentence: `f1: * -> api, latency 200ms (30%); hit 3 of 10`."""
    declared = " (declared)" if doc.get("declared") else ""
    line = f"{doc['id']}: {fault_scope(doc)}, {doc.get('description') or doc['kind']}{declared}"
    return f"{line}; hit {doc.get('hits', 0)} of {doc.get('seen', 0)}" if counts else line


def print_faults(faults: Sequence[dict[str, Any]]) -> None:
    """`ps`: a short block under the table, one line a fault."""
    if not faults:
        return
    out.print("faults:", markup=False)
    for doc in faults:
        out.print(f"  {fault_line(doc)}", markup=False)
