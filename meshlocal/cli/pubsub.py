"""`publish` and `queue peek`: the local SNS and SQS, for debugging."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from meshlocal.cli.app import Context, cli, env_option, pass_context
from meshlocal.cli.render import out
from meshlocal.cli.running import running_mesh
from meshlocal.errors import MeshlocalError


def _attributes(values: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--attr")
        if not value:
            # SNS refuses an empty attribute value: say so before anything is sent.
            raise click.BadParameter(f"{item!r} has an empty value", param_hint="--attr")
        found[key] = value
    return found


def _topic(view: Any, spec: str) -> tuple[str, str]:
    """`SERVICE/TOPIC`, or `TOPIC` when one service publishes it."""
    _ = view.emulator  # not running: say so first
    service, sep, name = spec.partition("/")
    if sep:
        return service, name
    owners = view.publishers(spec)
    if len(owners) == 1:
        return owners[0], spec
    known = ", ".join(f"{t.service}/{t.name}" for t in view.plan.topics) or "none"
    if not owners:
        raise MeshlocalError(f"no service publishes a topic {spec}", hint=f"topics: {known}")
    raise MeshlocalError(
        f"topic {spec} is published by {', '.join(owners)}",
        hint=f"name it as SERVICE/TOPIC: {', '.join(f'{o}/{spec}' for o in owners)}",
    )


@cli.command()
@env_option
@click.argument("topic")
@click.argument("message")
@click.option(
    "--attr",
    "attrs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A String message attribute (repeatable): what filter policies match.",
)
@click.option("--group", default=None, help="MessageGroupId on a FIFO topic (default: meshlocal).")
@pass_context
def publish(
    ctx: Context,
    env: str | None,
    topic: str,
    message: str,
    attrs: tuple[str, ...],
    group: str | None,
) -> None:
    """Publish MESSAGE to TOPIC (`SERVICE/TOPIC`, or `TOPIC`), as its service would.

    Every subscribed queue whose filter policy matches gets it.
    """
    from meshlocal.pubsub.view import PubSubView

    attributes = _attributes(attrs)
    with running_mesh(ctx.directory, env) as dep:
        view = PubSubView(dep)
        service, name = _topic(view, topic)
        t = view.topic(service, name)
        if group is not None and not t.name.endswith(".fifo"):
            raise click.BadParameter(
                f"{service}/{t.name} is a standard topic: only a FIFO topic takes a group",
                param_hint="--group",
            )
        message_id = view.publish(service, name, message, attributes, group=group)
    click.echo(f"published {message_id} to {t.arn}")


@cli.group()
def queue() -> None:
    """Look into the local SQS queues of Worker Services."""


@queue.command()
@env_option
@click.argument("service")
@click.option(
    "--topic",
    default=None,
    help="The worker's own queue for this topic (subscribe.topics[].queue).",
)
@click.option("--dead-letter", is_flag=True, help="The dead-letter queue instead.")
@click.option(
    "-n",
    "limit",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Messages to show at most.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def peek(
    ctx: Context,
    env: str | None,
    service: str,
    topic: str | None,
    dead_letter: bool,
    limit: int,
    as_json: bool,
) -> None:
    """Show the messages in SERVICE's queue without receiving them.

    Nothing changes: no receive is counted towards the dead-letter queue.
    """
    from meshlocal.pubsub.view import PubSubView

    with running_mesh(ctx.directory, env) as dep:
        view = PubSubView(dep)
        q = view.queue(service, topic, dead_letter)
        messages = view.peek(q, limit)
        counts = view.counts(q)
    if as_json:
        click.echo(json.dumps({"queue": q.name, "messages": messages}, indent=2))
        return
    table = Table(
        title=f"{q.name}: {counts.visible} visible, {counts.in_flight} in flight"
        + (f", {counts.dead_lettered} dead-lettered" if counts.dead_lettered is not None else "")
    )
    if not messages:
        out.print(table.title, markup=False)
        out.print("no messages", markup=False)
        return
    for column in ("Message id", "Receives", "State", "Body"):
        table.add_column(column)
    for m in messages:
        body = str(m["body"])
        table.add_row(
            str(m["id"]),
            str(m["receive_count"]),
            "visible" if m["visible"] else "in flight",
            body if len(body) <= 200 else body[:200] + "…",
        )
    out.print(table)


def pubsub_tables(stats: dict[str, Any]) -> list[Table]:
    """`meshlocal stats`: the topics and the queues."""
    topics = Table(title="SNS topics")
    for column in ("Service", "Topic", "Published"):
        topics.add_column(column, justify="right" if column == "Published" else "left")
    for t in stats["topics"]:
        topics.add_row(t["service"], t["topic"], str(t["published"]))
    queues = Table(title="SQS queues")
    for column in ("Service", "Queue", "Visible", "In flight", "Dead-lettered"):
        queues.add_column(column, justify="left" if column in ("Service", "Queue") else "right")
    for q in stats["queues"]:
        dead = q["dead_lettered"]
        queues.add_row(
            q["service"],
            q["queue"],
            str(q["visible"]),
            str(q["in_flight"]),
            "-" if dead is None else str(dead),
        )
    return [t for t in (topics, queues) if t.row_count]
