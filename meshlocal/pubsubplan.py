"""The SNS topics, SQS queues and subscriptions Copilot would create: a pure plan.

Built from the loaded environment, no I/O. The runtime creates exactly this
in the local SNS/SQS emulator; :mod:`meshlocal.naming` takes its queue names
from here for COPILOT_QUEUE_URI and COPILOT_TOPIC_QUEUE_URIS.

Copilot's rules encoded here:
- A topic is `{app}-{env}-{svc}-{name}` (publish.yml: `${AWS::StackName}-{name}`,
  the stack being `{app}-{env}-{svc}`), `.fifo` already on a FIFO topic's name
  (publishedTopics, internal/pkg/manifest/workload.go), with FifoTopic and
  ContentBasedDeduplication as publish.yml writes them.
- Every Worker Service has its EventsQueue (workloads/services/worker/cf.yml
  always includes subscribe.yml), with the manifest's `subscribe.queue`
  settings only when `subscribe.topics` is set (convertSubscribe), a
  DeadLetterQueue when `dead_letter.tries` is set, and for each subscription
  with its own `queue` a `{Svc}{Topic}EventsQueue` (+ `{Svc}{Topic}DeadLetterQueue`),
  the logical ids of workloads/partials/cf/subscribe.yml. A dead-letter
  queue keeps messages 14 days (MessageRetentionPeriod 1209600).
- The queues have no QueueName in the template, so CloudFormation names them
  from the stack and the logical id; here without its random suffix:
  `{app}-{env}-{svc}-{logical}` (+ `.fifo`), at most 80 characters (SQS's
  limit), the stack part shortened first.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from meshlocal.manifest.model import (
    LOCAL_ACCOUNT_ID,
    EnvironmentSpec,
    QueueSettings,
    ServiceType,
    Subscription,
)

__all__ = [
    "DEAD_LETTER_RETENTION",
    "LOCAL_ACCOUNT_ID",
    "MAX_QUEUE_NAME",
    "PubSubPlan",
    "QueuePlan",
    "SubscriptionPlan",
    "TopicPlan",
    "aws_queue_url",
    "logical_id",
    "plan",
    "queue_logical_id",
    "queue_name",
    "queue_url",
    "topic_arn",
    "topic_name",
]

MAX_QUEUE_NAME = 80  # SQS: up to 80 characters, `.fifo` included
DEAD_LETTER_RETENTION = "1209600"  # subscribe.yml: 14 days
_FIFO = ".fifo"


@dataclass(frozen=True)
class TopicPlan:
    service: str  # publisher
    name: str  # manifest name, ".fifo" on FIFO topics: the COPILOT_SNS_TOPIC_ARNS key
    physical: str  # f"{app}-{env}-{svc}-{name}"  (SNS TopicName, publish.yml)
    arn: str  # arn:aws:sns:{region}:{account}:{physical}
    attributes: dict[str, str]  # CreateTopic Attributes


@dataclass(frozen=True)
class QueuePlan:
    service: str  # the worker
    logical: (
        str  # EventsQueue, DeadLetterQueue, {Svc}{Topic}EventsQueue, {Svc}{Topic}DeadLetterQueue
    )
    name: str  # physical name, at most 80 characters
    fifo: bool
    attributes: dict[str, str]  # CreateQueue Attributes, as the template sets them
    dead_letter: str | None  # the physical name of its DLQ, or None
    max_receive_count: int | None


@dataclass(frozen=True)
class SubscriptionPlan:
    service: str  # the subscribing worker
    topic_arn: str
    queue: str  # physical queue name it delivers to
    filter_policy: str | None  # JSON string as Copilot passes it


@dataclass(frozen=True)
class PubSubPlan:
    topics: tuple[TopicPlan, ...]
    queues: tuple[QueuePlan, ...]  # DLQs listed BEFORE the queues that redrive to them
    subscriptions: tuple[SubscriptionPlan, ...]

    def __bool__(self) -> bool:
        return bool(self.topics or self.queues or self.subscriptions)

    def queues_of(self, service: str) -> tuple[QueuePlan, ...]:
        return tuple(q for q in self.queues if q.service == service)

    def queue(self, service: str, logical: str) -> QueuePlan | None:
        """One worker's queue by its logical id."""
        for q in self.queues:
            if q.service == service and q.logical == logical:
                return q
        return None


# -- names --------------------------------------------------------------------


def logical_id(name: str) -> str:
    """The template's logicalIDSafe for these names (StripNonAlphaNumFunc)."""
    return re.sub(r"[^a-zA-Z0-9]", "", name)


def queue_logical_id(subscription: Subscription | None, dead_letter: bool = False) -> str:
    """EventsQueue / DeadLetterQueue, or a subscription's own {Svc}{Topic}... (subscribe.yml)."""
    kind = "DeadLetterQueue" if dead_letter else "EventsQueue"
    if subscription is None:
        return kind
    return f"{logical_id(subscription.service)}{logical_id(subscription.name)}{kind}"


def topic_name(app: str, env: str, service: str, topic: str) -> str:
    """The SNS TopicName: `${AWS::StackName}-{name}` (publish.yml)."""
    return f"{app}-{env}-{service}-{topic}"


def topic_arn(region: str, account: str, app: str, env: str, service: str, topic: str) -> str:
    # snsARNPattern in internal/pkg/template/workload.go
    return f"arn:aws:sns:{region}:{account}:{topic_name(app, env, service, topic)}"


def queue_name(app: str, env: str, service: str, logical: str, fifo: bool) -> str:
    """The queue's physical name: `{stack}-{logical}` (+ `.fifo`), at most 80 characters.

    Too long, CloudFormation shortens the stack name (and, if needed, the
    logical id) and appends a random suffix; here a hash of the full name
    stands for that suffix, so distinct queues keep distinct names.
    """
    suffix = _FIFO if fifo else ""
    budget = MAX_QUEUE_NAME - len(suffix)
    stack = f"{app}-{env}-{service}"
    full = f"{stack}-{logical}"
    if len(full) <= budget:
        return full + suffix
    digest = hashlib.sha256(full.encode()).hexdigest()[:12]
    tail = f"-{logical}-{digest}"
    if len(tail) < budget:
        return stack[: budget - len(tail)] + tail + suffix
    keep = budget - len(digest) - 2  # stack-logical-digest
    stack_part = stack[: min(len(stack), keep // 2)]
    return f"{stack_part}-{logical[: keep - len(stack_part)]}-{digest}{suffix}"


def queue_url(endpoint: str, account: str, name: str) -> str:
    """The URL the local SQS returns from GetQueueUrl."""
    return f"{endpoint.rstrip('/')}/{account}/{name}"


def aws_queue_url(region: str, account: str, name: str) -> str:
    """The URL on AWS (what `!Ref EventsQueue` gives)."""
    return f"https://sqs.{region}.amazonaws.com/{account}/{name}"


# -- the plan -----------------------------------------------------------------


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _attributes(settings: QueueSettings | None) -> dict[str, str]:
    """The queue properties subscribe.yml writes: each one set in the manifest."""
    out: dict[str, str] = {}
    if settings is None:
        return out
    if settings.retention_s is not None:
        out["MessageRetentionPeriod"] = str(settings.retention_s)
    if settings.delay_s is not None:
        out["DelaySeconds"] = str(settings.delay_s)
    if settings.timeout_s is not None:
        out["VisibilityTimeout"] = str(settings.timeout_s)
    fifo = settings.fifo
    if fifo is not None:
        out["FifoQueue"] = "true"
        if fifo.throughput_limit is not None:
            out["FifoThroughputLimit"] = fifo.throughput_limit
        if fifo.deduplication_scope is not None:
            out["DeduplicationScope"] = fifo.deduplication_scope
        if fifo.content_based_deduplication is not None:
            # A set *bool is written even when false.
            out["ContentBasedDeduplication"] = _bool(fifo.content_based_deduplication)
    return out


def _queues(
    app: str, env: str, service: str, sub: Subscription | None, settings: QueueSettings | None
) -> list[QueuePlan]:
    """A queue and, when it has dead_letter.tries, its DLQ first."""
    fifo = settings is not None and settings.is_fifo
    tries = settings.dead_letter_tries if settings is not None else None
    out: list[QueuePlan] = []
    dead_letter: str | None = None
    if tries is not None:
        logical = queue_logical_id(sub, dead_letter=True)
        dead_letter = queue_name(app, env, service, logical, fifo)
        attributes = {"MessageRetentionPeriod": DEAD_LETTER_RETENTION}
        if fifo:
            attributes["FifoQueue"] = "true"
        out.append(QueuePlan(service, logical, dead_letter, fifo, attributes, None, None))
    logical = queue_logical_id(sub)
    out.append(
        QueuePlan(
            service,
            logical,
            queue_name(app, env, service, logical, fifo),
            fifo,
            _attributes(settings),
            dead_letter,
            tries,
        )
    )
    return out


def plan(spec: EnvironmentSpec, account: str = LOCAL_ACCOUNT_ID) -> PubSubPlan:
    """What Copilot would create for the environment's services."""
    app, env, region = spec.app, spec.env, spec.workspace.region
    topics: list[TopicPlan] = []
    for svc in spec.services:
        for topic in svc.topics:
            attributes: dict[str, str] = {}
            if topic.fifo:
                attributes["FifoTopic"] = "true"
                if topic.content_based_deduplication is not None:
                    attributes["ContentBasedDeduplication"] = _bool(
                        topic.content_based_deduplication
                    )
            topics.append(
                TopicPlan(
                    svc.name,
                    topic.name,
                    topic_name(app, env, svc.name, topic.name),
                    topic_arn(region, account, app, env, svc.name, topic.name),
                    attributes,
                )
            )
    planned = {t.arn for t in topics}
    queues: dict[str, QueuePlan] = {}
    subscriptions: list[SubscriptionPlan] = []
    for svc in spec.services:
        if svc.type is not ServiceType.WORKER_SERVICE:
            continue
        events = _queues(app, env, svc.name, None, svc.events_queue)
        for q in events:
            queues.setdefault(q.name, q)
        for sub in svc.subscriptions:
            arn = topic_arn(region, account, app, env, sub.service, sub.name)
            if arn not in planned:
                continue  # its publisher is not run (validation says so): nothing to subscribe to
            target = events[-1].name
            if sub.queue is not None:
                own = _queues(app, env, svc.name, sub, sub.queue)
                for q in own:
                    queues.setdefault(q.name, q)
                target = own[-1].name
            subscriptions.append(
                SubscriptionPlan(
                    svc.name,
                    arn,
                    target,
                    sub.filter_policy,
                )
            )
    return PubSubPlan(tuple(topics), tuple(queues.values()), tuple(subscriptions))
