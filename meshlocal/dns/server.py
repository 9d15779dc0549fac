"""The asyncio edge of the mesh DNS: UDP and TCP sockets, upstream forwarding.

All answers come from `MeshResolver` (pure). This module only moves bytes:
batched recvmmsg/sendmmsg on Linux (see _mmsg.py) or a DatagramProtocol for
UDP, a length-prefixed stream server for TCP (several
queries per connection, idle timeout), and a forwarder that relays names
outside the mesh to the upstream resolver and never hangs: no upstream
means REFUSED at once, an upstream that does not answer means REFUSED after
the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from meshlocal import prebind
from meshlocal.dns import _mmsg
from meshlocal.dns.faults import Delayed
from meshlocal.dns.resolver import MeshResolver, RateLimitedLog
from meshlocal.dns.wire import REFUSED, Forward, error_reply, question_end, truncated
from meshlocal.errors import DataPlaneError, PortInUse

log = logging.getLogger("meshlocal.dns")

Upstream = tuple[str, int]
T = TypeVar("T")

RESOLV_CONF = Path("/etc/resolv.conf")
UDP_RCVBUF = 4 * 1024 * 1024  # absorbs bursts; the kernel caps it at rmem_max
MAX_DELAYED = 10_000  # late answers waiting (dns delay faults); beyond, drop: clients retry


def system_upstreams(resolv_conf: Path = RESOLV_CONF) -> list[Upstream]:
    """The host's resolvers, from resolv.conf (port 53)."""
    try:
        text = resolv_conf.read_text()
    except OSError:
        return []
    out: list[Upstream] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            address = parts[1].split("%", 1)[0]
            try:
                ipaddress.ip_address(address)
            except ValueError:
                continue
            out.append((address, 53))
    return out


def new_event_loop(use_uvloop: bool | None = None) -> asyncio.AbstractEventLoop:
    """uvloop when installed (the `speed` extra) unless told otherwise."""
    if use_uvloop is not False:
        try:
            import uvloop
        except ImportError:
            if use_uvloop:
                raise
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool | None = None) -> T:
    """asyncio.run with uvloop when available."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(use_uvloop)) as runner:
        return runner.run(main)


# -- forwarding -------------------------------------------------------------


class _UpstreamReply(asyncio.DatagramProtocol):
    """One query's private socket: a fresh source port and ID per query."""

    def __init__(self, query_id: bytes, question: bytes) -> None:
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._id = query_id
        self._question = question.lower()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        # Only an answer to exactly what we asked: anything else is spoofed or stale.
        if (
            len(data) >= 12
            and data[:2] == self._id
            and data[2] & 0x80
            and data[12 : 12 + len(self._question)].lower() == self._question
            and not self.future.done()
        ):
            self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port/host unreachable: the upstream is offline, give up at once.
        if not self.future.done():
            self.future.set_exception(exc)


class Forwarder:
    """Relays a query to the configured upstreams only, within `timeout` seconds."""

    def __init__(
        self, upstreams: Sequence[Upstream], timeout: float = 2.0, max_inflight: int = 256
    ) -> None:
        self.upstreams = list(upstreams)
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.inflight = 0

    async def query(self, packet: bytes, tcp: bool) -> bytes | None:
        """The upstream's answer with the client's ID, or None (answer REFUSED)."""
        if not self.upstreams or self.inflight >= self.max_inflight or len(packet) < 12:
            return None
        self.inflight += 1
        try:
            deadline = time.monotonic() + self.timeout
            for k, upstream in enumerate(self.upstreams):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                share = left / (len(self.upstreams) - k)  # a silent first one leaves time
                with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                    reply = await asyncio.wait_for(self._ask(upstream, packet, tcp), share)
                    if reply is not None:
                        return packet[:2] + reply[2:]
            return None
        finally:
            self.inflight -= 1

    async def _ask(self, upstream: Upstream, packet: bytes, tcp: bool) -> bytes | None:
        query_id = secrets.token_bytes(2)
        query = query_id + packet[2:]
        qend = question_end(packet)
        question = packet[12:qend] if qend > 0 else b""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _UpstreamReply(query_id, question), remote_addr=upstream
        )
        try:
            transport.sendto(query)
            reply = await protocol.future
        finally:
            transport.close()
        if tcp and reply[2] & 0x02:  # truncated: the client came over TCP, so can we
            reply = await self._ask_tcp(upstream, query)
            if reply[:2] != query_id:
                return None
        return reply

    async def _ask_tcp(self, upstream: Upstream, query: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*upstream)
        try:
            writer.write(len(query).to_bytes(2, "big") + query)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            return await reader.readexactly(size)
        finally:
            writer.close()


# -- the server -------------------------------------------------------------


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._answer = server.resolver.answer_udp
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self._answer(data, addr[0])
        if reply.__class__ is bytes:
            self.transport.sendto(reply, addr)  # type: ignore[union-attr]
        elif reply is not None:
            self._server._udp_other(reply, addr)

    def error_received(self, exc: Exception) -> None:
        self._server.errors.warning("dns: udp socket error: %r", exc)


class DnsServer:
    """Mesh DNS over UDP and TCP on one host:port (port 0: any free port)."""

    def __init__(
        self,
        resolver: MeshResolver,
        host: str = "127.0.0.1",
        port: int = 53,
        *,
        upstreams: Sequence[Upstream] | Literal["system"] | None = "system",
        forward_timeout: float = 2.0,
        tcp_idle_timeout: float = 10.0,
        max_tcp_connections: int = 256,
        udp_batching: bool | None = None,
    ) -> None:
        self.resolver = resolver
        self.host = host
        self.port = port
        self._upstreams = upstreams
        self.forward_timeout = forward_timeout
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        # recvmmsg/sendmmsg on Linux (see _mmsg.py); else a DatagramProtocol
        self.udp_batching = _mmsg.available() if udp_batching is None else udp_batching
        self.forwarder: Forwarder | None = None
        self.errors = RateLimitedLog(log)
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_sock: socket.socket | None = None
        self._batched: _mmsg.BatchedUdp | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._delayed: set[asyncio.TimerHandle] = set()
        self.dropped_delayed = 0

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        udp_sock, tcp_sock = self._bind()
        self.port = udp_sock.getsockname()[1]
        try:
            await self._serve(loop, udp_sock, tcp_sock)
        except BaseException:
            await self.stop()
            udp_sock.close()
            tcp_sock.close()
            raise
        upstreams = system_upstreams() if self._upstreams == "system" else self._upstreams
        chosen = [u for u in upstreams or [] if not self._is_self(u)]
        self.forwarder = Forwarder(chosen, self.forward_timeout) if chosen else None

    async def _serve(
        self, loop: asyncio.AbstractEventLoop, udp_sock: socket.socket, tcp_sock: socket.socket
    ) -> None:
        if self.udp_batching:
            self._udp_sock = udp_sock
            self._batched = _mmsg.BatchedUdp(udp_sock, self.resolver.answer_udp, self._udp_other)
            loop.add_reader(udp_sock.fileno(), self._drain)
        else:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=udp_sock
            )
            self._udp = transport
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp_sock)

    def _is_self(self, upstream: Upstream) -> bool:
        """Whether `upstream` is this server (a forwarding loop, not a resolver).

        It is when the port matches and the address is ours: the one we bound,
        or, bound to a wildcard, any address of this machine (for instance the
        host's resolv.conf naming the mesh DNS itself).
        """
        address, port = upstream
        if port != self.port:
            return False
        if address == self.host:
            return True
        try:
            if not ipaddress.ip_address(self.host).is_unspecified:
                return False
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((address, 0))  # binds only to an address of this machine
            return True
        except (OSError, ValueError):
            return False

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        early = prebind.take(self.host, self.port)  # bound before the imports (prebind.py)
        if early is not None:
            for sock in early:
                sock.setblocking(False)
            return early
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise DataPlaneError(
                f"cannot resolve the DNS listen address {self.host!r}: {exc}",
                hint="listen on an IP address of this machine, such as 127.0.0.1",
            ) from exc
        family = infos[0][0]
        attempts = 8 if self.port == 0 else 1  # port 0: UDP's free port may be taken on TCP
        for attempt in range(attempts):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                with contextlib.suppress(OSError):
                    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                udp.bind((self.host, self.port))
                tcp.bind((self.host, udp.getsockname()[1]))
                tcp.listen(128)
                udp.setblocking(False)
                tcp.setblocking(False)
                return udp, tcp
            except OSError as exc:
                udp.close()
                tcp.close()
                if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue
                raise self._bind_error(exc) from exc
        raise AssertionError("unreachable")

    def _bind_error(self, exc: OSError) -> DataPlaneError | PortInUse:
        where = f"{self.host}:{self.port}"
        if exc.errno == errno.EADDRINUSE:
            return PortInUse(
                f"the mesh DNS cannot listen on {where}: the port is already in use",
                hint="stop the program that holds it (`ss -lunp`), or choose another DNS port",
            )
        if exc.errno == errno.EACCES:
            return DataPlaneError(
                f"the mesh DNS may not listen on {where}: permission denied",
                hint="ports below 1024 need root or CAP_NET_BIND_SERVICE; choose a higher port",
            )
        if exc.errno == errno.EADDRNOTAVAIL:
            return DataPlaneError(
                f"the mesh DNS cannot listen on {where}: no such address on this machine",
                hint="listen on an address this machine owns, such as 127.0.0.1",
            )
        return DataPlaneError(f"the mesh DNS cannot listen on {where}: {exc.strerror or exc}")

    async def stop(self) -> None:
        for handle in self._delayed:
            handle.cancel()
        self._delayed.clear()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._udp_sock is not None:
            asyncio.get_running_loop().remove_reader(self._udp_sock.fileno())
            self._udp_sock.close()
            self._udp_sock = None
            self._batched = None
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)
            self._tcp = None

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- UDP -------------------------------------------------------------------

    def _drain(self) -> None:
        try:
            if self._batched is not None:
                self._batched.drain()
        except Exception as exc:  # the boundary: the reader must stay registered
            self.errors.warning("dns: udp batch failed: %r", exc)

    def _udp_other(self, reply: object, addr: tuple[str, int]) -> None:
        if isinstance(reply, Forward):
            self._forward_udp(reply, addr)
        elif isinstance(reply, bytes):
            self._sendto(reply, addr)
        elif isinstance(reply, Delayed):
            self._later(reply, addr)

    def _later(self, delayed: Delayed, addr: tuple[str, int]) -> None:
        """Send a late answer (a dns delay fault) from a timer: nothing waits for it."""
        if len(self._delayed) >= MAX_DELAYED:
            self.dropped_delayed += 1
            return

        def fire() -> None:
            self._delayed.discard(handle)
            self._udp_other(delayed.reply, addr)

        handle = asyncio.get_running_loop().call_later(delayed.seconds, fire)
        self._delayed.add(handle)

    def _sendto(self, reply: bytes, addr: tuple[str, int]) -> None:
        if self._udp is not None:
            self._udp.sendto(reply, addr)
        elif self._udp_sock is not None:
            try:
                self._udp_sock.sendto(reply, addr)
            except OSError as exc:
                self.errors.warning("dns: udp send to %s failed: %r", addr[0], exc)

    # -- forwarding ------------------------------------------------------------

    def _spawn(self, make: Callable[[], Awaitable[None]]) -> None:
        async def wrapped() -> None:
            await make()

        task = asyncio.get_running_loop().create_task(wrapped())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forward_udp(self, forward: Forward, addr: tuple[str, int]) -> None:
        if self.forwarder is None:  # no upstream: refuse at once, never wait
            reply = error_reply(forward.query, REFUSED)
            if reply is not None:
                self._sendto(reply, addr)
            return
        self._spawn(lambda: self._relay_udp(forward, addr))

    async def _relay_udp(self, forward: Forward, addr: tuple[str, int]) -> None:
        reply = await self._relay(forward, tcp=False)
        if reply is not None:
            self._sendto(reply, addr)

    async def _relay(self, forward: Forward, tcp: bool) -> bytes | None:
        reply = None
        if self.forwarder is not None:
            reply = await self.forwarder.query(forward.query, tcp)
        if reply is None:
            return error_reply(forward.query, REFUSED)
        if len(reply) > forward.limit:
            qend = question_end(reply)
            if qend < 0:
                return error_reply(forward.query, REFUSED)
            return truncated(reply, qend, edns=False)
        return reply

    # -- TCP -------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self.max_tcp_connections:
            writer.close()
            return
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        ip = peer[0] if peer else ""
        idle = self.tcp_idle_timeout
        late: set[asyncio.Task[None]] = set()  # answers a dns delay fault holds back
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), idle)
                except TimeoutError:
                    if not late:
                        raise
                    await asyncio.wait(late)  # idle, but answers are still owed
                    continue
                size = int.from_bytes(head, "big")
                message = await asyncio.wait_for(reader.readexactly(size), idle)
                reply = self.resolver.answer(message, ip, "tcp")
                if isinstance(reply, Delayed):
                    # RFC 7766 6.2.1.1: answers may go out of order, so later queries
                    # on this connection need not wait for this one
                    task = asyncio.get_running_loop().create_task(self._late_tcp(reply, writer))
                    late.add(task)
                    task.add_done_callback(late.discard)
                    continue
                if isinstance(reply, Forward):
                    reply = await self._relay(reply, tcp=True)
                if reply is None:
                    break  # not even a header: the stream is out of step
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except asyncio.IncompleteReadError:
            if late:  # done asking (a half-close), still listening: owe it the late answers
                await asyncio.wait(late)
        except (TimeoutError, ConnectionError):
            pass  # idle or reset
        except Exception as exc:  # the boundary: one bad connection never stops the server
            self.errors.warning("dns: tcp connection from %s failed: %r", ip, exc)
        finally:
            for task in late:
                task.cancel()
            self._writers.discard(writer)
            writer.close()

    async def _late_tcp(self, delayed: Delayed, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delayed.seconds)
        reply = delayed.reply
        if isinstance(reply, Forward):
            reply = await self._relay(reply, tcp=True)
        if reply is not None and not writer.is_closing():
            writer.write(len(reply).to_bytes(2, "big") + reply)  # small: no drain
