"""awslite: just enough SNS and SQS for this example, stdlib only.

Why not boto3: meshlocal's local base image has no pip and the containers
have no internet, so the example cannot install anything. A real app uses
boto3 (or any AWS SDK), which reads the same variables this module does:
AWS_ENDPOINT_URL_SNS / AWS_ENDPOINT_URL_SQS (the local emulator inside the
mesh, unset on AWS), AWS_REGION, AWS_ACCESS_KEY_ID.

Requests are not signed. Each carries a well-formed but fake SigV4
`Authorization` header: the local emulator (moto) checks nothing, but reads
the region (and the access key, for the account) from its credential scope.
Real AWS would reject these requests.

  SNS Publish                 the Query protocol: a form POST, an XML reply
  SQS ReceiveMessage, Delete  the JSON protocol: X-Amz-Target, JSON both ways
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

# Never through an HTTP proxy of the environment: the emulator is in the mesh.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AwsError(Exception):
    """An error reply (code and message as the service gave them), or no reply at all."""

    def __init__(self, service: str, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"{service} {code}: {message}")
        self.service = service
        self.code = code
        self.message = message
        self.status = status


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def endpoint(service: str) -> str:
    """AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL, else the public endpoint."""
    found = os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get(
        "AWS_ENDPOINT_URL"
    )
    return (found or f"https://{service}.{region()}.amazonaws.com").rstrip("/")


def _headers(service: str) -> dict[str, str]:
    now = time.gmtime()
    key = os.environ.get("AWS_ACCESS_KEY_ID") or "test"
    scope = f"{time.strftime('%Y%m%d', now)}/{region()}/{service}/aws4_request"
    return {
        "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", now),
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders=host, Signature=0"
        ),
    }


def _post(
    service: str, url: str, body: bytes, headers: Mapping[str, str], timeout: float
) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={**_headers(service), **headers}
    )
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:  # refused, timed out, name not found
        raise AwsError(service, type(exc).__name__, f"{url}: {exc}") from exc


# -- SNS (Query protocol) ------------------------------------------------------


def _xml_text(root: ET.Element, name: str) -> str:
    """The text of the first element called `name`, whatever its namespace."""
    for el in root.iter():
        if el.tag == name or el.tag.endswith("}" + name):
            return (el.text or "").strip()
    return ""


def publish(
    topic_arn: str,
    message: str,
    attributes: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> str:
    """SNS Publish; string message attributes; returns the MessageId."""
    form = {"Action": "Publish", "Version": "2010-03-31", "TopicArn": topic_arn, "Message": message}
    for i, (name, value) in enumerate(sorted((attributes or {}).items()), start=1):
        form[f"MessageAttributes.entry.{i}.Name"] = name
        form[f"MessageAttributes.entry.{i}.Value.DataType"] = "String"
        form[f"MessageAttributes.entry.{i}.Value.StringValue"] = value
    status, raw = _post(
        "sns",
        endpoint("sns") + "/",
        urllib.parse.urlencode(form).encode(),
        {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        timeout,
    )
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        raise AwsError(
            "sns", f"HTTP {status}", raw[:200].decode(errors="replace"), status
        ) from None
    if status != 200:
        raise AwsError("sns", _xml_text(root, "Code"), _xml_text(root, "Message"), status)
    return _xml_text(root, "MessageId")


# -- SQS (JSON protocol) -------------------------------------------------------


def _sqs(action: str, payload: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    status, raw = _post(
        "sqs",
        endpoint("sqs") + "/",
        json.dumps(payload).encode(),
        {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"AmazonSQS.{action}"},
        timeout,
    )
    try:
        reply = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise AwsError(
            "sqs", f"HTTP {status}", raw[:200].decode(errors="replace"), status
        ) from None
    if status != 200:
        code = str(reply.get("__type", f"HTTP {status}")).rpartition("#")[2]
        raise AwsError("sqs", code, str(reply.get("message", reply.get("Message", ""))), status)
    return reply if isinstance(reply, dict) else {}


def receive(queue_url: str, wait_seconds: int = 5, max_messages: int = 10) -> list[dict[str, Any]]:
    """ReceiveMessage (a long poll): the messages, each with Body, ReceiptHandle, Attributes."""
    reply = _sqs(
        "ReceiveMessage",
        {
            "QueueUrl": queue_url,
            "WaitTimeSeconds": wait_seconds,
            "MaxNumberOfMessages": max_messages,
            "AttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
        },
        timeout=wait_seconds + 10,
    )
    return list(reply.get("Messages", []))


def delete(queue_url: str, receipt_handle: str) -> None:
    _sqs("DeleteMessage", {"QueueUrl": queue_url, "ReceiptHandle": receipt_handle}, timeout=10)


def unwrap(body: str) -> tuple[str, dict[str, str], str | None]:
    """(message, string attributes, SNS MessageId) of an SQS message body.

    SNS delivers to SQS in its JSON envelope ({"Type": "Notification",
    "Message": ..., "MessageAttributes": {"kind": {"Type": "String",
    "Value": ...}}}) unless the subscription has raw delivery, which Copilot
    never sets. A body that is no envelope (sent straight to the queue) is
    the message itself.
    """
    try:
        envelope = json.loads(body)
    except ValueError:
        return body, {}, None
    if not (isinstance(envelope, dict) and envelope.get("Type") == "Notification"):
        return body, {}, None
    attrs = {
        str(name): str(value.get("Value"))
        for name, value in (envelope.get("MessageAttributes") or {}).items()
        if isinstance(value, dict)
    }
    return str(envelope.get("Message", "")), attrs, envelope.get("MessageId")
