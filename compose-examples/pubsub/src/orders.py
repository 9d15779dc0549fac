"""orders: takes orders over HTTP and publishes them to its SNS topic `events`.

  POST /orders     a JSON object, published as is to the topic `events`
                   (its ARN from COPILOT_SNS_TOPIC_ARNS) with the message
                   attribute `kind` (String) = the object's "kind" field,
                   "order" when it has none. processor's filter policy only
                   lets kind "order" through, so kind "spam" never reaches
                   its queue. Answers 202 {"message_id", "topic_arn", "kind"}.
  GET  /processed  what processor reported: {"processed": [...], "failed": [...]}
  POST /processed  processor's report of one message (through Service Connect,
                   http://orders:8080/processed)
  GET  /env        the AWS and Copilot variables this container got
  GET  /healthz    200

`python3 orders.py check` is the manifest's image.healthcheck.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import awslite

SERVICE = os.environ.get("COPILOT_SERVICE_NAME", "orders")
PORT = int(os.environ.get("PORT", "8080"))
TOPIC = os.environ.get("TOPIC", "events")
ENV_NAMES = (
    "AWS_ENDPOINT_URL_SNS",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "COPILOT_SNS_TOPIC_ARNS",
    "COPILOT_APPLICATION_NAME",
    "COPILOT_ENVIRONMENT_NAME",
    "COPILOT_SERVICE_NAME",
)

_lock = threading.Lock()
_reports: dict[str, list[dict[str, Any]]] = {"processed": [], "failed": []}


def replica_name() -> str:
    host = socket.gethostname()
    index = host.rsplit("-", 1)[-1]
    return f"{SERVICE}-{index}" if index.isdigit() else host


def topic_arn() -> str:
    arns = json.loads(os.environ.get("COPILOT_SNS_TOPIC_ARNS") or "{}")
    if TOPIC not in arns:
        raise LookupError(f"COPILOT_SNS_TOPIC_ARNS has no topic {TOPIC!r}: {sorted(arns)}")
    return str(arns[TOPIC])


class Handler(BaseHTTPRequestHandler):
    server_version = "meshlocal-pubsub-orders/1"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send(200, {"ok": True})
        elif path == "/processed":
            with _lock:
                self._send(200, {k: list(v) for k, v in _reports.items()})
        elif path == "/env":
            self._send(200, {name: os.environ.get(name) for name in ENV_NAMES})
        elif path == "/":
            self._send(200, {"service": SERVICE, "replica": replica_name(), "topic": TOPIC})
        else:
            self._send(404, {"error": f"no route {path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        except ValueError as exc:
            self._send(400, {"error": f"the body is not JSON: {exc}"})
            return
        if not isinstance(body, dict):
            self._send(400, {"error": "the body must be a JSON object"})
            return
        if path == "/orders":
            self._publish(body)
        elif path == "/processed":
            outcome = "failed" if body.get("status") == "failed" else "processed"
            with _lock:
                _reports[outcome].append(body)
            self._send(204, None)
        else:
            self._send(404, {"error": f"no route {path}"})

    def _publish(self, order: dict[str, Any]) -> None:
        kind = order.get("kind", "order")
        if not isinstance(kind, str) or not kind:
            self._send(400, {"error": '"kind" must be a non-empty string'})
            return
        try:
            arn = topic_arn()
            message_id = awslite.publish(arn, json.dumps(order), {"kind": kind})
        except (LookupError, ValueError, awslite.AwsError) as exc:
            self._send(502, {"error": str(exc)})
            return
        print(f"published {message_id} kind={kind} to {arn}", flush=True)
        self._send(202, {"message_id": message_id, "topic_arn": arn, "kind": kind})

    def _send(self, status: int, body: object) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        if "/healthz" not in self.requestline:
            print(f"{self.client_address[0]} {format % args}", flush=True)


def check() -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{PORT}/healthz", timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except OSError:
        return 1


def main() -> None:
    if sys.argv[1:] == ["check"]:
        sys.exit(check())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    print(
        f"{SERVICE} on :{PORT} as {replica_name()}, publishing to {TOPIC} "
        f"via {awslite.endpoint('sns')}",
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
