"""Proxy knobs, with Service Connect's defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProxySettings:
    # ECS Service Connect: perRequestTimeoutSeconds=15, idleTimeoutSeconds=300.
    request_timeout_s: float = 15.0  # until the upstream's response head arrives
    idle_timeout_s: float = 300.0  # no byte either way on a connection
    connect_timeout_s: float = 5.0
    max_retries: int = 2  # Envoy retries a connect failure on another host
    consecutive_errors: int = 5  # outlier detection: 5xx or connect failures in a row
    base_ejection_s: float = 30.0  # ejection time = base x number of ejections
    max_header_bytes: int = 32768  # larger request heads get 431
    max_idle_per_replica: int = 256  # pooled keep-alive connections per replica
    read_chunk: int = 65536
    # TCP mode (no AppProtocol): ECS's idleTimeout default for TCP is 1 hour.
    tcp_idle_timeout_s: float = 3600.0  # 0 disables it, as in ECS
    # Envoy tcp_proxy max_connect_attempts; ECS sets none for TCP (see proxy/tcp.py).
    tcp_connect_attempts: int = 1
    # Identical message heads (same bytes) are parsed once: up to this many
    # of each kind are remembered (0: parse every head).
    head_cache: int = 256
    # Endpoint port -> port actually bound (tests and rootless runs avoid port 80).
    port_map: Mapping[int, int] = field(default_factory=dict)

    def listen_port(self, endpoint_port: int) -> int:
        return self.port_map.get(endpoint_port, endpoint_port)
