"""DNS faults over real sockets: NXDOMAIN, SERVFAIL and late answers for a Service
Discovery name, per client service, seeded percentages, and their removal.

Loopback addresses stand in for replicas (see dnsmesh.py): 127.0.0.2 is a replica
of `web`, 127.0.0.3 of `legacy`, 127.0.0.4 of nothing.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rdatatype
import pytest
from dnsmesh import (
    NON_SC_CLIENT_IP,
    NS,
    PROXY,
    SC_CLIENT_IP,
    STRANGER_IP,
    addresses,
    ask,
    populated_mesh,
    rcode,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from meshlocal.dns import server as server_mod
from meshlocal.dns.faults import Delayed
from meshlocal.dns.resolver import MeshResolver
from meshlocal.dns.server import DnsServer
from meshlocal.faultparse import check, parse_fault
from meshlocal.faults import Active, Fault, expected_hits
from meshlocal.proxy.promexport import FaultCollector

API = f"api.{NS}"
API_IPS = {"10.1.0.1", "10.1.0.2", "10.1.0.3"}
USERS = f"users.{NS}"
USERS_IPS = {"10.6.0.1", "10.6.0.2", "10.6.0.3"}


def add(resolver: MeshResolver, **fields: Any) -> Fault:
    """A fault as the admin API takes it: parsed, checked, added (no naming passed:
    the table knows the resolver's)."""
    return resolver.faults.add(check(parse_fault(fields), resolver.naming))


def active(resolver: MeshResolver, fault: Fault) -> Active:
    found = resolver.faults.get(fault.id)
    assert found is not None
    return found


def soa_owner(msg: dns.message.Message) -> str:
    assert msg.authority and msg.authority[0].rdtype == dns.rdatatype.SOA
    return str(msg.authority[0].name.to_text())


async def timed(port: int, name: str, **kw: Any) -> tuple[float, dns.message.Message]:
    start = time.perf_counter()
    msg = await ask(port, name, **kw)
    return time.perf_counter() - start, msg


# -- the answers ---------------------------------------------------------------------


async def test_nxdomain_for_one_name_with_the_zone_soa(
    server: DnsServer, resolver: MeshResolver
) -> None:
    normal_nx = await ask(server.port, f"nope.{NS}")  # what an unknown name looks like
    add(resolver, service="api", dns="nxdomain")
    for tcp in (False, True):
        msg = await ask(server.port, API, tcp=tcp)
        assert rcode(msg) == "NXDOMAIN", tcp
        assert msg.flags & dns.flags.AA and not msg.answer
        assert soa_owner(msg) == soa_owner(normal_nx) == f"{NS}."
        assert msg.authority[0][0].to_text() == normal_nx.authority[0][0].to_text()
    # every type of the name, EDNS kept (RFC 6891: an OPT answers an OPT)
    srv = await ask(server.port, API, "SRV", edns=0)
    assert rcode(srv) == "NXDOMAIN" and srv.edns == 0
    # the 0x20 case of the question survives (dnspython checks it)
    assert rcode(await ask(server.port, "ApI.TeSt.DeMo.LoCaL")) == "NXDOMAIN"
    # other names answer as before
    assert set(addresses(await ask(server.port, USERS, source=NON_SC_CLIENT_IP))) == USERS_IPS
    assert addresses(await ask(server.port, "api", source=SC_CLIENT_IP)) == [PROXY]


async def test_servfail_for_one_name(server: DnsServer, resolver: MeshResolver) -> None:
    add(resolver, service="api", dns="servfail")
    for tcp in (False, True):
        msg = await ask(server.port, API, tcp=tcp, edns=0)
        assert rcode(msg) == "SERVFAIL" and not msg.answer and not msg.authority
        assert msg.edns == 0
    assert set(addresses(await ask(server.port, USERS, source=NON_SC_CLIENT_IP))) == USERS_IPS


async def test_only_the_named_client_service_is_affected(
    server: DnsServer, resolver: MeshResolver
) -> None:
    web = add(resolver, service="api", dns="nxdomain", **{"from": "web"})
    legacy = add(resolver, service="users", dns="servfail", **{"from": "legacy"})
    assert rcode(await ask(server.port, API, source=SC_CLIENT_IP)) == "NXDOMAIN"
    for other in (NON_SC_CLIENT_IP, STRANGER_IP):
        assert set(addresses(await ask(server.port, API, source=other))) == API_IPS
    # a client that is no Service Connect client (legacy) can be singled out too
    assert rcode(await ask(server.port, USERS, source=NON_SC_CLIENT_IP)) == "SERVFAIL"
    assert addresses(await ask(server.port, USERS, source=SC_CLIENT_IP)) == [PROXY]
    assert set(addresses(await ask(server.port, USERS, source=STRANGER_IP))) == USERS_IPS
    # only queries from the named client are drawn for
    assert (active(resolver, web).seen, active(resolver, web).hits) == (1, 1)
    assert (active(resolver, legacy).seen, active(resolver, legacy).hits) == (1, 1)


# -- late answers ----------------------------------------------------------------------


async def test_delay_distribution_p50_within_20_percent(
    server: DnsServer, resolver: MeshResolver
) -> None:
    # 100ms: the client shares this loop (and, in CI, the CPUs), so a few ms of its
    # own time must stay small against the delay measured
    fault = add(resolver, service="api", dns="delay", latency="100ms", jitter="25ms")
    for _ in range(3):  # warm up the client and the loop
        await ask(server.port, USERS)
    times: list[float] = []

    async def worker(n: int) -> None:
        for _ in range(n):
            took, msg = await timed(server.port, API)
            assert set(addresses(msg)) == API_IPS  # the normal answer, late
            times.append(took * 1000)

    await asyncio.wait_for(asyncio.gather(*(worker(20) for _ in range(10))), 60)
    assert len(times) == 200
    p50 = statistics.median(times)
    q = statistics.quantiles(times, n=10)
    print(
        f"dns delay 100ms ±25ms over {len(times)} queries: p50 {p50:.1f}ms, "
        f"p10 {q[0]:.1f}ms, p90 {q[-1]:.1f}ms, min {min(times):.1f}ms"
    )
    assert 80 <= p50 <= 120, p50
    assert min(times) >= 74, min(times)  # never earlier than latency - jitter
    assert (active(resolver, fault).seen, active(resolver, fault).hits) == (200, 200)


async def test_a_late_answer_blocks_no_other_query(
    server: DnsServer, resolver: MeshResolver
) -> None:
    add(resolver, service="api", dns="delay", latency="800ms")
    start = time.perf_counter()
    late = asyncio.ensure_future(ask(server.port, API, timeout=5))
    await asyncio.sleep(0.05)
    for _ in range(10):
        took, msg = await timed(server.port, USERS, source=NON_SC_CLIENT_IP)
        assert set(addresses(msg)) == USERS_IPS
        assert took < 0.2, took
    assert not late.done()
    # a second query for the faulted name is late on its own, not after the first
    took, msg = await timed(server.port, API, timeout=5)
    assert 0.75 <= took < 1.5 and set(addresses(msg)) == API_IPS
    assert set(addresses(await late)) == API_IPS
    assert 0.75 <= time.perf_counter() - start < 2.5


async def test_a_late_answer_over_tcp(server: DnsServer, resolver: MeshResolver) -> None:
    add(resolver, service="api", dns="delay", latency="200ms")
    took, msg = await timed(server.port, API, tcp=True)
    assert 0.18 <= took < 1.0 and set(addresses(msg)) == API_IPS


async def test_delay_and_nxdomain_together_give_a_late_nxdomain(
    server: DnsServer, resolver: MeshResolver
) -> None:
    add(resolver, service="api", dns="delay", latency="150ms")
    add(resolver, service="api", dns="nxdomain")
    took, msg = await timed(server.port, API)
    assert rcode(msg) == "NXDOMAIN" and 0.13 <= took < 1.0


@pytest.mark.parametrize("server", [False], indirect=True, ids=["protocol"])
async def test_late_answers_waiting_are_capped(
    server: DnsServer, resolver: MeshResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_mod, "MAX_DELAYED", 3)
    add(resolver, service="api", dns="delay", latency="300ms")
    results = await asyncio.gather(
        *(ask(server.port, API, timeout=1.5) for _ in range(5)), return_exceptions=True
    )
    answered = [r for r in results if isinstance(r, dns.message.Message)]
    assert len(answered) == 3
    assert all(isinstance(r, dns.exception.Timeout) for r in results if r not in answered)
    assert server.dropped_delayed == 2


# -- percentages, counters, removal ------------------------------------------------------


async def test_seeded_percent_hits_exactly_the_expected_queries(
    server: DnsServer, resolver: MeshResolver
) -> None:
    fault = add(resolver, service="api", dns="nxdomain", percent=30, seed=7)
    n = 200
    got = [rcode(await ask(server.port, API)) == "NXDOMAIN" for _ in range(n)]
    # the very sequence a fresh Active with that seed draws, not only the count
    fresh = Active(fault, random.Random(7))
    assert got == [fresh.roll() for _ in range(n)]
    assert sum(got) == expected_hits(30, 7, n)
    assert 0 < sum(got) < n
    act = active(resolver, fault)
    assert (act.seen, act.hits) == (n, sum(got))
    registry = CollectorRegistry()
    registry.register(FaultCollector(resolver.faults))
    labels = {"fault": fault.id, "kind": "dns", "service": "api", "from": ""}
    assert registry.get_sample_value("meshlocal_fault_hits_total", labels) == sum(got)
    assert registry.get_sample_value("meshlocal_fault_seen_total", labels) == n


async def test_a_seeded_jittered_delay_hits_as_expected(
    server: DnsServer, resolver: MeshResolver
) -> None:
    fault = add(
        resolver, service="api", dns="delay", latency="3ms", jitter="2ms", percent=40, seed=11
    )
    n = 60
    for _ in range(n):
        assert set(addresses(await ask(server.port, API))) == API_IPS
    act = active(resolver, fault)
    assert (act.seen, act.hits) == (n, expected_hits(40, 11, n))


async def test_removing_a_fault_restores_answers_at_once_and_caches_stay_clean(
    server: DnsServer, resolver: MeshResolver
) -> None:
    # the UDP packet cache holds this exact query once asked
    query = dns.message.make_query(API, "A", use_edns=False)
    query.id = 4242

    async def same_query() -> dns.message.Message:
        return await dns.asyncquery.udp(query, "127.0.0.1", port=server.port, timeout=3)

    assert set(addresses(await same_query())) == API_IPS
    fault = add(resolver, service="api", dns="nxdomain")
    assert rcode(await same_query()) == "NXDOMAIN"  # the cached answer is bypassed
    assert rcode(await same_query()) == "NXDOMAIN"
    assert resolver.faults.remove(fault.id) == fault
    assert set(addresses(await same_query())) == API_IPS  # and was never replaced
    for tcp in (False, True):
        assert set(addresses(await ask(server.port, API, tcp=tcp))) == API_IPS
    # percent 0: drawn for, never hit
    zero = add(resolver, service="api", dns="servfail", percent=0)
    assert set(addresses(await ask(server.port, API))) == API_IPS
    assert (active(resolver, zero).seen, active(resolver, zero).hits) == (1, 0)
    resolver.faults.clear()
    assert not resolver.faults.dns


async def test_service_connect_faults_leave_dns_alone(
    server: DnsServer, resolver: MeshResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With faults only on Service Connect endpoints, queries never reach the fault code."""

    def boom(*_: object) -> None:
        raise AssertionError("the fault path ran")

    monkeypatch.setattr(resolver, "_dns_hits", boom)
    add(resolver, service="api", refuse=True)
    assert resolver.faults.sc and not resolver.faults.dns
    assert set(addresses(await ask(server.port, API))) == API_IPS
    assert set(addresses(await ask(server.port, API, tcp=True))) == API_IPS
    # the same stub turns into a SERVFAIL when a DNS fault exists: the test can fail
    add(resolver, service="users", dns="nxdomain")
    assert rcode(await ask(server.port, API)) == "SERVFAIL"


async def test_a_new_naming_model_keeps_dns_faults_indexed(
    server: DnsServer, resolver: MeshResolver
) -> None:
    add(resolver, service="api", dns="nxdomain")
    resolver.naming = resolver.naming  # a reconfigure with the same services
    assert rcode(await ask(server.port, API)) == "NXDOMAIN"


def test_the_constructor_takes_the_data_planes_table(resolver: MeshResolver) -> None:
    from meshlocal.faults import FaultTable

    table = FaultTable()  # empty, so falsy: it must still be the one used
    shared = MeshResolver(resolver.naming, resolver._registry, PROXY, faults=table)
    assert shared.faults is table
    assert MeshResolver(resolver.naming, resolver._registry, PROXY).faults is not table


async def test_stopping_the_server_drops_late_answers_quietly(
    server: DnsServer, resolver: MeshResolver
) -> None:
    add(resolver, service="api", dns="delay", latency="500ms")
    late = asyncio.ensure_future(ask(server.port, API, timeout=1.0))
    for _ in range(50):  # bounded: until the server holds the late answer
        if server._delayed:
            break
        await asyncio.sleep(0.01)
    assert len(server._delayed) == 1
    await server.stop()
    assert not server._delayed
    with pytest.raises(dns.exception.Timeout):
        await late


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.binary(min_size=12, max_size=12),
    name=st.sampled_from([API, API.upper(), f"x.{API}", USERS]),
    rdtype=st.sampled_from(["A", "SRV", "AAAA", "ANY"]),
    tail=st.binary(max_size=20),
)
def test_fault_answers_never_raise(head: bytes, name: str, rdtype: str, tail: bytes) -> None:
    """Any header and trailing bytes around a faulted question: an answer or a drop,
    never an exception (the resolver's boundary would hide it as a SERVFAIL)."""
    mesh = populated_mesh()
    res = MeshResolver(mesh.naming, mesh.registry, PROXY)
    for fields in (
        {"dns": "nxdomain"},
        {"dns": "servfail", "from": "web"},
        {"dns": "delay", "latency": "5ms", "jitter": "5ms"},
    ):
        add(res, service="api", **fields)
    query = dns.message.make_query(name, rdtype).to_wire()
    for packet in (query, head + query[12:], query + tail, head[:4] + query[4:] + tail):
        for ip in (SC_CLIENT_IP, STRANGER_IP):
            hits = res._dns_hits(packet, ip)
            if hits:
                reply = res._faulted(hits, packet, ip, False)
                assert reply is None or isinstance(reply, bytes | Delayed)
                if isinstance(reply, Delayed):
                    assert 0 < reply.seconds <= 0.02
                    reply = reply.reply
                if isinstance(reply, bytes):
                    assert reply[:2] == packet[:2] and reply[2] & 0x80
                    dns.message.from_wire(reply)  # well-formed


async def test_a_late_answer_over_tcp_holds_up_no_later_query_on_the_connection(
    server: DnsServer, resolver: MeshResolver
) -> None:
    add(resolver, service="api", dns="delay", latency="500ms")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        start = time.perf_counter()
        for ident, name in ((1, API), (2, USERS), (3, API)):
            q = dns.message.make_query(name, "A", use_edns=False)
            q.id = ident
            wire = q.to_wire()
            writer.write(len(wire).to_bytes(2, "big") + wire)
        await writer.drain()
        writer.write_eof()  # done asking: the late answers must still come

        async def one() -> tuple[float, dns.message.Message]:
            size = int.from_bytes(await reader.readexactly(2), "big")
            msg = dns.message.from_wire(await reader.readexactly(size))
            return time.perf_counter() - start, msg

        got = [await asyncio.wait_for(one(), 3) for _ in range(3)]
    finally:
        writer.close()
    assert got[0][1].id == 2 and got[0][0] < 0.3  # the later query, at once
    assert set(addresses(got[0][1])) == USERS_IPS
    assert {m.id for _, m in got[1:]} == {1, 3}
    assert all(0.45 <= t < 1.5 and set(addresses(m)) == API_IPS for t, m in got[1:])
