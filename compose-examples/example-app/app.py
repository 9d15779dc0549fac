"""A tiny mesh app: serves its own identity and calls other services.

One file serves every service of the small examples (the same copy sits in
each example's app/ directory; tests/examples checks they stay identical).
Stdlib only, so it runs on any Python base image.

With $PORT set it is an HTTP server:

  GET /            JSON naming this replica: {"service", "replica", "port", ...}
  GET /call?n=N    calls each URL of $TARGETS N times; for each call it reports
                   the replica that answered and the route: "service-connect"
                   when meshlocal's proxy answered (its x-meshlocal-route
                   header), "direct" when the call went straight to a replica.
  GET /call?url=U  the same for one URL U instead of $TARGETS
  GET /healthz     200

Without $PORT (a Worker Service) it calls $TARGETS every $INTERVAL seconds
and prints one line per call.

`python3 app.py check` is the manifests' image.healthcheck: it exits 0 once
this replica's server answers /healthz, so a replica joins the rotation only
when it can serve.

$TARGETS is a comma-separated list of URLs. It defaults to the Service
Discovery URL of `api`, built the way the Copilot docs build it:
http://api.$COPILOT_SERVICE_DISCOVERY_ENDPOINT/
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SERVICE = os.environ.get("COPILOT_SERVICE_NAME", "app")
TIMEOUT_S = float(os.environ.get("CALL_TIMEOUT_S", "3"))
# Never send mesh traffic to an HTTP proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def replica_name() -> str:
    """`api-2` from the container hostname `<project>-<env>-api-2`."""
    host = socket.gethostname()
    index = host.rsplit("-", 1)[-1]
    return f"{SERVICE}-{index}" if index.isdigit() else host


def targets() -> list[str]:
    default = f"http://api.{os.environ.get('COPILOT_SERVICE_DISCOVERY_ENDPOINT', '')}/"
    raw = os.environ.get("TARGETS") or default
    return [t.strip() for t in raw.split(",") if t.strip()]


def resolved(host: str) -> list[str]:
    """What DNS gives this container for `host` (the proxy, or the replicas)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return [f"error: {exc}"]
    return sorted({str(info[4][0]) for info in infos})


def call(url: str) -> dict[str, object]:
    started = time.monotonic()
    host = urlsplit(url).hostname or ""
    result: dict[str, object] = {"url": url, "resolved": resolved(host)}
    try:
        with OPENER.open(url, timeout=TIMEOUT_S) as resp:
            headers = resp.headers
            body = json.loads(resp.read().decode() or "{}")
            status = resp.status
    except urllib.error.HTTPError as exc:
        headers = exc.headers
        body = {}
        status = exc.code
        result["error"] = exc.read().decode(errors="replace").strip()[:500]
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        result.update(status=None, ok=False, error=f"{type(exc).__name__}: {reason}")
        result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
        return result
    route = headers.get("x-meshlocal-route")
    result.update(
        status=status,
        ok=200 <= status < 300,
        # The replica's own answer when it answered; the proxy's header otherwise.
        replica=body.get("replica") or headers.get("x-meshlocal-replica"),
        route=route or "direct",
        proxy_replica_header=headers.get("x-meshlocal-replica"),
        elapsed_ms=round((time.monotonic() - started) * 1000, 1),
    )
    return result


class Handler(BaseHTTPRequestHandler):
    server_version = "meshlocal-example/1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/healthz":
            self._send(200, {"ok": True})
        elif url.path == "/call":
            n = max(1, min(50, int((query.get("n") or ["1"])[0] or 1)))
            urls = query.get("url") or targets()
            calls = [call(u) for u in urls for _ in range(n)]
            self._send(200, {"caller": replica_name(), "calls": calls})
        elif url.path == "/":
            self._send(
                200,
                {
                    "service": SERVICE,
                    "replica": replica_name(),
                    "port": int(os.environ.get("PORT", "0")),
                    "host": self.headers.get("Host"),
                    "client": self.client_address[0],
                },
            )
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


def worker() -> None:
    interval = float(os.environ.get("INTERVAL", "1"))
    print(f"{replica_name()} calling {', '.join(targets())} every {interval}s", flush=True)
    while True:
        for url in targets():
            c = call(url)
            if c.get("ok"):
                line = f"{url} -> {c['status']} from {c['replica']} via {c['route']}"
            else:
                line = f"{url} -> failed: {c.get('status')} {c.get('error')}"
            print(line, flush=True)
        time.sleep(interval)


def check() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '80')}/healthz"
    try:
        with OPENER.open(url, timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except OSError:
        return 1


def main() -> None:
    if sys.argv[1:] == ["check"]:
        sys.exit(check())
    # PID 1 gets no default SIGTERM handling: exit promptly on `docker stop`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = os.environ.get("PORT")
    if not port:
        worker()
        return
    server = ThreadingHTTPServer(("0.0.0.0", int(port)), Handler)
    server.daemon_threads = True
    print(f"{SERVICE} listening on :{port} as {replica_name()}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
