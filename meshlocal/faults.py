"""Injected faults: what they are, whom they hit, and how often (pure).

The vocabulary is Toxiproxy's (latency with jitter, bandwidth, reset_peer,
limit_data, timeout) plus Istio's fault filter (abort with an HTTP or gRPC
status, delay, for a percentage of requests). A fault sits on one Service
Connect endpoint (its server service), optionally only for one client
service and/or one replica of the server; DNS faults sit on a service's
Service Discovery name. The proxy and the DNS server ask `FaultTable` per
connection (TCP mode) or per request (HTTP, HTTP/2, gRPC); with no fault
the table is empty and the hot paths test one dict for truth.

A seeded fault draws from its own `random.Random(seed)`, so the same
sequence of decisions repeats run after run; without a seed the draws are
independent (a `random.Random()` seeded from the OS).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the model holds declared faults: no import of naming (nor model) here
    from meshlocal.naming import NamingModel


class Kind(StrEnum):
    LATENCY = "latency"  # delay: per chunk (TCP) or per request (HTTP, gRPC)
    BANDWIDTH = "bandwidth"  # bytes/s each way
    REFUSE = "refuse"  # the upstream refuses: reset (TCP), 503 (HTTP), UNAVAILABLE (gRPC)
    RESET = "reset"  # the connection is reset after `after_bytes` bytes to the client (0: at once)
    PARTITION = "partition"  # the upstream can't be reached: nothing passes, then a connect timeout
    ABORT = "abort"  # HTTP status or gRPC status, for HTTP/HTTP2/gRPC endpoints
    DNS = "dns"  # NXDOMAIN, SERVFAIL or a delayed answer for a Service Discovery name


class DnsAnswer(StrEnum):
    NXDOMAIN = "nxdomain"
    SERVFAIL = "servfail"
    DELAY = "delay"


SC_KINDS = frozenset(Kind) - {Kind.DNS}
PER_REQUEST_ONLY = frozenset({Kind.ABORT})


@dataclass(frozen=True)
class Fault:
    """One fault as asked for. Times in milliseconds, rates in bytes per second."""

    service: str  # the server service (Service Connect) or the named service (DNS)
    kind: Kind
    id: str = ""  # given by the table when empty
    percent: float = 100.0  # of connections (TCP) or requests (HTTP, gRPC)
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate: int = 0
    after_bytes: int = 0
    http_status: int = 0
    grpc_status: int = 0
    dns: DnsAnswer | None = None
    dns_name: str = ""  # DNS: one name instead of every name of the service
    source: str = ""  # only for calls from this client service
    replica: int = 0  # only for this replica (1-based) of the server; 0: all
    seed: int | None = None
    declared: bool = False  # from copilot/.meshlocal.yml: `up` puts it back

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["kind"] = self.kind.value
        raw["dns"] = self.dns.value if self.dns else None
        return raw

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Fault:
        """The inverse of `to_json` (already checked: the link and the state file)."""
        data = dict(raw)
        data["kind"] = Kind(data["kind"])
        data["dns"] = DnsAnswer(data["dns"]) if data.get("dns") else None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        """`latency 200ms ±50ms`, `abort 503`, ...: one line for `ps` and `fault ls`."""
        k = self.kind
        if k is Kind.LATENCY:
            text = f"latency {show_ms(self.latency_ms)}"
            if self.jitter_ms:
                text += f" ±{show_ms(self.jitter_ms)}"
        elif k is Kind.BANDWIDTH:
            text = f"bandwidth {_rate(self.rate)}"
        elif k is Kind.RESET:
            text = f"reset after {self.after_bytes} B" if self.after_bytes else "reset"
        elif k is Kind.ABORT:
            text = (
                f"abort grpc {self.grpc_status}"
                if self.grpc_status
                else f"abort {self.http_status}"
            )
        elif k is Kind.DNS:
            assert self.dns is not None
            text = f"dns {self.dns.value}"
            if self.dns is DnsAnswer.DELAY:
                text += f" {show_ms(self.latency_ms)}"
                if self.jitter_ms:
                    text += f" ±{show_ms(self.jitter_ms)}"
        else:
            text = k.value
        if self.percent < 100:
            text += f" ({show_num(self.percent)}%)"
        return text

    def scope(self) -> str:
        target = self.dns_name or self.service
        if self.replica:
            target += f"-{self.replica}"
        return f"{self.source} -> {target}" if self.source else f"* -> {target}"


def show_num(value: float) -> str:
    return f"{value:g}"


def show_ms(value: float) -> str:
    return f"{value / 1000:g}s" if value >= 1000 else f"{show_num(value)}ms"


def _rate(value: int) -> str:
    for unit, size in (("MB", 1000**2), ("KB", 1000)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}/s"
    return f"{value}B/s"


def dns_names(service: str, naming: NamingModel) -> frozenset[str]:
    """The Service Discovery names a dns fault on `service` covers."""
    if service not in naming.registered:
        return frozenset()
    sd = naming.sd_name(service)
    return frozenset({sd})


# -- the live table the data plane consults ----------------------------------------------


@dataclass
class Active:
    """A fault in force, with its own random streams and counters."""

    fault: Fault
    rng: random.Random = field(repr=False)  # the draws: `roll`
    seen: int = 0  # connections or requests (or DNS queries) it was asked about
    hits: int = 0  # those it affected
    # Jitter draws from a stream of its own, so a seeded fault's hits are the same
    # with or without jitter (`expected_hits` holds for a jittered delay too).
    jitter_rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        seed = self.fault.seed
        self.jitter_rng = random.Random(None if seed is None else f"jitter-{seed}")

    def roll(self) -> bool:
        """Draw and count the hit at once (DNS: a hit is always applied)."""
        if self.draw():
            self.count()
            return True
        return False

    def draw(self) -> bool:
        """One decision, counted in `seen`; the hit is counted apart (`count`), once
        its effect is applied (another fault may pre-empt it)."""
        self.seen += 1
        p = self.fault.percent
        return p >= 100 or (p > 0 and self.rng.random() * 100 < p)

    def count(self) -> None:
        self.hits += 1

    def delay_s(self) -> float:
        """latency ± a uniform jitter, never below zero (Toxiproxy's latency toxic)."""
        f = self.fault
        ms = f.latency_ms
        if f.jitter_ms:
            ms += self.jitter_rng.uniform(-f.jitter_ms, f.jitter_ms)
        return max(0.0, ms) / 1000.0

    def snapshot(self) -> dict[str, Any]:
        doc = self.fault.to_json()
        doc.update(
            seen=self.seen,
            hits=self.hits,
            description=self.fault.describe(),
            scope=self.fault.scope(),  # `front-end -> api`: the mesh page shows it
        )
        return doc


class _Mirror(Active):
    """The other way of a partition: the client service's own endpoint, as seen from
    the server service. Drawn and counted as the partition itself."""

    def __init__(self, primary: Active) -> None:
        f = primary.fault
        super().__init__(replace(f, service=f.source, source=f.service), primary.rng)
        self.primary = primary

    def draw(self) -> bool:
        return self.primary.draw()

    def count(self) -> None:
        self.primary.count()


def expected_hits(percent: float, seed: int, n: int) -> int:
    """How many of n decisions a seeded fault affects: what `Active.roll` will do."""
    active = Active(Fault("x", Kind.REFUSE, percent=percent, seed=seed), random.Random(seed))
    return sum(active.roll() for _ in range(n))


class FaultTable:
    """Every active fault, indexed the way the data paths ask.

    `sc` maps a server service to its Service Connect faults and `dns` a
    Service Discovery name to its DNS faults: empty dicts when there is no
    fault, which is all the hot paths test.
    """

    def __init__(self) -> None:
        self._faults: dict[str, Active] = {}
        self._next = 1
        self.sc: dict[str, tuple[Active, ...]] = {}
        self.dns: dict[str, tuple[Active, ...]] = {}
        self.version = 0
        self._naming: NamingModel | None = None  # the last one given: DNS names follow it

    def __len__(self) -> int:
        return len(self._faults)

    def __iter__(self) -> Any:
        return iter(list(self._faults.values()))

    def get(self, ident: str) -> Active | None:
        return self._faults.get(ident)

    def add(self, fault: Fault, naming: NamingModel | None = None) -> Fault:
        """Add (or replace, same id) a fault; returns it with its id."""
        if not fault.id:
            while f"f{self._next}" in self._faults:
                self._next += 1
            fault = replace(fault, id=f"f{self._next}")
            self._next += 1
        old = self._faults.get(fault.id)
        if old is not None and old.fault == fault:
            return fault  # unchanged: keep its counters and random stream
        self._faults[fault.id] = Active(fault, random.Random(fault.seed))
        self._reindex(naming)
        return fault

    def remove(self, ident: str, naming: NamingModel | None = None) -> Fault | None:
        active = self._faults.pop(ident, None)
        if active is not None:
            self._reindex(naming)
        return active.fault if active else None

    def clear(self, naming: NamingModel | None = None) -> list[Fault]:
        gone = [a.fault for a in self._faults.values()]
        self._faults.clear()
        self._reindex(naming)
        return gone

    def replace_all(self, faults: Iterable[Fault], naming: NamingModel | None = None) -> None:
        """The whole set (a restarted data plane, `up`); unchanged faults keep counters."""
        keep: dict[str, Active] = {}
        for fault in faults:
            if not fault.id:
                while f"f{self._next}" in self._faults or f"f{self._next}" in keep:
                    self._next += 1
                fault = replace(fault, id=f"f{self._next}")
                self._next += 1
            old = self._faults.get(fault.id)
            keep[fault.id] = (
                old
                if old is not None and old.fault == fault
                else Active(fault, random.Random(fault.seed))
            )
        self._faults = keep
        self._reindex(naming)

    def faults(self) -> list[Fault]:
        return [a.fault for a in self._faults.values()]

    def _reindex(self, naming: NamingModel | None) -> None:
        # A caller without the naming model (the admin API's remove, say) must not
        # make every service-wide DNS fault fall out of the index.
        if naming is not None:
            self._naming = naming
        naming = self._naming
        sc: dict[str, list[Active]] = {}
        dns: dict[str, list[Active]] = {}
        for active in self._faults.values():
            f = active.fault
            if f.kind is Kind.DNS:
                names = (
                    {f.dns_name}
                    if f.dns_name
                    else (dns_names(f.service, naming) if naming is not None else set())
                )
                for name in names:
                    dns.setdefault(name, []).append(active)
            else:
                sc.setdefault(f.service, []).append(active)
                if f.kind is Kind.PARTITION and f.source and not f.replica:
                    # A partition cuts both ways: the server's calls to the client's
                    # own endpoint (if it has one) fail too.
                    sc.setdefault(f.source, []).append(_Mirror(active))
        self.sc = {k: tuple(v) for k, v in sc.items()}
        self.dns = {k: tuple(v) for k, v in dns.items()}
        self.version += 1

    def reindex(self, naming: NamingModel) -> None:
        """Names follow a changed workspace (DNS faults name a service)."""
        self._reindex(naming)

    # -- the data paths' questions -----------------------------------------------------

    def for_client(self, service: str, client: str | None) -> tuple[Active, ...]:
        """The faults on `service`'s endpoint that can hit a call from `client`'s service
        (decided per replica and per draw later: `hit`)."""
        found = self.sc.get(service)
        if not found:
            return ()
        return tuple(a for a in found if not a.fault.source or a.fault.source == client)

    @staticmethod
    def hit(candidates: tuple[Active, ...], replica: int) -> list[Active]:
        """Those of `candidates` that apply to the chosen replica and win their draw."""
        return [
            a
            for a in candidates
            if (not a.fault.replica or a.fault.replica == replica) and a.roll()
        ]

    def for_dns(self, name: str, client: str | None) -> list[Active]:
        found = self.dns.get(name)
        if not found:
            return []
        return [a for a in found if (not a.fault.source or a.fault.source == client) and a.roll()]

    # -- reporting ---------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        return [a.snapshot() for a in self._faults.values()]
