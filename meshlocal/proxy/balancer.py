"""Which replica gets the next request: pure, synchronous, clock injected.

Follows Envoy as ECS Service Connect configures it:
- strict round robin over the service's replicas in rotation (healthy, not
  draining) that are not ejected;
- outlier detection: `consecutive_errors` 5xx responses or connection
  failures in a row eject a replica for base x (number of ejections),
  capped at `max_ejection_s`; the last available replica is never ejected;
- when every replica in rotation is ejected anyway (others left the
  rotation meanwhile), route to all of them, as Envoy's panic mode does;
- retries pick a replica the request has not tried yet.

State is kept per client: ECS runs one Envoy in every client task, so each
task has its own round-robin position and its own view of which replicas
are outliers. `client` is the caller's address (a replica's IP; the public
endpoint passes its own key), "" when nobody cares.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from meshlocal.registry import Replica, ReplicaRegistry

# Bound on per-client entries: clients are replica addresses, but a caller
# outside the registry (a host, a test) must not grow the maps without limit.
_MAX_STATES = 65536


@dataclass
class _Outlier:
    consecutive: int = 0
    ejections: int = 0
    ejected_until: float = 0.0


class Balancer:
    def __init__(
        self,
        registry: ReplicaRegistry,
        *,
        consecutive_errors: int = 5,
        base_ejection_s: float = 30.0,
        max_ejection_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.consecutive_errors = consecutive_errors
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self.clock = clock
        self._next: dict[tuple[str, str], int] = {}  # (client, service) -> position
        self._rotation: dict[str, tuple[int, list[Replica]]] = {}  # service -> (version, list)
        # (client, container_id) -> outlier state.
        self._outliers: dict[tuple[str, str], _Outlier] = {}
        self._in_flight: dict[str, int] = {}  # container_id -> requests being served
        # Told of each ejection: (replica, client, seconds) - the mesh page's timeline.
        self.on_eject: Callable[[Replica, str, float], None] | None = None
        self._unsubscribe = registry.subscribe(self._on_change)

    def close(self) -> None:
        self._unsubscribe()

    def _on_change(self, before: Replica | None, after: Replica | None) -> None:
        if after is None and before is not None:
            # A gone replica is neither a target nor a client any more: its state
            # goes with it, so churn never grows these maps.
            gone_id, gone_ip = before.container_id, before.address
            for key in [k for k in self._outliers if k[1] == gone_id or k[0] == gone_ip]:
                del self._outliers[key]
            for key in [k for k in self._next if k[0] == gone_ip]:
                del self._next[key]

    # -- selection --------------------------------------------------------

    def rotation(self, service: str) -> list[Replica]:
        """Replicas in rotation (healthy, not draining, with a port); cached per version."""
        cached = self._rotation.get(service)
        version = self.registry.version
        if cached is not None and cached[0] == version:
            return cached[1]
        replicas = [r for r in self.registry.in_rotation(service) if r.port is not None]
        self._rotation[service] = (version, replicas)
        return replicas

    def is_ejected(self, replica: Replica, client: str = "") -> bool:
        state = self._outliers.get((client, replica.container_id))
        return state is not None and state.ejected_until > self.clock()

    def available(self, service: str, client: str = "") -> list[Replica]:
        """In rotation and not ejected (or all in rotation when all are ejected)."""
        rotation = self.rotation(service)
        if not self._outliers:
            return rotation
        now = self.clock()
        live = [
            r
            for r in rotation
            if (s := self._outliers.get((client, r.container_id))) is None or s.ejected_until <= now
        ]
        return live or rotation

    def pick(self, service: str, exclude: Collection[str] = (), client: str = "") -> Replica | None:
        """The next replica in `client`'s strict rotation; `exclude`: container ids tried."""
        candidates = self.available(service, client)
        if exclude:
            candidates = [r for r in candidates if r.container_id not in exclude]
        if not candidates:
            return None
        key = (client, service)
        n = self._next.get(key, 0)
        if len(self._next) >= _MAX_STATES and key not in self._next:
            self._next.clear()  # addresses outside the registry can't grow it
        self._next[key] = n + 1
        return candidates[n % len(candidates)]

    def why_unavailable(self, service: str) -> str:
        replicas = self.registry.for_service(service)
        if not replicas:
            return f"no replica of service {service!r} is running"
        parts = []
        for r in replicas:
            if r.draining:
                state = "draining"
            elif r.health.value != "healthy":
                state = r.health.value
            elif r.port is None:
                state = "has no port"
            else:
                state = "failed to connect"
            parts.append(f"{r.name}: {state}")
        return f"no replica of service {service!r} is available ({', '.join(parts)})"

    # -- outlier detection -----------------------------------------------

    def record(self, replica: Replica, failed: bool, client: str = "") -> bool:
        """Record one outcome (5xx / connect failure = failed) seen by `client`.

        True when it ejected the replica (for that client only).
        """
        key = (client, replica.container_id)
        state = self._outliers.get(key)
        if not failed:
            if state is not None:
                state.consecutive = 0
            return False
        if state is None:
            if len(self._outliers) >= _MAX_STATES:
                self._outliers.clear()
            state = self._outliers[key] = _Outlier()
        state.consecutive += 1
        if state.consecutive < self.consecutive_errors:
            return False
        now = self.clock()
        if state.ejected_until > now:
            return False
        others = [
            r
            for r in self.rotation(replica.service)
            if r.container_id != replica.container_id and not self.is_ejected(r, client)
        ]
        if not others:
            return False  # never eject the last available replica
        state.ejections += 1
        state.consecutive = 0
        seconds = min(
            self.base_ejection_s * state.ejections, max(self.max_ejection_s, self.base_ejection_s)
        )
        state.ejected_until = now + seconds
        if self.on_eject is not None:
            self.on_eject(replica, client, seconds)
        return True

    def ejections(self, replica: Replica, client: str = "") -> int:
        state = self._outliers.get((client, replica.container_id))
        return state.ejections if state else 0

    def ejected_for(self, replica: Replica) -> list[str]:
        """The clients that eject `replica` right now (for `ps` and the state API)."""
        now = self.clock()
        cid = replica.container_id
        return sorted(
            c for (c, r), s in self._outliers.items() if r == cid and s.ejected_until > now
        )

    # -- in-flight tracking (graceful drain) ------------------------------

    def begin(self, replica: Replica) -> None:
        cid = replica.container_id
        self._in_flight[cid] = self._in_flight.get(cid, 0) + 1

    def end(self, replica: Replica) -> None:
        cid = replica.container_id
        left = self._in_flight.get(cid, 0) - 1
        if left > 0:
            self._in_flight[cid] = left
        else:
            self._in_flight.pop(cid, None)

    def in_flight(self, container_id: str) -> int:
        return self._in_flight.get(container_id, 0)
