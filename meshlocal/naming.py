"""Which client resolves which mesh name to what: the heart of the emulator.

Pure code, no I/O. Built once per environment from the merged manifests;
the DNS server asks `resolve()` for every query, the proxy asks
`endpoint_for()` for every request, the runtime asks `env_vars()` for every
replica.

ECS rules encoded here (see docs/concepts.md):
- Service Discovery (Cloud Map): `{svc}.{env}.{app}.local`, or
  `{svc}.{app}.local` in a legacy environment. Services with a port
  register; Worker Services and Request-Driven Web Services don't.
- Service Connect: a server's endpoints are its name and its alias, each on
  the service's target port. Only clients with connect enabled resolve them.
  When an alias equals a Service Discovery name, Service Connect clients get
  Service Connect and every other client gets Service Discovery.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from meshlocal.manifest.model import EnvironmentSpec, Service, ServiceType

# Services that run on ECS tasks and so can take part in Service Connect.
_ECS_TYPES = frozenset(
    {
        ServiceType.LOAD_BALANCED_WEB_SERVICE,
        ServiceType.BACKEND_SERVICE,
        ServiceType.WORKER_SERVICE,
    }
)
# Services Copilot registers in Cloud Map (when they have a port).
_SD_TYPES = frozenset({ServiceType.LOAD_BALANCED_WEB_SERVICE, ServiceType.BACKEND_SERVICE})


def normalize(name: str) -> str:
    """Lower-case, no trailing dot: the form every lookup uses."""
    return name.rstrip(".").lower()


class TargetKind(StrEnum):
    SERVICE_DISCOVERY = "service-discovery"
    SERVICE_CONNECT = "service-connect"


@dataclass(frozen=True)
class ServiceConnectEndpoint:
    name: str  # normalised DNS name: "api", "frontend.local"
    port: int  # client alias port = the server's target port
    service: str

    @property
    def url(self) -> str:
        return f"http://{self.name}" if self.port == 80 else f"http://{self.name}:{self.port}"


@dataclass(frozen=True)
class Resolution:
    """What a mesh name means to one client."""

    name: str
    kind: TargetKind
    service: str
    port: int | None  # SC: the endpoint port; SD: the service's port (SRV)


class NamingModel:
    def __init__(self, spec: EnvironmentSpec) -> None:
        self.app = spec.app
        self.env = spec.env
        self.legacy = spec.environment.legacy_namespace
        self.namespace = (
            f"{self.app}.local".lower() if self.legacy else f"{self.env}.{self.app}.local".lower()
        )
        self.services: dict[str, Service] = {s.name: s for s in spec.services}

        self.registered: frozenset[str] = frozenset(
            s.name for s in spec.services if s.type in _SD_TYPES and s.port is not None
        )
        self.sc_clients: frozenset[str] = frozenset(
            s.name for s in spec.services if s.type in _ECS_TYPES and s.connect.enabled
        )
        endpoints: list[ServiceConnectEndpoint] = []
        for s in spec.services:
            if s.name not in self.sc_clients or s.target_port is None:
                continue  # client-only: workers and backends without a port
            if s.type is ServiceType.WORKER_SERVICE:
                continue
            for name in dict.fromkeys([s.name, *([s.connect.alias] if s.connect.alias else [])]):
                endpoints.append(ServiceConnectEndpoint(normalize(name), s.target_port, s.name))
        self.sc_endpoints: tuple[ServiceConnectEndpoint, ...] = tuple(endpoints)

        self._sd_by_name = {self.sd_name(n): n for n in self.registered}
        self._sc_by_name = {e.name: e for e in self.sc_endpoints}
        self._sc_by_host_port = {(e.name, e.port): e for e in self.sc_endpoints}

    # -- Service Discovery ------------------------------------------------

    def sd_name(self, service: str) -> str:
        return f"{service}.{self.namespace}".lower()

    @property
    def discovery_endpoint(self) -> str:
        """The value of COPILOT_SERVICE_DISCOVERY_ENDPOINT."""
        return self.namespace

    def sd_service(self, name: str) -> str | None:
        """The service a Service Discovery name belongs to, for any client."""
        return self._sd_by_name.get(normalize(name))

    # -- Service Connect --------------------------------------------------

    def is_sc_client(self, service: str | None) -> bool:
        return service is not None and service in self.sc_clients

    @property
    def sc_ports(self) -> frozenset[int]:
        """Every client alias port the proxy must listen on."""
        return frozenset(e.port for e in self.sc_endpoints)

    def sc_endpoint(self, name: str) -> ServiceConnectEndpoint | None:
        return self._sc_by_name.get(normalize(name))

    def endpoint_for(self, host: str, port: int) -> ServiceConnectEndpoint | None:
        """The endpoint a proxied request's Host header and listener port select."""
        return self._sc_by_host_port.get((normalize(host), port))

    # -- Both -------------------------------------------------------------

    def resolve(self, client: str | None, name: str) -> Resolution | None:
        """What `name` means to a replica of service `client` (None: not a mesh replica).

        None means the name is not visible to that client (NXDOMAIN when
        `is_mesh_name` is true, forward upstream otherwise).
        """
        key = normalize(name)
        if self.is_sc_client(client):
            ep = self._sc_by_name.get(key)
            if ep is not None:
                return Resolution(key, TargetKind.SERVICE_CONNECT, ep.service, ep.port)
        svc = self._sd_by_name.get(key)
        if svc is not None:
            return Resolution(key, TargetKind.SERVICE_DISCOVERY, svc, self.services[svc].port)
        return None

    def zone_of(self, name: str) -> str | None:
        """The mesh zone `name` falls in, or None when it is outside the mesh.

        Names in the Service Discovery namespace belong to it; Service
        Connect names outside it (`api`, `frontend.local`) are each their
        own zone, so they are answered (or refused with NXDOMAIN) and never
        forwarded upstream.
        """
        key = normalize(name)
        if key == self.namespace or key.endswith("." + self.namespace):
            return self.namespace
        if key in self._sc_by_name:
            return key
        return None

    def is_mesh_name(self, name: str) -> bool:
        return self.zone_of(name) is not None

    def visible_names(self, client: str) -> list[Resolution]:
        """Every mesh name `client` resolves, for `meshlocal plan`."""
        names = {e.name for e in self.sc_endpoints} | set(self._sd_by_name)
        out = [r for n in sorted(names) if (r := self.resolve(client, n)) is not None]
        return out

    # -- Containers -------------------------------------------------------

    def copilot_vars(self, service: str) -> dict[str, str]:
        return {
            "COPILOT_APPLICATION_NAME": self.app,
            "COPILOT_ENVIRONMENT_NAME": self.env,
            "COPILOT_SERVICE_NAME": service,
            "COPILOT_SERVICE_DISCOVERY_ENDPOINT": self.discovery_endpoint,
        }

    def env_vars(self, service: str, env_file: dict[str, str] | None = None) -> dict[str, str]:
        """A replica's environment: env_file < variables < secrets < COPILOT_*.

        COPILOT_* come last because ECS rejects a task definition that
        redefines them; validation reports the clash, this keeps it safe.
        """
        svc = self.services[service]
        env: dict[str, str] = {}
        env.update(env_file or {})
        env.update(svc.variables)
        env.update(svc.secrets)
        env.update(self.copilot_vars(service))
        return env
