"""The live set of replicas: address, port and health of every running task.

Pure and synchronous. The runtime feeds it from Docker's event stream; the
DNS server and proxy read it on every query and request. `version` bumps on
every change so answer caches can key on it instead of being invalidated
by hand. Subscribers are called synchronously, in the event loop thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum


class Health(StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Replica:
    service: str
    index: int  # 1-based, as compose numbers containers
    container_id: str
    address: str  # IPv4 on the environment network (or 127.0.0.x in tests)
    port: int | None  # the target port; None for client-only services
    health: Health = Health.HEALTHY
    draining: bool = False  # scale-in: out of rotation, in-flight requests finish
    # The Service Connect endpoint names that existed when it started: an ECS
    # task resolves only those until it is replaced. None: every current one.
    sc_view: frozenset[str] | None = None

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    @property
    def in_rotation(self) -> bool:
        return self.health is Health.HEALTHY and not self.draining


Listener = Callable[[Replica | None, Replica | None], None]  # (before, after); None: absent


class ReplicaRegistry:
    def __init__(self) -> None:
        self._by_id: dict[str, Replica] = {}
        self._by_address: dict[str, Replica] = {}  # hot path: DNS identifies clients by it
        self._listeners: list[Listener] = []
        # Client-only members (`meshlocal run` one-offs): DNS knows them by address
        # as clients of their service; never in rotation, Service Discovery or
        # a service's replicas, so the replica listeners never hear of them.
        self._clients: dict[str, Replica] = {}
        self._client_by_address: dict[str, Replica] = {}
        self._client_listeners: list[Callable[[], None]] = []
        self.version = 0

    # -- writes -----------------------------------------------------------

    def upsert(self, replica: Replica) -> None:
        previous = self._by_id.get(replica.container_id)
        if previous == replica:
            return
        if previous is not None and self._by_address.get(previous.address) is previous:
            del self._by_address[previous.address]
        self._by_id[replica.container_id] = replica
        self._by_address[replica.address] = replica
        self._changed(previous, replica)

    def set_health(self, container_id: str, health: Health) -> None:
        current = self._by_id.get(container_id)
        if current is not None:
            self.upsert(replace(current, health=health))

    def set_draining(self, container_id: str, draining: bool = True) -> None:
        current = self._by_id.get(container_id)
        if current is not None:
            self.upsert(replace(current, draining=draining))

    def remove(self, container_id: str) -> Replica | None:
        previous = self._by_id.pop(container_id, None)
        if previous is not None:
            if self._by_address.get(previous.address) is previous:
                del self._by_address[previous.address]
            self._changed(previous, None)
        return previous

    def clear(self) -> None:
        for cid in list(self._by_id):
            self.remove(cid)

    def set_clients(self, clients: Iterable[Replica]) -> None:
        """The whole client-only set; a change bumps `version` (DNS drops its caches)."""
        new = {r.container_id: r for r in clients}
        if new == self._clients:
            return
        self._clients = new
        self._client_by_address = {r.address: r for r in new.values()}
        self.version += 1
        for listener in list(self._client_listeners):
            listener()

    def add_client(self, client: Replica) -> None:
        others = (r for r in self._clients.values() if r.container_id != client.container_id)
        self.set_clients([*others, client])

    def remove_client(self, container_id: str) -> Replica | None:
        gone = self._clients.get(container_id)
        if gone is not None:
            self.set_clients(r for cid, r in self._clients.items() if cid != container_id)
        return gone

    # -- reads ------------------------------------------------------------

    def get(self, container_id: str) -> Replica | None:
        return self._by_id.get(container_id)

    def all(self) -> list[Replica]:
        return sorted(self._by_id.values(), key=lambda r: (r.service, r.index))

    def for_service(self, service: str) -> list[Replica]:
        return sorted(
            (r for r in self._by_id.values() if r.service == service), key=lambda r: r.index
        )

    def in_rotation(self, service: str) -> list[Replica]:
        return [r for r in self.for_service(service) if r.in_rotation]

    def by_address(self, address: str) -> Replica | None:
        """The replica (or client-only member) that owns an address: how DNS knows clients."""
        found = self._by_address.get(address)
        return found if found is not None else self._client_by_address.get(address)

    def clients(self) -> list[Replica]:
        """The client-only members, by service."""
        return sorted(self._clients.values(), key=lambda r: (r.service, r.container_id))

    def subscribe_clients(self, listener: Callable[[], None]) -> Callable[[], None]:
        self._client_listeners.append(listener)
        return lambda: self._client_listeners.remove(listener)

    # -- change notification ---------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self, before: Replica | None, after: Replica | None) -> None:
        self.version += 1
        for listener in list(self._listeners):
            listener(before, after)
