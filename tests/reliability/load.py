"""A steady, bounded load through the Service Connect proxy and the mesh DNS.

Threads, not asyncio: the load must keep its pace while the test thread
blocks on Docker calls (kill, scale, restart). Every request opens a new
connection, as busybox `wget` in a replica would, so a data plane that is
down shows as failed requests rather than as a stalled pool.

Each sample keeps its start time, so failures are attributed afterwards to
the fault window they fall in (see figures.py); nothing here asserts.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


@dataclass(frozen=True)
class Sample:
    kind: str  # "http" or "dns"
    start: float  # time.monotonic() when sent
    end: float
    ok: bool
    detail: str  # status code, rcode, or the exception's class
    replica: str | None = None  # x-meshlocal-replica of an HTTP answer
    answers: tuple[str, ...] = ()  # A records of a DNS answer


@dataclass(frozen=True)
class Snapshot:
    at: float
    addresses: frozenset[str]  # running replicas' addresses, as Docker reports them


@dataclass
class Target:
    """Where the load goes; `address` may move if the data plane gets a new one."""

    address: str  # the data plane's DNS server
    http_address: str  # the Service Connect endpoint's VIP: the proxy routes by it
    host: str  # Host header: the Service Connect name (passed on, never routed by)
    path: str
    dns_name: str  # a Service Discovery name (the host is no Service Connect client)
    http_port: int = 80


@dataclass
class Load:
    target: Target
    http_rps: float
    dns_qps: float
    http_workers: int = 4
    http_timeout: float = 20.0  # above the proxy's 15 s request timeout: see its answer
    dns_timeout: float = 2.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        per_worker = self.http_rps / self.http_workers
        for i in range(self.http_workers):
            # Stagger the workers so requests are spread over each interval.
            offset = i / self.http_rps if self.http_rps else 0.0
            self._spawn(self._paced(per_worker, self._http_once, offset), f"http-{i}")
        if self.dns_qps:
            self._spawn(self._paced(self.dns_qps, self._dns_once, 0.0), "dns")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.http_timeout + 5)

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def _spawn(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=f"load-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _paced(self, rate: float, once: Callable[[], Sample], offset: float) -> Callable[[], None]:
        interval = 1.0 / rate

        def run() -> None:
            next_at = time.monotonic() + offset
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                sample = once()
                with self._lock:
                    self.samples.append(sample)
                # Fixed schedule; after a long stall, resume at the pace rather
                # than bursting to catch up.
                next_at = max(next_at + interval, time.monotonic())

        return run

    def _http_once(self) -> Sample:
        t = self.target
        start = time.monotonic()
        conn = http.client.HTTPConnection(t.http_address, t.http_port, timeout=self.http_timeout)
        try:
            conn.request("GET", t.path, headers={"Host": t.host, "Connection": "close"})
            resp = conn.getresponse()
            resp.read()
            replica = resp.getheader("x-meshlocal-replica")
            return Sample(
                "http", start, time.monotonic(), resp.status == 200, str(resp.status), replica
            )
        except (OSError, http.client.HTTPException) as exc:
            return Sample("http", start, time.monotonic(), False, type(exc).__name__)
        finally:
            conn.close()

    def _dns_once(self) -> Sample:
        t = self.target
        start = time.monotonic()
        query = dns.message.make_query(t.dns_name, dns.rdatatype.A)
        try:
            reply = dns.query.udp(query, t.address, timeout=self.dns_timeout)
        except Exception as exc:  # dnspython raises many kinds; each is one failed query
            return Sample("dns", start, time.monotonic(), False, type(exc).__name__)
        answers = tuple(
            sorted(
                item.address for rrset in reply.answer for item in rrset if hasattr(item, "address")
            )
        )
        rcode = dns.rcode.to_text(reply.rcode())
        return Sample(
            "dns",
            start,
            time.monotonic(),
            rcode == "NOERROR" and bool(answers),
            rcode,
            None,
            answers,
        )


class Monitor:
    """Docker's view of the running replicas, polled: the truth DNS answers are held to."""

    def __init__(self, list_addresses: Callable[[], Sequence[str]], interval: float = 0.25) -> None:
        self._list = list_addresses
        self.interval = interval
        self.snapshots: list[Snapshot] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                found = frozenset(self._list())
            except Exception:  # the engine is busy: skip this poll
                found = None
            if found is not None:
                self.snapshots.append(Snapshot(at, found))
            self._stop.wait(self.interval)


def docker_replica_addresses(client: Any, project: str, service: str) -> Callable[[], list[str]]:
    filters = {
        "label": [
            f"meshlocal.project={project}",
            f"meshlocal.service={service}",
            "meshlocal.role=replica",
        ],
        "status": "running",
    }

    def addresses() -> list[str]:
        out = []
        for row in client.api.containers(filters=filters):
            for net in ((row.get("NetworkSettings") or {}).get("Networks") or {}).values():
                if net.get("IPAddress"):
                    out.append(str(net["IPAddress"]))
        return out

    return addresses
