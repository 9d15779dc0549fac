"""The mesh DNS over real sockets, with real clients: dnspython's asyncio client and dig.

Loopback addresses stand in for replicas: 127.0.0.2 is a replica of `web`
(a Service Connect client), 127.0.0.3 of `legacy` (not one), 127.0.0.4 of
nothing at all.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import Counter

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.rdatatype
import dns.resolver
import pytest
from dnsmesh import (
    LONG,
    NON_SC_CLIENT_IP,
    NS,
    PROXY,
    SC_CLIENT_IP,
    STRANGER_IP,
    FakeUpstream,
    Mesh,
    addresses,
    ask,
    dig,
    rcode,
)

from meshlocal.dns.resolver import MeshResolver
from meshlocal.dns.server import DnsServer
from meshlocal.errors import DataPlaneError, PortInUse
from meshlocal.registry import Health, Replica

API = f"api.{NS}"
API_IPS = {"10.1.0.1", "10.1.0.2", "10.1.0.3"}
USERS = f"users.{NS}"  # users' alias: its own Service Discovery name
USERS_IPS = {"10.6.0.1", "10.6.0.2", "10.6.0.3"}
BIG = f"big.{NS}"
BIG_IPS = {f"10.2.0.{i}" for i in range(1, 13)}


def resolver_for(port: int) -> dns.asyncresolver.Resolver:
    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    r.lifetime = 3
    r.cache = None
    return r


# -- Service Discovery ------------------------------------------------------------


async def test_sd_name_answers_every_healthy_replica_with_ttl_10(server: DnsServer) -> None:
    answer = await resolver_for(server.port).resolve(API, "A", source=NON_SC_CLIENT_IP)
    assert {rr.address for rr in answer} == API_IPS
    assert answer.rrset is not None and answer.rrset.ttl == 10
    out = await dig(server.port, API, source=NON_SC_CLIENT_IP)
    assert out.status == "NOERROR" and "aa" in out.flags
    assert {a[4] for a in out.answers} == API_IPS
    assert {a[1] for a in out.answers} == {"10"}


async def test_more_than_8_healthy_gives_a_random_8(server: DnsServer) -> None:
    seen: Counter[str] = Counter()
    sets = set()
    for _ in range(40):
        msg = await ask(server.port, BIG)
        got = addresses(msg)
        assert len(got) == 8 and len(set(got)) == 8
        assert set(got) <= BIG_IPS
        seen.update(got)
        sets.add(frozenset(got))
    # 40 draws of 8 of 12: every replica shows up and the subsets differ
    assert set(seen) == BIG_IPS
    assert len(sets) > 5


async def test_order_is_shuffled_on_every_answer(server: DnsServer) -> None:
    orders = Counter()
    for _ in range(60):
        msg = await ask(server.port, API)
        got = tuple(addresses(msg))
        assert set(got) == API_IPS
        orders[got] += 1
    # 3 records: 6 orders, each with p=1/6; a fixed or rotated order fails this
    assert len(orders) >= 5
    assert max(orders.values()) < 30
    firsts = Counter(o[0] for o in orders.elements())
    assert set(firsts) == API_IPS


async def test_unhealthy_replicas_are_left_out(server: DnsServer, mesh: Mesh) -> None:
    mesh.registry.set_health("api-1-cid", Health.UNHEALTHY)
    mesh.registry.set_health("api-2-cid", Health.STARTING)
    msg = await ask(server.port, API)
    assert addresses(msg) == ["10.1.0.3"]


async def test_no_healthy_replica_fails_open_with_up_to_8(server: DnsServer, mesh: Mesh) -> None:
    for i in range(1, 4):
        mesh.registry.set_health(f"api-{i}-cid", Health.UNHEALTHY)
    assert set(addresses(await ask(server.port, API))) == API_IPS
    for i in range(1, 13):
        mesh.registry.set_health(f"big-{i}-cid", Health.UNHEALTHY)
    got = addresses(await ask(server.port, BIG))
    assert len(set(got)) == 8 and set(got) <= BIG_IPS


async def test_srv_one_record_per_replica_with_its_port(server: DnsServer, mesh: Mesh) -> None:
    mesh.add("api", 4, "10.1.0.4", port=9999)
    msg = await ask(server.port, API, "SRV")
    assert rcode(msg) == "NOERROR"
    srvs = [rr for rrset in msg.answer for rr in rrset]
    assert len(srvs) == 4
    ports = {str(rr.target).split(".")[0]: rr.port for rr in srvs}
    assert ports == {"api-1": 8080, "api-2": 8080, "api-3": 8080, "api-4": 9999}
    assert all(rr.target.to_text().endswith(f".{API}.") for rr in srvs)
    # each target resolves to its replica, in the additional section and on its own
    glue = {rrset.name.to_text(): rrset[0].address for rrset in msg.additional}
    assert glue[f"api-4.{API}."] == "10.1.0.4"
    target = await ask(server.port, f"api-4.{API}")
    assert addresses(target) == ["10.1.0.4"]
    out = await dig(server.port, API, "SRV")
    assert sorted(int(a[6]) for a in out.answers) == [8080, 8080, 8080, 9999]


async def test_srv_answers_follow_the_multivalue_rules(server: DnsServer) -> None:
    msg = await ask(server.port, BIG, "SRV")
    targets = [rr.target.to_text() for rrset in msg.answer for rr in rrset]
    assert len(targets) == 8 and len(set(targets)) == 8


async def test_name_with_no_replicas_is_nxdomain(server: DnsServer) -> None:
    msg = await ask(server.port, f"empty.{NS}")
    assert rcode(msg) == "NXDOMAIN"
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver_for(server.port).resolve(f"empty.{NS}", "A", source=STRANGER_IP)


# -- Service Connect ------------------------------------------------------------------


async def test_sc_names_answer_the_proxy_only_to_sc_clients(server: DnsServer) -> None:
    for name in ("api", "web.local"):
        ok = await ask(server.port, name, source=SC_CLIENT_IP)
        assert addresses(ok) == [PROXY], name
        for other in (NON_SC_CLIENT_IP, STRANGER_IP):
            no = await ask(server.port, name, source=other)
            assert rcode(no) == "NXDOMAIN", (name, other)
            assert no.authority and no.authority[0].rdtype == dns.rdatatype.SOA
    out = await dig(server.port, "api", source=SC_CLIENT_IP)
    assert [a[4] for a in out.answers] == [PROXY]
    out = await dig(server.port, "api", source=NON_SC_CLIENT_IP)
    assert out.status == "NXDOMAIN"


async def test_a_name_an_alias_replaced_is_nxdomain_for_everyone(server: DnsServer) -> None:
    # web's alias web.local is its one endpoint; `web` is no Service Connect name,
    # not even for web's own replica (SC_CLIENT_IP), and never goes upstream.
    for source in (SC_CLIENT_IP, NON_SC_CLIENT_IP, STRANGER_IP):
        no = await ask(server.port, "web", source=source)
        assert rcode(no) == "NXDOMAIN", source
        assert no.authority and no.authority[0].rdtype == dns.rdatatype.SOA


async def test_alias_equal_to_sd_name_depends_on_the_client(server: DnsServer) -> None:
    sc = await ask(server.port, USERS, source=SC_CLIENT_IP)
    assert addresses(sc) == [PROXY]
    non_sc = await ask(server.port, USERS, source=NON_SC_CLIENT_IP)
    assert set(addresses(non_sc)) == USERS_IPS
    res = resolver_for(server.port)
    assert [rr.address for rr in await res.resolve(USERS, "A", source=SC_CLIENT_IP)] == [PROXY]
    # Its bare name is no endpoint (the alias replaced it) ...
    assert rcode(await ask(server.port, "users", source=SC_CLIENT_IP)) == "NXDOMAIN"
    # ... and a server without alias keeps Service Discovery for its SD name.
    assert set(addresses(await ask(server.port, API, source=SC_CLIENT_IP))) == API_IPS


async def test_worker_with_connect_is_an_sc_client(server: DnsServer, mesh: Mesh) -> None:
    mesh.add("worker", 2, "127.0.0.6")
    assert addresses(await ask(server.port, "api", source="127.0.0.6")) == [PROXY]


# -- other answers ----------------------------------------------------------------------


async def test_unknown_name_in_namespace_is_nxdomain_with_soa(server: DnsServer) -> None:
    out = await dig(server.port, f"nope.{NS}")
    assert out.status == "NXDOMAIN"
    assert out.authority and out.authority[0][0] == f"{NS}." and out.authority[0][3] == "SOA"
    msg = await ask(server.port, f"a.b.nope.{NS}", "TXT")
    assert rcode(msg) == "NXDOMAIN"
    assert msg.authority[0].name.to_text() == f"{NS}."


async def test_other_types_for_existing_names_are_nodata(server: DnsServer) -> None:
    for qtype in ("AAAA", "TXT", "MX"):
        msg = await ask(server.port, API, qtype)
        assert rcode(msg) == "NOERROR" and not msg.answer, qtype
        assert msg.authority[0].rdtype == dns.rdatatype.SOA
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver_for(server.port).resolve(API, "AAAA", source=STRANGER_IP)
    out = await dig(server.port, "api", "AAAA", source=SC_CLIENT_IP)
    assert out.status == "NOERROR" and out.answers == []


async def test_names_outside_the_mesh_are_forwarded(
    server: DnsServer, upstream: tuple[FakeUpstream, int]
) -> None:
    proto, _ = upstream
    msg = await ask(server.port, "example.com")
    assert addresses(msg) == ["192.0.2.1"]
    assert [str(q.q.qname) for q in proto.queries] == ["example.com."]
    out = await dig(server.port, "nothing.example.org")
    assert out.status == "NXDOMAIN"
    # mesh names never leave the mesh
    await ask(server.port, f"nope.{NS}")
    await ask(server.port, "api")
    assert len(proto.queries) == 2


async def test_forwarded_answer_keeps_large_records_over_tcp(server: DnsServer) -> None:
    udp = await ask(server.port, "large.example.com", "TXT", edns=None)
    assert udp.flags & dns.flags.TC
    tcp = await ask(server.port, "large.example.com", "TXT", tcp=True)
    assert len([rr for rrset in tcp.answer for rr in rrset]) == 20


async def _refused_within(port: int, name: str, seconds: float) -> float:
    start = time.monotonic()
    msg = await ask(port, name, timeout=seconds + 3)
    elapsed = time.monotonic() - start
    assert rcode(msg) == "REFUSED"
    assert elapsed < seconds
    return elapsed


async def test_no_upstream_is_refused_at_once(resolver: MeshResolver) -> None:
    async with DnsServer(resolver, "127.0.0.1", 0, upstreams=None) as srv:
        await _refused_within(srv.port, "example.com", 0.5)
        tcp = await ask(srv.port, "example.com", tcp=True)
        assert rcode(tcp) == "REFUSED"
        out = await dig(srv.port, "example.com")
        assert out.status == "REFUSED"


async def test_offline_upstream_is_refused_without_waiting(resolver: MeshResolver) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.7", 0))
    dead_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: the kernel answers port unreachable
    async with DnsServer(
        resolver, "127.0.0.1", 0, upstreams=[("127.0.0.7", dead_port)], forward_timeout=3.0
    ) as srv:
        await _refused_within(srv.port, "example.com", 1.5)


async def test_silent_upstream_times_out_to_refused(resolver: MeshResolver) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.8", 0))  # bound, never answers
    try:
        async with DnsServer(
            resolver, "127.0.0.1", 0, upstreams=[silent.getsockname()], forward_timeout=0.8
        ) as srv:
            elapsed = await _refused_within(srv.port, "example.com", 2.5)
            assert elapsed >= 0.7
            assert silent.recv(512)  # the query did go to the configured upstream
    finally:
        silent.close()


@pytest.mark.slow
async def test_silent_upstream_is_refused_after_2_s_by_default(resolver: MeshResolver) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.8", 0))  # bound, never answers
    try:
        # The forward timeout as the data plane uses it: DnsServer's default.
        async with DnsServer(resolver, "127.0.0.1", 0, upstreams=[silent.getsockname()]) as srv:
            elapsed = await _refused_within(srv.port, "example.com", 3.0)
            assert elapsed >= 2.0
            assert silent.recv(512)  # the query did go to the upstream
    finally:
        silent.close()


async def test_names_match_case_insensitively_and_keep_the_question_case(
    server: DnsServer,
) -> None:
    for name in ("ApI.TeSt.DeMo.LoCaL", "API.TEST.DEMO.LOCAL.", "api.test.demo.local."):
        msg = await ask(server.port, name)
        assert set(addresses(msg)) == API_IPS
        q = msg.question[0].name.to_text()
        assert q == name.rstrip(".") + "."
        # every answer's owner repeats the question's exact bytes (0x20)
        assert all(rrset.name.to_text() == q for rrset in msg.answer)
    out = await dig(server.port, "aPi", source=SC_CLIENT_IP)
    assert out.answers[0][0] == "aPi." and out.answers[0][4] == PROXY


# -- transport ------------------------------------------------------------------------------


async def test_udp_truncates_above_512_without_edns(server: DnsServer) -> None:
    name = f"{LONG}.{NS}"
    plain = await ask(server.port, name, "SRV", edns=None)
    assert plain.flags & dns.flags.TC and not plain.answer
    out = await dig(server.port, name, "SRV", extra=["+noedns", "+ignore"])
    assert "tc" in out.flags and out.answers == []
    # dig retries over TCP on TC and gets the whole answer
    full = await dig(server.port, name, "SRV", extra=["+noedns"])
    assert "tc" not in full.flags and len(full.answers) == 8


async def test_udp_honours_the_advertised_edns_size(server: DnsServer) -> None:
    name = f"{LONG}.{NS}"
    big = await ask(server.port, name, "SRV", edns=0, payload=4096)
    assert not big.flags & dns.flags.TC and len(big.answer[0]) == 8
    assert big.edns == 0 and len(big.additional) == 8  # OPT echoed; glue fits
    mid = await ask(server.port, name, "SRV", edns=0, payload=1100)
    assert not mid.flags & dns.flags.TC and len(mid.answer[0]) == 8
    assert not mid.additional  # glue dropped first, without TC (RFC 2181 9)
    small = await ask(server.port, name, "SRV", edns=0, payload=700)
    assert small.flags & dns.flags.TC and not small.answer and small.edns == 0
    out = await dig(server.port, name, "SRV", extra=["+bufsize=700", "+ignore"])
    assert "tc" in out.flags


async def test_tcp_serves_several_queries_per_connection(server: DnsServer) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, local_addr=(SC_CLIENT_IP, 0)
    )
    try:
        names = [USERS, "api", f"nope.{NS}", f"{LONG}.{NS}"]
        for i, name in enumerate(names):  # pipelined: all sent before any read
            wire = dns.message.make_query(name, "SRV" if i == 3 else "A", id=i + 1).to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        replies = []
        for _ in names:
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))[0]
            replies.append(dns.message.from_wire(await reader.readexactly(size)))
        assert [r.id for r in replies] == [1, 2, 3, 4]
        assert addresses(replies[0]) == [PROXY]  # SC client: alias of users
        assert addresses(replies[1]) == [PROXY]
        assert rcode(replies[2]) == "NXDOMAIN"
        assert len(replies[3].answer[0]) == 8 and not replies[3].flags & dns.flags.TC
    finally:
        writer.close()


async def test_tcp_connection_closes_after_idle_timeout(server: DnsServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        wire = dns.message.make_query(API, "A").to_wire()
        writer.write(struct.pack("!H", len(wire)) + wire)
        size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))[0]
        await reader.readexactly(size)
        start = time.monotonic()
        assert await asyncio.wait_for(reader.read(1), 5) == b""  # EOF: closed by the server
        assert 0.5 < time.monotonic() - start < 3.0  # tcp_idle_timeout=1.0 in the fixture
    finally:
        writer.close()


async def test_dnspython_tcp_and_dig_tcp(server: DnsServer) -> None:
    msg = await ask(server.port, API, tcp=True, source=NON_SC_CLIENT_IP)
    assert set(addresses(msg)) == API_IPS
    out = await dig(server.port, API, extra=["+tcp"])
    assert {a[4] for a in out.answers} == API_IPS


# -- registry changes -------------------------------------------------------------------------


async def test_registry_changes_show_in_the_very_next_answer(server: DnsServer, mesh: Mesh) -> None:
    assert set(addresses(await ask(server.port, API))) == API_IPS
    mesh.add("api", 4, "10.1.0.4")
    assert set(addresses(await ask(server.port, API))) == API_IPS | {"10.1.0.4"}
    mesh.registry.set_health("api-4-cid", Health.UNHEALTHY)
    assert set(addresses(await ask(server.port, API))) == API_IPS
    mesh.registry.set_health("api-4-cid", Health.HEALTHY)
    assert "10.1.0.4" in addresses(await ask(server.port, API))
    mesh.registry.set_draining("api-1-cid")
    assert "10.1.0.1" not in addresses(await ask(server.port, API))
    for i in range(1, 5):
        mesh.registry.remove(f"api-{i}-cid")
    assert rcode(await ask(server.port, API)) == "NXDOMAIN"
    # a client that becomes a replica of an SC service changes class at once
    assert rcode(await ask(server.port, "api", source="127.0.0.9")) == "NXDOMAIN"
    mesh.registry.upsert(Replica("web", 2, "web-2-cid", "127.0.0.9", 80))
    assert addresses(await ask(server.port, "api", source="127.0.0.9")) == [PROXY]


# -- binding ------------------------------------------------------------------------------------


async def test_port_in_use_is_a_clear_error(server: DnsServer, resolver: MeshResolver) -> None:
    with pytest.raises(PortInUse) as info:
        await DnsServer(resolver, "127.0.0.1", server.port, upstreams=None).start()
    assert str(server.port) in info.value.message and info.value.hint


async def test_address_not_on_this_machine_is_a_clear_error(resolver: MeshResolver) -> None:
    with pytest.raises(DataPlaneError) as info:
        await DnsServer(resolver, "192.0.2.123", 0, upstreams=None).start()
    assert info.value.hint


@pytest.mark.parametrize("batching", [True, False], ids=["mmsg", "protocol"])
async def test_ipv6_listener(resolver: MeshResolver, batching: bool) -> None:
    srv = DnsServer(resolver, "::1", 0, upstreams=None, udp_batching=batching)
    try:
        await srv.start()
    except DataPlaneError:
        pytest.skip("no IPv6 loopback here")
    try:
        reply = await dns.asyncquery.udp(dns.message.make_query(API, "A"), "::1", 3, srv.port)
        assert set(addresses(reply)) == API_IPS
        # a forwarded name takes the other path back to the client (its v6 address)
        refused = await dns.asyncquery.udp(
            dns.message.make_query("example.com", "A"), "::1", 3, srv.port
        )
        assert rcode(refused) == "REFUSED"
    finally:
        await srv.stop()


async def test_never_forwards_to_itself(resolver: MeshResolver) -> None:
    async with DnsServer(resolver, "0.0.0.0", 0, upstreams=None) as probe:
        port = probe.port  # a port free on every address, for the wildcard server below
    for host, upstream in (("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1")):
        async with DnsServer(resolver, host, port, upstreams=[(upstream, port)]) as srv:
            assert srv.forwarder is None  # a loop to itself is no upstream at all
            await _refused_within(srv.port, "example.com", 0.5)
    async with DnsServer(resolver, "127.0.0.1", port, upstreams=[("127.0.0.1", 53)]) as srv:
        assert srv.forwarder is not None and srv.forwarder.upstreams == [("127.0.0.1", 53)]
