"""`publish` and `subscribe` read as Copilot decodes, validates and converts them.

Sources: internal/pkg/manifest/worker_svc.go, workload.go, validate.go;
internal/pkg/deploy/cloudformation/stack/transformers.go; SQS's limits.
"""

from __future__ import annotations

import textwrap

import pytest

from meshlocal.errors import DecodeError
from meshlocal.manifest import check, load_environment
from meshlocal.manifest.model import FifoQueueConfig, QueueSettings, Subscription

from .conftest import MakeWorkspace

IMAGE = "image:\n  location: busybox:latest\n"
API = "type: Backend Service\n" + IMAGE + "publish:\n  topics:\n    - name: events\n"
# `events` and `events.fifo`, whichever queue a case subscribes with
API_BOTH = API + "    - name: events\n      fifo: true\n"


def _worker(body: str) -> str:
    return "type: Worker Service\n" + IMAGE + textwrap.dedent(body)


def _errors(make_ws: MakeWorkspace, worker: str, api: str = API_BOTH) -> list[tuple[int, int, str]]:
    root = make_ws({"worker": worker, "api": api})
    report = check(root, "test", {})
    assert all(e.hint for e in report.errors)
    out = []
    for e in report.errors:
        assert e.location is not None and e.location.path.parent.name == "worker"
        assert e.location.line is not None and e.location.column is not None
        out.append((e.location.line, e.location.column, e.message))
    return out


CASES = [
    (  # validatePubSubName
        """\
        publish:
          topics:
            - name: orders.fifo
        """,
        [(6, 13, 'publish.topics[0].name: "name" can only contain letters, numbers, '
                 "underscores, and hyphens")],
    ),
    (
        """\
        publish:
          topics:
            - fifo: true
        """,
        [(6, 7, 'publish.topics[0]: "name" must be specified')],
    ),
    (  # FIFOTopicAdvanceConfigOrBool.UnmarshalYAML
        """\
        publish:
          topics:
            - name: t
              fifo: {}
        """,
        [(7, 13, 'publish.topics[0].fifo: unable to unmarshal "fifo" field into boolean or '
                 "compose-style map")],
    ),
    (  # TopicSubscription.validate
        """\
        subscribe:
          topics:
            - name: events
        """,
        [(6, 7, 'subscribe.topics[0]: "service" must be specified')],
    ),
    (
        """\
        subscribe:
          topics:
            - name: events
              service: Api
        """,
        [(7, 16, "subscribe.topics[0].service: service name must start with a letter, contain "
                 "only lower-case letters, numbers, and hyphens, and have no consecutive or "
                 "trailing hyphen")],
    ),
    (
        """\
        subscribe:
          topics:
            - name: events
              service: a--b
        """,
        [(7, 16, "subscribe.topics[0].service: service name must start with a letter, contain "
                 "only lower-case letters, numbers, and hyphens, and have no consecutive or "
                 "trailing hyphen")],
    ),
    (
        """\
        subscribe:
          topics:
            - name: my events
              service: api
        """,
        [(6, 13, 'subscribe.topics[0].name: "name" can only contain letters, numbers, '
                 "underscores, and hyphens")],
    ),
    (  # FIFOAdvanceConfig.validateHighThroughputFIFO
        """\
        subscribe:
          topics:
            - name: events
              service: api
          queue:
            fifo:
              high_throughput: true
              throughput_limit: perQueue
        """,
        [(11, 25, 'subscribe.queue.fifo: must specify one, not both, of "high_throughput" and '
                  '"throughput_limit"')],
    ),
    (
        """\
        subscribe:
          topics:
            - name: events
              service: api
          queue:
            fifo:
              high_throughput: false
              deduplication_scope: queue
        """,
        [(11, 28, 'subscribe.queue.fifo: must specify one, not both, of "high_throughput" and '
                  '"deduplication_scope"')],
    ),
    (  # validateDeduplicationScope, validateFIFOThroughputLimit
        """\
        subscribe:
          topics:
            - name: events
              service: api
              queue:
                fifo:
                  deduplication_scope: group
                  throughput_limit: perTopic
        """,
        [
            (10, 32, "subscribe.topics[0].queue.fifo.deduplication_scope: deduplication scope "
                     "value must be one of messageGroup or queue"),
            (11, 29, "subscribe.topics[0].queue.fifo.throughput_limit: fifo throughput limit "
                     "value must be one of perMessageGroupId or perQueue"),
        ],
    ),
    (
        """\
        subscribe:
          topics:
            - name: events
              service: api
          queue:
            fifo:
              deduplication_scope: queue
              throughput_limit: perMessageGroupId
        """,
        [(11, 25, 'subscribe.queue.fifo: "throughput_limit" must be set to "perQueue" when '
                  '"deduplication_scope" is set to "queue"')],
    ),
    (  # SQSQueueOrBool.UnmarshalYAML
        """\
        subscribe:
          topics:
            - name: events
              service: api
              queue: sometimes
        """,
        [(8, 14, 'subscribe.topics[0].queue: cannot unmarshal "queue" field into bool or map')],
    ),
    (
        """\
        subscribe:
          topics:
            - name: events
              service: api
              queue:
                dead_letter: {}
        """,
        [(9, 9, 'subscribe.topics[0].queue: cannot unmarshal "queue" field into bool or map')],
    ),
    (  # time.ParseDuration knows no days
        """\
        subscribe:
          topics:
            - name: events
              service: api
          queue:
            retention: 4d
        """,
        [(9, 16, "subscribe.queue.retention: expected a duration such as \"10s\" or \"1m30s\", "
                 "got '4d'")],
    ),
    (  # SQS's limits, in whole seconds (convertTime)
        """\
        subscribe:
          topics:
            - name: events
              service: api
          queue:
            retention: 59s
            delay: 15m1s
            timeout: 12h0m1s
            dead_letter:
              tries: 1001
        """,
        [
            (9, 16, "subscribe.queue.retention: 59 seconds is outside what SQS accepts for "
                    "MessageRetentionPeriod (60 to 1209600 seconds)"),
            (10, 12, "subscribe.queue.delay: 901 seconds is outside what SQS accepts for "
                     "DelaySeconds (0 to 900 seconds)"),
            (11, 14, "subscribe.queue.timeout: 43201 seconds is outside what SQS accepts for "
                     "VisibilityTimeout (0 to 43200 seconds)"),
            (13, 14, "subscribe.queue.dead_letter.tries: 1001 is outside what SQS accepts for "
                     "maxReceiveCount (1 to 1000)"),
        ],
    ),
    (
        """\
        subscribe:
          topics:
            - name: events
              service: api
              queue:
                retention: 336h1s
                dead_letter:
                  tries: 0
        """,
        [
            (9, 20, "subscribe.topics[0].queue.retention: 1209601 seconds is outside what SQS "
                    "accepts for MessageRetentionPeriod (60 to 1209600 seconds)"),
            (11, 18, "subscribe.topics[0].queue.dead_letter.tries: 0 is outside what SQS "
                     "accepts for maxReceiveCount (1 to 1000)"),
        ],
    ),
    (  # a *uint16
        """\
        subscribe:
          topics:
            - name: events
              service: api
          queue:
            dead_letter:
              tries: 70000
        """,
        [(10, 14, "subscribe.queue.dead_letter.tries: 70000 is out of range, must be between 0 "
                  "and 65535")],
    ),
    (  # json.Marshal refuses infinities (convertFilterPolicy)
        """\
        subscribe:
          topics:
            - name: events
              service: api
              filter_policy:
                price: [.inf]
        """,
        [(9, 9, 'subscribe.topics[0].filter_policy: convert "filter_policy" to a JSON string: '
                "json: unsupported value: +Inf")],
    ),
    (  # validateTopicsExist
        """\
        subscribe:
          topics:
            - name: orders
              service: api
        """,
        [(6, 7, "SNS topic demo-test-api-orders does not exist in environment test")],
    ),
    (  # a FIFO default queue subscribes to the `.fifo` topic (Subscriptions())
        """\
        subscribe:
          topics:
            - name: orders
              service: api
          queue:
            fifo: true
        """,
        [(6, 7, "SNS topic demo-test-api-orders.fifo does not exist in environment test")],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("body", "want"), CASES)
def test_copilot_messages_at_the_node(
    make_ws: MakeWorkspace, body: str, want: list[tuple[int, int, str]]
) -> None:
    assert sorted(_errors(make_ws, _worker(body))) == sorted(want)


def test_subscription_to_missing_topic_names_the_existing_ones(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "worker": _worker("subscribe:\n  topics:\n    - name: orders\n      service: api\n"),
            "api": API,
        },
        app="kudos",
    )
    [error] = check(root, "test", {}).errors
    assert error.message == "SNS topic kudos-test-api-orders does not exist in environment test"
    assert error.hint == "topics in environment test: api/events (kudos-test-api-events)"


def test_bounds_are_inclusive(make_ws: MakeWorkspace) -> None:
    body = """\
        subscribe:
          topics:
            - name: events
              service: api
          queue:
            retention: 336h
            delay: 15m
            timeout: 12h
            dead_letter:
              tries: 1000
        """
    assert _errors(make_ws, _worker(body)) == []
    low = body.replace("336h", "1m").replace("15m", "0s").replace("12h", "0s")
    low = low.replace("1000", "1")
    assert _errors(make_ws, _worker(low)) == []


def test_settings_only_apply_with_topics(make_ws: MakeWorkspace) -> None:
    # convertSubscribe returns nil without topics: no CloudFormation, no SQS limit
    body = "subscribe:\n  queue:\n    retention: 1s\n"
    assert _errors(make_ws, _worker(body)) == []
    root = make_ws({"worker": _worker(body)})
    assert load_environment(root, "test", {}).service("worker").events_queue is None


def test_typed_model(make_ws: MakeWorkspace) -> None:
    body = """\
        publish:
          topics:
            - name: plain
            - name: ordered
              fifo:
                content_based_deduplication: false
        subscribe:
          topics:
            - name: events
              service: api
              filter_policy:
                a: "<b & c>"
                "z": [1.0, 2.5, 1.0e21, 0.0000001, -0.0, true, null, "\\u2028é"]
                m: {y: 1, x: 2}
            - name: events
              service: api
              queue: true
            - name: events
              service: api
              queue: false
            - name: events
              service: api
              queue:
                fifo:
                  high_throughput: true
          queue:
            retention: 96h
            delay: 1.5s
            timeout: 1h30m
            fifo: true
        """
    api = API + "    - name: events\n      fifo: true\n"
    root = make_ws({"worker": _worker(body), "api": api})
    svc = load_environment(root, "test", {}).service("worker")
    assert [(t.name, t.fifo, t.content_based_deduplication) for t in svc.topics] == [
        ("plain", False, None),
        ("ordered.fifo", True, False),
    ]
    assert svc.publish_topics == ("plain", "ordered.fifo")
    assert svc.events_queue == QueueSettings(
        retention_s=345600, delay_s=1, timeout_s=5400, fifo=FifoQueueConfig()
    )
    assert svc.queue_fifo
    first, own, off, fifo_own = svc.subscriptions
    assert first == Subscription(
        "api",
        "events.fifo",  # delivers to the FIFO default queue
        '{"a":"\\u003cb \\u0026 c\\u003e","m":{"x":2,"y":1},'
        '"z":[1,2.5,1e+21,1e-7,-0,true,null,"\\u2028é"]}',
        None,
        "subscribe.topics[0]",
    )
    assert (own.name, own.queue) == ("events", QueueSettings())  # `queue: true`: no .fifo
    assert (off.name, off.queue) == ("events", None)  # `queue: false`: not empty, no .fifo
    assert fifo_own.name == "events.fifo"
    assert fifo_own.queue == QueueSettings(
        fifo=FifoQueueConfig(
            deduplication_scope="messageGroup",
            throughput_limit="perMessageGroupId",
            high_throughput=True,
        )
    )
    assert [(q.service, q.topic, q.fifo) for q in svc.topic_queues] == [
        ("api", "events", False),
        ("api", "events.fifo", True),
    ]


def test_swallowed_type_error_is_a_warning(make_ws: MakeWorkspace) -> None:
    # go-yaml's type error inside the map form of an OrBool is dropped by Copilot
    body = """\
        subscribe:
          topics:
            - name: events
              service: api
              queue:
                timeout: 30s
                retention: lots
        """
    root = make_ws({"worker": _worker(body), "api": API})
    report = check(root, "test", {})
    assert report.ok
    [note] = [n for n in report.notes if "retention" in n.message]
    assert note.kind == "warning" and "Copilot ignores the value" in note.message
    sub = report.spec.service("worker").subscriptions[0]
    assert sub.queue == QueueSettings(timeout_s=30)


def test_subscribe_outside_a_worker_is_ignored_with_a_warning(make_ws: MakeWorkspace) -> None:
    root = make_ws({"api": API + "subscribe:\n  topics:\n    - name: x\n      service: y\n"})
    report = check(root, "test", {})
    assert report.ok
    assert any("only a Worker Service subscribes" in n.message for n in report.notes)
    assert report.spec.service("api").subscriptions == ()


def test_publisher_left_out_is_a_warning(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "worker": _worker("subscribe:\n  topics:\n    - name: events\n      service: api\n"),
            "api": API,
        }
    )
    report = check(root, "test", {}, services=["worker"])
    assert report.ok
    assert any("not among the services run" in n.message for n in report.notes)


def test_another_environments_wrong_shape_is_a_decode_error(make_ws: MakeWorkspace) -> None:
    body = """\
        subscribe:
          topics:
            - name: events
              service: api
        environments:
          prod:
            subscribe:
              queue:
                fifo: [1]
        """
    root = make_ws({"worker": _worker(body), "api": API}, envs=("test", "prod"))
    [error] = check(root, "test", {}).errors
    assert isinstance(error, DecodeError)
    assert error.message == (
        'environments.prod.subscribe.queue.fifo: unable to unmarshal "fifo" field into '
        "boolean or compose-style map"
    )


def test_a_fifo_queue_on_a_standard_topic_says_why(make_ws: MakeWorkspace) -> None:
    body = """\
        subscribe:
          topics:
            - name: events
              service: api
              queue:
                fifo: true
        """
    root = make_ws({"worker": _worker(body), "api": API}, app="kudos")
    [error] = check(root, "test", {}).errors
    assert (
        error.message == "SNS topic kudos-test-api-events.fifo does not exist in environment test"
    )
    assert error.hint is not None
    assert error.hint.startswith("api publishes events as a standard topic; a FIFO queue")
