"""Helpers for the DNS tests: a hand-made environment, a fake upstream, dig.

The environment is built from model objects directly (not from manifests)
so these tests do not depend on the manifest loader.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
from dnslib import QTYPE, RR, TXT, A, DNSRecord

from meshlocal.manifest.model import (
    Connect,
    Environment,
    EnvironmentSpec,
    Service,
    ServiceType,
    Workspace,
)
from meshlocal.naming import NamingModel
from meshlocal.registry import Health, Replica, ReplicaRegistry

ROOT = Path("/nonexistent/ws")
NS = "test.demo.local"
PROXY = "10.99.0.1"
LONG = "averyveryverylongservicenamethatfillsudp"  # 40 chars: 8 SRV records pass 512 bytes

SC_CLIENT_IP = "127.0.0.2"  # a replica of `web` (connect: true)
NON_SC_CLIENT_IP = "127.0.0.3"  # a replica of `legacy` (connect: false)
STRANGER_IP = "127.0.0.4"  # no replica at all


def service(
    name: str,
    type_: ServiceType = ServiceType.BACKEND_SERVICE,
    port: int | None = 8080,
    connect: bool = True,
    alias: str | None = None,
) -> Service:
    return Service(
        name=name,
        type=type_,
        manifest_path=ROOT / "copilot" / name / "manifest.yml",
        port=port,
        target_port=port,
        connect=Connect(enabled=connect, alias=alias),
    )


def spec(services: Iterable[Service], legacy: bool = False) -> EnvironmentSpec:
    services = tuple(services)
    ws = Workspace(
        root=ROOT,
        app="demo",
        environments={"test": Environment("test", None, legacy)},
        service_manifests={s.name: s.manifest_path for s in services},
    )
    return EnvironmentSpec(workspace=ws, environment=ws.environments["test"], services=services)


def mesh_spec() -> EnvironmentSpec:
    return spec(
        [
            # no alias: its Service Connect name is its own name, `api`
            service("api", port=8080),
            # alias equal to its own SD name (a migration from Service Discovery):
            # SC clients get the proxy, others SD; `users` is no SC name at all
            service("users", port=8081, alias=f"users.{NS}"),
            # an alias replaces the name: `web.local` is its one endpoint, `web` none
            service("web", ServiceType.LOAD_BALANCED_WEB_SERVICE, port=80, alias="web.local"),
            service("legacy", port=9000, connect=False),
            service("big", port=7000),
            service("orders", port=7100, connect=False),
            service("empty", port=6000),
            service(LONG, port=5000, connect=False),
            service("worker", ServiceType.WORKER_SERVICE, port=None),
        ]
    )


@dataclass
class Mesh:
    naming: NamingModel
    registry: ReplicaRegistry = field(default_factory=ReplicaRegistry)

    def add(
        self, svc: str, index: int, address: str, port: int | None = None, **kw: object
    ) -> Replica:
        default = self.naming.services[svc].port
        replica = Replica(
            service=svc,
            index=index,
            container_id=f"{svc}-{index}-cid",
            address=address,
            port=port if port is not None else default,
            **kw,  # type: ignore[arg-type]
        )
        self.registry.upsert(replica)
        return replica


def populated_mesh() -> Mesh:
    mesh = Mesh(NamingModel(mesh_spec()))
    for i in range(1, 4):
        mesh.add("api", i, f"10.1.0.{i}")
    for i in range(1, 4):
        mesh.add("users", i, f"10.6.0.{i}")
    for i in range(1, 13):
        mesh.add("big", i, f"10.2.0.{i}")
    for i in range(1, 3):
        mesh.add("orders", i, f"10.3.0.{i}")
    for i in range(1, 9):
        mesh.add(LONG, i, f"10.4.0.{i}")
    mesh.add("web", 1, SC_CLIENT_IP)
    mesh.add("legacy", 1, NON_SC_CLIENT_IP)
    mesh.add("worker", 1, "10.5.0.1", health=Health.HEALTHY)
    return mesh


# -- fake upstream ----------------------------------------------------------------


class FakeUpstream(asyncio.DatagramProtocol):
    """An upstream resolver on 127.0.0.x that answers a few names and counts queries."""

    def __init__(self) -> None:
        self.queries: list[DNSRecord] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def reply_for(self, data: bytes) -> bytes:
        query = DNSRecord.parse(data)
        self.queries.append(query)
        reply = query.reply()
        name = str(query.q.qname).lower()
        if name == "example.com." and query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        elif name == "large.example.com.":
            for i in range(20):
                reply.add_answer(RR(query.q.qname, QTYPE.TXT, rdata=TXT("x" * 100 + str(i))))
        else:
            reply.header.rcode = 3
        return reply.pack()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.reply_for(data), addr)


async def start_upstream(host: str = "127.0.0.5") -> tuple[FakeUpstream, asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(FakeUpstream, local_addr=(host, 0))
    port = transport.get_extra_info("sockname")[1]

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = proto.reply_for(await reader.readexactly(size))
            writer.write(len(reply).to_bytes(2, "big") + reply)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(tcp, host, port)
    return proto, server, port


# -- dig ------------------------------------------------------------------------------

DIG = shutil.which("dig")


@dataclass
class DigResult:
    status: str
    flags: set[str]
    answers: list[list[str]]  # each: [name, ttl, class, type, rdata...]
    authority: list[list[str]]
    raw: str


async def dig(
    port: int,
    name: str,
    qtype: str = "A",
    *,
    source: str = STRANGER_IP,
    server: str = "127.0.0.1",
    extra: Iterable[str] = (),
) -> DigResult:
    assert DIG, "dig (bind9-dnsutils) is not installed"
    args = [
        DIG,
        f"@{server}",
        "-p",
        str(port),
        "-b",
        source,
        name,
        qtype,
        "+tries=1",
        "+time=3",
        "+nocookie",
        *extra,
    ]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    text = out.decode()
    status, flags = "", set()
    section = ""
    answers: list[list[str]] = []
    authority: list[list[str]] = []
    for line in text.splitlines():
        if "status:" in line:
            status = line.split("status:")[1].split(",")[0].strip()
        if line.startswith(";; flags:"):
            flags = set(line.split("flags:")[1].split(";")[0].split())
        if line.startswith(";; ANSWER SECTION"):
            section = "answer"
        elif line.startswith(";; AUTHORITY SECTION"):
            section = "authority"
        elif line.startswith(";;") or not line.strip():
            section = "" if line.startswith(";; ") and "SECTION" in line else section
            if not line.strip():
                section = ""
        elif section == "answer":
            answers.append(line.split())
        elif section == "authority":
            authority.append(line.split())
    return DigResult(status, flags, answers, authority, text + err.decode())


# -- dnspython -----------------------------------------------------------------------


async def ask(
    port: int,
    name: str,
    rdtype: str = "A",
    *,
    source: str = STRANGER_IP,
    tcp: bool = False,
    edns: int | None = None,
    payload: int = 1232,
    timeout: float = 3.0,
) -> dns.message.Message:
    """One query with dnspython's asyncio client, from `source` (stands in for a replica)."""
    if edns is None:
        q = dns.message.make_query(name, rdtype, use_edns=False)
    else:
        q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload)
    if tcp:
        return await dns.asyncquery.tcp(q, "127.0.0.1", port=port, source=source, timeout=timeout)
    return await dns.asyncquery.udp(
        q, "127.0.0.1", port=port, source=source, timeout=timeout, raise_on_truncation=False
    )


def addresses(msg: dns.message.Message) -> list[str]:
    return [rr.address for rrset in msg.answer for rr in rrset if rrset.rdtype == dns.rdatatype.A]


def rcode(msg: dns.message.Message) -> str:
    return dns.rcode.to_text(msg.rcode())
