"""provision.apply and serve.py against the real emulator process, on loopback.

serve.py runs as the emulator container runs it (moto's server plus the
/_meshlocal/ views), only as a host process; boto3 talks to it over a socket.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlocal.pubsub import client, provision
from meshlocal.pubsub import serve as serve_module

REGION = "eu-west-3"
ARN = f"arn:aws:sns:{REGION}:123456789012:"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def endpoint() -> Iterator[str]:
    port = _free_port()
    assert serve_module.__file__ is not None
    proc = subprocess.Popen(
        [
            sys.executable,
            Path(serve_module.__file__).name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=Path(serve_module.__file__).parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/_meshlocal/ready", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "serve.py did not answer"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def plan(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "region": REGION,
        "topics": [
            {"physical": "a-t-api-events", "attributes": {}},
            {"physical": "a-t-api-audit.fifo", "attributes": {"FifoTopic": "true"}},
        ],
        "queues": [
            {"name": "a-t-w-DeadLetterQueue", "attributes": {"MessageRetentionPeriod": "1209600"}},
            {
                "name": "a-t-w-EventsQueue",
                "attributes": {"VisibilityTimeout": "1"},
                "dead_letter": "a-t-w-DeadLetterQueue",
                "max_receive_count": 2,
            },
        ],
        "subscriptions": [
            {
                "topic_arn": ARN + "a-t-api-events",
                "queue": "a-t-w-EventsQueue",
                "filter_policy": json.dumps({"kind": ["order"]}, separators=(",", ":")),
            }
        ],
    }
    doc.update(changes)
    return doc


def attributes(url: str, queue: str) -> dict[str, str]:
    _, sqs = provision.clients(url, REGION)
    q = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    found: dict[str, str] = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["All"])[
        "Attributes"
    ]
    return found


def test_apply_creates_then_keeps_then_updates(endpoint: str) -> None:
    none: list[str] = []
    assert provision.apply(plan(), endpoint) == {
        "created": 5,
        "updated": 0,
        "deleted": 0,
        "notes": none,
    }
    assert provision.apply(plan(), endpoint) == {
        "created": 0,
        "updated": 0,
        "deleted": 0,
        "notes": none,
    }
    got = attributes(endpoint, "a-t-w-EventsQueue")
    assert got["VisibilityTimeout"] == "1"
    assert json.loads(got["RedrivePolicy"])["maxReceiveCount"] == 2
    # A setting removed from the manifest goes back to SQS's default, the redrive goes.
    changed = plan()
    changed["queues"][1] = {"name": "a-t-w-EventsQueue", "attributes": {}}
    done = provision.apply(changed, endpoint)
    assert done["updated"] == 1
    assert done["notes"] == ["queue a-t-w-EventsQueue: RedrivePolicy=(none), VisibilityTimeout=30"]
    got = attributes(endpoint, "a-t-w-EventsQueue")
    assert got["VisibilityTimeout"] == "30" and not got.get("RedrivePolicy")


def test_a_filter_policy_change_and_removal_reach_delivery(endpoint: str) -> None:
    provision.apply(plan(), endpoint)
    topic = ARN + "a-t-api-events"
    client.publish(endpoint, REGION, topic, "spam", {"kind": "spam"})
    assert _visible(endpoint, "a-t-w-EventsQueue") == 0  # filtered out
    provision.apply(
        plan(subscriptions=[{**plan()["subscriptions"][0], "filter_policy": None}]), endpoint
    )
    client.publish(endpoint, REGION, topic, "spam", {"kind": "spam"})
    assert _visible(endpoint, "a-t-w-EventsQueue") == 1


def _visible(url: str, queue: str) -> int:
    return int(client.raw_stats(url)["queues"][queue]["visible"])


def test_prune_deletes_what_the_plan_no_longer_has_and_subset_keeps_it(endpoint: str) -> None:
    provision.apply(plan(), endpoint)
    smaller = plan(topics=[], subscriptions=[], queues=[plan()["queues"][0]])
    # `up SERVICE...`: nothing deleted.
    assert provision.apply(smaller, endpoint, prune=False)["deleted"] == 0
    assert set(client.raw_stats(endpoint)["queues"]) == {
        "a-t-w-DeadLetterQueue",
        "a-t-w-EventsQueue",
    }
    client.publish(endpoint, REGION, ARN + "a-t-api-events", "left", {"kind": "order"})
    done = provision.apply(smaller, endpoint)
    assert done["deleted"] == 3  # a queue and two topics
    assert "queue a-t-w-EventsQueue deleted with 1 message(s)" in done["notes"]
    stats = client.raw_stats(endpoint)
    assert set(stats["queues"]) == {"a-t-w-DeadLetterQueue"} and stats["topics"] == {}


def test_merge_keeps_the_other_services_resources() -> None:
    old = plan()
    new = plan(
        topics=[{"physical": "a-t-web-clicks", "attributes": {}}],
        queues=[{"name": "a-t-w-EventsQueue", "attributes": {"DelaySeconds": "5"}}],
        subscriptions=[],
    )
    merged = provision.merge(old, new)
    assert [t["physical"] for t in merged["topics"]] == [
        "a-t-api-events",
        "a-t-api-audit.fifo",
        "a-t-web-clicks",
    ]
    # The new plan's version of a queue wins; dead-letter queues still come first.
    assert [q["name"] for q in merged["queues"]] == ["a-t-w-DeadLetterQueue", "a-t-w-EventsQueue"]
    assert merged["queues"][1]["attributes"] == {"DelaySeconds": "5"}
    assert merged["subscriptions"] == old["subscriptions"]


def test_dead_letter_path_peek_and_published_counts(endpoint: str) -> None:
    provision.apply(plan(), endpoint)
    client.publish(endpoint, REGION, ARN + "a-t-api-events", "poison", {"kind": "order"})
    _, sqs = provision.clients(endpoint, REGION)
    url = sqs.get_queue_url(QueueName="a-t-w-EventsQueue")["QueueUrl"]
    # peek receives nothing: the receive count stays 0.
    peeked = client.peek(endpoint, "a-t-w-EventsQueue")
    assert [json.loads(m["body"])["Message"] for m in peeked] == ["poison"]
    assert peeked[0]["receive_count"] == 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _visible(endpoint, "a-t-w-DeadLetterQueue") == 0:
        sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
    assert _visible(endpoint, "a-t-w-DeadLetterQueue") == 1
    assert client.raw_stats(endpoint)["topics"][ARN + "a-t-api-events"]["published"] == 1


def test_fifo_publish_needs_no_group_from_the_caller(endpoint: str) -> None:
    provision.apply(plan(), endpoint)
    assert client.publish(endpoint, REGION, ARN + "a-t-api-audit.fifo", "x")
    assert client.raw_stats(endpoint)["topics"][ARN + "a-t-api-audit.fifo"]["published"] == 1


def test_unknown_queue_and_unreachable_emulator_are_clear_errors(endpoint: str) -> None:
    with pytest.raises(client.PubSubError, match="answered 404"):
        client.peek(endpoint, "nope")
    with pytest.raises(client.PubSubError, match="does not answer"):
        client.raw_stats(f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(client.PubSubError, match="publishing to"):
        client.publish(endpoint, REGION, ARN + "missing", "x")
