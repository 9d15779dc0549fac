"""The local SNS/SQS against the real engine, checked from inside the replicas.

The services run the emulator's own image (python3 and boto3 inside), so each
check is an unmodified boto3 in a replica: no endpoint_url, no credentials in
the code, only what the mesh put in the environment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlocal.errors import MeshlocalError
from meshlocal.pubsub import client
from meshlocal.runtime import labels as L
from meshlocal.testing import Mesh

from .conftest import copy_workspace, failed, labelled, ok, run_cli, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_workspace(tmp_path_factory, "pubsub")


@pytest.fixture(scope="module")
def mesh(ws: Path, pubsub_image: str, busybox_image: str) -> Iterator[Mesh]:
    with Mesh(ws, env="test", timeout=240, wait_for_ports=False, isolate=False) as m:
        yield m


def py(mesh: Mesh, service: str, code: str, timeout: float = 60.0) -> Any:
    """Run Python in a replica of `service`; the JSON it prints last."""
    result = mesh.exec(service, ["python3", "-c", textwrap.dedent(code)], timeout=timeout)
    assert result.ok, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def env_of(mesh: Mesh, service: str) -> dict[str, str]:
    found: dict[str, str] = py(
        mesh, service, "import json, os; print(json.dumps(dict(os.environ)))"
    )
    return found


def test_variables_have_copilots_formats(mesh: Mesh) -> None:
    endpoint = env_of(mesh, "orders")["AWS_ENDPOINT_URL_SQS"]
    m = re.fullmatch(r"http://(\d+\.\d+\.\d+\.\d+):4566", endpoint)
    assert m, endpoint
    orders = env_of(mesh, "orders")
    assert orders["AWS_ENDPOINT_URL_SNS"] == orders["AWS_ENDPOINT_URL"] == endpoint
    # generateSNSJSON: json.Marshal of a map, keys sorted, no spaces.
    assert orders["COPILOT_SNS_TOPIC_ARNS"] == (
        f'{{"audit.fifo":"arn:aws:sns:us-east-1:{ACCOUNT}:shop-test-orders-audit.fifo",'
        f'"events":"arn:aws:sns:us-east-1:{ACCOUNT}:shop-test-orders-events"}}'
    ).replace("us-east-1", orders["AWS_REGION"])
    assert "COPILOT_QUEUE_URI" not in orders

    billing = env_of(mesh, "billing")
    assert billing["COPILOT_QUEUE_URI"] == f"{endpoint}/{ACCOUNT}/shop-test-billing-EventsQueue"
    assert "COPILOT_TOPIC_QUEUE_URIS" not in billing
    shipping = env_of(mesh, "shipping")
    assert json.loads(shipping["COPILOT_TOPIC_QUEUE_URIS"]) == {
        "ordersAuditfifoEventsQueue": (
            f"{endpoint}/{ACCOUNT}/shop-test-shipping-ordersauditfifoEventsQueue.fifo"
        )
    }
    # A worker without `subscribe` still has its queue, as Copilot gives it one.
    assert env_of(mesh, "idle")["COPILOT_QUEUE_URI"].endswith("/shop-test-idle-EventsQueue")


def test_topics_and_queues_as_copilot_creates_them(mesh: Mesh) -> None:
    got = py(
        mesh,
        "billing",
        """
        import boto3, json, os
        sns, sqs = boto3.client("sns"), boto3.client("sqs")
        topics = {}
        for t in sns.list_topics()["Topics"]:
            a = sns.get_topic_attributes(TopicArn=t["TopicArn"])["Attributes"]
            topics[t["TopicArn"].rsplit(":", 1)[1]] = a.get("FifoTopic", "false")
        queues = {}
        for url in sqs.list_queues()["QueueUrls"]:
            a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            queues[url.rsplit("/", 1)[1]] = {k: a.get(k) for k in (
                "MessageRetentionPeriod", "DelaySeconds", "VisibilityTimeout",
                "RedrivePolicy", "FifoQueue")}
        mine = sqs.get_queue_attributes(
            QueueUrl=os.environ["COPILOT_QUEUE_URI"], AttributeNames=["QueueArn"])
        print(json.dumps({"topics": topics, "queues": queues,
                          "arn": mine["Attributes"]["QueueArn"]}))
        """,
    )
    assert got["topics"] == {
        "shop-test-orders-events": "false",
        "shop-test-orders-audit.fifo": "true",
    }
    queues = got["queues"]
    assert set(queues) == {
        "shop-test-billing-EventsQueue",
        "shop-test-billing-DeadLetterQueue",
        "shop-test-shipping-EventsQueue",
        "shop-test-shipping-ordersauditfifoEventsQueue.fifo",
        "shop-test-idle-EventsQueue",
    }, queues
    billing = queues["shop-test-billing-EventsQueue"]
    assert billing["MessageRetentionPeriod"] == str(96 * 3600)
    assert billing["VisibilityTimeout"] == "2"
    redrive = json.loads(billing["RedrivePolicy"])
    assert redrive["maxReceiveCount"] == 2
    assert redrive["deadLetterTargetArn"].endswith(":shop-test-billing-DeadLetterQueue")
    # subscribe.yml: the dead-letter queue keeps messages 14 days.
    assert queues["shop-test-billing-DeadLetterQueue"]["MessageRetentionPeriod"] == "1209600"
    assert queues["shop-test-shipping-ordersauditfifoEventsQueue.fifo"]["FifoQueue"] == "true"
    assert queues["shop-test-shipping-ordersauditfifoEventsQueue.fifo"]["VisibilityTimeout"] == "5"
    assert got["arn"].endswith(":shop-test-billing-EventsQueue")


RECEIVE = """
import boto3, json, os, sys, time
sqs = boto3.client("sqs")
url = {url}
bodies, deadline = [], time.monotonic() + {wait}
while time.monotonic() < deadline and len(bodies) < {want}:
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                              MessageAttributeNames=["All"])
    for m in got.get("Messages", []):
        body = json.loads(m["Body"])
        bodies.append(body.get("Message", body) if isinstance(body, dict) else body)
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
print(json.dumps(bodies))
"""


def receive(
    mesh: Mesh, service: str, want: int, wait: float = 20.0, url: str | None = None
) -> list[str]:
    code = RECEIVE.format(
        url=repr(url) if url else 'os.environ["COPILOT_QUEUE_URI"]', wait=wait, want=want
    )
    found: list[str] = py(mesh, service, code)
    return found


def publish_from_orders(mesh: Mesh, messages: list[tuple[str, str]], topic: str = "events") -> None:
    py(
        mesh,
        "orders",
        f"""
        import boto3, json, os
        sns = boto3.client("sns")
        arn = json.loads(os.environ["COPILOT_SNS_TOPIC_ARNS"])[{topic!r}]
        for body, kind in {messages!r}:
            extra = {{}}
            if arn.endswith(".fifo"):
                extra = {{"MessageGroupId": "g", "MessageDeduplicationId": body}}
            sns.publish(TopicArn=arn, Message=body, MessageAttributes={{
                "kind": {{"DataType": "String", "StringValue": kind}}}}, **extra)
        print(json.dumps(True))
        """,
    )


def test_fan_out_and_filter_policy(mesh: Mesh) -> None:
    publish_from_orders(mesh, [("o-1", "order"), ("s-1", "spam"), ("o-2", "order")])
    # shipping has no filter: all three; billing's filter drops the spam.
    assert sorted(receive(mesh, "shipping", want=3)) == ["o-1", "o-2", "s-1"]
    assert sorted(receive(mesh, "billing", want=3, wait=6)) == ["o-1", "o-2"]


def test_fifo_topic_keeps_order_in_a_fifo_queue(mesh: Mesh) -> None:
    bodies = [f"step-{i}" for i in range(10)]
    publish_from_orders(mesh, [(b, "order") for b in bodies], topic="audit.fifo")
    url = json.loads(env_of(mesh, "shipping")["COPILOT_TOPIC_QUEUE_URIS"])[
        "ordersAuditfifoEventsQueue"
    ]
    assert receive(mesh, "shipping", want=10, url=url) == bodies


def test_a_poison_message_lands_in_the_dead_letter_queue(mesh: Mesh) -> None:
    dlq = mesh.queue("billing", dead_letter=True)
    before = dlq.counts().visible
    mesh.publish("orders", "events", "poison", {"kind": "order"})
    # Received and never deleted: after maxReceiveCount (2) receives SQS moves it.
    py(
        mesh,
        "billing",
        """
        import boto3, json, os, time
        sqs = boto3.client("sqs")
        # Visible again every 2 s (VisibilityTimeout): the third receive moves it.
        url, seen, deadline = os.environ["COPILOT_QUEUE_URI"], 0, time.monotonic() + 7
        while time.monotonic() < deadline:
            got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
            seen += len(got.get("Messages", []))
        print(json.dumps(seen))
        """,
    )
    wait_for("the poison message in the DLQ", lambda: dlq.counts().visible > before, timeout=15)
    peeked = dlq.peek()
    assert any(json.loads(m["body"])["Message"] == "poison" for m in peeked), peeked
    assert mesh.queue("billing").counts().dead_lettered == dlq.counts().visible


def test_cli_publish_peek_and_stats(mesh: Mesh, ws: Path) -> None:
    before = {t["topic"]: t["published"] for t in stats_json(ws)["sns_sqs"]["topics"]}
    out = ok(run_cli(ws, "publish", "orders/events", "from-cli", "--attr", "kind=order"))
    assert re.search(
        r"published \S+ to arn:aws:sns:\S+:shop-test-orders-events$", out.stdout.strip()
    )
    peek = json.loads(ok(run_cli(ws, "queue", "peek", "billing", "--json")).stdout)
    assert peek["queue"] == "shop-test-billing-EventsQueue"
    assert [json.loads(m["body"])["Message"] for m in peek["messages"]][-1:] == ["from-cli"]
    # Peeking receives nothing: the message is still there, with no receive counted.
    again = json.loads(ok(run_cli(ws, "queue", "peek", "billing", "--json")).stdout)
    assert again["messages"][-1]["receive_count"] == 0
    stats = stats_json(ws)["sns_sqs"]
    assert {t["topic"]: t["published"] for t in stats["topics"]}["events"] == before["events"] + 1
    rows = {q["queue"]: q for q in stats["queues"]}
    assert rows["shop-test-billing-EventsQueue"]["visible"] >= 1
    assert rows["shop-test-idle-EventsQueue"]["dead_lettered"] is None
    ps = ok(run_cli(ws, "ps")).stdout
    assert re.search(
        r"SNS/SQS \(meshlocal/pubsub:[\d.]+-\w+\): http://[\d.]+:4566 in the mesh", ps
    ), ps
    assert json.loads(ok(run_cli(ws, "ps", "--json")).stdout)["pubsub"]["endpoint"].endswith(
        ":4566"
    )
    table = ok(run_cli(ws, "stats")).stdout
    assert (
        "SNS topics" in table and "SQS queues" in table and "shop-test-billing-EventsQueue" in table
    )
    receive(mesh, "billing", want=1)  # leave the queue as found
    assert "from-cli" in receive(mesh, "shipping", want=10, wait=6)  # fan-out, no filter


def stats_json(ws: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(ok(run_cli(ws, "stats", "--json")).stdout)
    return found


def test_the_running_plan_not_the_manifests_on_disk(ws: Path, mesh: Mesh) -> None:
    manifest = ws / "copilot" / "orders" / "manifest.yml"
    good = manifest.read_text()
    try:
        # A topic added but not applied yet, and then a manifest that doesn't load.
        manifest.write_text(
            good.replace("    - name: events\n", "    - name: events\n    - name: later\n")
        )
        err = failed(run_cli(ws, "publish", "orders/later", "x"))
        assert "service orders publishes no topic later" in err and "meshlocal up -d" in err
        manifest.write_text(good + "\ncount: abc\n")
        topics = {t["topic"] for t in stats_json(ws)["sns_sqs"]["topics"]}
        assert topics == {"events", "audit.fifo"}
        ok(run_cli(ws, "publish", "orders/events", "still", "--attr", "kind=other"))
    finally:
        manifest.write_text(good)
    assert "still" in receive(mesh, "shipping", want=10, wait=6)


def test_bad_names_are_clear_errors(ws: Path, mesh: Mesh) -> None:
    err = failed(run_cli(ws, "publish", "nope", "x"))
    assert "no service publishes a topic nope" in err and "orders/events" in err
    err = failed(run_cli(ws, "queue", "peek", "orders"))
    assert "service orders has no queue" in err
    err = failed(run_cli(ws, "queue", "peek", "shipping", "--dead-letter"))
    assert "has no dead-letter queue" in err
    err = failed(run_cli(ws, "publish", "nope/events", "x"))
    assert "service nope publishes no topic" in err
    usage = run_cli(ws, "publish", "orders/events", "x", "--group", "g")
    assert usage.returncode == 2 and "only a FIFO topic takes a group" in usage.stderr
    usage = run_cli(ws, "publish", "orders/events", "x", "--attr", "kind=")
    assert usage.returncode == 2 and "has an empty value" in usage.stderr


def test_messages_survive_a_dataplane_restart(mesh: Mesh, docker_client: Any) -> None:
    mesh.publish("orders", "events", "kept", {"kind": "order"})
    wait_for("kept in billing's queue", lambda: mesh.queue("billing").counts().visible >= 1, 10)
    plane = docker_client.containers.get(L.dataplane_name(mesh.project, mesh.env))
    plane.restart(timeout=5)
    mesh.wait_ready(timeout=60)
    assert receive(mesh, "billing", want=1) == ["kept"]


def test_emulator_restart_provisions_again(mesh: Mesh, docker_client: Any) -> None:
    # Docker's restart policy brings a crashed emulator back; it finds the plan `up` left.
    emulator = docker_client.containers.get(L.pubsub_name(mesh.project, mesh.env))
    endpoint = mesh.aws_endpoint
    # A crash, as an OOM kill is (Docker never restarts one it was told to kill).
    os.kill(int(emulator.attrs["State"]["Pid"]), signal.SIGKILL)
    wait_for("the emulator to die", lambda: _queue_count(mesh) is None, timeout=10)
    wait_for(
        "the emulator back with its queues",
        lambda: _queue_count(mesh) == 5,
        timeout=60,
        interval=0.5,
    )
    # Its host port was published explicitly: a host client keeps its endpoint.
    assert mesh.aws_endpoint == endpoint


def _queue_count(mesh: Mesh) -> int | None:
    try:
        return len(client.raw_stats(mesh.aws_endpoint)["queues"])
    except MeshlocalError:  # not answering yet
        return None


def test_down_removes_the_emulator(
    tmp_path_factory: pytest.TempPathFactory, pubsub_image: str, docker_client: Any
) -> None:
    ws = copy_workspace(tmp_path_factory, "pubsub")
    manifest = ws / "copilot" / "shipping" / "manifest.yml"
    # A subscription to a topic nobody publishes: Copilot's deploy-time error, nothing started.
    manifest.write_text(manifest.read_text().replace("name: audit", "name: nope"))
    err = failed(run_cli(ws, "up", "-d", "--timeout", "120", timeout=300))
    assert "SNS topic shop-test-orders-nope.fifo does not exist in environment test" in err, err
    project = L.project_id("shop", ws)
    assert not labelled(docker_client, project).get("containers")
    try:
        manifest.write_text(manifest.read_text().replace("name: nope", "name: audit"))
        ok(run_cli(ws, "up", "-d", "--timeout", "120", timeout=300))
        emulator = docker_client.containers.get(L.pubsub_name(project, "test"))
        # Stopped: said by ps and publish, and `up -d` is no no-op.
        emulator.stop(timeout=5)
        assert "[!] the SNS/SQS emulator is not running (exited)" in ok(run_cli(ws, "ps")).stderr
        assert "is not running (exited)" in failed(run_cli(ws, "publish", "orders/events", "x"))
        ok(run_cli(ws, "up", "-d", "--timeout", "120", timeout=300))
        emulator = docker_client.containers.get(L.pubsub_name(project, "test"))
        assert emulator.status == "running"
        # A filter policy changed: applied to the running subscription, and said.
        billing = ws / "copilot" / "billing" / "manifest.yml"
        billing.write_text(billing.read_text().replace("- order", "- refund"))
        up = ok(run_cli(ws, "up", "-d", "--timeout", "120", timeout=300))
        assert re.search(
            r"SNS/SQS: subscription of shop-test-billing-EventsQueue to shop-test-orders-events: "
            r'filter policy \{"kind":\["refund"\]\}',
            up.stderr,
        ), up.stderr
        # Gone behind meshlocal's back: the next `up -d` is no no-op, it starts one again.
        emulator.remove(force=True)
        ok(run_cli(ws, "up", "-d", "--timeout", "120", timeout=300))
        again = docker_client.containers.get(L.pubsub_name(project, "test"))
        assert again.id != emulator.id and again.status == "running"
    finally:
        # A failed step leaves nothing running either.
        down = run_cli(ws, "down", timeout=120)
    assert down.returncode == 0, down.stderr
    left = docker_client.containers.list(all=True, filters={"label": f"{L.PROJECT}={project}"})
    assert [c.name for c in left] == []


def test_the_image_holds_no_meshlocal(pubsub_image: str, docker_client: Any) -> None:
    out = docker_client.containers.run(
        pubsub_image,
        entrypoint=[
            "python3",
            "-c",
            "import importlib.util as u; "
            "print(u.find_spec('meshlocal'), u.find_spec('moto') is not None)",
        ],
        remove=True,
        labels={L.ROLE: L.Role.PROBE.value},
        network_mode="none",
    )
    assert bytes(out).decode().split() == ["None", "True"]


def test_logs_show_the_emulator(mesh: Mesh, ws: Path) -> None:
    out = ok(run_cli(ws, "logs", "--tail", "50")).stdout
    assert re.search(
        r"^meshlocal-pubsub +\| meshlocal-pubsub: moto on 0\.0\.0\.0:4566", out, re.M
    ), out
    # A service's logs leave it out.
    assert "meshlocal-pubsub" not in ok(run_cli(ws, "logs", "billing")).stdout
