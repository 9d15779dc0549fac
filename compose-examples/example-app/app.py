"""A tiny mesh app: serves its own identity and calls other services.

One file serves every service of the small examples (each example's app/ is a
link to this directory; tests/examples checks they stay one). Stdlib only, so
it runs on any Python base image.

With $PORT set it is an HTTP server:

  GET /            JSON naming this replica: {"service", "replica", "port",
                   "host", "peer", "local"}: "peer" is the address the
                   connection came from, "local" the address it arrived at.
  GET /call?n=N    calls each URL of $TARGETS N times, one new connection per
                   call, and reports for each call the address it dialled, the
                   replica that answered and the route (below).
  GET /call?url=U  the same for one URL U instead of $TARGETS
  GET /healthz     200

How a call is classified. Copilot sets no AppProtocol, so Service Connect
proxies each endpoint as TCP: it picks a replica per connection and passes the
bytes untouched, adding no header. So the route comes from addresses, not
headers: the caller knows the address it dialled and its own source address,
and the replica that answers reports the peer it saw and the address it was
reached at (GET /). The call went through Service Connect ("service-connect")
when something else relayed it: the replica saw a peer that is not the caller,
or the caller dialled an address that is not the replica's own (the
endpoint's address). Otherwise it went straight to a replica ("direct").
"unknown" means the answer carried no such report. `mode` is "http" when the
proxy's x-meshlocal-route header is there (an endpoint with AppProtocol http,
proxied per request, which also sets x-meshlocal-replica, reported as
`proxy_replica_header`), "tcp" for other service-connect calls, None for
direct ones.

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

import http.client
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SERVICE = os.environ.get("COPILOT_SERVICE_NAME", "app")
TIMEOUT_S = float(os.environ.get("CALL_TIMEOUT_S", "3"))
# The health check never goes to an HTTP proxy from the environment.
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
    """What DNS gives this container for `host` (an endpoint's address, or the replicas')."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return [f"error: {exc}"]
    return sorted({str(info[4][0]) for info in infos})


def call(url: str) -> dict[str, object]:
    """One GET of `url` on a new connection, and what it went through."""
    started = time.monotonic()
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    result: dict[str, object] = {"url": url, "resolved": resolved(host)}
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    # http.client, not urllib: it uses no HTTP proxy from the environment, and
    # its socket tells which address was dialled and from which address.
    conn = kind(host, port, timeout=TIMEOUT_S)
    try:
        conn.connect()
        assert conn.sock is not None
        dialled = str(conn.sock.getpeername()[0])
        source = str(conn.sock.getsockname()[0])
        result.update(dialled=f"{dialled}:{port}", source=source)
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        raw = resp.read()
        status, headers = resp.status, resp.headers
    except (OSError, http.client.HTTPException) as exc:
        result.update(status=None, ok=False, error=f"{type(exc).__name__}: {exc}")
        result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
        return result
    finally:
        conn.close()
    try:
        body = json.loads(raw.decode() or "{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    if not 200 <= status < 300:
        result["error"] = raw.decode(errors="replace").strip()[:500]
    peer, local = body.get("peer"), body.get("local")
    header_route = headers.get("x-meshlocal-route")
    if header_route:  # an http-mode endpoint: the proxy answered per request
        route, mode = header_route, "http"
    elif peer is None or local is None:  # no report from a replica of this app
        route, mode = "unknown", None
    elif peer != source or local != dialled:  # relayed by the Service Connect proxy
        route, mode = "service-connect", "tcp"
    else:
        route, mode = "direct", None
    result.update(
        status=status,
        ok=200 <= status < 300,
        # The replica's own answer when it answered; the proxy's header otherwise.
        replica=body.get("replica") or headers.get("x-meshlocal-replica"),
        route=route,
        mode=mode,
        peer=peer,
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
                    # Who connected (the caller, or the proxy that relayed it)
                    # and the address the connection arrived at (this replica's own).
                    "peer": self.client_address[0],
                    "local": self.connection.getsockname()[0],
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
                how = f"{c['route']}, {c['mode']}" if c.get("mode") else c["route"]
                line = (
                    f"{url} -> {c['status']} from {c['replica']} via {how} "
                    f"(dialled {c['dialled']}, {c['replica']} saw {c['peer']})"
                )
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
