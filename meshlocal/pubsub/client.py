"""The host's side of the local SNS/SQS: what `stats`, `publish`, `queue peek` and
the pytest plugin ask the emulator, through its published loopback port."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any

from meshlocal.errors import MeshlocalError


class PubSubError(MeshlocalError):
    """The emulator refused or could not be reached."""


def _get(base: str, path: str, timeout: float = 10.0) -> Any:
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise PubSubError(f"the SNS/SQS emulator answered {exc.code} to {path}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise PubSubError(
            f"the SNS/SQS emulator does not answer at {base}: {exc}",
            hint="`meshlocal ps` shows whether it runs; `meshlocal up -d` starts it",
        ) from None


def raw_stats(host_url: str) -> dict[str, Any]:
    """{"topics": {arn: {"published"}}, "queues": {name: {"visible", "in_flight", "delayed"}}}."""
    data: dict[str, Any] = _get(host_url, "/_meshlocal/stats")
    return data


def peek(host_url: str, queue: str, limit: int = 10) -> list[dict[str, Any]]:
    """A queue's messages, oldest first, without receiving them (no receive is counted)."""
    query = urllib.parse.urlencode({"queue": queue, "max": limit})
    found: list[dict[str, Any]] = _get(host_url, f"/_meshlocal/peek?{query}")
    return found


def publish(
    host_url: str,
    region: str,
    topic_arn: str,
    message: str,
    attributes: Mapping[str, str] | None = None,
    *,
    group: str | None = None,
    dedup: str | None = None,
) -> str:
    """Publish through SNS, as a service would; the message id. A FIFO topic needs a group
    (given, else "meshlocal") and a deduplication id (given, else a fresh one)."""
    from meshlocal.pubsub.provision import clients

    sns, _ = clients(host_url, region)
    kwargs: dict[str, Any] = {"TopicArn": topic_arn, "Message": message}
    if attributes:
        kwargs["MessageAttributes"] = {
            k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()
        }
    if topic_arn.endswith(".fifo"):
        kwargs["MessageGroupId"] = group or "meshlocal"
        kwargs["MessageDeduplicationId"] = dedup or uuid.uuid4().hex
    try:
        return str(sns.publish(**kwargs)["MessageId"])
    except Exception as exc:  # botocore's ClientError and connection errors
        raise PubSubError(f"publishing to {topic_arn} failed: {exc}") from None
