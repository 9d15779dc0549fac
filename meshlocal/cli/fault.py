"""`fault add`, `fault ls`, `fault rm`: inject faults into a running mesh.

The data plane is the authority (it checks a fault against the running
workspace and holds it); here a fault's shape is checked first, so a typo
is refused without a mesh, and nothing is sent that it would refuse for form.
"""

from __future__ import annotations

import json
from typing import Any

import click

from meshlocal.adminapi import (
    AdminRefused,
    add_fault,
    admin_call,
    clear_faults,
    fault_refusal,
    list_faults,
    remove_fault,
)
from meshlocal.cli.app import Context, cli, env_option, pass_context
from meshlocal.cli.render import fault_line, fault_table, out
from meshlocal.cli.running import running_mesh
from meshlocal.errors import FaultError, MeshlocalError


@cli.group()
def fault() -> None:
    """Inject faults on Service Connect endpoints and Service Discovery names.

    Latency with jitter, a bandwidth limit, refused or reset connections, a
    partition between two services, HTTP or gRPC aborts, DNS failures; for a
    percentage of calls (seeded: repeatable), one client service, one replica.
    """


@fault.command(name="add")
@env_option
@click.argument("service")
@click.option("--latency", metavar="D", help="Added delay: 200ms, 1.5s (or a dns delay's length).")
@click.option("--jitter", metavar="D", help="± this much, uniformly, around --latency.")
@click.option("--bandwidth", metavar="RATE", help="Both directions paced to 64KB/s, 1MB/s...")
@click.option("--refuse", is_flag=True, help="Connections refused.")
@click.option("--reset", is_flag=True, help="Connections reset at once.")
@click.option("--reset-after", metavar="BYTES", help="Reset after this many bytes to the client.")
@click.option("--partition", is_flag=True, help="Nothing gets through (needs --from).")
@click.option("--abort", metavar="STATUS", help="Answer with this HTTP status (http, http2).")
@click.option("--grpc-status", metavar="N", help="Answer with this gRPC status (grpc).")
@click.option(
    "--dns",
    type=click.Choice(["nxdomain", "servfail", "delay"], case_sensitive=False),
    help="On SERVICE's Service Discovery name: NXDOMAIN, SERVFAIL or a delay (--latency).",
)
@click.option(
    "--dns-name", metavar="NAME", help="SERVICE's Service Discovery name, spelled out (it has one)."
)
@click.option("--percent", metavar="P", help="Of connections or requests (default 100).")
@click.option("--from", "source", metavar="CLIENT", help="Only calls from this client service.")
@click.option("--replica", metavar="N", help="Only this replica of SERVICE (1-based).")
@click.option("--seed", metavar="N", help="Seed of the percentage's draws (repeatable runs).")
@click.option("--id", "ident", metavar="ID", help="Name the fault (default: f1, f2...).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def add(ctx: Context, /, env: str | None, as_json: bool, **options: Any) -> None:
    """Add a fault on SERVICE's endpoint, or on its Service Discovery name (--dns).

    E.g. `meshlocal fault add api --latency 200ms --jitter 50ms --percent 30 --from front-end`.
    Prints its id, for `meshlocal fault rm`.
    """
    from meshlocal.faultparse import parse_fault

    fields = {_FIELD.get(k, k): v for k, v in options.items() if v not in (None, False)}
    parse_fault(fields)  # the shape, before any mesh is needed
    with running_mesh(ctx.directory, env) as dep:
        admin = dep.dataplane().admin_url
        try:
            added = add_fault(admin, fields)
        except AdminRefused as exc:
            raise fault_refusal(exc) from None
        warning = _replica_warning(admin, added)
    if as_json:
        click.echo(json.dumps(added, indent=2, sort_keys=True))
    else:
        out.print(f"added {fault_line(added, counts=False)}", markup=False)
    if warning:
        click.echo(warning, err=True)


def _replica_warning(admin: str, added: dict[str, Any]) -> str | None:
    """A `--replica` above the service's replica count: added (it may be scaled up),
    but said, since it hits nothing meanwhile."""
    replica, service = added.get("replica") or 0, added.get("service")
    if not replica:
        return None
    try:
        state = admin_call(admin, "/v1/state", timeout=5.0)
    except MeshlocalError:
        return None  # the fault is in; the count is only a courtesy
    services = state.get("services") if isinstance(state, dict) else None
    entry = services.get(service) if isinstance(services, dict) else None
    desired = entry.get("desired") if isinstance(entry, dict) else None
    if not isinstance(desired, int) or replica <= desired:
        return None
    runs = f"{desired} replica" + ("" if desired == 1 else "s")
    return (
        f"warning: {service} runs {runs}: replica {replica} gets no calls "
        f"until {service} is scaled up to {replica}"
    )


_FIELD = {"source": "from", "ident": "id"}


@fault.command(name="ls")
@env_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def ls(ctx: Context, env: str | None, as_json: bool) -> None:
    """List the active faults, with how many calls each has hit (HITS/SEEN)."""
    with running_mesh(ctx.directory, env) as dep:
        faults = list_faults(dep.dataplane().admin_url)
    if as_json:
        click.echo(json.dumps(faults, indent=2, sort_keys=True))
        return
    if not faults:
        out.print("no faults", markup=False)
        return
    out.print(fault_table(faults))


@fault.command(name="rm")
@env_option
@click.argument("idents", nargs=-1, metavar="ID...")
@click.option("--all", "everything", is_flag=True, help="Remove every fault.")
@pass_context
def rm(ctx: Context, env: str | None, idents: tuple[str, ...], everything: bool) -> None:
    """Remove faults by id (`fault ls`), or all of them. A declared one (copilot/.meshlocal.yml)
    comes back with the next `up`."""
    if everything == bool(idents):
        raise click.UsageError("give the ids of the faults to remove, or --all (not both)")
    with running_mesh(ctx.directory, env) as dep:
        admin = dep.dataplane().admin_url
        if everything:
            removed = clear_faults(admin)
        else:
            # All or nothing: an unknown id changes nothing.
            known = {f["id"] for f in list_faults(admin)}
            wanted = [i.strip().lower() for i in dict.fromkeys(idents)]
            unknown = [i for i in wanted if i not in known]
            if unknown:
                raise FaultError(
                    f"no fault {unknown[0]!r}: nothing removed",
                    hint=f"faults: {', '.join(sorted(known)) or 'none'} (`meshlocal fault ls`)",
                )
            removed = []
            for ident in wanted:
                try:
                    removed += remove_fault(admin, ident)
                except AdminRefused as exc:
                    if exc.status != 404:  # gone meanwhile: what was asked
                        raise
    if not removed:
        out.print("no faults to remove", markup=False)
    for doc in removed:
        out.print(f"removed {fault_line(doc)}", markup=False)
