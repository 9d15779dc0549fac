"""`down`, `ls`, `ps`, `logs`, `resolve`, `scale` and `stats`."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from meshlocal.adminapi import AdminRefused, admin_call, list_faults
from meshlocal.cli.app import Context, cli, env_option, pass_context
from meshlocal.cli.follow import FileFollower, LogFollower
from meshlocal.cli.interrupts import (
    interrupted,
)
from meshlocal.cli.logprefix import LogPrinter
from meshlocal.cli.render import (
    err,
    fault_table,
    out,
    print_dataplane_down,
    print_ps,
    stats_modes,
)
from meshlocal.cli.running import check_down_environment, running_mesh
from meshlocal.deployment import Deployment, stop_host_agents
from meshlocal.errors import DataPlaneDown, RuntimeFailure
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import Engine, engine_errors
from meshlocal.runtime.pubsub import find as pubsub_find
from meshlocal.runtime.pubsub import stopped as pubsub_stopped
from meshlocal.runtime.tunnel import forwarded
from meshlocal.teardown import remove_refs, teardown, used_images
from meshlocal.watch import running as watching
from meshlocal.watch import stop_all as stop_all_watchers

# -- down ------------------------------------------------------------------


@cli.command()
@env_option
@click.option(
    "--rmi",
    type=click.Choice(["local", "all"]),
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[local|all]",
    help="Also remove images, as compose's --rmi: `local` (what a bare --rmi means) the "
    "service images built for this workspace; `all` also those its services ran by name "
    "(image.location, sidecars). Shared caches are always kept.",
)
# Images are kept by default now: the old flag still parses, and changes nothing.
@click.option("--keep-images", is_flag=True, hidden=True)
@click.option(
    "--project",
    metavar="PROJECT",
    default=None,
    help="Remove a project by its id (see `meshlocal ls`), without its workspace: "
    "for a mesh whose folder is gone.",
)
@pass_context
def down(
    ctx: Context, env: str | None, rmi: str | None, keep_images: bool, project: str | None
) -> None:
    """Remove every container, network and volume the environment created.

    Found by label, so it works after meshlocal was killed. Images are kept,
    as compose keeps them, so the next `up` builds nothing; `--rmi` removes
    them. The shared caches (Python base, busybox, data-plane image) are kept.
    """
    del keep_images  # the hidden no-op alias of the default
    if project is not None:
        engine = Engine.from_env()
        try:
            ran = used_images(engine, project, env) if rmi == "all" else ()
            stop_all_watchers(project)
            stop_host_agents(project)
            removed = teardown(
                engine, project, env, image_prefix=f"meshlocal/{project}-" if rmi else None
            )
            removed = replace(removed, images=(*removed.images, *remove_refs(engine, ran)))
        finally:
            engine.close()
    else:
        check_down_environment(ctx.directory, env)
        dep = Deployment(ctx.directory, env, lenient=True)
        try:
            ran = used_images(dep.engine, dep.project, env) if rmi == "all" else ()
            removed = dep.down(images=rmi is not None)
            removed = replace(removed, images=(*removed.images, *remove_refs(dep.engine, ran)))
            if dep.stopped_watcher is not None:
                err.print(f"[+] Stopped the watcher (pid {dep.stopped_watcher})", markup=False)
        finally:
            dep.close()
    for name in removed.containers:
        err.print(f"[+] Removed container {name}", markup=False)
    for name in removed.networks:
        err.print(f"[+] Removed network {name}", markup=False)
    for name in removed.images:
        err.print(f"[+] Removed image {name}", markup=False)
    if not removed.containers and not removed.networks and not removed.images:
        err.print("[+] Nothing to remove", markup=False)


@cli.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(as_json: bool) -> None:
    """List every mesh on this Docker engine, with its workspace (like `docker compose ls`)."""
    engine = Engine.from_env()
    try:
        rows: list[dict[str, Any]] = []
        for project, env in engine.projects():
            containers = engine.list_containers(project, env or None)
            # The network carries the workspace too: a mesh that has only its
            # network left (no container yet, or none any more) is still known.
            with engine_errors("listing networks"):
                nets = engine.api.networks(filters={"label": L.filters(project, env or None)})
            labelled = [dict(c.labels) for c in containers] + [n.get("Labels") or {} for n in nets]
            workspace = next((lb[L.WORKSPACE] for lb in labelled if lb.get(L.WORKSPACE)), "")
            running = sum(1 for c in containers if c.running)
            rows.append(
                {
                    "project": project,
                    "env": env,
                    "workspace": workspace,
                    "workspace_exists": bool(workspace) and Path(workspace).is_dir(),
                    "running": running,
                    "containers": len(containers),
                }
            )
    finally:
        engine.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("PROJECT", "ENV", "RUNNING", "WORKSPACE"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["project"],
            row["env"],
            f"{row['running']}/{row['containers']}",
            row["workspace"]
            if row["workspace_exists"]
            else f"{row['workspace'] or '(unknown)'} (gone: `meshlocal down --project` removes it)",
        )
    out.print(table)


# -- ps / scale / stats ----------------------------------------------------


@cli.command()
@env_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def ps(ctx: Context, env: str | None, as_json: bool) -> None:
    """List services, replicas, addresses, health and endpoints."""
    with running_mesh(ctx.directory, env, dataplane=False) as dep:
        try:
            plane = dep.dataplane()
        except DataPlaneDown as down:
            # What the engine still runs, by label: the agent that knew more is gone.
            print_dataplane_down(down.containers, dep.project, dep.env, as_json=as_json)
            raise
        state = admin_call(plane.admin_url, "/v1/state")
        state["public_url"] = plane.public_url
        state["page_url"] = plane.admin_url.rstrip("/") + "/"
        state["engine"] = {
            **dep.engine.where(),
            "forwarded": forwarded(dep.engine, dep.project, dep.env),
        }
        watcher = watching(dep)
        emulator = pubsub_find(dep.engine, dep.project, dep.env)
        halted = None if emulator else pubsub_stopped(dep.engine, dep.project, dep.env)
        if halted is not None:
            err.print(
                f"[!] the SNS/SQS emulator is not running ({halted}): "
                "`meshlocal up -d` starts it again",
                markup=False,
                style="yellow",
            )
        if as_json:
            state["watcher"] = {"pid": watcher.pid, "log": str(watcher.log)} if watcher else None
            state["pubsub"] = (
                {
                    "endpoint": emulator.endpoint,
                    "host_url": emulator.host_url,
                    "image": emulator.image,
                }
                if emulator
                else None
            )
            click.echo(json.dumps(state, indent=2, sort_keys=True))
        else:
            print_ps(state, plane.public_url, state["page_url"])
            if emulator is not None:
                out.print(
                    f"SNS/SQS ({emulator.image}): {emulator.endpoint} in the mesh, "
                    f"{emulator.host_url} from here",
                    markup=False,
                )
            if watcher is not None:
                out.print(f"watching: pid {watcher.pid}, log {watcher.log}", markup=False)


@cli.command()
@env_option
@click.argument("assignments", nargs=-1, required=True, metavar="SVC=N...")
@click.option(
    "--timeout", type=float, default=180.0, show_default=True, help="Seconds to wait for ready."
)
@pass_context
def scale(ctx: Context, env: str | None, assignments: tuple[str, ...], timeout: float) -> None:
    """Set the number of replicas of services, e.g. `meshlocal scale api=5`."""
    wanted: list[tuple[str, int]] = []
    for item in assignments:
        name, sep, number = item.partition("=")
        if not sep or not number.isdigit():
            raise RuntimeFailure(
                f"cannot read {item!r}", hint="write SERVICE=COUNT, e.g. `meshlocal scale api=3`"
            )
        wanted.append((name, int(number)))
    with running_mesh(ctx.directory, env, [name for name, _ in wanted]) as dep:
        for name, count in wanted:
            dep.scale(name, count)
        # Like `up -d`: return once the new replicas are in rotation.
        try:
            dep.wait_ready(timeout, services=[name for name, _ in wanted])
        except KeyboardInterrupt as exc:
            goal = ", ".join(f"{name} to {count}" for name, count in wanted)
            raise interrupted(
                exc,
                f"while waiting: the data plane goes on scaling {goal}; `meshlocal ps` shows "
                "how far it got, another `meshlocal scale` changes it",
            ) from None
        for name, count in wanted:
            err.print(f"[+] {name} scaled to {count}", markup=False)


@cli.command()
@env_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def stats(ctx: Context, env: str | None, as_json: bool) -> None:
    """Service Connect metrics per service (the names ECS publishes to CloudWatch), the
    local SNS topics and SQS queues (under `sns_sqs` in JSON: no service has that name),
    and the active faults with how many calls each has hit (`injected_faults` in JSON)."""
    from meshlocal.cli.pubsub import pubsub_tables
    from meshlocal.proxy.metrics import stats_table
    from meshlocal.pubsub.view import PubSubView

    with running_mesh(ctx.directory, env) as dep:
        snapshot = dep.call("/stats")
        faults = _faults(dep.dataplane().admin_url)
        view = PubSubView(dep)
        pubsub = view.stats() if view.running else None
        if view.stopped is not None:
            err.print(
                f"[!] the SNS/SQS emulator is not running ({view.stopped}): "
                "`meshlocal up -d` starts it again",
                markup=False,
                style="yellow",
            )
        if as_json:
            shown = {**snapshot, "sns_sqs": pubsub} if pubsub is not None else dict(snapshot)
            shown["injected_faults"] = faults  # no service can have that name
            click.echo(json.dumps(shown, indent=2, sort_keys=True))
            return
        state = dep.state()
    out.print(stats_table(snapshot, stats_modes(state)))
    for table in pubsub_tables(pubsub) if pubsub is not None else ():
        out.print(table)
    if faults:
        out.print(fault_table(faults, title="Faults"))


def _faults(admin_url: str) -> list[dict[str, Any]]:
    """The active faults; none from a data plane older than fault injection (404)."""
    try:
        return list_faults(admin_url)
    except AdminRefused as exc:
        if exc.status == 404:
            return []
        raise


# -- logs ------------------------------------------------------------------


def _tail(value: str) -> str:
    if value == "all" or value.isdigit():
        return value
    raise click.BadParameter(f"{value!r} is not a number of lines or `all`")


@cli.command()
@env_option
@click.argument("services", nargs=-1)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines and replicas.")
@click.option(
    "--tail",
    default="all",
    callback=lambda _ctx, _param, value: _tail(value),
    help="Lines to show from the end of each log (a number, or all).",
)
@pass_context
def logs(ctx: Context, env: str | None, services: tuple[str, ...], follow: bool, tail: str) -> None:
    """Show replica logs with compose-style prefixes."""
    with running_mesh(ctx.directory, env, services, dataplane=False) as dep:
        if not dep.engine.list_containers(dep.project, dep.env):
            dep.dataplane()  # nothing on the engine: `no mesh is running`, as everywhere
        printer = LogPrinter(sys.stdout, colour=sys.stdout.isatty())
        follower = LogFollower(
            dep.engine,
            dep.project,
            dep.env,
            printer,
            services=set(services) or None,
            tail=int(tail) if tail.isdigit() else "all",
            follow=follow,
            dataplane=not services,
        )
        watcher = None if services else watching(dep)
        files = (
            [FileFollower(watcher.log, "meshlocal-watch", printer, tail=tail, follow=follow)]
            if watcher is not None
            else []
        )
        for file in files:
            file.start()
        follower.start()
        if not follower.attached:
            err.print(
                f"[+] No container of {', '.join(services) or 'the mesh'} runs in {dep.env}"
                + (": waiting for one to start" if follow else ""),
                markup=False,
            )
        try:
            if follow:
                threading.Event().wait()
            follower.wait()
            for file in files:
                file.wait()
        except KeyboardInterrupt:
            pass
        finally:
            follower.stop()
            for file in files:
                file.stop()


# -- resolve ---------------------------------------------------------------


@cli.command()
@env_option
@click.argument("name")
@click.option("--from", "from_", required=True, metavar="SVC", help="Ask from a replica of SVC.")
@click.option(
    "--type",
    "qtype",
    type=click.Choice(["A", "SRV"], case_sensitive=False),
    default="A",
    show_default=True,
    help="A or SRV.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_context
def resolve(
    ctx: Context, env: str | None, name: str, from_: str, qtype: str, as_json: bool
) -> None:
    """What a service's containers get for NAME, asked from inside one of them."""
    from meshlocal.probe import resolve_from

    with running_mesh(ctx.directory, env, [from_]) as dep:
        result = resolve_from(dep, name, from_, qtype.upper())
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    if result["rcode"] != "NOERROR":
        out.print(f"{name}: {result['rcode']} (from {result['client']})", markup=False)
        raise SystemExit(1)
    targets = " ".join(result["answers"]) or "(no records)"
    out.print(f"{name} -> {targets} ({result['meaning']}, from {result['client']})", markup=False)
