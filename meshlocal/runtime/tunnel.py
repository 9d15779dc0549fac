"""A published port of a remote engine's container, reachable on this machine.

A remote engine publishes the admin API, the public endpoint and the local
SNS/SQS on *its* host's 127.0.0.1, which this machine can't reach (and
publishing them on the remote's other addresses would open the admin API to
its whole network). So each connection to a local listener is carried by
the Docker API itself, as `kubectl port-forward` carries it by the
Kubernetes API: a `docker exec` in the container runs a small relay to the
port on the container's own loopback, with its stdin and stdout as the two
directions. It needs nothing but the engine connection meshlocal already
has (tcp://, TLS or ssh://) and python3 in the container, which the data
plane and the SNS/SQS emulator have.

The cost is one exec per connection (about 50-100 ms to open): fine for the
admin API, a browser and tests; a load test belongs next to the engine.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

from meshlocal.errors import RuntimeFailure
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import Engine, engine_errors

# Runs in the container: stdin -> 127.0.0.1:port -> stdout, both ways, until
# either side closes. Unbuffered raw fds: bytes pass untouched.
# The data plane binds its own address, not the wildcard (serving.py): the
# relay tries loopback, then each of the container's addresses *from*
# 127.0.0.1, so the admin API sees a loopback peer as from a published port.
RELAY = """
import os, socket, sys, threading
port = int(sys.argv[1])
for host in ["127.0.0.1", *sys.argv[2:]]:
    s = socket.socket()
    try:
        if host != "127.0.0.1":
            s.bind(("127.0.0.1", 0))
        s.connect((host, port))
        break
    except OSError:
        s.close()
else:
    sys.exit(f"nothing listens on port {port}")
def up():
    while True:
        b = os.read(0, 65536)
        if not b:
            break
        s.sendall(b)
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
threading.Thread(target=up, daemon=True).start()
while True:
    b = s.recv(65536)
    if not b:
        break
    while b:
        b = b[os.write(1, b):]
"""

_HEADER = struct.Struct(">BxxxL")
# A spare relay holds an idle connection to the port; older ones are not trusted.
SPARE_FOR_S = 10.0  # Docker's stream frame: kind, 3 pad bytes, size


def _raw(sock: Any) -> Any:
    """The object with sendall/recv behind what exec_start(socket=True) returns."""
    return getattr(sock, "_sock", sock)


def _recv_exact(sock: Any, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            return b""
        out += chunk
    return bytes(out)


def frames(sock: Any) -> Iterator[tuple[int, bytes]]:
    """(stream, payload) frames of a non-tty exec's output until it ends."""
    while True:
        header = _recv_exact(sock, _HEADER.size)
        if not header:
            return
        kind, size = _HEADER.unpack(header)
        payload = _recv_exact(sock, size) if size else b""
        if size and not payload:
            return
        yield kind, payload


class Tunnel:
    """127.0.0.1:<local port> here -> 127.0.0.1:<port> inside `container_id`."""

    def __init__(
        self,
        engine: Engine,
        container_id: str,
        port: int,
        *,
        local_port: int = 0,
        spare: bool = False,
    ) -> None:
        self.engine = engine
        self.container_id = container_id
        self.port = port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(("127.0.0.1", local_port))
        except OSError as exc:
            self._listener.close()
            raise RuntimeFailure(
                f"can't listen on 127.0.0.1:{local_port} for a forward: {exc.strerror}",
                hint="choose another local port, or 0 for any",
            ) from None
        self._listener.listen(64)
        self.local_port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._hosts: list[str] | None = None
        # `spare`: keep one relay started ahead, for a port polled often (the admin API).
        self.spare = spare
        self._spare: tuple[float, Any] | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"tunnel-{port}", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            with contextlib.suppress(OSError):
                spare[1].close()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._carry, args=(conn,), daemon=True).start()

    def _relay(self) -> Any:
        """A relay started in the container, connected to the port: its exec socket."""
        with engine_errors(f"forwarding to port {self.port} of {self.container_id[:12]}"):
            if self._hosts is None:  # a data plane keeps its address (dataplane.py)
                info = self.engine.inspect(self.container_id)
                self._hosts = list(info.addresses.values()) if info is not None else []
            made = self.engine.api.exec_create(
                self.container_id,
                ["python3", "-I", "-S", "-c", RELAY, str(self.port), *self._hosts],
                stdin=True,
                stdout=True,
                stderr=True,
                tty=False,
            )
            remote = _raw(self.engine.api.exec_start(made["Id"], socket=True))
            remote.settimeout(None)  # the API client's read timeout would cut idle streams
            return remote

    def _take(self) -> Any:
        """A spare relay when one is fresh (an exec costs 50-100 ms), else a new one."""
        with self._lock:
            spare, self._spare = self._spare, None
        if self.spare and not self._closed.is_set():
            threading.Thread(target=self._refill, daemon=True).start()
        if spare is not None:
            born, remote = spare
            if time.monotonic() - born < SPARE_FOR_S:
                return remote
            with contextlib.suppress(OSError):
                remote.close()
        return self._relay()

    def _refill(self) -> None:
        with contextlib.suppress(Exception):
            remote = self._relay()
            with self._lock:
                if self._closed.is_set():
                    old: tuple[float, Any] | None = (0.0, remote)
                else:
                    old, self._spare = self._spare, (time.monotonic(), remote)
            if old is not None:
                with contextlib.suppress(OSError):
                    old[1].close()

    def _carry(self, conn: socket.socket) -> None:
        try:
            remote = self._take()
        except Exception:  # the engine is gone: the client sees a reset
            conn.close()
            return
        threading.Thread(target=self._up, args=(conn, remote), daemon=True).start()
        try:
            for kind, payload in frames(remote):
                if kind == 1:  # stdout; stderr (2) is the relay's own complaint
                    conn.sendall(payload)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
            conn.close()
            with contextlib.suppress(OSError):
                remote.close()

    @staticmethod
    def _up(conn: socket.socket, remote: Any) -> None:
        try:
            while data := conn.recv(65536):
                remote.sendall(data)
            # The relay sees stdin end. Not through TLS (shutdown() drops the TLS
            # layer and the reply would be read raw) nor ssh: there the end of the
            # connection tells it.
            if type(remote) is socket.socket:
                remote.shutdown(socket.SHUT_WR)
        except OSError:
            pass


_OPEN: dict[tuple[int, str, int], Tunnel] = {}
_LOCK = threading.Lock()


def reach(
    engine: Engine,
    container_id: str,
    port: int,
    published: int,
    *,
    overlay: bool = False,
    spare: bool = False,
) -> str:
    """`http://host:port` of a container's published port, from this machine.

    A local engine's published 127.0.0.1 port as it is; a remote engine's
    through a tunnel, one per (engine, container, port) for this process.
    `overlay`: the container is on a swarm overlay, where a published port
    arrives on another interface (docker_gwbridge) than the one the data
    plane listens on, from an address its admin API refuses: tunnelled too.
    """
    if not engine.remote and not overlay:
        return f"http://127.0.0.1:{published}"
    key = (id(engine), container_id, port)
    with _LOCK:
        tunnel = _OPEN.get(key)
        if tunnel is None:
            tunnel = _OPEN[key] = Tunnel(engine, container_id, port, spare=spare)
    return tunnel.url


def forwarded(engine: Engine, project: str, env: str) -> bool:
    """Whether a mesh's URLs are this process's tunnels (a remote engine, or swarm mode)."""
    return engine.remote or on_overlay(engine, L.network_name(project, env))


def on_overlay(engine: Engine, network: str) -> bool:
    """Whether the named network is a swarm overlay (swarm mode's environment network)."""
    with engine_errors("inspecting networks"):
        found = engine.api.networks(names=[network])
    return any(n.get("Name") == network and n.get("Driver") == "overlay" for n in found)
