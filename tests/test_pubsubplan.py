"""The SNS/SQS plan: what Copilot's templates would create, named as CloudFormation would.

Sources: internal/pkg/template/templates/workloads/partials/cf/subscribe.yml
and publish.yml, internal/pkg/deploy/cloudformation/stack/transformers.go,
and the golden stack testdata/workloads/worker-test.stack.yml (its manifest
is the `dogworker` below).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlocal.manifest import load_environment
from meshlocal.manifest.model import Subscription
from meshlocal.pubsubplan import (
    LOCAL_ACCOUNT_ID,
    MAX_QUEUE_NAME,
    PubSubPlan,
    plan,
    queue_logical_id,
    queue_name,
    queue_url,
)

IMAGE = "image:\n  location: busybox:latest\n"

# testdata/workloads/worker-manifest.yml's publish/subscribe sections.
DOGWORKER = (
    "type: Worker Service\n"
    + IMAGE
    + textwrap.dedent(
        """\
        publish:
          topics:
            - name: givesOtherdogs
            - name: mytopic
              fifo: true
            - name: mytopic
            - name: yourtopic
              fifo:
                content_based_deduplication: true
            - name: nonfifotopic
              fifo: false
        subscribe:
          queue:
            delay: 1s
            dead_letter:
              tries: 5
          topics:
            - name: givesdogs
              service: dogsvc
              filter_policy:
                store:
                  - example_corp
                event:
                  - anything-but: order_cancelled
                cutomer_interests:
                  - rugby
                  - football
                  - baseball
                price_usd:
                  - numeric:
                      - ">="
                      - 100
            - name: giveshuskies
              service: dogsvc
              queue:
                timeout: 1s
            - name: mytopic
              service: mytopic
              queue:
                fifo: true
            - name: yourtopic
              service: yourtopic
              queue:
                fifo:
                  content_based_deduplication: true
                  high_throughput: true
            - name: nonfifotopic
              service: nonfifotopic
              queue:
                fifo: false
        """
    )
)
PUBLISHERS = {
    "dogsvc": "type: Backend Service\n" + IMAGE + "publish:\n  topics:\n"
    "    - name: givesdogs\n    - name: giveshuskies\n",
    "mytopic": "type: Backend Service\n" + IMAGE + "publish:\n  topics:\n"
    "    - name: mytopic\n      fifo: true\n",
    "yourtopic": "type: Backend Service\n" + IMAGE + "publish:\n  topics:\n"
    "    - name: yourtopic\n      fifo: true\n",
    "nonfifotopic": "type: Backend Service\n" + IMAGE + "publish:\n  topics:\n"
    "    - name: nonfifotopic\n",
}


def _plan(tmp_path: Path, services: dict[str, str], app: str = "my-app") -> PubSubPlan:
    copilot = tmp_path / "ws" / "copilot"
    (copilot / "environments" / "test").mkdir(parents=True)
    (copilot / ".workspace").write_text(f"application: {app}\n")
    (copilot / "environments" / "test" / "manifest.yml").write_text(
        "name: test\ntype: Environment\n"
    )
    for name, text in services.items():
        (copilot / name).mkdir()
        (copilot / name / "manifest.yml").write_text(text)
    return plan(load_environment(tmp_path / "ws", "test", {}))


def test_golden_worker_queues(tmp_path: Path) -> None:
    p = _plan(tmp_path, {"dogworker": DOGWORKER, **PUBLISHERS})
    queues = {q.logical: q for q in p.queues_of("dogworker")}
    stack = "my-app-test-dogworker"
    assert [q.logical for q in p.queues_of("dogworker")] == [
        "DeadLetterQueue",  # before the queue that redrives to it
        "EventsQueue",
        "dogsvcgiveshuskiesEventsQueue",
        "mytopicmytopicfifoEventsQueue",
        "yourtopicyourtopicfifoEventsQueue",
        "nonfifotopicnonfifotopicEventsQueue",
    ]
    dlq, events = queues["DeadLetterQueue"], queues["EventsQueue"]
    assert dlq.name == f"{stack}-DeadLetterQueue"
    assert dlq.attributes == {"MessageRetentionPeriod": "1209600"}
    assert (dlq.dead_letter, dlq.max_receive_count, dlq.fifo) == (None, None, False)
    assert events.name == f"{stack}-EventsQueue"
    assert events.attributes == {"DelaySeconds": "1"}
    assert (events.dead_letter, events.max_receive_count) == (dlq.name, 5)
    assert queues["dogsvcgiveshuskiesEventsQueue"].attributes == {"VisibilityTimeout": "1"}
    mine = queues["mytopicmytopicfifoEventsQueue"]
    assert (mine.name, mine.fifo, mine.attributes) == (
        f"{stack}-mytopicmytopicfifoEventsQueue.fifo",
        True,
        {"FifoQueue": "true"},
    )
    # high_throughput forces the limit and scope (convertQueue)
    assert queues["yourtopicyourtopicfifoEventsQueue"].attributes == {
        "FifoQueue": "true",
        "FifoThroughputLimit": "perMessageGroupId",
        "DeduplicationScope": "messageGroup",
        "ContentBasedDeduplication": "true",
    }
    nonfifo = queues["nonfifotopicnonfifotopicEventsQueue"]
    assert (nonfifo.fifo, nonfifo.attributes) == (False, {})


def test_golden_worker_topics_and_subscriptions(tmp_path: Path) -> None:
    p = _plan(tmp_path, {"dogworker": DOGWORKER, **PUBLISHERS})
    mine = [t for t in p.topics if t.service == "dogworker"]
    assert [t.name for t in mine] == [
        "givesOtherdogs",
        "mytopic.fifo",
        "mytopic",
        "yourtopic.fifo",
        "nonfifotopic",
    ]
    by_name = {t.name: t for t in mine}
    assert by_name["mytopic.fifo"].physical == "my-app-test-dogworker-mytopic.fifo"
    assert by_name["mytopic.fifo"].arn == (
        f"arn:aws:sns:us-east-1:{LOCAL_ACCOUNT_ID}:my-app-test-dogworker-mytopic.fifo"
    )
    assert by_name["mytopic.fifo"].attributes == {"FifoTopic": "true"}
    assert by_name["yourtopic.fifo"].attributes == {
        "FifoTopic": "true",
        "ContentBasedDeduplication": "true",
    }
    assert by_name["nonfifotopic"].attributes == {}
    subs = {s.topic_arn.rsplit(":", 1)[1]: s for s in p.subscriptions}
    stack = "my-app-test-dogworker"
    assert subs["my-app-test-dogsvc-givesdogs"].queue == f"{stack}-EventsQueue"
    # json.Marshal: keys sorted, no spaces, ">" escaped as \u003e
    assert subs["my-app-test-dogsvc-givesdogs"].filter_policy == (
        '{"cutomer_interests":["rugby","football","baseball"],'
        '"event":[{"anything-but":"order_cancelled"}],'
        '"price_usd":[{"numeric":["\\u003e=",100]}],"store":["example_corp"]}'
    )
    assert subs["my-app-test-dogsvc-giveshuskies"].queue == (
        f"{stack}-dogsvcgiveshuskiesEventsQueue"
    )
    assert subs["my-app-test-dogsvc-giveshuskies"].filter_policy is None
    assert subs["my-app-test-mytopic-mytopic.fifo"].queue.endswith("EventsQueue.fifo")
    assert subs["my-app-test-yourtopic-yourtopic.fifo"].service == "dogworker"


def test_every_worker_has_its_events_queue(tmp_path: Path) -> None:
    p = _plan(
        tmp_path,
        {
            "bare": "type: Worker Service\n" + IMAGE,
            # settings without topics: convertSubscribe returns nil, nothing applies
            "queueonly": "type: Worker Service\n" + IMAGE + "subscribe:\n  queue:\n"
            "    fifo: true\n    timeout: 10s\n    dead_letter:\n      tries: 3\n",
            "api": "type: Backend Service\n" + IMAGE,
        },
        app="demo",
    )
    assert [(q.service, q.name, q.attributes) for q in p.queues] == [
        ("bare", "demo-test-bare-EventsQueue", {}),
        ("queueonly", "demo-test-queueonly-EventsQueue", {}),
    ]
    assert p and not p.topics and not p.subscriptions
    assert p.queues_of("api") == ()


def test_fifo_default_queue_with_dead_letter(tmp_path: Path) -> None:
    p = _plan(
        tmp_path,
        {
            "api": "type: Backend Service\n" + IMAGE + "publish:\n  topics:\n"
            "    - name: orders\n      fifo: true\n",
            "worker": "type: Worker Service\n" + IMAGE + "subscribe:\n"
            "  topics:\n    - name: orders\n      service: api\n"
            "  queue:\n    retention: 96h\n    timeout: 1h30m\n    dead_letter:\n      tries: 10\n"
            "    fifo:\n      content_based_deduplication: false\n"
            "      deduplication_scope: queue\n      throughput_limit: perQueue\n",
        },
        app="demo",
    )
    dlq, events = p.queues
    assert (dlq.name, dlq.attributes) == (
        "demo-test-worker-DeadLetterQueue.fifo",
        {"MessageRetentionPeriod": "1209600", "FifoQueue": "true"},
    )
    assert events.name == "demo-test-worker-EventsQueue.fifo"
    assert events.attributes == {
        "MessageRetentionPeriod": "345600",
        "VisibilityTimeout": "5400",
        "FifoQueue": "true",
        "FifoThroughputLimit": "perQueue",
        "DeduplicationScope": "queue",
        "ContentBasedDeduplication": "false",  # a set *bool is written even when false
    }
    assert (events.dead_letter, events.max_receive_count) == (dlq.name, 10)
    # Subscriptions() appends .fifo: the subscription reaches the FIFO topic
    [sub] = p.subscriptions
    assert sub.topic_arn.endswith(":demo-test-api-orders.fifo")
    assert sub.queue == events.name


def test_long_names_are_cut_to_80_characters_keeping_fifo() -> None:
    long_svc = "a" + "b" * 60
    name = queue_name("myapp", "test", long_svc, "EventsQueue", True)
    assert len(name) == MAX_QUEUE_NAME and name.endswith("-EventsQueue-" + name[-17:-5] + ".fifo")
    assert name.startswith("myapp-test-abbb")
    short = queue_name("myapp", "test", "worker", "EventsQueue", False)
    assert short == "myapp-test-worker-EventsQueue"
    # two services alike but for their tail keep distinct names
    assert queue_name("a", "b", long_svc + "x", "EventsQueue", False) != queue_name(
        "a", "b", long_svc + "y", "EventsQueue", False
    )
    logical = queue_logical_id(Subscription("svc", "t" * 120 + ".fifo"))
    cut = queue_name("myapp", "test", "worker", logical, True)
    assert len(cut) == MAX_QUEUE_NAME and cut.endswith(".fifo")


def test_queue_url() -> None:
    assert queue_url("http://172.18.128.1:4566/", "123456789012", "q") == (
        "http://172.18.128.1:4566/123456789012/q"
    )


_BASIC = st.from_regex(r"[a-z][a-z0-9]{0,20}(-[a-z0-9]{1,20}){0,6}", fullmatch=True)
_TOPIC = st.from_regex(r"[a-zA-Z0-9_-]{1,300}", fullmatch=True)
_SQS_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}|[A-Za-z0-9_-]{1,75}\.fifo")


@settings(max_examples=300, deadline=None)
@given(
    app=_BASIC,
    env=_BASIC,
    svc=_BASIC,
    publisher=_BASIC,
    topic=_TOPIC,
    fifo=st.booleans(),
    dead_letter=st.booleans(),
)
def test_queue_names_are_always_valid_sqs_names(
    app: str, env: str, svc: str, publisher: str, topic: str, fifo: bool, dead_letter: bool
) -> None:
    sub = Subscription(publisher, topic + ".fifo" if fifo else topic)
    for logical in (queue_logical_id(None, dead_letter), queue_logical_id(sub, dead_letter)):
        name = queue_name(app, env, svc, logical, fifo)
        assert len(name) <= MAX_QUEUE_NAME
        assert _SQS_NAME.fullmatch(name), name
        assert name.endswith(".fifo") == fifo


def test_the_plan_document_round_trips_through_json(tmp_path: Path) -> None:
    """What `up` leaves in the emulator reads back as the same plan (stats, publish, peek)."""
    import json

    from meshlocal.runtime.pubsub import plan_document, plan_from_document

    planned = _plan(tmp_path, {"dogworker": DOGWORKER, **PUBLISHERS})
    assert planned.topics and planned.queues and planned.subscriptions
    doc = json.loads(json.dumps(plan_document(planned, "us-west-2")))
    assert doc["region"] == "us-west-2"
    assert plan_from_document(doc) == planned
