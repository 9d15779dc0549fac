"""Unit tests of the pure resolver core and its helpers (no sockets)."""

from __future__ import annotations

import errno
import os
import random
from collections import Counter
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnsmesh import (
    NS,
    PROXY,
    SC_CLIENT_IP,
    STRANGER_IP,
    Mesh,
    mesh_spec,
    populated_mesh,
    service,
    spec,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlocal.dns import resolver as resolver_mod
from meshlocal.dns.resolver import Forward, MeshResolver, name_to_wire, wire_to_text
from meshlocal.dns.server import DnsServer, system_upstreams
from meshlocal.errors import DataPlaneError, MeshlocalError, PortInUse
from meshlocal.naming import NamingModel


def query(name: str, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype).to_wire()


def answer_ips(reply: object) -> set[str]:
    assert isinstance(reply, bytes)
    msg = dns.message.from_wire(reply)
    return {rr.address for rrset in msg.answer for rr in rrset}


@settings(deadline=None)
@given(
    st.lists(
        st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=63),
        min_size=0,
        max_size=3,
    )
)
def test_name_wire_round_trip(labels: list[str]) -> None:
    name = ".".join(labels)
    assert wire_to_text(name_to_wire(name)) == name


@pytest.mark.parametrize(
    "wire", [b"", b"\x03ab", b"\x40" + b"a" * 64 + b"\x00", b"\x01a\x00\x00", b"\x01a"]
)
def test_wire_to_text_rejects_broken_names(wire: bytes) -> None:
    assert wire_to_text(wire) is None


def test_a_dot_inside_a_label_is_not_a_label_boundary() -> None:
    text = wire_to_text(b"\x08api.test\x04demo\x05local\x00")
    assert text == "api\\046test.demo.local"
    assert NamingModel(mesh_spec()).zone_of(text) is None


def test_proxy_address_must_be_ipv4(mesh: Mesh) -> None:
    with pytest.raises(DataPlaneError) as info:
        MeshResolver(mesh.naming, mesh.registry, "not-an-ip")
    assert info.value.hint


def test_outside_names_are_forwarded_and_mesh_names_never(resolver: MeshResolver) -> None:
    out = resolver.answer(query("example.com"), STRANGER_IP)
    assert isinstance(out, Forward) and out.limit == 512
    assert isinstance(resolver.answer(query("example.com"), STRANGER_IP, "tcp"), Forward)
    for name in ("api", f"nope.{NS}", NS, "web.local"):
        assert isinstance(resolver.answer(query(name), STRANGER_IP), bytes), name


def test_replacing_the_naming_model_drops_the_cache(mesh: Mesh) -> None:
    resolver = MeshResolver(mesh.naming, mesh.registry, PROXY)
    assert answer_ips(resolver.answer(query("api"), SC_CLIENT_IP)) == {PROXY}
    # web stops being a Service Connect client
    services = [service("web", port=80, connect=False), service("api", port=8080)]
    resolver.naming = NamingModel(spec(services))
    reply = resolver.answer(query("api"), SC_CLIENT_IP)
    assert isinstance(reply, bytes)
    assert dns.message.from_wire(reply).rcode() == dns.rcode.NXDOMAIN


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver_mod, "CACHE_MAX", 50)
    mesh = populated_mesh()
    resolver = MeshResolver(mesh.naming, mesh.registry, PROXY)
    for i in range(500):
        resolver.answer(query(f"n{i}.{NS}"), STRANGER_IP)
    assert len(resolver._cache) <= 50
    assert answer_ips(resolver.answer(query(f"api.{NS}"), STRANGER_IP))


def test_legacy_namespace(mesh: Mesh) -> None:
    legacy = NamingModel(spec([service("api", port=8080)], legacy=True))
    mesh.naming = legacy
    resolver = MeshResolver(legacy, mesh.registry, PROXY)
    assert answer_ips(resolver.answer(query("api.demo.local"), STRANGER_IP)) == {
        "10.1.0.1",
        "10.1.0.2",
        "10.1.0.3",
    }


def test_apex_answers_soa(resolver: MeshResolver) -> None:
    reply = resolver.answer(query(NS, "SOA"), STRANGER_IP)
    assert isinstance(reply, bytes)
    msg = dns.message.from_wire(reply)
    assert msg.answer[0].rdtype == dns.rdatatype.SOA


def test_system_upstreams_reads_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch example\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n"
        "nameserver bogus\noptions ndots:1\n"
    )
    assert system_upstreams(conf) == [("10.0.0.2", 53), ("fe80::1", 53)]
    assert system_upstreams(tmp_path / "missing") == []


@pytest.mark.parametrize("count", [2, 3, 8, 9, 16, 20])
def test_multivalue_draws_are_uniform_enough(count: int) -> None:
    """Every path (all orders <= 8, listed subsets <= 16, Fisher-Yates beyond) is random."""
    mesh = Mesh(NamingModel(mesh_spec()))
    for i in range(1, count + 1):
        mesh.add("big", i, f"10.2.0.{i}")
    # Seeded: the bounds below would fail falsely about once in a thousand runs.
    resolver = MeshResolver(mesh.naming, mesh.registry, PROXY, rng=random.Random(count))
    wire = query(f"big.{NS}")
    firsts: Counter[str] = Counter()
    members: Counter[str] = Counter()
    draws = 1200
    for _ in range(draws):
        reply = resolver.answer_udp(wire, STRANGER_IP)
        assert isinstance(reply, bytes)
        msg = dns.message.from_wire(reply)
        got = [rr.address for rrset in msg.answer for rr in rrset]
        assert len(got) == min(8, count) == len(set(got))
        firsts[got[0]] += 1
        members.update(got)
    expected_first = draws / count
    assert set(firsts) == {f"10.2.0.{i}" for i in range(1, count + 1)}
    assert all(0.5 * expected_first < n < 1.6 * expected_first for n in firsts.values())
    expected_member = draws * min(8, count) / count
    assert all(0.8 * expected_member < n < 1.2 * expected_member for n in members.values())


def test_long_negative_answer_truncates_without_edns(mesh: Mesh) -> None:
    app, env = "a" * 60, "e" * 60
    model = NamingModel(spec([service("api", port=8080)]))
    model.namespace = f"{env}.{app}.local"  # a long namespace, as long app/env names give
    resolver = MeshResolver(model, mesh.registry, PROXY)
    name = ".".join(["x" * 60, "y" * 60]) + "." + model.namespace
    plain = resolver.answer(dns.message.make_query(name, "A").to_wire(), STRANGER_IP)
    assert isinstance(plain, bytes) and len(plain) <= 512
    msg = dns.message.from_wire(plain)
    assert msg.flags & dns.flags.TC and not msg.authority
    big = dns.message.make_query(name, "A", use_edns=0, payload=1232).to_wire()
    full = resolver.answer(big, STRANGER_IP)
    assert isinstance(full, bytes) and len(full) > 512
    msg = dns.message.from_wire(full)
    assert not msg.flags & dns.flags.TC and msg.rcode() == dns.rcode.NXDOMAIN
    assert msg.authority[0].rdtype == dns.rdatatype.SOA


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        (errno.EADDRINUSE, PortInUse, "already in use"),
        (errno.EACCES, DataPlaneError, "permission denied"),
        (errno.EADDRNOTAVAIL, DataPlaneError, "no such address"),
        (errno.EINVAL, DataPlaneError, "cannot listen"),
    ],
)
def test_bind_errors_say_what_and_how(
    resolver: MeshResolver, code: int, kind: type[MeshlocalError], words: str
) -> None:
    err = DnsServer(resolver, "127.0.0.1", 53)._bind_error(OSError(code, os.strerror(code)))
    assert type(err) is kind and words in err.message and "127.0.0.1:53" in err.message
    if code != errno.EINVAL:
        assert err.hint
