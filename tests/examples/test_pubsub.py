"""compose-examples/pubsub: SNS to SQS in the mesh, with a filter policy and a dead-letter queue.

orders publishes to its topic `events`; processor (a Worker Service) drains
its EventsQueue, subscribed with `filter_policy: {kind: [order]}`,
`queue.timeout: 1s` and `dead_letter.tries: 2`. processor reports every
outcome to orders (POST http://orders:8080/processed, Service Connect), and
the test reads them from orders' public `GET /processed`.

The emulator itself is checked with boto3 from the test process, at
`mesh.aws_endpoint`; `mesh.queue(...)` and `mesh.publish(...)` are the
testing API's own view of the same queues and topics.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from meshlocal.testing import Mesh

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]
EXAMPLE = "pubsub"
ACCOUNT = "123456789012"
TOPIC = "pubsub-test-orders-events"
QUEUE = "pubsub-test-processor-EventsQueue"
DLQ = "pubsub-test-processor-DeadLetterQueue"
# Inside the mesh the emulator is one address on port 4566, for SNS and SQS alike.
ENDPOINT = re.compile(r"^http://[A-Za-z0-9.-]+:4566$")
# How long SNS -> SQS -> processor -> orders may take for one message
# (a 5 s long poll; after a failure, 1 s of visibility timeout per retry).
DELIVERY_S = 30.0


def new_id() -> str:
    return uuid.uuid4().hex


def post_order(mesh: Mesh, order: dict[str, Any]) -> dict[str, Any]:
    response = mesh.request(
        "POST",
        "orders",
        "/orders",
        body=json.dumps(order).encode(),
        headers={"Content-Type": "application/json"},
        timeout=15,
    )
    assert response.status == 202, response.text
    published: dict[str, Any] = response.json()
    return published


def reports(mesh: Mesh) -> dict[str, list[dict[str, Any]]]:
    """What processor has reported to orders so far: {"processed": [...], "failed": [...]}."""
    response = mesh.get("orders", "/processed", timeout=10)
    assert response.status == 200, response.text
    body: dict[str, list[dict[str, Any]]] = response.json()
    return body


def reported(mesh: Mesh, outcome: str, order_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in reports(mesh)[outcome]
        if isinstance(r.get("order"), dict) and r["order"].get("id") == order_id
    ]


def wait_processed(mesh: Mesh, order_id: str) -> dict[str, Any]:
    found = mesh.wait_until(
        lambda: reported(mesh, "processed", order_id),
        timeout=DELIVERY_S,
        message=f"processor to process order {order_id}",
    )
    return found[0]


def env_of(mesh: Mesh) -> dict[str, Any]:
    response = mesh.get("orders", "/env", timeout=10)
    assert response.status == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def processor_env(mesh: Mesh) -> dict[str, Any]:
    """The `processor env {...}` line processor logs first."""

    def find() -> dict[str, Any] | None:
        for line in mesh.logs("processor", tail=10000):
            head, _, rest = line.strip().partition(" env ")
            if head == "processor" and rest.startswith("{"):
                env: dict[str, Any] = json.loads(rest)
                return env
        return None

    found = mesh.wait_until(find, timeout=30, message="processor's `env` log line")
    assert found is not None
    return found


def sns_envelope_message(body: str) -> Any:
    """The message in an SNS envelope (what SNS delivers to SQS without raw delivery)."""
    try:
        envelope = json.loads(body)
        assert envelope["Type"] == "Notification", envelope
        return json.loads(envelope["Message"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AssertionError(f"not an SNS envelope: {body!r}") from exc


def peeked_ids(messages: list[dict[str, Any]]) -> list[Any]:
    """The order ids of what `mesh.queue(...).peek()` shows (bodies are SNS envelopes)."""
    ids = []
    for m in messages:
        try:
            order = sns_envelope_message(m["body"])
        except AssertionError:
            continue
        if isinstance(order, dict):
            ids.append(order.get("id"))
    return ids


@pytest.fixture(scope="module")
def aws(example_mesh: Mesh) -> Iterator[dict[str, Any]]:
    """boto3 clients of the mesh's emulator, from the host (uses mesh.aws_endpoint)."""
    boto3 = pytest.importorskip("boto3")
    region = env_of(example_mesh)["AWS_REGION"]
    kwargs = {
        "endpoint_url": example_mesh.aws_endpoint,  # Mesh API: the emulator's host URL
        "region_name": region,
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
    }
    yield {
        "region": region,
        "sns": boto3.client("sns", **kwargs),
        "sqs": boto3.client("sqs", **kwargs),
    }


def test_variables_point_at_the_emulator_in_copilot_formats(example_mesh: Mesh) -> None:
    orders = env_of(example_mesh)
    region = orders["AWS_REGION"]
    assert region and orders["AWS_DEFAULT_REGION"] == region
    endpoint = orders["AWS_ENDPOINT_URL_SNS"]
    assert ENDPOINT.match(endpoint), orders
    assert orders["AWS_ENDPOINT_URL_SQS"] == endpoint
    # generateSNSJSON: compact JSON, topic name -> ARN <app>-<env>-<svc>-<topic>.
    arn = f"arn:aws:sns:{region}:{ACCOUNT}:{TOPIC}"
    assert orders["COPILOT_SNS_TOPIC_ARNS"] == json.dumps({"events": arn}, separators=(",", ":"))

    worker = processor_env(example_mesh)
    assert worker["AWS_ENDPOINT_URL_SQS"] == endpoint
    assert worker["AWS_ENDPOINT_URL_SNS"] == endpoint
    assert worker["AWS_REGION"] == worker["AWS_DEFAULT_REGION"] == region
    # The URL the local SQS itself returns for the queue, so SDKs and the queue agree.
    assert worker["COPILOT_QUEUE_URI"] == f"{endpoint}/{ACCOUNT}/{QUEUE}"
    # No topic-specific queues in this manifest.
    assert worker["COPILOT_TOPIC_QUEUE_URIS"] is None


def test_the_queue_and_subscription_are_what_the_manifest_says(aws: dict[str, Any]) -> None:
    sqs, sns = aws["sqs"], aws["sns"]
    url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "1"  # subscribe.queue.timeout: 1s
    redrive = json.loads(attrs["RedrivePolicy"])  # subscribe.queue.dead_letter.tries: 2
    assert int(redrive["maxReceiveCount"]) == 2
    assert redrive["deadLetterTargetArn"] == f"arn:aws:sqs:{aws['region']}:{ACCOUNT}:{DLQ}"

    topic_arn = f"arn:aws:sns:{aws['region']}:{ACCOUNT}:{TOPIC}"
    subs = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subs] == [("sqs", attrs["QueueArn"])], subs
    sub = sns.get_subscription_attributes(SubscriptionArn=subs[0]["SubscriptionArn"])
    assert json.loads(sub["Attributes"]["FilterPolicy"]) == {"kind": ["order"]}
    # Copilot never sets raw delivery: messages arrive in the SNS envelope.
    assert sub["Attributes"].get("RawMessageDelivery", "false") == "false"


def test_an_order_is_published_received_and_processed(example_mesh: Mesh) -> None:
    order_id = new_id()
    published = post_order(example_mesh, {"id": order_id, "kind": "order", "item": "book"})
    assert published["kind"] == "order"
    assert published["topic_arn"].endswith(f":{ACCOUNT}:{TOPIC}")

    entry = wait_processed(example_mesh, order_id)
    # processor unwrapped the SNS envelope: the order as posted, its attribute, SNS's id.
    assert entry["order"] == {"id": order_id, "kind": "order", "item": "book"}
    assert entry["kind"] == "order"
    assert entry["message_id"] == published["message_id"]
    assert entry["receive_count"] == 1
    assert reported(example_mesh, "failed", order_id) == []
    # And processor's log says so.
    logged = [line.strip() for line in example_mesh.logs("processor", tail=2000)]
    assert any(line.startswith(f"processed {published['message_id']} ") for line in logged)


def test_spam_is_dropped_by_the_filter_policy(example_mesh: Mesh) -> None:
    spam_id, later_id = new_id(), new_id()
    post_order(example_mesh, {"id": spam_id, "kind": "spam"})
    post_order(example_mesh, {"id": later_id, "kind": "order"})
    # The order posted after the spam gets through ...
    wait_processed(example_mesh, later_id)
    # ... and the spam never does (SNS delivers before Publish returns; a few
    # seconds more for a queue that would be slower than that).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert reported(example_mesh, "processed", spam_id) == []
        assert reported(example_mesh, "failed", spam_id) == []
        time.sleep(0.5)
    # Mesh API: it is not waiting in the queue either.
    assert spam_id not in peeked_ids(example_mesh.queue("processor").peek(limit=100))


def test_mesh_publish_reaches_the_worker_through_the_filter(example_mesh: Mesh) -> None:
    """Mesh API: mesh.publish(service, topic, message, attributes)."""
    kept, dropped = new_id(), new_id()
    example_mesh.publish(
        "orders", "events", json.dumps({"id": dropped, "kind": "spam"}), attributes={"kind": "spam"}
    )
    example_mesh.publish(
        "orders", "events", json.dumps({"id": kept, "kind": "order"}), attributes={"kind": "order"}
    )
    entry = wait_processed(example_mesh, kept)
    assert entry["kind"] == "order"
    assert reported(example_mesh, "processed", dropped) == []


def test_a_poison_message_ends_in_the_dead_letter_queue(
    example_mesh: Mesh, aws: dict[str, Any]
) -> None:
    poison_id = new_id()
    post_order(example_mesh, {"id": poison_id, "kind": "order", "poison": True})

    # Received twice (dead_letter.tries: 2), 1 s apart (the visibility timeout), never deleted.
    def failed_twice() -> list[dict[str, Any]] | None:
        failed = reported(example_mesh, "failed", poison_id)
        return failed if len(failed) >= 2 else None

    failures = example_mesh.wait_until(
        failed_twice,
        timeout=DELIVERY_S,
        message="processor to fail the poison message twice",
    )
    assert failures is not None
    assert [f["receive_count"] for f in failures[:2]] == [1, 2], failures

    # The next receive after the 2nd moves it to the DLQ. Peek at it with boto3:
    # VisibilityTimeout 0 leaves it visible (the DLQ has no redrive of its own).
    sqs = aws["sqs"]
    dlq_url = sqs.get_queue_url(QueueName=DLQ)["QueueUrl"]

    def in_dlq() -> list[Any]:
        got = sqs.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=1
        ).get("Messages", [])
        messages = [sns_envelope_message(m["Body"]) for m in got]
        return [m for m in messages if isinstance(m, dict) and m.get("id") == poison_id]

    found = example_mesh.wait_until(in_dlq, timeout=DELIVERY_S, message="the poison in the DLQ")
    assert found == [{"id": poison_id, "kind": "order", "poison": True}]
    # Never processed, and no third attempt: it left the queue for good.
    time.sleep(2)
    assert reported(example_mesh, "processed", poison_id) == []
    assert len(reported(example_mesh, "failed", poison_id)) == 2

    # Mesh API: the same, through mesh.queue(...).
    dead = example_mesh.queue("processor", dead_letter=True)
    assert dead.url == f"{example_mesh.aws_endpoint}/{ACCOUNT}/{DLQ}"
    assert poison_id in peeked_ids(dead.peek(limit=100))
    counts = example_mesh.queue("processor").counts()
    assert counts.dead_lettered is not None and counts.dead_lettered >= 1, counts
