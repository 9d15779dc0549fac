"""The manifest's `publish` and `subscribe` sections, and `storage.volumes`.

`publish.topics` and `subscribe` (Worker Services) are read into the typed
model with Copilot's decoding and validation rules
(internal/pkg/manifest/worker_svc.go, workload.go, validate.go) and the
conversions of internal/pkg/deploy/cloudformation/stack/transformers.go
(convertPublish, convertSubscribe, convertQueue, convertFilterPolicy,
convertTime). SQS's own limits, which make `copilot deploy` fail at
CloudFormation, are checked too. `storage.volumes` becomes
COPILOT_MOUNT_POINTS (envvars-container.yml).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from meshlocal.errors import DecodeError
from meshlocal.manifest.diagnostics import Diagnostics
from meshlocal.manifest.fields import Fields
from meshlocal.manifest.merge import is_null
from meshlocal.manifest.model import (
    DEDUP_SCOPE_MESSAGE_GROUP,
    DEDUP_SCOPE_QUEUE,
    THROUGHPUT_PER_MESSAGE_GROUP,
    THROUGHPUT_PER_QUEUE,
    FifoQueueConfig,
    PublishedTopic,
    QueueSettings,
    Subscription,
)
from meshlocal.manifest.yaml12 import Map, Node, Scalar, Seq

# validate.go: awsSNSTopicRegexp, awsNameRegexp, punctuationRegExp, trailingPunctRegExp.
_PUBSUB_NAME = re.compile(r"[a-zA-Z0-9_-]*")
_SUB_SVC_NAME = re.compile(r"[a-z][a-z0-9\-]+")
_SUB_SVC_RULE = (
    "service name must start with a letter, contain only lower-case letters, numbers, "
    "and hyphens, and have no consecutive or trailing hyphen"
)
# worker_svc.go: errUnmarshalQueueOpts, errUnmarshalFifoConfig.
_QUEUE_OR_BOOL = 'cannot unmarshal "queue" field into bool or map'
_FIFO_OR_BOOL = 'unable to unmarshal "fifo" field into boolean or compose-style map'
_DEDUP_SCOPES = (DEDUP_SCOPE_MESSAGE_GROUP, DEDUP_SCOPE_QUEUE)
_THROUGHPUT_LIMITS = (THROUGHPUT_PER_MESSAGE_GROUP, THROUGHPUT_PER_QUEUE)
# What SQS accepts (CreateQueue API reference); Copilot checks none of it, so a
# value outside fails `copilot deploy` at CloudFormation. Bounds are inclusive.
SQS_LIMITS: dict[str, tuple[str, int, int, str]] = {
    "retention": ("MessageRetentionPeriod", 60, 1209600, " seconds"),
    "delay": ("DelaySeconds", 0, 900, " seconds"),
    "timeout": ("VisibilityTimeout", 0, 43200, " seconds"),
    "tries": ("maxReceiveCount", 1, 1000, ""),
}
_QUEUE_FIELDS = frozenset({"retention", "delay", "timeout", "dead_letter", "fifo"})
_FIFO_FIELDS = frozenset(
    {"content_based_deduplication", "deduplication_scope", "throughput_limit", "high_throughput"}
)


class UnmarshalError(DecodeError):
    """A custom UnmarshalYAML's own error: unlike go-yaml's type errors, never swallowed."""


# -- decoding -------------------------------------------------------------


@dataclass
class _Fifo:
    """FIFOAdvanceConfigOrBool / FIFOTopicAdvanceConfigOrBool, with the nodes read."""

    enable: bool | None = None
    content_based_deduplication: bool | None = None
    deduplication_scope: str | None = None
    throughput_limit: str | None = None
    high_throughput: bool | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    node: Node | None = None

    def advanced_empty(self) -> bool:
        return (
            self.content_based_deduplication is None
            and self.deduplication_scope is None
            and self.throughput_limit is None
            and self.high_throughput is None
        )

    def is_empty(self) -> bool:
        return self.enable is None and self.advanced_empty()

    def enabled(self) -> bool:  # IsEnabled
        return bool(self.enable) or not self.advanced_empty()


@dataclass
class _Queue:
    """SQSQueue, with the nodes read."""

    retention: float | None = None
    delay: float | None = None
    timeout: float | None = None
    tries: int | None = None
    fifo: _Fifo = field(default_factory=_Fifo)
    nodes: dict[str, Node] = field(default_factory=dict)
    node: Node | None = None

    def is_empty(self) -> bool:
        return (
            self.retention is None
            and self.delay is None
            and self.timeout is None
            and self.tries is None
            and self.fifo.is_empty()
        )


def _or_bool(
    f: Fields,
    node: Node,
    field: str,
    read: Callable[[Fields], bool],
    message: str,
) -> bool | None:
    """Copilot's `XOrBool.UnmarshalYAML`: decode the map form first, then a bool.

    go-yaml's type errors inside the map are swallowed (the field stays unset,
    so Copilot ignores it: a warning here); when nothing of the map form was
    set, the node must be a bool, else `message`. Returns the bool, or None
    when the map form (filled by `read`) applies.
    """
    scratch = Fields(Diagnostics())
    if isinstance(node, Map):
        filled = read(scratch)
        f.diag.notes.extend(scratch.diag.notes)
        own = [e for e in scratch.diag.errors if isinstance(e, UnmarshalError)]
        if own:
            f.diag.errors.extend(own)
            return None
        if filled:
            for error in scratch.diag.errors:
                f.diag.note(
                    "warning",
                    f"{error.message}; Copilot ignores the value (go-yaml's type error is "
                    "swallowed here)",
                    error.location,
                )
            f.diag.errors.extend(e for e in scratch.diag.errors if not isinstance(e, DecodeError))
            return None
    else:
        value = scratch.boolean(node, field) if isinstance(node, Scalar) else None
        if value is not None:
            return value
    f.diag.error(
        f"{field}: {message}",
        node.loc,
        "write true, false or a mapping of its settings",
        cls=UnmarshalError,
    )
    return None


def _read_fifo(f: Fields, node: Node | None, field: str, topic: bool = False) -> _Fifo:
    out = _Fifo(node=node)
    if node is None or is_null(node):
        return out
    known = frozenset({"content_based_deduplication"}) if topic else _FIFO_FIELDS

    def read(g: Fields) -> bool:
        assert isinstance(node, Map)
        g.unknown(node, known, field)
        for key in known:
            value = node.get(key)
            if value is None:
                continue
            out.nodes[key] = value
            where = f"{field}.{key}"
            if key in ("content_based_deduplication", "high_throughput"):
                setattr(out, key, g.boolean(value, where))
            else:
                setattr(out, key, g.string(value, where))
        return not out.advanced_empty()

    out.enable = _or_bool(f, node, field, read, _FIFO_OR_BOOL)
    return out


def _read_queue(f: Fields, node: Node | None, field: str) -> _Queue:
    """SQSQueue: a plain struct, so go-yaml's type errors are errors."""
    out = _Queue(node=node)
    m = f.mapping(node, field)
    if m is None:
        return out
    f.unknown(m, _QUEUE_FIELDS, field)
    for key in ("retention", "delay", "timeout"):
        value = m.get(key)
        if value is not None:
            out.nodes[key] = value
            setattr(out, key, f.duration(value, f"{field}.{key}"))
    dead_letter = f.mapping(m.get("dead_letter"), f"{field}.dead_letter")
    if dead_letter is not None:
        f.unknown(dead_letter, frozenset({"tries"}), f"{field}.dead_letter")
        tries = dead_letter.get("tries")
        if tries is not None:
            out.nodes["tries"] = tries
            # DeadLetterQueue.Tries is a *uint16.
            out.tries = f.integer(tries, f"{field}.dead_letter.tries", 0, 65535)
    out.fifo = _read_fifo(f, m.get("fifo"), f"{field}.fifo")
    return out


def _read_queue_or_bool(f: Fields, node: Node | None, field: str) -> tuple[bool | None, _Queue]:
    """SQSQueueOrBool: (Enabled, Advanced)."""
    out = _Queue(node=node)
    if node is None or is_null(node):
        return None, out

    def read(g: Fields) -> bool:
        nonlocal out
        out = _read_queue(g, node, field)
        return not out.is_empty()

    enabled = _or_bool(f, node, field, read, _QUEUE_OR_BOOL)
    return enabled, out


# -- validation (validate.go) and SQS's limits -------------------------------


def _at(node: Node | None, parent: Node | None) -> Node | None:
    return node if node is not None else parent


def _error(f: Fields, field: str, message: str, node: Node | None, hint: str) -> None:
    f.diag.error(f"{field}: {message}", node.loc if node is not None else None, hint)


def _pubsub_name(f: Fields, name: str | None, node: Node | None, item: Node, where: str) -> bool:
    """validatePubSubName."""
    if not name:
        _error(
            f, where, '"name" must be specified', _at(node, item), "add name: with the topic's name"
        )
        return False
    if not _PUBSUB_NAME.fullmatch(name):
        _error(
            f,
            f"{where}.name",
            '"name" can only contain letters, numbers, underscores, and hyphens',
            node,
            "rename the topic; write `fifo: true` for a FIFO topic instead of a .fifo suffix",
        )
        return False
    return True


def _sub_service(f: Fields, name: str | None, node: Node | None, item: Node, where: str) -> bool:
    """TopicSubscription.validate's service rules (isValidSubSvcName)."""
    if not name:
        _error(
            f,
            where,
            '"service" must be specified',
            _at(node, item),
            "add service: with the name of the service that publishes the topic",
        )
        return False
    if (
        not _SUB_SVC_NAME.fullmatch(name)
        or re.search(r"[.\-]{2,}", name)
        or re.search(r"[\-.]$", name)
    ):
        _error(f, f"{where}.service", _SUB_SVC_RULE, node, "name the publishing service")
        return False
    return True


def _validate_fifo(f: Fields, fifo: _Fifo, field: str) -> bool:
    """FIFOAdvanceConfig.validate."""
    if fifo.advanced_empty():
        return True
    ok = True
    if fifo.high_throughput is not None:
        for other in ("throughput_limit", "deduplication_scope"):
            if getattr(fifo, other) is not None:
                _error(
                    f,
                    field,
                    f'must specify one, not both, of "high_throughput" and "{other}"',
                    fifo.nodes.get(other, fifo.node),
                    f"remove {other} (high_throughput sets it) or high_throughput",
                )
                ok = False
    scope, limit = fifo.deduplication_scope, fifo.throughput_limit
    if scope is not None and scope not in _DEDUP_SCOPES:
        _error(
            f,
            f"{field}.deduplication_scope",
            "deduplication scope value must be one of messageGroup or queue",
            fifo.nodes.get("deduplication_scope"),
            "write messageGroup or queue",
        )
        ok = False
    if limit is not None and limit not in _THROUGHPUT_LIMITS:
        _error(
            f,
            f"{field}.throughput_limit",
            "fifo throughput limit value must be one of perMessageGroupId or perQueue",
            fifo.nodes.get("throughput_limit"),
            "write perMessageGroupId or perQueue",
        )
        ok = False
    if ok and limit == THROUGHPUT_PER_MESSAGE_GROUP and scope == DEDUP_SCOPE_QUEUE:
        _error(
            f,
            field,
            '"throughput_limit" must be set to "perQueue" when "deduplication_scope" is set '
            'to "queue"',
            fifo.nodes.get("throughput_limit"),
            "write throughput_limit: perQueue, or deduplication_scope: messageGroup",
        )
        ok = False
    return ok


def _sqs_limits(f: Fields, q: _Queue, field: str) -> bool:
    """The queue properties SQS refuses, as subscribe.yml writes them (whole seconds)."""
    ok = True
    for key, value in (
        ("retention", q.retention),
        ("delay", q.delay),
        ("timeout", q.timeout),
        ("tries", q.tries),
    ):
        if value is None:
            continue
        attribute, low, high, unit = SQS_LIMITS[key]
        number = int(value)  # convertTime: int64(d.Seconds()) truncates
        if low <= number <= high:
            continue
        dotted = f"{field}.dead_letter.tries" if key == "tries" else f"{field}.{key}"
        _error(
            f,
            dotted,
            f"{number}{unit} is outside what SQS accepts for {attribute} ({low} to {high}{unit})",
            q.nodes.get(key),
            f"use {low} to {high}{unit}; CloudFormation fails to create the queue otherwise",
        )
        ok = False
    return ok


# -- conversion (transformers.go) ---------------------------------------------


def _settings(q: _Queue) -> QueueSettings | None:
    """convertQueue: None for an empty queue."""
    if q.is_empty():
        return None
    fifo: FifoQueueConfig | None = None
    if q.fifo.enabled():
        if q.fifo.enable:
            fifo = FifoQueueConfig()
        else:
            high = bool(q.fifo.high_throughput)
            fifo = FifoQueueConfig(
                content_based_deduplication=q.fifo.content_based_deduplication,
                deduplication_scope=DEDUP_SCOPE_MESSAGE_GROUP
                if high
                else q.fifo.deduplication_scope,
                throughput_limit=THROUGHPUT_PER_MESSAGE_GROUP if high else q.fifo.throughput_limit,
                high_throughput=q.fifo.high_throughput,
            )

    def whole(value: float | None) -> int | None:
        return None if value is None else int(value)

    return QueueSettings(
        retention_s=whole(q.retention),
        delay_s=whole(q.delay),
        timeout_s=whole(q.timeout),
        dead_letter_tries=q.tries,
        fifo=fifo,
    )


_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _go_string(text: str) -> str:
    """encoding/json's string form: HTML-safe (<, >, & as \\u003c...) and U+2028/9 escaped."""
    out = ['"']
    for char in text:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif ord(char) < 0x20 or char in "<>&\u2028\u2029":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _go_float(value: float) -> str:
    """encoding/json's float64: shortest digits, 'e' form below 1e-6 or from 1e21."""
    if math.isinf(value) or math.isnan(value):
        raise ValueError(f"json: unsupported value: {_go_special(value)}")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = repr(value)  # Python's repr is the shortest form too: 1e-07, 1.5e+21
        mantissa, exponent = text.split("e")
        sign, digits = exponent[0], exponent[1:].lstrip("0") or "0"
        if sign == "-" and len(digits) < 2:
            return f"{mantissa}e-{digits}"  # Go trims e-07 to e-7
        return f"{mantissa}e{sign}{digits.zfill(2)}"
    return format(Decimal(repr(value)).normalize(), "f")


def _go_special(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def go_json(node: Node) -> str:
    """json.Marshal of a YAML node decoded into interface{} (yaml.v3): maps sorted."""
    if isinstance(node, Map):
        inner = ",".join(
            f"{_go_string(key)}:{go_json(node.items[key])}" for key in sorted(node.items)
        )
        return "{" + inner + "}"
    if isinstance(node, Seq):
        return "[" + ",".join(go_json(item) for item in node.items) + "]"
    assert isinstance(node, Scalar)
    value = node.value
    if node.kind == "null" or value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    return _go_string(node.text if node.kind == "str" else str(value))


def _filter_policy(f: Fields, node: Node | None, field: str) -> str | None:
    """convertFilterPolicy: json.Marshal of the map; None when unset or empty."""
    m = f.mapping(node, field)
    if m is None or not m.items:
        return None
    try:
        return go_json(m)
    except ValueError as exc:
        f.diag.error(
            f'{field}: convert "filter_policy" to a JSON string: {exc}',
            m.loc,
            "use finite numbers in a filter policy",
        )
        return None


# -- the sections -------------------------------------------------------------


def publish(f: Fields, node: Node | None) -> tuple[PublishedTopic, ...]:
    """publish.topics (PublishConfig.validate; publishedTopics adds `.fifo`)."""
    section = f.mapping(node, "publish")
    if section is None:
        return ()
    f.unknown(section, frozenset({"topics"}), "publish")
    out: list[PublishedTopic] = []
    for index, topic in enumerate(f.sequence(section.get("topics"), "publish.topics")):
        where = f"publish.topics[{index}]"
        m = f.mapping(topic, where)
        if m is None:
            continue
        f.unknown(m, frozenset({"name", "fifo"}), where)
        name_node = m.get("name")
        name = f.string(name_node, f"{where}.name")
        fifo = _read_fifo(f, m.get("fifo"), f"{where}.fifo", topic=True)
        if not _pubsub_name(f, name, name_node, m, where) or name is None:
            continue
        enabled = fifo.enabled()
        out.append(
            PublishedTopic(
                name + ".fifo" if enabled else name,
                enabled,
                fifo.content_based_deduplication if enabled else None,
            )
        )
    return tuple(out)


def subscribe(
    f: Fields, node: Node | None
) -> tuple[QueueSettings | None, tuple[Subscription, ...]]:
    """A Worker Service's subscribe: (the EventsQueue's settings, the subscriptions).

    The settings are None unless subscribe.topics is set: convertSubscribe
    returns nil then, and the worker's template creates a plain EventsQueue.
    """
    section = f.mapping(node, "subscribe")
    if section is None:
        return None, ()
    f.unknown(section, frozenset({"topics", "queue"}), "subscribe")
    default = _read_queue(f, section.get("queue"), "subscribe.queue")
    valid = _validate_fifo(f, default.fifo, "subscribe.queue.fifo")
    topics_node = section.get("topics")
    has_topics = topics_node is not None and not is_null(topics_node)
    if has_topics:  # only then is the queue rendered (subscribe.yml)
        valid = _sqs_limits(f, default, "subscribe.queue") and valid
    default_fifo = not default.is_empty() and default.fifo.enabled()
    subs: list[Subscription] = []
    for index, topic in enumerate(f.sequence(topics_node, "subscribe.topics")):
        where = f"subscribe.topics[{index}]"
        m = f.mapping(topic, where)
        if m is None:
            continue
        f.unknown(m, frozenset({"name", "service", "filter_policy", "queue"}), where)
        errors_before = len(f.diag.errors)
        name_node, service_node = m.get("name"), m.get("service")
        name = f.string(name_node, f"{where}.name")
        service = f.string(service_node, f"{where}.service")
        policy = _filter_policy(f, m.get("filter_policy"), f"{where}.filter_policy")
        enabled, own = _read_queue_or_bool(f, m.get("queue"), f"{where}.queue")
        ok = _pubsub_name(f, name, name_node, m, where)
        ok = _sub_service(f, service, service_node, m, where) and ok
        ok = _validate_fifo(f, own.fifo, f"{where}.queue.fifo") and ok
        queue: QueueSettings | None = None
        if enabled:  # convertTopicSubscription: `queue: true` is an empty own queue
            queue = QueueSettings()
        elif not own.is_empty():
            ok = _sqs_limits(f, own, f"{where}.queue") and ok
            queue = _settings(own)
        if not ok or name is None or service is None or len(f.diag.errors) > errors_before:
            continue  # reported; no cross-service error on top
        # Subscriptions(): `.fifo` when delivering to a FIFO default queue, or to
        # its own FIFO queue.
        topic_queue_empty = enabled is None and own.is_empty()
        fifo = (topic_queue_empty and default_fifo) or (not own.is_empty() and own.fifo.enabled())
        subs.append(
            Subscription(
                service=service,
                name=name + ".fifo" if fifo else name,
                filter_policy=policy,
                queue=queue,
                where=where,
            )
        )
    events_queue = _settings(default) if has_topics and valid else None
    return events_queue, tuple(subs)


def mount_points(f: Fields, node: Node | None, field: str) -> dict[str, str]:
    """storage.volumes: volume name -> container path (convertMountPoints)."""
    storage = f.mapping(node, field)
    if storage is None:
        return {}
    volumes = f.mapping(storage.get("volumes"), f"{field}.volumes")
    if volumes is None:
        return {}
    out: dict[str, str] = {}
    for name, volume in volumes.items.items():
        m = f.mapping(volume, f"{field}.volumes.{name}")
        path = f.string(m.get("path"), f"{field}.volumes.{name}.path") if m is not None else None
        if path:  # generateMountPointJSON skips an empty container path
            out[name] = path
    return out


def sidecar_mount_points(f: Fields, node: Node | None, field: str) -> dict[str, str]:
    """sidecars.<name>.mount_points: [{source_volume, path}] -> volume -> path."""
    if node is None or is_null(node):
        return {}
    out: dict[str, str] = {}
    for index, item in enumerate(f.sequence(node, field)):
        m = f.mapping(item, f"{field}[{index}]")
        if m is None:
            continue
        source = f.string(m.get("source_volume"), f"{field}[{index}].source_volume")
        path = f.string(m.get("path"), f"{field}[{index}].path")
        if source is not None and path:
            out[source] = path
    return out
