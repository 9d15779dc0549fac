"""One environment's topics and queues, as the CLI and the pytest plugin name them.

Services and topic names from the manifests (`orders`, `events`), resolved
to the emulator's ARNs and queue names through the plan, so a user never
types a physical name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshlocal.errors import MeshlocalError
from meshlocal.naming import LOCAL_ACCOUNT_ID
from meshlocal.pubsub import client
from meshlocal.pubsubplan import PubSubPlan, QueuePlan, TopicPlan, queue_url

if TYPE_CHECKING:
    from meshlocal.deployment import Deployment
    from meshlocal.runtime.pubsub import Emulator


class NoSuchQueue(MeshlocalError):
    pass


@dataclass(frozen=True)
class QueueCounts:
    visible: int
    in_flight: int
    delayed: int
    dead_lettered: int | None  # None: the queue has no dead-letter queue


class PubSubView:
    """What the running emulator holds: the plan `up` last applied, not today's manifests
    (an edit not yet applied, or a manifest that doesn't load, changes nothing here)."""

    def __init__(self, dep: Deployment) -> None:
        from meshlocal.runtime import pubsub

        self.env = dep.env
        self._emulator: Emulator | None = pubsub.find(dep.engine, dep.project, dep.env)
        self.stopped: str | None = (
            pubsub.stopped(dep.engine, dep.project, dep.env) if self._emulator is None else None
        )
        self.plan: PubSubPlan = PubSubPlan((), (), ())
        self.region = ""
        if self._emulator is not None:
            self.plan, self.region = pubsub.applied(dep.engine, self._emulator)

    @property
    def running(self) -> bool:
        return self._emulator is not None

    @property
    def emulator(self) -> Emulator:
        if self._emulator is None:
            if self.stopped is not None:
                raise MeshlocalError(
                    f"the SNS/SQS emulator of environment {self.env} is not running "
                    f"({self.stopped})",
                    hint="`meshlocal up -d` starts it again and creates its topics and queues",
                )
            raise MeshlocalError(
                f"no SNS/SQS emulator runs in environment {self.env}",
                hint="it runs while some service has publish.topics or is a Worker Service; "
                "`meshlocal up -d` after adding one",
            )
        return self._emulator

    @property
    def host_url(self) -> str:
        return self.emulator.host_url

    # -- names ------------------------------------------------------------

    def topic(self, service: str, name: str) -> TopicPlan:
        _ = self.emulator  # not running: say so, not "no such topic"
        known = ", ".join(f"{t.service}/{t.name}" for t in self.plan.topics) or "none"
        for t in self.plan.topics:
            if t.service == service and _named(t, name):
                return t
        if not any(t.service == service for t in self.plan.topics):
            raise MeshlocalError(
                f"service {service} publishes no topic in environment {self.env}",
                hint=f"topics: {known}",
            )
        raise MeshlocalError(
            f"service {service} publishes no topic {name} in environment {self.env}",
            hint=f"topics: {known} (a topic added to a manifest exists after `meshlocal up -d`)",
        )

    def publishers(self, name: str) -> list[str]:
        """The services that publish a topic called `name` (`.fifo` may be left out)."""
        return [t.service for t in self.plan.topics if _named(t, name)]

    def queue(self, service: str, topic: str | None = None, dead_letter: bool = False) -> QueuePlan:
        """A worker's default queue, or its queue for `topic` (`SVC/TOPIC` or `TOPIC`); with
        `dead_letter`, that queue's dead-letter queue."""
        _ = self.emulator  # not running: say so, not "no such queue"
        mine = self.plan.queues_of(service)
        if not mine:
            workers = sorted({q.service for q in self.plan.queues})
            raise NoSuchQueue(
                f"service {service} has no queue in environment {self.env}",
                hint=f"queues belong to Worker Services: {', '.join(workers) or 'none'}",
            )
        by_name = {q.name: q for q in mine}
        dead = _dead_letters(mine)
        main = [q for q in mine if q.name not in dead]
        if topic is None:
            found = next(q for q in main if q.logical == "EventsQueue")
        else:
            wanted = _strip(topic)
            matches = [
                q for q in main if q.logical != "EventsQueue" and wanted in _strip(q.logical)
            ]
            if len(matches) != 1:
                own = ", ".join(q.logical for q in main if q.logical != "EventsQueue") or "none"
                raise NoSuchQueue(
                    f"service {service} has no queue of its own for topic {topic}",
                    hint=f"its topic queues: {own} (subscribe.topics[].queue); without "
                    "a topic, the default queue",
                )
            found = matches[0]
        if not dead_letter:
            return found
        if found.dead_letter is None:
            raise NoSuchQueue(
                f"queue {found.name} has no dead-letter queue",
                hint="set subscribe.queue.dead_letter.tries in the worker's manifest",
            )
        return by_name[found.dead_letter]

    # -- data -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per topic the messages published, per queue its counts (JSON-able)."""
        raw = client.raw_stats(self.host_url)
        dead = _dead_letters(self.plan.queues)
        queues = [
            {"service": q.service, "queue": q.name, "logical": q.logical}
            | dataclasses.asdict(_counts(raw["queues"], q))
            for q in self.plan.queues
            if q.name not in dead
        ]
        topics = [
            {
                "service": t.service,
                "topic": t.name,
                "arn": t.arn,
                "published": (raw["topics"].get(t.arn) or {}).get("published", 0),
            }
            for t in self.plan.topics
        ]
        return {"topics": topics, "queues": queues}

    def counts(self, queue: QueuePlan) -> QueueCounts:
        return _counts(client.raw_stats(self.host_url)["queues"], queue)

    def peek(self, queue: QueuePlan, limit: int = 10) -> list[dict[str, Any]]:
        return client.peek(self.host_url, queue.name, limit)

    def publish(
        self,
        service: str,
        topic: str,
        message: str,
        attributes: dict[str, str] | None = None,
        *,
        group: str | None = None,
    ) -> str:
        t = self.topic(service, topic)
        return client.publish(self.host_url, self.region, t.arn, message, attributes, group=group)


def _named(topic: TopicPlan, name: str) -> bool:
    return name in (topic.name, topic.name.removesuffix(".fifo"))


def _dead_letters(queues: Iterable[QueuePlan]) -> set[str]:
    """The names of the queues that are another queue's dead-letter queue."""
    return {q.dead_letter for q in queues if q.dead_letter}


def _counts(raw: dict[str, Any], queue: QueuePlan) -> QueueCounts:
    """A queue's counts from the emulator's /_meshlocal/stats `queues`."""
    mine = raw.get(queue.name) or {}
    dlq = (raw.get(queue.dead_letter) or {}) if queue.dead_letter else None
    return QueueCounts(
        mine.get("visible", 0),
        mine.get("in_flight", 0),
        mine.get("delayed", 0),
        dlq.get("visible", 0) + dlq.get("in_flight", 0) if dlq is not None else None,
    )


def _strip(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


@dataclass(frozen=True)
class Queue:
    """A worker's queue, for tests (`mesh.queue(...)`): read without consuming."""

    view: PubSubView
    plan: QueuePlan

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def url(self) -> str:
        """The queue's URL from the host (the emulator's published port)."""
        return queue_url(self.view.host_url, LOCAL_ACCOUNT_ID, self.plan.name)

    def peek(self, limit: int = 10) -> list[dict[str, Any]]:
        """Its messages, oldest first, without receiving them."""
        return self.view.peek(self.plan, limit)

    def counts(self) -> QueueCounts:
        return self.view.counts(self.plan)
