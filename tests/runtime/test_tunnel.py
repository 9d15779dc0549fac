"""Tunnels to a container's port through `docker exec` relays (tunnel.py), on the real engine.

The local engine is made to look remote (MESHLOCAL_ENGINE_REMOTE=1), so
reach() opens a tunnel as it would for a tcp:// or ssh:// engine, and the
bytes go through the same exec relay. One container from the Python base
image serves every test of this module:

- ECHO (0.0.0.0): echoes until the client's end of stream, then closes;
- OWN_ECHO (the container's own address only, as the data plane binds):
  the same, reachable only through the relay's fallback;
- DIGEST (0.0.0.0): reads until the end of stream, then answers
  "<length> <sha256>": an answer proves the client's half-close arrived;
- PEER (own address only): answers the address the connection came from;
- NOTHING: no listener.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import pytest

from meshlocal.errors import RuntimeFailure
from meshlocal.runtime import enginehost, tunnel
from meshlocal.runtime import labels as L
from meshlocal.runtime.dataplane import published_ports
from meshlocal.runtime.engine import ContainerSpec, Engine
from meshlocal.runtime.tunnel import Tunnel, frames, reach

pytestmark = [pytest.mark.docker, pytest.mark.timeout(90)]

ECHO, OWN_ECHO, DIGEST, PEER, NOTHING = 7000, 7001, 7002, 7003, 7009
WAIT = 15.0  # the bound of every socket operation in these tests

SERVER = f"""
import hashlib, socket, socketserver, threading
own = socket.gethostbyname(socket.gethostname())

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)

class Digest(socketserver.BaseRequestHandler):
    def handle(self):
        digest, size = hashlib.sha256(), 0
        while data := self.request.recv(65536):
            digest.update(data)
            size += len(data)
        self.request.sendall(f"{{size}} {{digest.hexdigest()}}".encode())

class Peer(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(self.client_address[0].encode())

socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
for where, handler in [
    (("0.0.0.0", {ECHO}), Echo),
    ((own, {OWN_ECHO}), Echo),
    (("0.0.0.0", {DIGEST}), Digest),
    ((own, {PEER}), Peer),
]:
    server = socketserver.ThreadingTCPServer(where, handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", own, flush=True)
threading.Event().wait()
"""


# -- frames(): Docker's multiplexed stream, on crafted bytes --------------------------------


class Trickle:
    """recv() of `data` at most `chunk` bytes at a time, then b"" (the end)."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data, self.chunk, self.at = data, chunk, 0

    def recv(self, size: int) -> bytes:
        assert size > 0
        out = self.data[self.at : self.at + min(size, self.chunk)]
        self.at += len(out)
        return out


def frame(kind: int, payload: bytes) -> bytes:
    return bytes([kind, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize("chunk", [1, 3, 8, 65536])
def test_frames_splits_the_stream_however_it_arrives(chunk: int) -> None:
    big = os.urandom(70_000)
    stream = (
        frame(1, b"hello")
        + frame(2, b"nothing listens on port 9")
        + frame(1, b"")
        + frame(1, bytes(range(256)))
        + frame(1, big)
    )
    assert list(frames(Trickle(stream, chunk))) == [
        (1, b"hello"),
        (2, b"nothing listens on port 9"),
        (1, b""),
        (1, bytes(range(256))),
        (1, big),
    ]


def test_frames_of_an_empty_stream() -> None:
    assert list(frames(Trickle(b"", 8))) == []


def test_frames_stops_at_a_cut_header() -> None:
    stream = frame(1, b"whole") + frame(1, b"cut")[:5]
    assert list(frames(Trickle(stream, 2))) == [(1, b"whole")]


def test_frames_never_yields_a_cut_payload() -> None:
    stream = frame(1, b"whole") + frame(1, b"0123456789")[:12]
    assert list(frames(Trickle(stream, 4))) == [(1, b"whole")]


def test_frames_on_a_socket() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(WAIT)
        stream = frame(1, b"a" * 100_000) + frame(2, b"err") + frame(1, b"z")

        def write() -> None:
            for at in range(0, len(stream), 999):
                theirs.sendall(stream[at : at + 999])
            theirs.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write)
        writer.start()
        got = list(frames(ours))
        writer.join(WAIT)
    assert got == [(1, b"a" * 100_000), (2, b"err"), (1, b"z")]


# -- a real container behind a tunnel ----------------------------------------------------------


@pytest.fixture(scope="module")
def server(engine: Engine, python_base: str) -> Iterator[str]:
    """The id of the module's server container, labelled and removed at the end."""
    project = f"mltest-{uuid.uuid4().hex[:8]}"
    try:
        cid = engine.run_container(
            ContainerSpec(
                name=f"{project}-tunnel",
                image=python_base,
                labels=L.base_labels(project, "test", L.Role.PROBE),
                command=("python3", "-u", "-c", SERVER),
                ports={ECHO: ("127.0.0.1", 0)},
            )
        )
        deadline = time.monotonic() + 20
        while not any("ready" in line for line in engine.logs(cid)):
            assert time.monotonic() < deadline, engine.logs(cid)
            time.sleep(0.1)
        yield cid
    finally:
        engine.remove_all(project)
        assert engine.list_containers(project) == []


@pytest.fixture
def fresh_tunnels(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[Any, Tunnel]]:
    """reach()'s table of open tunnels, empty, and every tunnel in it closed afterwards."""
    table: dict[Any, Tunnel] = {}
    monkeypatch.setattr(tunnel, "_OPEN", table)
    yield table
    for opened in table.values():
        opened.close()


@pytest.fixture
def remote(
    docker_client: Any, monkeypatch: pytest.MonkeyPatch, fresh_tunnels: dict[Any, Tunnel]
) -> Iterator[Engine]:
    """The local engine, taken for a remote one: reach() tunnels."""
    monkeypatch.setenv(enginehost.REMOTE_ENV, "1")
    engine = Engine.from_env()
    assert engine.remote
    yield engine
    engine.close()


@pytest.fixture
def opened() -> Iterator[Callable[..., Tunnel]]:
    """Tunnel(...), closed after the test."""
    made: list[Tunnel] = []

    def make(*args: Any, **kwargs: Any) -> Tunnel:
        made.append(Tunnel(*args, **kwargs))
        return made[-1]

    yield make
    for t in made:
        t.close()


def connect(url_or_port: str | int) -> socket.socket:
    port = urlparse(url_or_port).port if isinstance(url_or_port, str) else url_or_port
    assert port is not None
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


def until_eof(sock: socket.socket) -> bytes:
    """Everything until the peer's end of stream (each recv bounded by WAIT)."""
    out = bytearray()
    while chunk := sock.recv(65536):
        out += chunk
    return bytes(out)


def assert_closed(sock: socket.socket) -> None:
    """The peer closed the connection: an end of stream, or a reset (within WAIT)."""
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1024) == b""


def exchange(url: str, payload: bytes) -> bytes:
    """Send payload (then the end of stream) while reading everything back."""
    with connect(url) as sock:
        failed: list[BaseException] = []

        def send() -> None:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:  # surfaced by the caller
                failed.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = until_eof(sock)
        sender.join(WAIT)
        assert not failed, failed
        return got


def test_reach_opens_one_tunnel_per_container_port(
    remote: Engine, server: str, fresh_tunnels: dict[Any, Tunnel]
) -> None:
    published = published_ports(remote, server)[ECHO]
    url = reach(remote, server, ECHO, published)
    parsed = urlparse(url)
    assert (parsed.scheme, parsed.hostname) == ("http", "127.0.0.1")
    assert parsed.port not in (None, published)
    assert reach(remote, server, ECHO, published) == url
    other = reach(remote, server, DIGEST, 0)
    assert other != url
    assert sorted(t.port for t in fresh_tunnels.values()) == [ECHO, DIGEST]
    assert exchange(url, b"ping") == b"ping"


def test_every_byte_value_and_a_mebibyte_round_trip(remote: Engine, server: str) -> None:
    url = reach(remote, server, ECHO, 0)
    every = bytes(range(256)) * 4
    assert exchange(url, every) == every
    big = os.urandom(1 << 20) + every  # frames' headers look like data, and data like headers
    got = exchange(url, big)
    assert len(got) == len(big)
    assert got == big


def test_concurrent_connections_keep_their_own_bytes(remote: Engine, server: str) -> None:
    url = reach(remote, server, ECHO, 0)
    payloads = [bytes([n]) * 10 + os.urandom(50_000 + n * 1000) for n in range(8)]
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        results = list(pool.map(lambda p: exchange(url, p), payloads))
    for sent, got in zip(payloads, results, strict=True):
        assert got == sent


def test_client_half_close_still_gets_the_reply(remote: Engine, server: str) -> None:
    """The server answers only after it sees the end of stream: the relay must pass it on."""
    payload = os.urandom(300_000)
    with connect(reach(remote, server, DIGEST, 0)) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        answer = until_eof(sock)
    assert answer.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"


def test_a_conversation_in_turns(remote: Engine, server: str) -> None:
    with connect(reach(remote, server, ECHO, 0)) as sock:
        for n in range(5):
            line = f"turn {n}\n".encode()
            sock.sendall(line)
            got = b""
            while len(got) < len(line):
                chunk = sock.recv(len(line) - len(got))
                assert chunk, "the tunnel closed mid-conversation"
                got += chunk
            assert got == line


def test_server_on_its_own_address_only_is_reached_from_loopback(
    remote: Engine, server: str
) -> None:
    """127.0.0.1 is refused, so the relay connects to the container's address from 127.0.0.1."""
    assert exchange(reach(remote, server, OWN_ECHO, 0), b"fallback") == b"fallback"
    with connect(reach(remote, server, PEER, 0)) as sock:
        assert until_eof(sock) == b"127.0.0.1"


def test_nothing_listening_closes_the_client(
    remote: Engine, server: str, opened: Callable[..., Tunnel]
) -> None:
    t = opened(remote, server, NOTHING)
    started = time.monotonic()
    with connect(t.local_port) as sock:
        assert_closed(sock)
    assert time.monotonic() - started < WAIT


def test_a_gone_container_closes_the_client(remote: Engine, opened: Callable[..., Tunnel]) -> None:
    t = opened(remote, "0" * 64, ECHO)
    with connect(t.local_port) as sock:
        assert_closed(sock)


def test_a_chosen_local_port(remote: Engine, server: str, opened: Callable[..., Tunnel]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    t = opened(remote, server, ECHO, local_port=port)
    assert (t.local_port, t.url) == (port, f"http://127.0.0.1:{port}")
    assert exchange(t.url, b"chosen") == b"chosen"


def test_a_local_port_in_use_is_a_clear_error(remote: Engine, server: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(RuntimeFailure) as info:
            Tunnel(remote, server, ECHO, local_port=port)
    assert f"127.0.0.1:{port}" in info.value.message
    assert info.value.hint is not None and "0 for any" in info.value.hint


def test_a_local_engine_is_reached_on_its_published_port(
    docker_client: Any,
    server: str,
    monkeypatch: pytest.MonkeyPatch,
    fresh_tunnels: dict[Any, Tunnel],
) -> None:
    monkeypatch.setenv(enginehost.REMOTE_ENV, "0")
    engine = Engine.from_env()
    try:
        assert not engine.remote
        published = published_ports(engine, server)[ECHO]
        url = reach(engine, server, ECHO, published)
        assert url == f"http://127.0.0.1:{published}"
        assert fresh_tunnels == {}
        assert exchange(url, b"published") == b"published"
    finally:
        engine.close()


def test_a_closed_tunnel_accepts_no_more_connections(
    remote: Engine, server: str, opened: Callable[..., Tunnel]
) -> None:
    t = opened(remote, server, ECHO)
    assert exchange(t.url, b"before") == b"before"
    t.close()
    with pytest.raises(ConnectionRefusedError):
        connect(t.local_port).close()


def test_a_quiet_connection_outlives_the_engine_client_timeout(
    docker_client: Any,
    server: str,
    monkeypatch: pytest.MonkeyPatch,
    opened: Callable[..., Tunnel],
) -> None:
    monkeypatch.setenv(enginehost.REMOTE_ENV, "1")
    engine = Engine.from_env(timeout=1.0)
    try:
        t = opened(engine, server, ECHO)
        with connect(t.local_port) as sock:
            sock.sendall(b"a")
            assert sock.recv(1) == b"a"
            time.sleep(2.5)  # quiet for longer than the client's 1 s timeout
            sock.sendall(b"b")
            assert sock.recv(1) == b"b"
    finally:
        engine.close()
