"""echo: a line protocol over plain TCP, no HTTP anywhere.

Behind Service Connect without AppProtocol (what Copilot deploys), the proxy
picks a replica once per connection and passes the bytes untouched, so any
protocol works. One connection goes like this:

  server: hello from echo-2 boot=3fa1c2 peer=172.22.0.2
  client: any line                   server: echo-2: any line
  client: ...                        server: ...
  client: (half-close: EOF)          server: bye from echo-2 after 2 lines
  server: (closes)

`boot` is random per process, so a replacement replica that gets the same
name (echo-2 again) is still told apart from the one it replaced. `peer` is
who connected: the Service Connect proxy, not the client.

`python3 echo.py check` is the manifest's image.healthcheck: it exits 0 once
this replica's server greets a connection on 127.0.0.1:$PORT.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import socketserver
import sys

SERVICE = os.environ.get("COPILOT_SERVICE_NAME", "echo")
PORT = int(os.environ.get("PORT", "7000"))
BOOT = secrets.token_hex(3)


def replica_name() -> str:
    """`echo-2` from the container hostname `<app>-<hash>-<env>-echo-2`."""
    host = socket.gethostname()
    index = host.rsplit("-", 1)[-1]
    return f"{SERVICE}-{index}" if index.isdigit() else host


REPLICA = replica_name()


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        peer = self.client_address[0]
        lines = 0
        try:
            self.wfile.write(f"hello from {REPLICA} boot={BOOT} peer={peer}\n".encode())
            for raw in self.rfile:  # ends at the client's EOF (its half-close)
                lines += 1
                text = raw.decode(errors="replace").rstrip("\r\n")
                self.wfile.write(f"{REPLICA}: {text}\n".encode())
            # The client has finished sending; this direction is still open.
            self.wfile.write(f"bye from {REPLICA} after {lines} lines\n".encode())
            outcome = "said bye"
        except OSError as exc:  # the peer went away without waiting for the bye
            outcome = type(exc).__name__
        if peer != "127.0.0.1":  # not the health check
            print(f"connection from {peer}: {lines} lines, {outcome}", flush=True)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def check() -> int:
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=2) as sock:
            greeting = sock.makefile("rb").readline()
    except OSError:
        return 1
    return 0 if greeting.startswith(b"hello from ") else 1


def main() -> None:
    if sys.argv[1:] == ["check"]:
        sys.exit(check())
    # PID 1 gets no default SIGTERM handling: exit promptly on `docker stop`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = Server(("0.0.0.0", PORT), Handler)
    print(f"{SERVICE} listening on tcp :{PORT} as {REPLICA} (boot {BOOT})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
