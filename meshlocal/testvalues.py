"""The values the test handle (`meshlocal.testing.Mesh`) returns: replicas, exec
results, DNS answers, Service Connect metrics, HTTP responses. Plain frozen data."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ExecResult", "HttpResponse", "Replica", "Resolution", "ServiceStats"]


@dataclass(frozen=True)
class Replica:
    """One replica as the mesh's registry sees it (`meshlocal ps`)."""

    service: str
    index: int
    name: str
    container_id: str
    address: str
    port: int | None
    health: str
    draining: bool
    in_rotation: bool

    @classmethod
    def from_state(cls, service: str, raw: Mapping[str, Any]) -> Replica:
        return cls(
            service=service,
            index=int(raw["index"]),
            name=str(raw["name"]),
            container_id=str(raw["container_id"]),
            address=str(raw["address"]),
            port=int(raw["port"]) if raw.get("port") is not None else None,
            health=str(raw["health"]),
            draining=bool(raw["draining"]),
            in_rotation=bool(raw["in_rotation"]),
        )


@dataclass(frozen=True)
class ExecResult:
    """What `exec` returns: the command's exit code and its stdout+stderr."""

    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class Resolution:
    """A DNS answer as one replica of `client` gets it."""

    name: str
    type: str
    rcode: str
    answers: tuple[str, ...]
    client: str  # e.g. "front-end-1": the replica the query left from
    meaning: str  # "service connect endpoint api:80 of api, tcp", "service discovery: api-1 ..."
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class ServiceStats:
    """Service Connect metrics of one service (the names ECS publishes, snake_cased)."""

    request_count: int
    http_2xx: int
    http_3xx: int
    http_4xx: int
    http_5xx: int
    target_response_time_ms: float  # mean
    active_connections: int
    new_connections: int
    processed_bytes: int
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_snapshot(cls, raw: Mapping[str, Any]) -> ServiceStats:
        def n(key: str) -> int:
            return int(raw.get(key, 0))

        return cls(
            request_count=n("RequestCount"),
            http_2xx=n("HTTPCode_Target_2XX_Count"),
            http_3xx=n("HTTPCode_Target_3XX_Count"),
            http_4xx=n("HTTPCode_Target_4XX_Count"),
            http_5xx=n("HTTPCode_Target_5XX_Count"),
            target_response_time_ms=float(raw.get("TargetResponseTime", 0.0)),
            active_connections=n("ActiveConnectionCount"),
            new_connections=n("NewConnectionCount"),
            processed_bytes=n("ProcessedBytes"),
            raw=dict(raw),
        )


@dataclass(frozen=True)
class HttpResponse:
    """A response from a public endpoint (any status: 4xx/5xx are not raised)."""

    status: int
    headers: Mapping[str, str]  # names lower-cased
    body: bytes
    url: str

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ValueError(
                f"HTTP {self.status} from {self.url} is not JSON: {self.text[:300]!r}"
            ) from None
