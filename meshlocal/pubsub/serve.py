"""The emulator container's entry point: moto's server, plus two read-only views.

Standalone (moto, werkzeug and the standard library). Serves every request
with moto's own WSGI app, except under /_meshlocal/:

- `GET /_meshlocal/stats`: per topic the messages published, per queue
  visible / in flight / delayed, read from moto's models (SNS has no API
  for a publish count; CloudWatch is where AWS keeps it);
- `GET /_meshlocal/peek?queue=NAME&max=N`: a queue's messages without
  receiving them (a ReceiveMessage would count towards the dead-letter
  queue's maxReceiveCount).

After a restart (Docker's restart policy) it provisions again from the plan
`up` left in the container, so workers find their queues; the messages
were in memory and are gone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

PLAN_FILE = "/var/lib/meshlocal-pubsub/plan.json"

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def _backends() -> tuple[Iterable[Any], Iterable[Any]]:
    from moto.sns.models import sns_backends
    from moto.sqs.models import sqs_backends

    def regions(backends: Any) -> Iterable[Any]:
        for account in list(backends.keys()):
            for region in list(backends[account].keys()):
                yield backends[account][region]

    return regions(sns_backends), regions(sqs_backends)


def stats() -> dict[str, Any]:
    sns, sqs = _backends()
    topics = {
        arn: {"published": len(topic.sent_notifications)}
        for backend in sns
        for arn, topic in list(backend.topics.items())
    }
    queues = {
        name: {
            "visible": q.approximate_number_of_messages,
            "in_flight": q.approximate_number_of_messages_not_visible,
            "delayed": q.approximate_number_of_messages_delayed,
        }
        for backend in sqs
        for name, q in list(backend.queues.items())
    }
    return {"topics": topics, "queues": queues}


def peek(queue: str, limit: int) -> list[dict[str, Any]]:
    _, sqs = _backends()
    for backend in sqs:
        q = backend.queues.get(queue)
        if q is None:
            continue
        out = []
        for m in list(q._messages)[:limit]:
            out.append(
                {
                    "id": m.id,
                    "body": m.body,
                    "attributes": {
                        k: v.get("string_value", v.get("StringValue"))
                        for k, v in (m.message_attributes or {}).items()
                        if isinstance(v, dict)
                    },
                    "receive_count": m.approximate_receive_count,
                    "visible": m.visible,
                    "sent": m.sent_timestamp,
                    "group": m.group_id,
                }
            )
        return out
    raise KeyError(queue)


def wrap(app: Callable[[Environ, StartResponse], Any]) -> Callable[[Environ, StartResponse], Any]:
    def serve(environ: Environ, start_response: StartResponse) -> Any:
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/_meshlocal/"):
            return app(environ, start_response)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        status: str = "200 OK"
        body: Any = None
        try:
            if path == "/_meshlocal/stats":
                body = stats()
            elif path == "/_meshlocal/peek":
                body = peek(query["queue"][0], int(query.get("max", ["10"])[0]))
            elif path == "/_meshlocal/ready":
                body = {"ready": True}
            else:
                status, body = "404 Not Found", {"error": path}
        except KeyError as exc:
            status, body = "404 Not Found", {"error": f"no queue {exc}"}
        data = json.dumps(body, default=str).encode()
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        )
        return [data]

    return serve


def _reprovision(port: int) -> None:
    """Apply the plan `up` left here, once the server answers (a restart lost it)."""
    try:
        with open(PLAN_FILE) as f:
            plan = json.load(f)
    except FileNotFoundError:
        return  # first start: `up` provisions
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint + "/_meshlocal/ready", timeout=2).close()
            break
        except OSError:
            time.sleep(0.1)
    # Copied next to this file in the image (which holds no meshlocal).
    provision = importlib.import_module("provision")

    print(
        "meshlocal-pubsub: restarted, provisioning again:",
        provision.apply(plan, endpoint),
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=4566)
    args = parser.parse_args(argv)
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    # One line per request would drown the workers' own lines in `meshlocal logs`.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = wrap(DomainDispatcherApplication(create_backend_app))
    threading.Thread(target=_reprovision, args=(args.port,), daemon=True).start()
    print(f"meshlocal-pubsub: moto on {args.host}:{args.port}", flush=True)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
