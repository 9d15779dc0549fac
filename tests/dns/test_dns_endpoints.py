"""Service Connect endpoints over real sockets: one name per server, VIPs and views.

Its own environment (the `mesh` fixture below replaces conftest's, so the
live `server` fixture serves it): `front-end` has the alias
`frontend.local`, which replaces its name; `api` has none; `orders` has
an alias and no VIP. Loopback addresses stand in for replicas:

- CLIENT_IP:  client-1, started with every current endpoint (view None)
- STALE_IP:   client-2, started before `api` existed
- EARLY_IP:   client-3, started before any endpoint existed
- LEGACY_IP:  legacy-1, not a Service Connect client
- FRONT_REPLICA_IP: front-end-1 (front-end is a client too)
"""

from __future__ import annotations

import dataclasses

import dns.rdatatype
import pytest
from dnsmesh import (
    NS,
    PROXY,
    STRANGER_IP,
    FakeUpstream,
    Mesh,
    addresses,
    ask,
    dig,
    rcode,
    service,
    spec,
)

from meshlocal.dns.server import DnsServer
from meshlocal.manifest.model import ServiceType
from meshlocal.naming import NamingModel

FRONT_VIP = "127.255.0.2"
API_VIP = "127.255.0.3"
CLIENT_IP = "127.0.1.2"
STALE_IP = "127.0.1.4"
EARLY_IP = "127.0.1.5"
LEGACY_IP = "127.0.1.3"
FRONT_SD = f"front-end.{NS}"
FRONT_REPLICA_IP = "127.0.1.6"  # front-end-1: a Service Connect client as well
FRONT_IPS = {FRONT_REPLICA_IP, "10.7.0.2"}
ALL_EPS = frozenset({"frontend.local", "api", "orders.local"})
STALE_VIEW = frozenset({"frontend.local", "orders.local"})


def endpoints_mesh() -> Mesh:
    naming = NamingModel(
        spec(
            [
                service(
                    "front-end",
                    ServiceType.LOAD_BALANCED_WEB_SERVICE,
                    port=8080,
                    alias="frontend.local",
                ),
                service("api", port=80),
                service("orders", port=9000, alias="orders.local"),
                service("client", port=None),
                service("legacy", port=7000, connect=False),
            ]
        ),
        vips={"frontend.local": FRONT_VIP, "api": API_VIP},
    )
    mesh = Mesh(naming)
    mesh.add("front-end", 1, FRONT_REPLICA_IP)
    mesh.add("front-end", 2, "10.7.0.2")
    mesh.add("api", 1, "10.8.0.1")
    mesh.add("orders", 1, "10.9.0.1")
    mesh.add("client", 1, CLIENT_IP)
    mesh.add("client", 2, STALE_IP, sc_view=STALE_VIEW)
    mesh.add("client", 3, EARLY_IP, sc_view=frozenset())
    mesh.add("legacy", 1, LEGACY_IP)
    return mesh


@pytest.fixture
def mesh() -> Mesh:
    return endpoints_mesh()


def test_the_fixture_is_what_the_tests_assume(mesh: Mesh) -> None:
    assert mesh.naming.endpoint_names == ALL_EPS
    assert mesh.naming.shadowed_name("front-end") == "front-end"


async def test_a_client_resolves_the_alias_and_not_the_service_name(
    server: DnsServer, upstream: tuple[FakeUpstream, int]
) -> None:
    ok = await ask(server.port, "frontend.local", source=CLIENT_IP)
    assert rcode(ok) == "NOERROR" and addresses(ok) == [FRONT_VIP]
    no = await ask(server.port, "front-end", source=CLIENT_IP)
    assert rcode(no) == "NXDOMAIN"
    assert no.authority and no.authority[0].rdtype == dns.rdatatype.SOA
    out = await dig(server.port, "front-end", source=CLIENT_IP)
    assert out.status == "NXDOMAIN" and out.answers == []
    out = await dig(server.port, "frontend.local", source=CLIENT_IP)
    assert [a[4] for a in out.answers] == [FRONT_VIP]
    # front-end's own replica is a client too: its name is no endpoint for it either
    assert rcode(await ask(server.port, "front-end", source=FRONT_REPLICA_IP)) == "NXDOMAIN"
    # the Service Discovery name still answers the replicas, for any client
    assert set(addresses(await ask(server.port, FRONT_SD, source=CLIENT_IP))) == FRONT_IPS
    # a mesh name never goes upstream, answered or not
    proto, _ = upstream
    assert proto.queries == []


async def test_a_non_client_gets_nxdomain_for_the_alias_and_the_name(
    server: DnsServer, upstream: tuple[FakeUpstream, int]
) -> None:
    for source in (LEGACY_IP, STRANGER_IP):
        for name in ("frontend.local", "front-end"):
            no = await ask(server.port, name, source=source)
            assert rcode(no) == "NXDOMAIN", (source, name)
            assert not no.answer
        assert set(addresses(await ask(server.port, FRONT_SD, source=source))) == FRONT_IPS
    out = await dig(server.port, "frontend.local", source=LEGACY_IP)
    assert out.status == "NXDOMAIN"
    proto, _ = upstream
    assert proto.queries == []


async def test_each_endpoint_answers_its_own_vip(server: DnsServer) -> None:
    got = {}
    for name in ("frontend.local", "api"):
        udp = await ask(server.port, name, source=CLIENT_IP)
        tcp = await ask(server.port, name, source=CLIENT_IP, tcp=True)
        assert addresses(udp) == addresses(tcp)
        got[name] = addresses(udp)
    assert got == {"frontend.local": [FRONT_VIP], "api": [API_VIP]}
    # an endpoint without a VIP answers the resolver's proxy address
    assert addresses(await ask(server.port, "orders.local", source=CLIENT_IP)) == [PROXY]
    # other types for an endpoint: NODATA, not the VIP
    aaaa = await ask(server.port, "api", "AAAA", source=CLIENT_IP)
    assert rcode(aaaa) == "NOERROR" and not aaaa.answer


async def test_an_endpoint_outside_a_replicas_view_is_nxdomain_for_it(server: DnsServer) -> None:
    # client-2 started before api existed: it can't resolve api until replaced ...
    stale = await ask(server.port, "api", source=STALE_IP)
    assert rcode(stale) == "NXDOMAIN" and not stale.answer
    # ... while client-1, same service, gets api's VIP
    assert addresses(await ask(server.port, "api", source=CLIENT_IP)) == [API_VIP]
    # the endpoints client-2 did see resolve as usual, and SD names ignore the view
    assert addresses(await ask(server.port, "frontend.local", source=STALE_IP)) == [FRONT_VIP]
    assert addresses(await ask(server.port, f"api.{NS}", source=STALE_IP)) == ["10.8.0.1"]
    # client-3 started with no endpoint at all: every SC name is NXDOMAIN for it
    for name in sorted(ALL_EPS):
        assert rcode(await ask(server.port, name, source=EARLY_IP)) == "NXDOMAIN", name
    out = await dig(server.port, "api", source=STALE_IP)
    assert out.status == "NXDOMAIN"


async def test_the_answer_cache_tells_replicas_of_one_service_apart(
    server: DnsServer, mesh: Mesh
) -> None:
    # The same question from replicas of one service with different views, over
    # and over (UDP repeats the very same bytes, so the per-packet cache is hit too).
    want = {CLIENT_IP: [API_VIP], STALE_IP: [], EARLY_IP: []}
    for _ in range(3):
        for source, expected in want.items():
            for tcp in (False, True):
                msg = await ask(server.port, "api", source=source, tcp=tcp)
                assert addresses(msg) == expected, (source, tcp)
                assert rcode(msg) == ("NOERROR" if expected else "NXDOMAIN")
    # A replacement of client-2 that starts with every endpoint resolves api at once,
    # on the same address; client-3 keeps its view.
    stale = mesh.registry.by_address(STALE_IP)
    assert stale is not None
    mesh.registry.upsert(dataclasses.replace(stale, container_id="client-2b", sc_view=ALL_EPS))
    mesh.registry.remove(stale.container_id)
    assert addresses(await ask(server.port, "api", source=STALE_IP)) == [API_VIP]
    assert rcode(await ask(server.port, "api", source=EARLY_IP)) == "NXDOMAIN"
    assert addresses(await ask(server.port, "api", source=CLIENT_IP)) == [API_VIP]
