"""The batched UDP edge on its own: one drain() over a queue of real datagrams."""

from __future__ import annotations

import socket

import dns.message
import pytest
from dnsmesh import NON_SC_CLIENT_IP, PROXY, SC_CLIENT_IP, addresses

from meshlocal.dns import _mmsg
from meshlocal.dns.resolver import Forward, MeshResolver

pytestmark = pytest.mark.skipif(not _mmsg.available(), reason="recvmmsg/sendmmsg need Linux")


def udp(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(2)
    return s


def test_one_batch_answers_each_sender_even_around_dropped_and_forwarded(
    resolver: MeshResolver,
) -> None:
    server = udp("127.0.0.1")
    server.setblocking(False)
    a, b = udp(SC_CLIENT_IP), udp(NON_SC_CLIENT_IP)
    others: list[tuple[object, tuple[str, int]]] = []
    batched = _mmsg.BatchedUdp(
        server, resolver.answer_udp, lambda r, addr: others.append((r, addr))
    )
    dest = server.getsockname()
    sends = [
        (a, dns.message.make_query("api", "A", id=1).to_wire()),
        (b, b"\x00\x07"),  # unreadable: dropped, so the later answers shift slots
        (a, dns.message.make_query("api", "A", id=2).to_wire()),
        (a, dns.message.make_query("example.com", "A", id=3).to_wire()),  # forwarded
        (b, dns.message.make_query("web.local", "A", id=4).to_wire()),
        (a, dns.message.make_query("web.local", "A", id=5).to_wire()),
    ]
    for sock, wire in sends:
        sock.sendto(wire, dest)
    try:
        batched.drain()
        got_a = [dns.message.from_wire(a.recv(4096)) for _ in range(3)]
        got_b = [dns.message.from_wire(b.recv(4096))]
        assert [m.id for m in got_a] == [1, 2, 5]
        assert all(addresses(m) == [PROXY] for m in got_a)  # a is a Service Connect client
        assert [m.id for m in got_b] == [4]
        assert got_b[0].rcode() == 3  # b is not: NXDOMAIN
        assert len(others) == 1
        forward, addr = others[0]
        assert isinstance(forward, Forward) and addr == a.getsockname()
        for s in (a, b):
            s.settimeout(0.2)
            with pytest.raises(TimeoutError):
                s.recv(4096)  # nothing extra, nothing duplicated
            s.settimeout(2)
        # the slot mapping is back to identity for the next batch
        b.sendto(dns.message.make_query("api", "A", id=6).to_wire(), dest)
        batched.drain()
        assert dns.message.from_wire(b.recv(4096)).id == 6
    finally:
        for s in (server, a, b):
            s.close()


def test_more_queries_than_one_batch(resolver: MeshResolver) -> None:
    server = udp("127.0.0.1")
    server.setblocking(False)
    client = udp(SC_CLIENT_IP)
    batched = _mmsg.BatchedUdp(server, resolver.answer_udp, lambda r, addr: None)
    count = _mmsg.BATCH * 2 + 5
    try:
        for i in range(count):
            client.sendto(dns.message.make_query("api", "A", id=i).to_wire(), server.getsockname())
        batched.drain()
        ids = [dns.message.from_wire(client.recv(4096)).id for _ in range(count)]
        assert ids == list(range(count))
    finally:
        server.close()
        client.close()
