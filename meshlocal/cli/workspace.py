"""`meshlocal validate` and `meshlocal plan`: what the workspace means, without running it."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from meshlocal.cli.app import Context, cli, env_option, pass_context
from meshlocal.manifest import ManifestErrors, check, load_environment
from meshlocal.manifest.model import EnvironmentSpec, Service
from meshlocal.manifest.validate import runnable_hint
from meshlocal.naming import NamingModel

PLAN_SCHEMA = 1


def _console() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # pipes and CI: don't squeeze names into 80 columns
        console.width = 160
    return console


@cli.command()
@env_option
@click.argument("services", nargs=-1, metavar="[SERVICE]...")
@pass_context
def validate(ctx: Context, env: str | None, services: tuple[str, ...]) -> None:
    """Check the manifests for one environment; list every error and what is not emulated.

    With SERVICE names, only those are checked (another service's broken
    manifest is a warning), as `copilot svc deploy` deploys one at a time.
    """
    report = check(ctx.directory, env, services=services or None)
    out = _console()
    for note in report.notes:
        warn = note.kind in ("warning", "left-out")
        out.print(note.render(), markup=False, style="yellow" if warn else "dim")
    if report.errors:
        footer = None if services else runnable_hint(report)
        raise ManifestErrors(report.errors, suggest_validate=False, footer=footer)
    names = ", ".join(s.name for s in report.spec.services) or "none"
    out.print(
        f"{report.workspace.app}/{report.environment.name}: "
        f"{len(report.spec.services)} service(s) valid ({names})",
        markup=False,
        style="green",
    )


def _fmt_port(port: int | None) -> str:
    return "-" if port is None else str(port)


def plan_document(spec: EnvironmentSpec) -> dict[str, Any]:
    """The `plan --json` document (docs/plan-json.md). Keys are stable within a schema."""
    naming = NamingModel(spec)
    services: list[dict[str, Any]] = []
    for svc in spec.services:
        # Cloud Map registers the target port (ServiceRegistries Port: TargetPort).
        sd = (
            {"name": naming.sd_name(svc.name), "port": svc.target_port}
            if svc.name in naming.registered
            else None
        )
        endpoints = [
            {"name": e.name, "port": e.port, "url": e.url, "protocol": e.protocol.value}
            for e in naming.sc_endpoints
            if e.service == svc.name
        ]
        services.append(
            {
                "name": svc.name,
                "type": svc.type.value,
                "replicas": svc.count,
                "port": svc.port,
                "target_port": svc.target_port,
                "target_container": svc.target_container,
                "http_path": svc.http_path,
                "image": _image(svc),
                "service_discovery": sd,
                "service_connect": {
                    "client": naming.is_sc_client(svc.name),
                    "alias": svc.connect.alias,
                    "endpoints": endpoints,
                    "not_a_name": naming.shadowed_name(svc.name),
                },
                "sidecars": [s.name for s in svc.sidecars],
                "variables": dict(sorted(svc.variables.items())),
                "secrets": sorted(svc.secrets),
                "not_emulated": list(svc.not_emulated),
                "manifest": str(svc.manifest_path),
            }
        )
    clients = [
        {
            "service": svc.name,
            "service_connect_client": naming.is_sc_client(svc.name),
            "resolves": [
                {"name": r.name, "kind": r.kind.value, "service": r.service, "port": r.port}
                for r in naming.visible_names(svc.name)
            ],
        }
        for svc in spec.services
    ]
    return {
        "schema": PLAN_SCHEMA,
        "application": spec.app,
        "environment": spec.env,
        "legacy_namespace": spec.environment.legacy_namespace,
        "service_discovery_namespace": naming.namespace,
        "services": services,
        "clients": clients,
        "skipped": [
            {"name": s.name, "type": s.type.value, "reason": s.reason} for s in spec.skipped
        ],
        # What `up` creates in the local SNS/SQS (docs/pubsub.md); empty lists without one.
        "pubsub": _pubsub(spec),
    }


def _pubsub(spec: EnvironmentSpec) -> dict[str, Any]:
    from meshlocal.pubsubplan import plan as pubsub_plan

    planned = pubsub_plan(spec)
    return {
        "topics": [
            {"service": t.service, "topic": t.name, "name": t.physical, "arn": t.arn}
            for t in planned.topics
        ],
        "queues": [
            {
                "service": q.service,
                "name": q.name,
                "fifo": q.fifo,
                "attributes": dict(sorted(q.attributes.items())),
                "dead_letter": q.dead_letter,
                "max_receive_count": q.max_receive_count,
            }
            for q in planned.queues
        ],
        "subscriptions": [
            {
                "service": s.service,
                "topic_arn": s.topic_arn,
                "queue": s.queue,
                "filter_policy": s.filter_policy,
            }
            for s in planned.subscriptions
        ],
    }


def _image(svc: Service) -> dict[str, Any]:
    if svc.build is not None:
        return {
            "build": {
                "context": str(svc.build.context),
                "dockerfile": str(svc.build.dockerfile),
                "args": dict(svc.build.args),
                "target": svc.build.target,
            },
            "location": None,
        }
    return {"build": None, "location": svc.image_location}


@cli.command()
@env_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (docs/plan-json.md).")
@pass_context
def plan(ctx: Context, env: str | None, as_json: bool) -> None:
    """Show what `up` would run: services, replicas, ports, and who resolves which name."""
    spec = load_environment(ctx.directory, env)
    doc = plan_document(spec)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    out = _console()
    out.print(
        f"Application [bold]{doc['application']}[/], environment [bold]{doc['environment']}[/]"
        f" — Service Discovery namespace {doc['service_discovery_namespace']}"
        + (" (legacy)" if doc["legacy_namespace"] else "")
    )
    table = Table(title="Services", title_justify="left")
    for column in (
        "Service",
        "Type",
        "Replicas",
        "Port",
        "Target port",
        "Service Discovery",
        "Service Connect",
    ):
        table.add_column(column)
    for svc in doc["services"]:
        sc = svc["service_connect"]
        endpoints = "\n".join(f"{e['url']} ({e['protocol']})" for e in sc["endpoints"])
        if not endpoints:
            endpoints = "client only" if sc["client"] else "-"
        sd = svc["service_discovery"]
        table.add_row(
            svc["name"],
            svc["type"],
            str(svc["replicas"]),
            _fmt_port(svc["port"]),
            _fmt_port(svc["target_port"]),
            f"{sd['name']}:{sd['port']}" if sd else "-",
            endpoints,
        )
    out.print(table)
    for svc in doc["services"]:
        sc = svc["service_connect"]
        if sc["not_a_name"] and sc["endpoints"]:
            out.print(
                f"note: service {svc['name']} has alias {sc['alias']}: "
                f"http://{sc['not_a_name']} is not a Service Connect name; "
                f"clients call {sc['endpoints'][0]['url']}",
                markup=False,
                style="yellow",
            )
    if any(
        e["protocol"] == "tcp" for s in doc["services"] for e in s["service_connect"]["endpoints"]
    ):
        out.print(
            "note: tcp endpoints balance per connection (ECS's default without AppProtocol): "
            "a keep-alive client stays on one replica. Set AppProtocol (taskdef_overrides) or "
            "copilot/.meshlocal.yml services.NAME.app_protocol for per-request balancing.",
            markup=False,
            style="dim",
        )
    clients = Table(title="What each client resolves", title_justify="left")
    for column in ("Client", "Name", "Kind", "Target service", "Port"):
        clients.add_column(column)
    for client in doc["clients"]:
        rows = client["resolves"] or [{"name": "-", "kind": "-", "service": "-", "port": None}]
        for index, res in enumerate(rows):
            clients.add_row(
                client["service"] if index == 0 else "",
                res["name"],
                res["kind"],
                res["service"],
                _fmt_port(res["port"]),
            )
    out.print(clients)
    pubsub = doc["pubsub"]
    if pubsub["topics"] or pubsub["queues"]:
        table = Table(title="SNS and SQS (local)", title_justify="left")
        for column in ("Service", "Kind", "Name", "Delivers to / settings"):
            table.add_column(column)
        for t in pubsub["topics"]:
            subs = [s for s in pubsub["subscriptions"] if s["topic_arn"] == t["arn"]]
            to = "\n".join(
                s["queue"] + (f" if {s['filter_policy']}" if s["filter_policy"] else "")
                for s in subs
            )
            table.add_row(t["service"], "topic", t["name"], to or "-")
        for q in pubsub["queues"]:
            settings = [f"{k}={v}" for k, v in q["attributes"].items()]
            if q["dead_letter"]:
                settings.append(f"dead letter after {q['max_receive_count']}: {q['dead_letter']}")
            table.add_row(q["service"], "queue", q["name"], "\n".join(settings) or "-")
        out.print(table)
    for skipped in doc["skipped"]:
        out.print(
            f"skipped {skipped['name']} ({skipped['type']}): {skipped['reason']}", markup=False
        )
