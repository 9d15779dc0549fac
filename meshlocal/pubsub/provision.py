"""Make the emulator hold exactly the planned topics, queues and subscriptions.

Standalone (boto3 and the standard library): the host runs it against the
emulator's published port after `up`, and the emulator's own entry point
(serve.py) runs it again after a restart, from the plan `up` left in the
container. Idempotent: what exists and matches is kept (with its messages),
what differs is updated, what the plan no longer has is deleted.

The plan document (JSON, see meshlocal.runtime.pubsub.plan_document):
{"region": "...", "topics": [{"physical", "attributes"}],
 "queues": [{"name", "attributes", "dead_letter", "max_receive_count"}],
 "subscriptions": [{"topic_arn", "queue", "filter_policy"}]}
Queues are listed dead-letter queues first.
"""

from __future__ import annotations

import json
from typing import Any

# SQS's defaults for what a manifest may set, so a setting removed from a
# manifest goes back to AWS's value instead of keeping the old one.
QUEUE_DEFAULTS = {
    "DelaySeconds": "0",
    "MessageRetentionPeriod": "345600",
    "VisibilityTimeout": "30",
}
# Fixed when a queue is created: a change means a new queue.
_CREATE_ONLY = frozenset({"FifoQueue"})


def clients(endpoint: str, region: str) -> tuple[Any, Any]:
    """(sns, sqs) boto3 clients for the emulator; dummy credentials (it checks none)."""
    import boto3  # the host imports this module without needing boto3 until it provisions
    from botocore.config import Config

    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5)
    session = boto3.session.Session(
        aws_access_key_id="meshlocal", aws_secret_access_key="meshlocal", region_name=region
    )
    return (
        session.client("sns", endpoint_url=endpoint, config=config),
        session.client("sqs", endpoint_url=endpoint, config=config),
    )


def apply(plan: dict[str, Any], endpoint: str, *, prune: bool = True) -> dict[str, Any]:
    """Reconcile the emulator at `endpoint` with `plan`; counts of what changed.

    Without `prune` nothing is deleted (`up SERVICE...`: the other services'
    topics and queues stay).
    """
    sns, sqs = clients(endpoint, plan["region"])
    # Counts, and a line for each update and deletion (what `up` prints).
    changed: dict[str, Any] = {"created": 0, "updated": 0, "deleted": 0, "notes": []}
    arns = _queues(sqs, plan["queues"], changed, prune)
    _topics(sns, plan["topics"], changed, prune)
    _subscriptions(sns, plan["subscriptions"], arns, changed, prune)
    return changed


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new`, plus what of `old` it doesn't name: the plan after `up SERVICE...`."""
    names = {q["name"] for q in new["queues"]}
    topics = {t["physical"] for t in new["topics"]}
    subs = {(s["topic_arn"], s["queue"]) for s in new["subscriptions"]}
    return {
        "region": new["region"],
        "topics": [t for t in old["topics"] if t["physical"] not in topics] + new["topics"],
        "queues": [q for q in old["queues"] if q["name"] not in names] + new["queues"],
        "subscriptions": [
            s for s in old["subscriptions"] if (s["topic_arn"], s["queue"]) not in subs
        ]
        + new["subscriptions"],
    }


def _queues(
    sqs: Any, queues: list[dict[str, Any]], changed: dict[str, Any], prune: bool
) -> dict[str, str]:
    existing = {url.rsplit("/", 1)[-1]: url for url in sqs.list_queues().get("QueueUrls", [])}
    arns: dict[str, str] = {}
    for name, url in existing.items():  # a kept queue's DLQ may be one not in the plan
        if not prune:
            got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            arns[name] = got["Attributes"]["QueueArn"]
    for q in queues:  # dead-letter queues first: the others name their ARN
        attributes = {**QUEUE_DEFAULTS, **q["attributes"]}
        if q.get("dead_letter"):
            attributes["RedrivePolicy"] = json.dumps(
                {
                    "deadLetterTargetArn": arns[q["dead_letter"]],
                    "maxReceiveCount": int(q["max_receive_count"]),
                }
            )
        url = existing.pop(q["name"], None)
        if url is None:
            url = sqs.create_queue(QueueName=q["name"], Attributes=attributes)["QueueUrl"]
            changed["created"] += 1
        else:
            have = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            update = {
                k: v for k, v in attributes.items() if k not in _CREATE_ONLY and have.get(k) != v
            }
            if "RedrivePolicy" in have and "RedrivePolicy" not in attributes:
                update["RedrivePolicy"] = ""
            if update:
                sqs.set_queue_attributes(QueueUrl=url, Attributes=update)
                changed["updated"] += 1
                shown = ", ".join(f"{k}={v or '(none)'}" for k, v in sorted(update.items()))
                changed["notes"].append(f"queue {q['name']}: {shown}")
        got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        arns[q["name"]] = got["Attributes"]["QueueArn"]
    for name, url in existing.items() if prune else ():
        left = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        dropped = sum(int(v) for v in left.values())
        sqs.delete_queue(QueueUrl=url)
        changed["deleted"] += 1
        changed["notes"].append(
            f"queue {name} deleted" + (f" with {dropped} message(s)" if dropped else "")
        )
    return arns


def _topics(sns: Any, topics: list[dict[str, Any]], changed: dict[str, Any], prune: bool) -> None:
    existing = {t["TopicArn"].rsplit(":", 1)[-1]: t["TopicArn"] for t in _all_topics(sns)}
    for t in topics:
        if existing.pop(t["physical"], None) is None:
            sns.create_topic(Name=t["physical"], Attributes=t["attributes"])
            changed["created"] += 1
    for name, arn in existing.items() if prune else ():
        sns.delete_topic(TopicArn=arn)
        changed["deleted"] += 1
        changed["notes"].append(f"topic {name} deleted")


def _all_topics(sns: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in sns.get_paginator("list_topics").paginate():
        out += page.get("Topics", [])
    return out


def _subscriptions(
    sns: Any,
    subscriptions: list[dict[str, Any]],
    arns: dict[str, str],
    changed: dict[str, Any],
    prune: bool,
) -> None:
    existing: dict[tuple[str, str], dict[str, Any]] = {}
    for page in sns.get_paginator("list_subscriptions").paginate():
        for s in page.get("Subscriptions", []):
            existing[(s["TopicArn"], s["Endpoint"])] = s
    for s in subscriptions:
        key = (s["topic_arn"], arns[s["queue"]])
        policy = s.get("filter_policy") or ""
        have = existing.pop(key, None)
        if have is not None:
            attrs = sns.get_subscription_attributes(SubscriptionArn=have["SubscriptionArn"])
            if attrs["Attributes"].get("FilterPolicy", "") == policy:
                continue
            # A filter policy can't be set back to none: subscribe again.
            sns.unsubscribe(SubscriptionArn=have["SubscriptionArn"])
            changed["updated"] += 1
            changed["notes"].append(
                f"subscription of {s['queue']} to {s['topic_arn'].rsplit(':', 1)[-1]}: "
                f"filter policy {policy or '(none)'}"
            )
        else:
            changed["created"] += 1
        sns.subscribe(
            TopicArn=s["topic_arn"],
            Protocol="sqs",
            Endpoint=arns[s["queue"]],
            Attributes={"FilterPolicy": policy} if policy else {},
        )
    for s in existing.values() if prune else ():
        sns.unsubscribe(SubscriptionArn=s["SubscriptionArn"])
        changed["deleted"] += 1
        changed["notes"].append(
            f"subscription of {s['Endpoint'].rsplit(':', 1)[-1]} to "
            f"{s['TopicArn'].rsplit(':', 1)[-1]} deleted"
        )
