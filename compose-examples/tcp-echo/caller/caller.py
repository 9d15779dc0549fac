"""caller: an HTTP page that talks echo's line protocol through Service Connect.

It dials $ECHO (default `echo:7000`: echo's Service Connect name on its
target port) and shows which echo replica served each connection.

  GET /connections?n=6&lines=3
        n new connections, one after the other. On each: read the greeting,
        send `lines` lines and read their echoes, half-close (shutdown
        SHUT_WR), read the server's bye line, then wait for it to close.
        Reports per connection the replica that greeted it and the replicas
        that echoed its lines (always the same one: TCP mode pins a
        connection to one replica), and a count per replica (round robin
        across connections).
  GET /hold     opens one connection and keeps it open; returns its id and
                the replica it is pinned to.
  GET /held?id=1[&say=text]
                that connection's state: still open, or how it ended (the
                server or the proxy closed it, or reset it); with `say`,
                sends a line on it first and waits for the echo.
  GET /healthz  200

`python3 caller.py check` is the manifest's image.healthcheck.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

SERVICE = os.environ.get("COPILOT_SERVICE_NAME", "caller")
PORT = int(os.environ.get("PORT", "8080"))
ECHO = os.environ.get("ECHO", "echo:7000")
TIMEOUT_S = float(os.environ.get("CALL_TIMEOUT_S", "5"))


def replica_name() -> str:
    host = socket.gethostname()
    index = host.rsplit("-", 1)[-1]
    return f"{SERVICE}-{index}" if index.isdigit() else host


def target() -> tuple[str, int]:
    host, _, port = ECHO.rpartition(":")
    return host, int(port)


def resolved(host: str) -> list[str]:
    """What DNS gives this container for `host`: the endpoint's own address (VIP)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return [f"error: {exc}"]
    return sorted({str(info[4][0]) for info in infos})


def greeting_fields(line: str) -> dict[str, str]:
    """`hello from echo-2 boot=3fa1c2 peer=172.22.0.2` -> replica, boot, peer."""
    words = line.split()
    if words[:2] != ["hello", "from"] or len(words) < 3:
        raise ConnectionError(f"unexpected greeting {line!r}")
    fields = dict(w.split("=", 1) for w in words[3:] if "=" in w)
    return {"replica": words[2], "boot": fields.get("boot", ""), "peer": fields.get("peer", "")}


def read_line(reader: BinaryIO) -> str:
    return reader.readline().decode(errors="replace").rstrip("\r\n")


def one_connection(lines: int) -> dict[str, Any]:
    """Open a connection, send `lines` lines, half-close, read the bye and the close."""
    started = time.monotonic()
    result: dict[str, Any] = {"ok": False}
    try:
        with socket.create_connection(target(), timeout=TIMEOUT_S) as sock:
            reader = sock.makefile("rb")
            greeting = read_line(reader)
            if not greeting:
                raise ConnectionError("closed before the greeting")
            result.update(greeting_fields(greeting))
            replica = result["replica"]
            echoes = []
            for i in range(1, lines + 1):
                sock.sendall(f"line {i}\n".encode())
                echoes.append(read_line(reader))
            sock.shutdown(socket.SHUT_WR)  # half-close: "I am done sending"
            bye = read_line(reader)
            closed = reader.read() == b""  # then the server closes its side
            result.update(
                echoes=echoes,
                echoed_by=sorted({e.split(":", 1)[0] for e in echoes}),
                bye=bye,
                closed_by_server=closed,
                ok=echoes == [f"{replica}: line {i}" for i in range(1, lines + 1)]
                and bye == f"bye from {replica} after {lines} lines"
                and closed,
            )
    except OSError as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


class Held:
    """A connection kept open; a thread reads it and notes how it ends."""

    ids = itertools.count(1)
    all: dict[int, Held] = {}

    def __init__(self) -> None:
        self.sock = socket.create_connection(target(), timeout=TIMEOUT_S)
        self.reader = self.sock.makefile("rb")
        self.info = greeting_fields(read_line(self.reader))
        self.sock.settimeout(None)  # from now on the watcher blocks until the end
        self.id = next(Held.ids)
        self.opened = time.monotonic()
        self.received: list[str] = []
        self.ended: str | None = None
        self.changed = threading.Condition()
        Held.all[self.id] = self
        threading.Thread(target=self.watch, daemon=True).start()

    def watch(self) -> None:
        try:
            for raw in self.reader:
                with self.changed:
                    self.received.append(raw.decode(errors="replace").rstrip("\r\n"))
                    self.changed.notify_all()
            how = "closed (EOF)"
        except OSError as exc:
            how = f"{type(exc).__name__}: {exc}"
        with self.changed:
            self.ended = how
            self.changed.notify_all()
        print(f"held connection {self.id} to {self.info['replica']} ended: {how}", flush=True)

    def say(self, text: str) -> str | None:
        """Send a line; the echo, or None when none came within the timeout."""
        with self.changed:
            seen = len(self.received)
        self.sock.sendall(f"{text}\n".encode())
        with self.changed:
            self.changed.wait_for(
                lambda: len(self.received) > seen or self.ended is not None, TIMEOUT_S
            )
            return self.received[seen] if len(self.received) > seen else None

    def state(self) -> dict[str, Any]:
        with self.changed:
            return {
                "id": self.id,
                **self.info,
                "open": self.ended is None,
                "ended": self.ended,
                "received": list(self.received),
                "open_for_s": round(time.monotonic() - self.opened, 1),
            }


class Handler(BaseHTTPRequestHandler):
    server_version = "meshlocal-tcp-echo/1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/healthz":
            self._send(200, {"ok": True})
        elif url.path == "/connections":
            n = max(1, min(60, int(query.get("n", "6"))))
            lines = max(0, min(100, int(query.get("lines", "3"))))
            conns = [one_connection(lines) for _ in range(n)]
            per_replica = Counter(str(c.get("replica")) for c in conns if c["ok"])
            self._send(
                200,
                {
                    "caller": replica_name(),
                    "target": ECHO,
                    "resolved": resolved(target()[0]),
                    "connections": conns,
                    "per_replica": dict(sorted(per_replica.items())),
                },
            )
        elif url.path == "/hold":
            try:
                held = Held()
            except OSError as exc:
                self._send(502, {"error": f"{type(exc).__name__}: {exc}"})
                return
            self._send(200, held.state())
        elif url.path == "/held":
            found = Held.all.get(int(query.get("id", "0")))
            if found is None:
                self._send(404, {"error": "no such held connection", "ids": sorted(Held.all)})
                return
            body: dict[str, Any] = {}
            if "say" in query:
                try:
                    body["echo"] = found.say(query["say"])
                except OSError as exc:
                    body["echo"] = None
                    body["say_error"] = f"{type(exc).__name__}: {exc}"
            self._send(200, {**found.state(), **body})
        elif url.path == "/":
            self._send(200, {"service": SERVICE, "replica": replica_name(), "target": ECHO})
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
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    print(f"{SERVICE} listening on :{PORT} as {replica_name()}, calling {ECHO}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
