"""processor: a Worker Service draining its queue, COPILOT_QUEUE_URI.

Copilot subscribes the worker's default queue (EventsQueue) to orders'
topic `events` with the manifest's filter policy, so only kind "order"
arrives. The loop:

  1. long-poll the queue (ReceiveMessage, WaitTimeSeconds 5);
  2. unwrap the SNS envelope: the order is its "Message", the attributes
     its "MessageAttributes";
  3. process the order: report it to orders (POST $REPORT_URL, through
     Service Connect) and log a line `processed ...`;
  4. delete it.

An order with "poison": true fails at step 3 and is not deleted: it comes
back once the visibility timeout (subscribe.queue.timeout) has passed, and
after `dead_letter.tries` receives SQS moves it to the DeadLetterQueue.
Each failure is reported (status "failed") and logged as `failed ...`.

The first line it logs is `processor env {...}`: the AWS and Copilot
variables it got, as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.request
from typing import Any

import awslite

SERVICE = os.environ.get("COPILOT_SERVICE_NAME", "processor")
REPORT_URL = os.environ.get("REPORT_URL", "")
WAIT_SECONDS = int(os.environ.get("WAIT_SECONDS", "5"))
ENV_NAMES = (
    "COPILOT_QUEUE_URI",
    "COPILOT_TOPIC_QUEUE_URIS",
    "AWS_ENDPOINT_URL_SNS",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Poison(Exception):
    pass


def replica_name() -> str:
    host = socket.gethostname()
    index = host.rsplit("-", 1)[-1]
    return f"{SERVICE}-{index}" if index.isdigit() else host


def report(entry: dict[str, Any], attempts: int = 5) -> None:
    """POST one outcome to orders; best effort (a lost report loses no message)."""
    if not REPORT_URL:
        return
    data = json.dumps(entry).encode()
    last: OSError | None = None
    for attempt in range(attempts):
        req = urllib.request.Request(
            REPORT_URL, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with _OPENER.open(req, timeout=3) as resp:
                resp.read()
                return
        except OSError as exc:
            last = exc
            time.sleep(0.2 * (attempt + 1))
    print(f"could not report to {REPORT_URL}: {last}", flush=True)


def process(order: Any) -> None:
    """The business logic: here, refusing poison."""
    if isinstance(order, dict) and order.get("poison") is True:
        raise Poison("poison message, refusing it")


def handle(queue_url: str, msg: dict[str, Any]) -> None:
    message, attrs, sns_id = awslite.unwrap(str(msg.get("Body", "")))
    try:
        order: Any = json.loads(message)
    except ValueError:
        order = message
    count = int((msg.get("Attributes") or {}).get("ApproximateReceiveCount", 0))
    entry = {
        "message_id": sns_id or msg.get("MessageId"),
        "sqs_message_id": msg.get("MessageId"),
        "kind": attrs.get("kind"),
        "receive_count": count,
        "order": order,
        "replica": replica_name(),
    }
    try:
        process(order)
    except Exception as exc:
        # Not deleted: visible again after the visibility timeout, then dead-lettered.
        print(
            f"failed {entry['message_id']} receive_count={count}: {exc} order={json.dumps(order)}",
            flush=True,
        )
        report({**entry, "status": "failed", "error": str(exc)})
        return
    print(
        f"processed {entry['message_id']} kind={entry['kind']} receive_count={count} "
        f"order={json.dumps(order)}",
        flush=True,
    )
    report({**entry, "status": "processed"})
    awslite.delete(queue_url, str(msg["ReceiptHandle"]))


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    env = {name: os.environ.get(name) for name in ENV_NAMES}
    print(f"{SERVICE} env {json.dumps(env, sort_keys=True)}", flush=True)
    queue_url = os.environ.get("COPILOT_QUEUE_URI")
    if not queue_url:
        sys.exit(f"{SERVICE}: no COPILOT_QUEUE_URI (is this a Worker Service with subscribe?)")
    print(
        f"{SERVICE} polling {queue_url} via {awslite.endpoint('sqs')}, reporting to "
        f"{REPORT_URL or 'nobody'}",
        flush=True,
    )
    backoff = 0.5
    while True:
        try:
            messages = awslite.receive(queue_url, wait_seconds=WAIT_SECONDS)
        except awslite.AwsError as exc:
            print(f"receive failed: {exc}; again in {backoff:g}s", flush=True)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        backoff = 0.5
        for msg in messages:
            try:
                handle(queue_url, msg)
            except awslite.AwsError as exc:
                print(f"delete failed: {exc}", flush=True)


if __name__ == "__main__":
    main()
