"""kudos front-end: calls the api both ways and shows which replica answered.

- Service Connect: http://api/ (the client alias, through the mesh proxy)
- Service Discovery: http://api.$COPILOT_SERVICE_DISCOVERY_ENDPOINT/ (port 80,
  straight to a replica's address from DNS)

GET /          an HTML page with both calls
GET /api/calls the same as JSON; ?n=N makes N calls each way (for tests)
GET /healthz   200
Stdlib only. Listens on $PORT (8080).

It degrades gracefully: every api call gives up after $KUDOS_TIMEOUT_S (2 s),
and the page still answers 200, with `"degraded": true` when any call
failed. The page's kudos come from the Service Connect call; when it fails
or times out, they are the last kudos this replica got from the api
(`"source": "last-known-good"`, with its age) or, before any, a placeholder
(`"source": "placeholder"`). tests/test_resilience.py proves it with faults
injected on api (docs/faults.md).
"""

from __future__ import annotations

import html
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PORT = int(os.environ.get("PORT", "8080"))
TIMEOUT_S = float(os.environ.get("KUDOS_TIMEOUT_S", "2"))
# Never send mesh traffic to an HTTP proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PLACEHOLDER = "kudos to you, whoever reads this (the api is not answering)"
# The last kudos the api gave this replica, with when: the fallback's value.
_last_good: dict[str, object] = {}
_last_lock = threading.Lock()


def targets() -> dict[str, str]:
    namespace = os.environ.get("COPILOT_SERVICE_DISCOVERY_ENDPOINT", "")
    return {
        "service-connect": os.environ.get("API_SC_URL", "http://api/"),
        "service-discovery": os.environ.get("API_SD_URL", f"http://api.{namespace}/"),
    }


def call(via: str, url: str) -> dict[str, object]:
    started = time.monotonic()
    result: dict[str, object] = {"via": via, "url": url}
    try:
        with OPENER.open(url, timeout=TIMEOUT_S) as resp:
            body = json.loads(resp.read().decode())
            result.update(
                ok=True,
                status=resp.status,
                replica=body.get("replica"),
                address=body.get("address"),
                seen_client=body.get("client"),
                kudos=body.get("kudos"),
                # meshlocal's proxy names itself; a direct call has no such header.
                route=resp.headers.get("x-meshlocal-route") or "direct",
            )
    except urllib.error.HTTPError as exc:
        result.update(ok=False, status=exc.code, error=f"HTTP {exc.code}")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        result.update(ok=False, status=None, error=f"{type(exc).__name__}: {reason}")
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def calls(n: int) -> dict[str, object]:
    made = {via: [call(via, url) for _ in range(n)] for via, url in targets().items()}
    return {
        "front_end": socket.gethostname(),
        **made,
        "kudos": kudos_from(made["service-connect"]),
        "degraded": any(not c["ok"] for got in made.values() for c in got),
    }


def kudos_from(main: list[dict[str, object]]) -> dict[str, object]:
    """The page's kudos: the api's answer, else the fallback (last known good, placeholder)."""
    good = [c for c in main if c.get("ok") and c.get("kudos")]
    now = time.time()
    with _last_lock:
        if good:
            _last_good.update(text=good[-1]["kudos"], at=now)
            return {"text": good[-1]["kudos"], "source": "api"}
        if _last_good:
            age = round(now - float(_last_good["at"]), 1)  # type: ignore[arg-type]
            return {"text": _last_good["text"], "source": "last-known-good", "age_s": age}
    return {"text": PLACEHOLDER, "source": "placeholder"}


def page(data: dict[str, object]) -> str:
    rows = []
    for via in targets():
        for c in data[via]:  # type: ignore[attr-defined]
            answer = (
                f"replica <b>{html.escape(str(c.get('replica')))}</b> at {c.get('address')}"
                f" (route: {html.escape(str(c.get('route')))})"
                if c.get("ok")
                else f"<span style='color:#b00'>{html.escape(str(c.get('error')))}</span>"
            )
            rows.append(
                f"<tr><td>{via}</td><td><code>{html.escape(str(c['url']))}</code></td>"
                f"<td>{answer}</td><td>{c['elapsed_ms']} ms</td></tr>"
            )
    kudos: dict[str, object] = data["kudos"]  # type: ignore[assignment]
    banner = ""
    if data["degraded"]:
        banner = (
            "<p style='background:#fec;padding:4px'><b>degraded</b>: an api call failed or took"
            f" over {TIMEOUT_S:g} s; showing {html.escape(str(kudos['source']))} kudos</p>"
        )
    return (
        "<!doctype html><title>kudos</title><h1>kudos</h1>" + banner + "<p>kudos: <b>"
        f"{html.escape(str(kudos['text']))}</b> ({html.escape(str(kudos['source']))})</p>"
        f"<p>front-end replica <b>{html.escape(str(data['front_end']))}</b> called the api:</p>"
        "<table border=1 cellpadding=4><tr><th>path</th><th>url</th><th>answered by</th>"
        "<th>time</th></tr>" + "".join(rows) + "</table>"
    )


class Handler(BaseHTTPRequestHandler):
    server_version = "kudos-front-end/1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._send(200, "application/json", b'{"ok": true}')
            return
        n = max(1, min(50, int((parse_qs(url.query).get("n") or ["1"])[0] or 1)))
        data = calls(n)
        if url.path == "/api/calls":
            self._send(200, "application/json", json.dumps(data).encode())
        elif url.path == "/":
            self._send(200, "text/html; charset=utf-8", page(data).encode())
        else:
            self._send(404, "application/json", b'{"error": "not found"}')

    def _send(self, status: int, ctype: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.client_address[0]} {format % args}", flush=True)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    print(f"front-end listening on :{PORT} as {socket.gethostname()}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
