"""web: an HTTP page that calls greeter over gRPC through Service Connect.

It dials $GREETER (default `greeter:50051`: greeter's Service Connect name on
its target port) with one insecure channel per page request.

  GET /hello?n=30&name=x
        n unary calls to /greeter.Greeter/Hello over ONE channel (one HTTP/2
        connection to the proxy). Reports the replica that answered each
        call and a count per replica: with AppProtocol grpc the proxy
        balances every call (stream), not the connection.
  GET /fail?code=NOT_FOUND
        one call to /greeter.Greeter/Fail; reports the status code, details
        and trailing metadata the client got (the server's, through the proxy).
  GET /healthz  200

`python3 web.py check` is the manifest's image.healthcheck.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SERVICE = os.environ.get("COPILOT_SERVICE_NAME", "web")
PORT = int(os.environ.get("PORT", "8080"))
GREETER = os.environ.get("GREETER", "greeter:50051")
TIMEOUT_S = float(os.environ.get("CALL_TIMEOUT_S", "5"))


def replica_name() -> str:
    host = socket.gethostname()
    index = host.rsplit("-", 1)[-1]
    return f"{SERVICE}-{index}" if index.isdigit() else host


def resolved(host: str) -> list[str]:
    """What DNS gives this container for `host`: the endpoint's own address (VIP)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return [f"error: {exc}"]
    return sorted({str(info[4][0]) for info in infos})


def hello_calls(n: int, name: str) -> list[dict[str, Any]]:
    import grpc

    out: list[dict[str, Any]] = []
    with grpc.insecure_channel(GREETER) as channel:
        # No request_serializer / response_deserializer: raw bytes both ways.
        hello = channel.unary_unary("/greeter.Greeter/Hello")
        for _ in range(n):
            started = time.monotonic()
            try:
                answer = json.loads(hello(name.encode(), timeout=TIMEOUT_S))
                call: dict[str, Any] = {"ok": True, **answer}
            except grpc.RpcError as exc:
                call = {"ok": False, "code": exc.code().name, "details": exc.details()}
            call["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
            out.append(call)
    return out


def fail_call(code: str) -> dict[str, Any]:
    import grpc

    with grpc.insecure_channel(GREETER) as channel:
        fail = channel.unary_unary("/greeter.Greeter/Fail")
        try:
            fail(code.encode(), timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return {
                "ok": False,
                "code": exc.code().name,
                "details": exc.details(),
                "trailing_metadata": dict(exc.trailing_metadata() or ()),
            }
    return {"ok": True}


class Handler(BaseHTTPRequestHandler):
    server_version = "meshlocal-grpc-web/1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/healthz":
            self._send(200, {"ok": True})
        elif url.path == "/hello":
            n = max(1, min(300, int(query.get("n", "6"))))
            calls = hello_calls(n, query.get("name", "web"))
            per_replica = Counter(str(c["replica"]) for c in calls if c["ok"])
            self._send(
                200,
                {
                    "caller": replica_name(),
                    "target": GREETER,
                    "resolved": resolved(GREETER.rpartition(":")[0]),
                    "calls": calls,
                    "per_replica": dict(sorted(per_replica.items())),
                },
            )
        elif url.path == "/fail":
            self._send(200, {"target": GREETER, **fail_call(query.get("code", "NOT_FOUND"))})
        elif url.path == "/":
            self._send(200, {"service": SERVICE, "replica": replica_name(), "target": GREETER})
        else:
            self._send(404, {"error": f"no route {url.path}"})

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
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
    import grpc  # fail at start, not on the first page, when grpcio is missing

    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    print(
        f"{SERVICE} on :{PORT} as {replica_name()}, calling {GREETER} (grpcio {grpc.__version__})",
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
