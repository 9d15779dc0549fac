"""admin_call's kept-alive connections, against a real HTTP/1.1 server on loopback.

The server records the client port of every request, so a test sees which
connection each call used, and counts requests server-side, so it sees retries.
No Docker.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from meshlocal import adminapi
from meshlocal.adminapi import AdminRefused, admin_call
from meshlocal.errors import DataPlaneError, RuntimeFailure

pytestmark = pytest.mark.timeout(20)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.cond = threading.Condition()
        self.seen: list[tuple[str, str, int, Any]] = []  # method, path, client port, body
        self.open: set[socket.socket] = set()
        self.release = threading.Event()  # ends /hang

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, path: str, method: str | None = None) -> int:
        with self.cond:
            return sum(1 for m, p, _, _ in self.seen if p == path and method in (None, m))

    def ports(self) -> list[int]:
        with self.cond:
            return [port for _, _, port, _ in self.seen]

    def close_idle(self) -> None:
        """Close every client connection server-side, as an idle timeout does."""
        with self.cond:
            for sock in list(self.open):
                sock.shutdown(socket.SHUT_RDWR)
            if not self.cond.wait_for(lambda: not self.open, timeout=5):
                raise AssertionError("the server's handlers did not end within 5 s")

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client gone before /hang answers: expected, not a traceback


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp's admin API does
    timeout = 10  # an abandoned connection's handler ends
    server: Server

    def setup(self) -> None:
        super().setup()
        with self.server.cond:
            self.server.open.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.cond:
                self.server.open.discard(self.connection)
                self.server.cond.notify_all()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        port = self.client_address[1]
        path = urllib.parse.urlsplit(self.path).path
        with self.server.cond:
            self.server.seen.append((self.command, path, port, body))
        if path == "/drop":  # read the request, then close without an answer
            self.close_connection = True
            return
        if path == "/hang":
            self.server.release.wait(10)
        ok = {
            "port": port,
            "method": self.command,
            "body": body,
            "type": self.headers.get("content-type"),
        }
        routes: dict[str, tuple[int, bytes, str]] = {
            "/close": (200, json.dumps(ok).encode(), "application/json"),
            "/refuse": (
                400,
                b'{"error": "error: bad fault spec\\n  hint: latency needs a duration"}',
                "application/json",
            ),
            "/missing": (404, b'{"error": "no fault has id f-9"}', "application/json"),
            "/text404": (404, b"404: Not Found", "text/plain"),
            "/html500": (500, b"<html><body>boom</body></html>", "text/html"),
            "/list400": (400, b"[1, 2]", "application/json"),
            "/other400": (400, b'{"detail": "nope"}', "application/json"),
            "/notjson": (200, b"<html>mesh page</html>", "text/html"),
            "/empty": (200, b"", "application/json"),
        }
        status, payload, ctype = routes.get(
            path, (200, json.dumps(ok).encode(), "application/json")
        )
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        if path == "/close":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_GET
    do_DELETE = do_GET
    do_PUT = do_GET


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield srv
    finally:
        adminapi._drop(srv.url)  # this thread's kept connection to it
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def in_thread(fn: Any, timeout: float = 10) -> Any:
    """fn() in a new thread (a thread of its own keeps no connection yet)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"no answer within {timeout} s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_consecutive_calls_from_one_thread_share_one_connection(server: Server) -> None:
    first = admin_call(server.url, "/v1/state", timeout=5)
    assert first["method"] == "GET" and first["body"] is None
    posted = admin_call(server.url, "/v1/faults", {"kind": "latency", "ms": 5}, timeout=5)
    assert posted["method"] == "POST" and posted["body"] == {"kind": "latency", "ms": 5}
    assert posted["type"] == "application/json"
    assert admin_call(server.url, "/v1/faults/f-1", method="DELETE", timeout=5)["method"] == (
        "DELETE"
    )
    assert admin_call(server.url, "/v1/x", {"a": 1}, method="PUT", timeout=5)["method"] == "PUT"
    for _ in range(10):
        admin_call(server.url, "/healthz", timeout=5)
    ports = server.ports()
    assert len(ports) == 14 and len(set(ports)) == 1, ports
    assert first["port"] == ports[0]


def test_a_connection_the_server_closes_with_its_answer_is_replaced(server: Server) -> None:
    a = admin_call(server.url, "/v1/state", timeout=5)["port"]
    assert admin_call(server.url, "/close", timeout=5)["port"] == a  # Connection: close
    b = admin_call(server.url, "/v1/state", timeout=5)["port"]
    c = admin_call(server.url, "/v1/state", timeout=5)["port"]
    assert b != a and c == b
    assert len(server.seen) == 4  # nothing failed, nothing was sent twice


def test_a_get_on_a_connection_the_server_closed_while_idle_reconnects(server: Server) -> None:
    rounds = 5
    ports = [admin_call(server.url, "/v1/state", timeout=5)["port"]]
    for _ in range(rounds):
        server.close_idle()
        ports.append(admin_call(server.url, "/v1/state", timeout=5)["port"])
        # The new connection is kept in turn.
        assert admin_call(server.url, "/v1/state", timeout=5)["port"] == ports[-1]
    assert len(set(ports)) == rounds + 1
    # The request on the stale connection never reached the server: each arrived once.
    assert server.count("/v1/state") == 2 * rounds + 1


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_a_call_on_a_connection_closed_while_idle_is_sent_once_anew(
    server: Server, method: str
) -> None:
    a = admin_call(server.url, "/v1/state", timeout=5)["port"]
    server.close_idle()
    body = {"kind": "abort"} if method == "POST" else None
    done = admin_call(server.url, "/v1/faults", body, timeout=5, method=method)
    assert done["port"] != a and done["body"] == body
    assert server.count("/v1/faults", method) == 1


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_call_on_a_fresh_connection_that_fails_is_not_retried(
    server: Server, method: str
) -> None:
    body = {"kind": "abort"} if method == "POST" else None

    def call() -> Any:
        return admin_call(server.url, "/drop", body, timeout=5, method=method)

    started = time.monotonic()
    with pytest.raises(DataPlaneError) as caught:
        in_thread(call)
    assert time.monotonic() - started < 5
    assert server.count("/drop") == 1
    assert "does not answer" in caught.value.message and server.url in caught.value.message
    assert not isinstance(caught.value, AdminRefused)


def test_a_get_on_a_kept_connection_that_fails_is_retried_once_and_never_more(
    server: Server,
) -> None:
    admin_call(server.url, "/v1/state", timeout=5)
    with pytest.raises(DataPlaneError, match="does not answer"):
        admin_call(server.url, "/drop", timeout=5)
    # Once on the kept connection, once on a new one: the new one's failure is final.
    assert server.count("/drop") == 2
    assert len({port for _, path, port, _ in server.seen if path == "/drop"}) == 2
    # And the next call starts afresh.
    assert admin_call(server.url, "/v1/state", timeout=5)["method"] == "GET"


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_a_change_the_server_took_on_a_kept_connection_is_not_sent_twice(
    server: Server, method: str
) -> None:
    """The server read it and closed without an answer: it may have acted on it."""
    admin_call(server.url, "/v1/state", timeout=5)
    body = {"kind": "abort"} if method == "POST" else None
    with pytest.raises(DataPlaneError, match="does not answer"):
        admin_call(server.url, "/drop", body, timeout=5, method=method)
    assert server.count("/drop") == 1
    assert admin_call(server.url, "/v1/state", timeout=5)["method"] == "GET"


def test_a_timeout_on_a_kept_connection_is_not_retried(server: Server) -> None:
    a = admin_call(server.url, "/v1/state", timeout=5)["port"]
    started = time.monotonic()
    with pytest.raises(DataPlaneError, match="does not answer"):
        admin_call(server.url, "/hang", timeout=0.3)
    assert time.monotonic() - started < 3
    assert server.count("/hang") == 1  # a slow server is not a stale connection
    server.release.set()
    # The timed-out connection is not used again: its answer may still come.
    assert admin_call(server.url, "/v1/state", timeout=5)["port"] != a


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        # The agent's rendered error: no `error: error:` when it is rendered again.
        ("/refuse", 400, "bad fault spec\n  hint: latency needs a duration"),
        ("/missing", 404, "no fault has id f-9"),
        ("/text404", 404, "HTTP Error 404: Not Found"),
        ("/html500", 500, "HTTP Error 500: Internal Server Error"),
        ("/list400", 400, "HTTP Error 400: Bad Request"),
        ("/other400", 400, "HTTP Error 400: Bad Request"),
    ],
)
def test_error_statuses_are_refusals_with_the_servers_message(
    server: Server, path: str, status: int, message: str
) -> None:
    a = admin_call(server.url, "/v1/state", timeout=5)["port"]
    for body in (None, {"kind": "latency"}):
        with pytest.raises(AdminRefused) as caught:
            admin_call(server.url, path, body, timeout=5)
        assert caught.value.status == status
        assert caught.value.message == message
        assert isinstance(caught.value, RuntimeFailure)
    # A refusal leaves the connection usable: it is kept.
    assert admin_call(server.url, "/v1/state", timeout=5)["port"] == a
    assert server.count(path) == 2  # not retried


def test_a_refusal_renders_once_as_a_fault_error(server: Server) -> None:
    with pytest.raises(AdminRefused) as caught:
        admin_call(server.url, "/refuse", {"kind": "x"}, timeout=5)
    fault = adminapi.fault_refusal(caught.value)
    assert fault.message == "bad fault spec" and fault.hint == "latency needs a duration"
    assert fault.render() == "error: bad fault spec\n  hint: latency needs a duration"


@pytest.mark.parametrize("path", ["/notjson", "/empty"])
def test_a_200_without_json_is_a_data_plane_error(server: Server, path: str) -> None:
    a = admin_call(server.url, "/v1/state", timeout=5)["port"]
    with pytest.raises(DataPlaneError, match="answered no JSON") as caught:
        admin_call(server.url, path, timeout=5)
    assert not isinstance(caught.value, AdminRefused)
    assert server.url in caught.value.message
    assert server.count(path) == 1
    # The answer was complete: the connection goes on.
    assert admin_call(server.url, "/v1/state", timeout=5)["port"] == a


def test_nothing_listening_is_a_data_plane_error_at_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(2):  # nothing stale is left behind by the first failure
            started = time.monotonic()
            with pytest.raises(DataPlaneError) as caught:
                admin_call(url, "/v1/state", timeout=5)
            assert time.monotonic() - started < 2
            assert caught.value.message.startswith(f"the data plane's admin API at {url} ")
            assert caught.value.hint is not None and "meshlocal ps" in caught.value.hint
            assert not isinstance(caught.value, AdminRefused)
    finally:
        adminapi._drop(url)


def test_each_thread_keeps_its_own_connection(server: Server) -> None:
    both = threading.Barrier(2, timeout=5)
    ports: dict[str, list[int]] = {}

    def worker(name: str) -> None:
        mine = ports.setdefault(name, [])
        mine.append(admin_call(server.url, "/v1/state", timeout=5)["port"])
        both.wait()  # both connections are open at once
        mine.append(admin_call(server.url, "/v1/state", timeout=5)["port"])
        mine.append(admin_call(server.url, "/v1/faults", {"n": name}, timeout=5)["port"])
        both.wait()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in ("a", "b")]
    for t in threads:
        t.start()
    main = [admin_call(server.url, "/v1/state", timeout=5)["port"] for _ in range(2)]
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert len(set(ports["a"])) == 1 and len(set(ports["b"])) == 1, ports
    assert len(set(main)) == 1
    assert len({ports["a"][0], ports["b"][0], main[0]}) == 3
    assert len(server.seen) == 8


def test_a_url_and_its_connection_are_per_base_url(server: Server) -> None:
    other = Server()
    thread = threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        a1 = admin_call(server.url, "/v1/state", timeout=5)["port"]
        b1 = admin_call(other.url, "/v1/state", timeout=5)["port"]
        a2 = admin_call(server.url, "/v1/state", timeout=5)["port"]
        b2 = admin_call(other.url, "/v1/state", timeout=5)["port"]
        assert a1 == a2 and b1 == b2
        assert server.count("/v1/state") == 2 and other.count("/v1/state") == 2
    finally:
        adminapi._drop(other.url)
        other.shutdown()
        other.server_close()
        thread.join(5)
