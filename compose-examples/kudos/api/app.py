"""kudos api: answers with JSON naming the replica that served the request.

Stdlib only, so it runs on any Python base image. Listens on $PORT (80).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "80"))
KUDOS = ["great demo", "clean deploy", "fast fix", "kind review"]


class Handler(BaseHTTPRequestHandler):
    server_version = "kudos-api/1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": True})
            return
        self._send(
            200,
            {
                "service": os.environ.get("COPILOT_SERVICE_NAME", "api"),
                "replica": socket.gethostname(),
                # The address the client reached: this replica's IP on the network.
                "address": self.connection.getsockname()[0],
                "client": self.client_address[0],
                "host": self.headers.get("Host"),
                "path": self.path,
                "kudos": KUDOS[int(time.time()) % len(KUDOS)],
                "version": os.environ.get("KUDOS_VERSION", "1"),
            },
        )

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.client_address[0]} {format % args}", flush=True)


def main() -> None:
    # PID 1 gets no default SIGTERM handling: exit promptly on `docker stop`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    print(f"api listening on :{PORT} as {socket.gethostname()}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
