"""The mesh DNS resolver: a pure `bytes -> bytes` core, no I/O.

`MeshResolver.answer(packet, client_ip, transport)` returns the bytes to
send back, `None` to drop the packet, or a `Forward` for names outside the
mesh. The asyncio edge (server.py) only moves bytes.

Hot path: a query with a header, one IN question and at most an OPT record
is sliced by hand; its answer comes from a cache of pre-packed records keyed
on (lower-cased wire name, qtype, client class). A reply is the request's ID
and question bytes (so the 0x20 case survives) followed by records whose
owner is a compression pointer to offset 12, the question name. Shuffling a
multivalue answer is just reordering those byte strings. Over UDP a second
cache keyed on (query bytes after the ID, client address) skips even the
slicing. Both are dropped whenever `registry.version` moves or the naming
model is replaced,
so a registry change shows in the very next answer. Anything unusual falls
back to dnslib; any exception there is a FORMERR or a drop, never a crash.

DNS faults (dns/faults.py) come before both caches, and only while the
data plane's `FaultTable` has some: a faulted answer is never cached, and a
late one comes back as `Delayed` for the server to send.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import struct
import time
from collections.abc import Callable, Sequence
from typing import Literal

from dnslib import DNSRecord

from meshlocal.dns.faults import Delayed, act, question_wire, wire_names
from meshlocal.dns.wire import (
    _OPT,
    _OPT_TYPE,
    _PTR_QNAME,
    C_IN,
    EDNS_SIZE,
    FORMERR,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    T_A,
    T_ANY,
    T_OPT,
    T_SOA,
    T_SRV,
    TCP_MAX,
    UDP_MIN,
    Forward,
    _head,
    _ipv4,
    _rr,
    error_reply,
    name_to_wire,
    question_end,
    truncated,
    wire_to_text,
)
from meshlocal.errors import DataPlaneError
from meshlocal.faults import Active, FaultTable
from meshlocal.naming import NamingModel, TargetKind
from meshlocal.registry import Health, Replica, ReplicaRegistry

log = logging.getLogger("meshlocal.dns")

Transport = Literal["udp", "tcp"]

TTL = 10  # Cloud Map's default for Copilot-registered records
MAX_ANSWERS = 8  # Cloud Map multivalue answers carry at most 8 records
CACHE_MAX = 20_000  # entries; cleared when full so random names cannot grow it
PACKET_KEY_MAX = 512  # bigger queries (padding, options) are answered but never cached


_ONE_Q = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_ONE_Q_EDNS = b"\x00\x01\x00\x00\x00\x00\x00\x01"
_QCLASS_IN = b"\x00\x01"


Plain = bytes | Forward | None
Reply = Plain | Delayed  # Delayed: a dns delay fault (dns/faults.py)


class RateLimitedLog:
    """At most `burst` warnings per `interval` seconds; counts the rest."""

    def __init__(self, logger: logging.Logger, burst: int = 10, interval: float = 60.0) -> None:
        self._logger = logger
        self._burst = burst
        self._interval = interval
        self._window = 0.0
        self._count = 0
        self.suppressed = 0
        self.total = 0

    def warning(self, msg: str, *args: object) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self._window >= self._interval:
            if self.suppressed:
                self._logger.warning("%d similar messages suppressed", self.suppressed)
            self._window, self._count, self.suppressed = now, 0, 0
        if self._count < self._burst:
            self._count += 1
            self._logger.warning(msg, *args)
        else:
            self.suppressed += 1


# -- cached answers --------------------------------------------------------


@functools.cache
def _permutations(n: int) -> list[tuple[int, ...]]:
    return list(itertools.permutations(range(n)))


@functools.cache
def _combinations(n: int) -> list[tuple[int, ...]]:
    return list(itertools.combinations(range(n), MAX_ANSWERS))


class _Entry:
    """A pre-packed answer for one (name, qtype, client class).

    Static answers keep their records joined in `body`. Multivalue answers
    keep a `pool` of record byte strings and draw `k` of them per reply.
    """

    __slots__ = (
        "bodies",
        "body",
        "combos",
        "extra",
        "forward",
        "heads",
        "k",
        "ns",
        "perms",
        "pool",
        "rcode",
    )

    def __init__(
        self,
        *,
        rcode: int = NOERROR,
        answers: list[bytes] | None = None,
        authority: list[bytes] | None = None,
        pool: list[bytes] | None = None,
        extra: list[bytes] | None = None,
        forward: bool = False,
    ) -> None:
        self.forward = forward
        self.rcode = rcode
        self.pool = pool
        self.extra = extra  # SRV: additional A records, parallel to pool
        answers = answers or []
        authority = authority or []
        self.body = b"".join(answers) + b"".join(authority)
        self.k = min(MAX_ANSWERS, len(pool)) if pool is not None else 0
        # Up to 8 records: a uniformly random order is one index into every order.
        self.perms = _permutations(len(pool)) if pool and len(pool) <= MAX_ANSWERS else None
        # 9 to 16 records: every 8-subset is listed (at most 12870 of them)
        self.combos = _combinations(len(pool)) if pool and MAX_ANSWERS < len(pool) <= 16 else None
        self.bodies = (
            [b"".join([pool[i] for i in p]) for p in self.perms]
            if pool and self.perms is not None and len(self.perms) <= 120 and extra is None
            else None
        )
        an = self.k if pool is not None else len(answers)
        ar = self.k if extra is not None else 0
        ns = self.ns = len(authority)
        # heads[rd * 2 + edns]: precomputed flags + counts for the four variants
        self.heads = tuple(
            _head(rd, True, False, rcode, an, ns, ar + edns) for rd in (0, 1) for edns in (0, 1)
        )


_FORWARD = _Entry(forward=True)
# Who asks, as far as answers differ: (client service, endpoint view) or None.
ClientClass = tuple[str, frozenset[str] | None] | None
_MISSING = object()


class MeshResolver:
    """Answers mesh names the way Cloud Map and Service Connect do in ECS."""

    def __init__(
        self,
        naming: NamingModel,
        registry: ReplicaRegistry,
        proxy_address: str,
        *,
        rng: random.Random | None = None,
        faults: FaultTable | None = None,
    ) -> None:
        proxy = _ipv4(proxy_address)
        if proxy is None:
            raise DataPlaneError(
                f"the Service Connect proxy address {proxy_address!r} is not an IPv4 address",
                hint="give the proxy an IPv4 address on the environment network",
            )
        self._proxy_rdata = proxy
        self._naming = naming
        self._registry = registry
        self._rng = rng or random.Random()
        self._random: Callable[[], float] = self._rng.random
        self._version = -1
        self._cache: dict[tuple[bytes, int, ClientClass], _Entry] = {}
        self._clients: dict[str, ClientClass] = {}
        self._packets: dict[tuple[bytes, str], bytes | tuple[_Entry, int, bool, int]] = {}
        self.bad_packets = RateLimitedLog(log)
        # The data plane's table, shared with the proxy (`is None`: an empty one is falsy).
        self.faults = faults if faults is not None else FaultTable()
        self.faults.reindex(naming)  # service-wide DNS faults need the names
        self._fault_names: dict[bytes, str] = {}  # faults.dns's names in wire form
        self._fault_version = -1

    # -- configuration ------------------------------------------------------

    @property
    def naming(self) -> NamingModel:
        return self._naming

    @naming.setter
    def naming(self, naming: NamingModel) -> None:
        self._naming = naming
        self.faults.reindex(naming)
        self._flush()

    def _flush(self) -> None:
        self._cache.clear()
        self._clients.clear()
        self._packets.clear()
        self._version = self._registry.version

    def client_class(self, client_ip: str) -> ClientClass:
        """(Service Connect client service, the endpoints it started with), or None.

        None stands for every other client: it sees Service Discovery only.
        """
        replica = self._registry.by_address(client_ip)
        if replica is not None and self._naming.is_sc_client(replica.service):
            return (replica.service, replica.sc_view)
        return None

    # -- the core -----------------------------------------------------------

    def answer(self, packet: bytes, client_ip: str, transport: Transport = "udp") -> Reply:
        """Answer one DNS message from `client_ip`. Never raises."""
        try:
            if self.faults.dns and (hits := self._dns_hits(packet, client_ip)):
                return self._faulted(hits, packet, client_ip, transport == "tcp")
            return self._answer(packet, client_ip, transport == "tcp")
        except Exception as exc:  # the boundary: a bug must not stop the server
            self.bad_packets.warning("dns: internal error on a %d-byte query: %r", len(packet), exc)
            return error_reply(packet, SERVFAIL)

    def answer_udp(self, packet: bytes, client_ip: str) -> Reply:
        """`answer` for UDP, with a cache of whole queries on top (ID aside)."""
        try:
            # the one test the hot path pays for faults; faulted answers are never cached
            if self.faults.dns and (hits := self._dns_hits(packet, client_ip)):
                return self._faulted(hits, packet, client_ip, False)
            if self._version == self._registry.version:
                hit = self._packets.get((packet[2:], client_ip))
                if hit is not None:
                    if isinstance(hit, bytes):
                        return packet[:2] + hit
                    entry, qlen, edns, limit = hit
                    return self._emit(entry, packet, packet[12 : 12 + qlen], edns, limit)
            return self._answer(packet, client_ip, False)
        except Exception as exc:
            self.bad_packets.warning("dns: internal error on a %d-byte query: %r", len(packet), exc)
            return error_reply(packet, SERVFAIL)

    def _dns_hits(self, packet: bytes, client_ip: str) -> list[Active]:
        """The DNS faults that hit this query (drawn now), or none."""
        faults = self.faults
        if faults.version != self._fault_version:
            self._fault_names = wire_names(faults.dns)
            self._fault_version = faults.version
        wire = question_wire(packet)
        name = self._fault_names.get(wire) if wire is not None else None
        if name is None:
            return []
        client = self._registry.by_address(client_ip)
        return faults.for_dns(name, client.service if client is not None else None)

    def _faulted(self, hits: list[Active], packet: bytes, client_ip: str, tcp: bool) -> Reply:
        return act(
            hits,
            packet,
            lambda: self._answer(packet, client_ip, tcp),
            lambda: self._soa(self._naming.namespace),  # Service Discovery names live there
        )

    def _answer(self, packet: bytes, client_ip: str, tcp: bool) -> Plain:
        if self._version != self._registry.version:
            self._flush()
        n = len(packet)
        # Fast path: standard query, RD at most, one question, optional OPT.
        if n > 16 and not packet[2] & 0xFE:
            counts = packet[4:12]
            edns = counts == _ONE_Q_EDNS
            if edns or counts == _ONE_Q:
                z = packet.find(0, 12)
                if z < 0 or packet[z + 3 : z + 5] != _QCLASS_IN:
                    z = question_end(packet) - 5  # a zero byte inside a label: walk it
                qend = z + 5
                if z > 0 and packet[z + 3 : qend] == _QCLASS_IN:
                    size = UDP_MIN
                    ok = False
                    if not edns:
                        ok = n == qend
                    elif (
                        n >= qend + 11
                        and packet[qend] == 0
                        and packet[qend + 1 : qend + 3] == _OPT_TYPE
                        and packet[qend + 6] == 0  # EDNS version 0
                        and n == qend + 11 + (packet[qend + 9] << 8 | packet[qend + 10])
                    ):
                        ok = True
                        size = max(UDP_MIN, packet[qend + 3] << 8 | packet[qend + 4])
                    if ok:
                        qtype = packet[z + 1] << 8 | packet[z + 2]
                        ck = self._clients.get(client_ip, _MISSING)
                        if ck is _MISSING:
                            if len(self._clients) >= CACHE_MAX:
                                self._clients.clear()  # spoofed sources cannot grow it
                            ck = self._clients[client_ip] = self.client_class(client_ip)
                        key = (packet[12 : z + 1].lower(), qtype, ck)
                        entry = self._cache.get(key)  # type: ignore[arg-type]
                        if entry is None:
                            # A hit proves the name walks to z; a miss must check it.
                            if question_end(packet) != qend:
                                return self._slow(packet, client_ip, tcp)
                            entry = self._store(key)  # type: ignore[arg-type]
                        limit = TCP_MAX if tcp else size
                        if entry.forward:
                            return Forward(packet, limit)
                        reply = self._emit(entry, packet, packet[12:qend], edns, limit)
                        if not tcp and n <= PACKET_KEY_MAX:
                            # Same bytes after the ID, same client: same answer (or the
                            # same entry to draw from), until the registry moves.
                            if len(self._packets) >= CACHE_MAX:
                                self._packets.clear()
                            self._packets[(packet[2:], client_ip)] = (
                                reply[2:] if entry.pool is None else (entry, qend - 12, edns, limit)
                            )
                        return reply
        return self._slow(packet, client_ip, tcp)

    def _emit(self, entry: _Entry, packet: bytes, question: bytes, edns: bool, limit: int) -> bytes:
        rd = packet[2] & 0x01
        if entry.pool is None:
            body = entry.body
        elif entry.bodies is not None:  # few records: every order is pre-joined
            bodies = entry.bodies
            body = bodies[int(self._random() * len(bodies))]
        else:
            pool = entry.pool
            perms = entry.perms
            rnd = self._random
            if perms is not None:
                order: Sequence[int] = perms[int(rnd() * len(perms))]
            elif entry.combos is not None:
                # uniform subset x uniform order = a uniform random 8 of n, in two draws
                combo = entry.combos[int(rnd() * len(entry.combos))]
                perm8 = _permutations(MAX_ANSWERS)
                order = [combo[i] for i in perm8[int(rnd() * len(perm8))]]
            else:  # a random 8 of many: a partial Fisher-Yates, 8 draws
                n = len(pool)
                idx = list(range(n))
                for a in range(MAX_ANSWERS):
                    b = a + int(rnd() * (n - a))
                    idx[a], idx[b] = idx[b], idx[a]
                order = idx[:MAX_ANSWERS]
            body = b"".join([pool[i] for i in order])
            if entry.extra is not None:
                extra = entry.extra
                glue = b"".join([extra[i] for i in order])
                full = b"".join((packet[:2], entry.heads[rd * 2 + edns], question, body, glue))
                if edns:
                    full += _OPT
                if len(full) <= limit:
                    return full
                # RFC 2181 9: dropping additional records does not need TC.
                head = _head(rd, True, False, entry.rcode, entry.k, entry.ns, 1 if edns else 0)
                reply = b"".join((packet[:2], head, question, body, _OPT if edns else b""))
                if len(reply) <= limit:
                    return reply
                return truncated(reply, 12 + len(question), edns)
        reply = b"".join((packet[:2], entry.heads[rd * 2 + edns], question, body))
        if edns:
            reply += _OPT
        if len(reply) > limit:
            return truncated(reply, 12 + len(question), edns)
        return reply

    # -- the slow path: dnslib -----------------------------------------------

    def _slow(self, packet: bytes, client_ip: str, tcp: bool) -> Plain:
        if len(packet) < 12:
            self.bad_packets.warning(
                "dns: dropped a %d-byte packet from %s", len(packet), client_ip
            )
            return None
        if packet[2] & 0x80:
            return None  # a response: never answer it
        try:
            record = DNSRecord.parse(packet)
        except Exception as exc:  # dnslib raises RecursionError on pointer loops, not DNSError
            self.bad_packets.warning("dns: malformed query from %s: %r", client_ip, exc)
            return error_reply(packet, FORMERR)
        header = record.header
        if header.opcode != 0:
            return error_reply(packet, NOTIMP)
        if len(record.questions) != 1 or header.a or header.auth:
            return error_reply(packet, FORMERR)
        opts = [rr for rr in record.ar if rr.rtype == T_OPT]
        if len(opts) > 1:
            return error_reply(packet, FORMERR)
        edns = bool(opts)
        size = UDP_MIN
        if opts:
            opt = opts[0]
            if (opt.ttl >> 16) & 0xFF != 0:  # EDNS version
                return self._badvers(packet)
            size = max(UDP_MIN, opt.rclass)
        q = record.questions[0]
        labels: tuple[bytes, ...] = tuple(q.qname.label)
        if any(not 0 < len(label) < 64 for label in labels):
            return error_reply(packet, FORMERR)
        wire = b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"
        if len(wire) > 255:
            return error_reply(packet, FORMERR)
        if q.qclass != C_IN:
            return error_reply(packet, REFUSED)
        question = wire + struct.pack("!HH", q.qtype, q.qclass)
        ck = self.client_class(client_ip)
        key = (wire.lower(), int(q.qtype), ck)
        entry = self._cache.get(key) or self._store(key)
        limit = TCP_MAX if tcp else size
        if entry.forward:
            return Forward(packet, limit)
        return self._emit(entry, packet, question, edns, limit)

    def _badvers(self, packet: bytes) -> bytes | None:
        reply = error_reply(packet, NOERROR)
        if reply is None:
            return None
        # extended rcode 16 = upper 8 bits 1 in the OPT TTL
        opt = b"\x00\x00\x29" + EDNS_SIZE.to_bytes(2, "big") + b"\x01\x00\x00\x00\x00\x00"
        return reply[:10] + b"\x00\x01" + reply[12:] + opt

    # -- building answers ------------------------------------------------------

    def _store(self, key: tuple[bytes, int, ClientClass]) -> _Entry:
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        entry = self._build(*key)
        self._cache[key] = entry
        return entry

    def _build(self, wire: bytes, qtype: int, client: ClientClass) -> _Entry:
        name = wire_to_text(wire)
        if name is None:
            return _FORWARD  # unreachable for validated questions; never guess
        naming = self._naming
        service, view = client if client is not None else (None, None)
        res = naming.resolve(service, name, view)
        zone = naming.zone_of(name)
        if res is not None and res.kind is TargetKind.SERVICE_CONNECT:
            if qtype in (T_A, T_ANY):
                ep = naming.sc_endpoint(name)
                vip = _ipv4(ep.vip) if ep is not None and ep.vip else None
                return _Entry(answers=[_rr(_PTR_QNAME, T_A, TTL, vip or self._proxy_rdata)])
            return self._nodata(zone or name)
        if res is not None:
            return self._discovery(res.service, qtype, zone or name)
        if zone is None:
            return _FORWARD
        if name == zone and zone == naming.namespace:
            if qtype in (T_SOA, T_ANY):
                return _Entry(answers=[self._soa(zone, _PTR_QNAME)])
            return self._nodata(zone)
        instance = self._instance(name)
        if instance is not None:
            if qtype in (T_A, T_ANY):
                rdata = _ipv4(instance.address)
                if rdata is not None:
                    return _Entry(answers=[_rr(_PTR_QNAME, T_A, TTL, rdata)])
            return self._nodata(zone)
        return _Entry(rcode=NXDOMAIN, authority=[self._soa(zone)])

    def _registered(self, service: str) -> list[Replica]:
        """Replicas Cloud Map lists: draining ones are deregistered already."""
        return [r for r in self._registry.for_service(service) if not r.draining]

    def _discovery(self, service: str, qtype: int, zone: str) -> _Entry:
        replicas = self._registered(service)
        if not replicas:
            return _Entry(rcode=NXDOMAIN, authority=[self._soa(zone)])
        healthy = [r for r in replicas if r.health is Health.HEALTHY]
        chosen = healthy or replicas  # Cloud Map fails open
        if qtype in (T_A, T_ANY):
            pool = [
                _rr(_PTR_QNAME, T_A, TTL, rdata)
                for r in chosen
                if (rdata := _ipv4(r.address)) is not None
            ]
            return _Entry(pool=pool) if pool else self._nodata(zone)
        if qtype == T_SRV:
            sd_name = self._naming.sd_name(service)
            default_port = self._naming.services[service].target_port
            srvs: list[bytes] = []
            extra: list[bytes] = []
            for r in chosen:
                port = r.port if r.port is not None else default_port
                rdata = _ipv4(r.address)
                if port is None or rdata is None:
                    continue
                label = r.name.lower().encode("ascii", "replace")[:63]
                target = bytes((len(label),)) + label + name_to_wire(sd_name)
                # RFC 2782: the SRV target is never compressed; the glue's owner may be.
                srvs.append(_rr(_PTR_QNAME, T_SRV, TTL, struct.pack("!HHH", 1, 1, port) + target))
                extra.append(_rr(bytes((len(label),)) + label + _PTR_QNAME, T_A, TTL, rdata))
            return _Entry(pool=srvs, extra=extra) if srvs else self._nodata(zone)
        return self._nodata(zone)

    def _instance(self, name: str) -> Replica | None:
        """`{replica}.{sd name}`: the per-task name an SRV target points to."""
        first, _, rest = name.partition(".")
        service = self._naming.sd_service(rest) if rest else None
        if service is None:
            return None
        for r in self._registered(service):
            if r.name.lower() == first:
                return r
        return None

    def _nodata(self, zone: str) -> _Entry:
        return _Entry(authority=[self._soa(zone)])

    def _soa(self, zone: str, owner: bytes | None = None) -> bytes:
        zone_wire = name_to_wire(zone)
        rdata = (
            name_to_wire(f"ns.{zone}")
            + name_to_wire(f"hostmaster.{zone}")
            + struct.pack("!IIIII", self._registry.version & 0xFFFFFFFF, 3600, 600, 86400, TTL)
        )
        return _rr(owner or zone_wire, T_SOA, TTL, rdata)
