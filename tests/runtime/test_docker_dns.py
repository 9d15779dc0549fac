"""What Docker's embedded DNS (127.0.0.11) does on this engine, checked from inside containers.

1. Queries it forwards to a container's configured `dns=` server arrive with the
   CLIENT container's source address, so the mesh DNS can tell clients apart
   (both for a DNS server in a container and for one on the network gateway).
2. Container names, hostnames, network aliases and `<container>.<network>` are
   answered by Docker itself and never reach the configured server: a container
   called (or aliased, or with the hostname) `api` would shadow the mesh.
See docs/docker-notes.md.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerSpec, Engine, NetworkInfo

from . import dnsprobe

pytestmark = pytest.mark.docker
PROBE = Path(dnsprobe.__file__).resolve()


def _labels(project: str, role: L.Role = L.Role.PROBE) -> dict[str, str]:
    return L.base_labels(project, "test", role)


def _run(engine: Engine, spec: ContainerSpec) -> tuple[str, str]:
    """(id, address on the spec's network) of a started container."""
    cid = engine.run_container(spec)
    info = engine.inspect(cid)
    assert info is not None and spec.network is not None
    return cid, info.address_on(spec.network) or ""


def _dns_server(engine: Engine, project: str, net: NetworkInfo, image: str) -> tuple[str, str]:
    cid, addr = _run(
        engine,
        ContainerSpec(
            name=f"{project}-dns",
            image=image,
            labels=_labels(project),
            network=net.name,
            command=("python3", "-u", "/probe.py"),
            binds=(f"{PROBE}:/probe.py:ro",),
        ),
    )
    deadline = time.monotonic() + 20
    while "ready" not in engine.logs(cid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "ready" in engine.logs(cid), engine.logs(cid)
    return cid, addr


def _client(
    engine: Engine, project: str, net: NetworkInfo, image: str, dns: str, n: int = 1
) -> tuple[str, str]:
    return _run(
        engine,
        ContainerSpec(
            name=f"{project}-client{n}",
            image=image,
            labels=_labels(project),
            network=net.name,
            dns=(dns,),
            command=("sleep", "300"),
        ),
    )


def _queries(lines: list[str]) -> list[tuple[str, str, int]]:
    out = []
    for line in lines:
        m = re.fullmatch(r"Q (\S+) (\S+) (\d+)", line.strip())
        if m:
            out.append((m.group(1), m.group(2), int(m.group(3))))
    return out


def test_embedded_dns_forwards_with_the_client_source_address(
    engine: Engine, project: str, busybox_image: str, python_base: str
) -> None:
    net = engine.ensure_network(project, "test")
    server, server_ip = _dns_server(engine, project, net, python_base)
    client1, ip1 = _client(engine, project, net, busybox_image, server_ip, 1)
    client2, ip2 = _client(engine, project, net, busybox_image, server_ip, 2)

    resolv = engine.exec(client1, ["cat", "/etc/resolv.conf"])[1]
    assert "nameserver 127.0.0.11" in resolv  # Docker's embedded DNS sits in between

    _code, out = engine.exec(client1, ["nslookup", "first.meshprobe.test"])
    assert "10.99.99.99" in out, out
    engine.exec(client2, ["nslookup", "second.meshprobe.test"])

    seen = _queries(engine.logs(server, tail=200))
    sources = {name: src for src, name, _ in seen}
    assert sources.get("first.meshprobe.test") == ip1, seen
    assert sources.get("second.meshprobe.test") == ip2, seen
    assert ip1 != ip2


async def test_host_mode_dns_on_the_gateway_sees_client_addresses(
    engine: Engine, project: str, busybox_image: str
) -> None:
    """Host mode: the DNS server binds the network gateway on the host."""
    net = await asyncio.to_thread(engine.ensure_network, project, "test")
    assert net.gateway
    seen: list[tuple[str, str]] = []
    loop = asyncio.get_running_loop()

    class Proto(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            name, _, _ = dnsprobe.parse_question(data)
            seen.append((addr[0], name.lower()))
            self.transport.sendto(dnsprobe.answer(data), addr)  # type: ignore[attr-defined]

    transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=(net.gateway, 53))
    try:
        client, ip = await asyncio.to_thread(
            _client, engine, project, net, busybox_image, net.gateway
        )
        _, out = await asyncio.to_thread(engine.exec, client, ["nslookup", "host.meshprobe.test"])
        assert "10.99.99.99" in out, out
    finally:
        transport.close()
    assert (ip, "host.meshprobe.test") in seen, seen


def test_container_names_and_aliases_shadow_mesh_names(
    engine: Engine, project: str, busybox_image: str, python_base: str
) -> None:
    net = engine.ensure_network(project, "test")
    server, server_ip = _dns_server(engine, project, net, python_base)
    shadow_name = f"{project}-shadow"
    _, shadow_ip = _run(
        engine,
        ContainerSpec(
            name=shadow_name,
            image=busybox_image,
            labels=_labels(project),
            network=net.name,
            aliases=("api", "api.test.kudos.local"),
            hostname="hosty",
            command=("sleep", "300"),
        ),
    )
    client, _ = _client(engine, project, net, busybox_image, server_ip)

    def lookup(name: str) -> str:
        return engine.exec(client, ["nslookup", name])[1]

    # Aliases, the container name, its hostname and `<name>.<network>`: all answered by
    # Docker itself, never forwarded. Hence meshlocal's prefixed names.
    docker_names = (
        "api",
        "api.test.kudos.local",
        shadow_name,
        "hosty",
        f"{shadow_name}.{net.name}",
    )
    for name in docker_names:
        out = lookup(name)
        assert shadow_ip in out and "10.99.99.99" not in out, (name, out)
    # Anything else reaches the configured server.
    assert "10.99.99.99" in lookup("other.meshprobe.test")
    asked = {name for _, name, _ in _queries(engine.logs(server, tail=500))}
    assert "other.meshprobe.test" in asked
    assert not asked & set(docker_names), asked
