"""Hostile packets: the hypothesis fuzz of the pure core and of the live UDP server,
and the committed corpus as regression tests."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest
from corpus import CORPUS, Q_API, header
from dnsmesh import NS, PROXY, SC_CLIENT_IP, STRANGER_IP, populated_mesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshlocal.dns import _mmsg
from meshlocal.dns.resolver import Forward, MeshResolver
from meshlocal.dns.server import DnsServer, new_event_loop

RCODES = {"NOERROR": 0, "FORMERR": 1, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}


def fresh_resolver() -> MeshResolver:
    mesh = populated_mesh()
    return MeshResolver(mesh.naming, mesh.registry, PROXY)


def check_reply(packet: bytes, reply: object) -> None:
    """What any answer to any packet must look like."""
    assert reply is None or isinstance(reply, bytes | Forward)
    if isinstance(reply, bytes):
        assert len(reply) >= 12
        assert reply[:2] == packet[:2]  # the client's ID
        assert reply[2] & 0x80  # QR
        assert not packet[2] & 0x80  # never answer a response
    if isinstance(reply, Forward):
        assert reply.query == packet


def outcome(reply: object) -> str:
    if reply is None:
        return "drop"
    if isinstance(reply, Forward):
        return "FORWARD"
    assert isinstance(reply, bytes)
    rcode = reply[3] & 0x0F
    if rcode == 0 and reply[10:12] != b"\x00\x00" and reply.endswith(b"\x00\x00\x00"):
        # extended rcode lives in the OPT record's TTL
        opt = reply[-11:]
        if opt[:3] == b"\x00\x00\x29" and opt[5] == 1:
            return "BADVERS"
    return {v: k for k, v in RCODES.items()}.get(rcode, str(rcode))


# -- the corpus: pure core ------------------------------------------------------------------

FORWARDED = {"zero-inside-label", "root-name", "dot-inside-label"}


@pytest.mark.parametrize(
    ("packet", "expected"), [(p, e) for _, p, e in CORPUS], ids=[n for n, _, _ in CORPUS]
)
def test_corpus_pure(packet: bytes, expected: str) -> None:
    resolver = fresh_resolver()
    reply = resolver.answer(packet, STRANGER_IP, "udp")
    check_reply(packet, reply)
    assert outcome(reply) == expected
    assert outcome(resolver.answer(packet, STRANGER_IP, "tcp")) == expected


def test_corpus_includes_a_pointer_chain_that_makes_dnslib_recurse() -> None:
    from dnslib import DNSRecord

    packet = dict((n, p) for n, p, _ in CORPUS)["pointer-chain-recursion"]
    with pytest.raises(RecursionError):
        DNSRecord.parse(packet)


def test_malformed_packets_are_logged_at_a_rate_limit(caplog: pytest.LogCaptureFixture) -> None:
    resolver = fresh_resolver()
    bad = header() + b"\xc0\x0c\x00\x01\x00\x01"
    with caplog.at_level("WARNING", logger="meshlocal.dns"):
        for _ in range(500):
            resolver.answer(bad, STRANGER_IP)
    assert resolver.bad_packets.total == 500
    assert 1 <= len(caplog.records) <= 10
    assert resolver.bad_packets.suppressed == 500 - len(caplog.records)


# -- hypothesis: pure core -----------------------------------------------------------------

label = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
    min_size=1,
    max_size=20,
)
mesh_names = st.sampled_from(
    [
        "api",
        "web",
        "web.local",
        "users",
        f"users.{NS}",
        f"api.{NS}",
        f"big.{NS}",
        f"empty.{NS}",
        f"nope.{NS}",
        NS,
        f"api-1.api.{NS}",
        f"orders.{NS}",
    ]
)


def case_mix(name: str, flips: list[bool]) -> str:
    return "".join(
        c.upper() if f else c for c, f in zip(name, flips + [False] * len(name), strict=False)
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_never_raise(packet: bytes) -> None:
    resolver = fresh_resolver()
    for transport in ("udp", "tcp"):
        check_reply(packet, resolver.answer(packet, STRANGER_IP, transport))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(mesh_names, st.lists(label, min_size=1, max_size=5).map(".".join)),
    flips=st.lists(st.booleans(), max_size=40),
    qtype=st.sampled_from([1, 2, 5, 6, 15, 16, 28, 33, 255, 0, 65535]),
    edns=st.one_of(st.none(), st.integers(0, 65535)),
    source=st.sampled_from([SC_CLIENT_IP, STRANGER_IP, "127.0.0.3"]),
    ident=st.integers(0, 65535),
    rd=st.booleans(),
)
def test_fuzz_valid_queries_keep_id_case_and_question(
    name: str, flips: list[bool], qtype: int, edns: int | None, source: str, ident: int, rd: bool
) -> None:
    resolver = fresh_resolver()
    qname = case_mix(name, flips)
    q = dns.message.make_query(qname, qtype, use_edns=edns is not None, payload=edns or 512)
    q.id = ident
    if not rd:
        q.flags &= ~dns.flags.RD
    wire = q.to_wire()
    reply = resolver.answer(wire, source, "udp")
    check_reply(wire, reply)
    if isinstance(reply, Forward):
        assert resolver.naming.zone_of(qname) is None
        return
    assert isinstance(reply, bytes)
    msg = dns.message.from_wire(reply)
    assert msg.id == ident
    assert bool(msg.flags & dns.flags.RD) == rd
    assert msg.question[0].name.to_text() == q.question[0].name.to_text()  # 0x20 case
    assert (msg.edns >= 0) == (edns is not None)
    limit = max(512, edns or 0)
    assert len(reply) <= limit
    for rrset in msg.answer:
        if rrset.name == msg.question[0].name:
            assert rrset.name.to_text() == q.question[0].name.to_text()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_queries_never_raise(data: st.DataObject) -> None:
    resolver = fresh_resolver()
    base = bytearray(header(ar=1) + Q_API + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base)))
    packet = bytes(base[:cut])
    check_reply(packet, resolver.answer(packet, STRANGER_IP, "udp"))


# -- the live UDP server ---------------------------------------------------------------------


class ThreadedServer:
    """A DnsServer on its own event loop thread, so sync hypothesis tests can hit it."""

    def __init__(self, batching: bool) -> None:
        self.loop = new_event_loop()
        self.server = DnsServer(
            fresh_resolver(), "127.0.0.1", 0, upstreams=None, udp_batching=batching
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def still_answers(self, timeout: float = 3.0) -> None:
        """A valid query from a Service Connect client gets the right answer."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((SC_CLIENT_IP, 0))
            s.settimeout(timeout)
            q = dns.message.make_query("api", "A")
            s.sendto(q.to_wire(), ("127.0.0.1", self.server.port))
            reply = dns.message.from_wire(s.recv(4096))
            assert reply.id == q.id and reply.answer[0][0].address == PROXY


@pytest.fixture(scope="module", params=[True, False], ids=["mmsg", "protocol"])
def live(request: pytest.FixtureRequest) -> Iterator[ThreadedServer]:
    if request.param and not _mmsg.available():
        pytest.skip("recvmmsg/sendmmsg need Linux")
    with ThreadedServer(request.param) as srv:
        yield srv


def _send(port: int, packet: bytes, wait: float = 0.3) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((STRANGER_IP, 0))
        s.settimeout(wait)
        s.sendto(packet, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


@pytest.mark.parametrize(("name", "packet", "expected"), CORPUS, ids=[n for n, _, _ in CORPUS])
def test_corpus_live_udp(live: ThreadedServer, name: str, packet: bytes, expected: str) -> None:
    if len(packet) > 65507:
        pytest.skip("does not fit a UDP datagram")
    reply = _send(live.server.port, packet, 0.3 if expected == "drop" else 3)
    want = "REFUSED" if expected == "FORWARD" else expected  # this server has no upstream
    assert outcome(reply) == want
    live.still_answers()


def test_corpus_live_tcp(live: ThreadedServer) -> None:
    for name, packet, expected in CORPUS:
        with socket.create_connection(("127.0.0.1", live.server.port), timeout=3) as s:
            s.sendall(struct.pack("!H", len(packet)) + packet)
            head = s.recv(2)
            if expected == "drop":
                assert head == b"", name  # unreadable: the connection closes
                continue
            size = struct.unpack("!H", head)[0]
            reply = b""
            while len(reply) < size:
                chunk = s.recv(size - len(reply))
                assert chunk, name
                reply += chunk
            want = "REFUSED" if expected == "FORWARD" else expected
            assert outcome(reply) == want, name
    live.still_answers()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.binary(min_size=0, max_size=300))
def test_fuzz_live_udp_server_keeps_answering(live: ThreadedServer, packet: bytes) -> None:
    """Each hostile datagram is followed by a valid query that must be answered.

    So the server is proven alive during the fuzz and after its last packet,
    in this test alone (no reliance on a later test, lost under -k or xdist).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((STRANGER_IP, 0))
        s.settimeout(0.05)
        s.sendto(packet, ("127.0.0.1", live.server.port))
        try:
            reply = s.recv(65535)
        except TimeoutError:
            reply = None  # dropping a hostile packet is allowed
    if reply is not None:
        assert reply[:2] == packet[:2] and reply[2] & 0x80
    live.still_answers(timeout=1.0)


def test_live_server_answers_after_the_fuzz(live: ThreadedServer) -> None:
    live.still_answers()
    reply = _send(live.server.port, dns.message.make_query(f"nope.{NS}", "A").to_wire(), 3)
    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.NXDOMAIN
