"""Which client resolves which mesh name to what: the heart of the emulator.

Pure code, no I/O. Built once per environment from the merged manifests;
the DNS server asks `resolve()` for every query, the proxy asks
`endpoint_for()` for every request, the runtime asks `env_vars()` for every
replica.

ECS rules encoded here (see docs/concepts.md):
- Service Discovery (Cloud Map): `{svc}.{env}.{app}.local`, or
  `{svc}.{app}.local` in a legacy environment. Services with a port
  register; Worker Services and Request-Driven Web Services don't.
- Service Connect: a server has exactly one endpoint (client alias): its
  `network.connect.alias` when set, otherwise its name, on the service's
  target port (Copilot's templates/workloads/partials/cf/
  service-base-properties.yml writes one `ClientAliases` entry). With an
  alias, the service's own name is not a Service Connect name. Only clients
  with connect enabled resolve endpoints, and each client only those that
  existed when it started (`view`). When an alias equals a Service
  Discovery name, Service Connect clients get Service Connect and every
  other client gets Service Discovery.
- Each endpoint has a protocol: `tcp` unless the port mapping's AppProtocol
  says http, http2 or grpc (Copilot sets none; users set it through
  taskdef_overrides), and its own address (VIP), as ECS gives every endpoint
  its own 127.255.0.x address inside the task.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from meshlocal.manifest.model import LOCAL_ACCOUNT_ID as LOCAL_ACCOUNT_ID
from meshlocal.manifest.model import (
    EnvironmentSpec,
    Service,
    ServiceType,
    Sidecar,
    TopicQueue,
)
from meshlocal.pubsubplan import (
    PubSubPlan,
    aws_queue_url,
    logical_id,
    plan,
    queue_name,
)
from meshlocal.pubsubplan import queue_url as emulator_queue_url
from meshlocal.pubsubplan import topic_arn as plan_topic_arn

# The local SNS/SQS checks no signature: any credentials do.
DUMMY_ACCESS_KEY_ID = "meshlocal"
DUMMY_SECRET_ACCESS_KEY = "meshlocal"

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


class AppProtocol(StrEnum):
    """ECS PortMapping.appProtocol; TCP is what ECS does when it is unset."""

    TCP = "tcp"
    HTTP = "http"
    HTTP2 = "http2"
    GRPC = "grpc"

    @property
    def per_request(self) -> bool:
        return self is not AppProtocol.TCP


class TargetKind(StrEnum):
    SERVICE_DISCOVERY = "service-discovery"
    SERVICE_CONNECT = "service-connect"


@dataclass(frozen=True)
class ServiceConnectEndpoint:
    name: str  # normalised DNS name: "api", "frontend.local"
    port: int  # client alias port = the server's target port
    service: str
    protocol: AppProtocol = AppProtocol.TCP
    vip: str | None = None  # its own address on the environment network

    @property
    def url(self) -> str:
        return f"http://{self.name}" if self.port == 80 else f"http://{self.name}:{self.port}"

    @property
    def address(self) -> str:
        """What a client dials: `api:80`."""
        return f"{self.name}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        """As `ps --json` and the mesh page show it."""
        return {
            "name": self.name,
            "port": self.port,
            "url": self.url,
            "vip": self.vip,
            "protocol": self.protocol.value,
        }


@dataclass(frozen=True)
class Resolution:
    """What a mesh name means to one client."""

    name: str
    kind: TargetKind
    service: str
    port: int | None  # SC: the endpoint port; SD: the service's port (SRV)


# The endpoint names a client replica saw when it started; None: every current one.
View = frozenset[str] | None


def endpoint_name(service: Service) -> str:
    """The one client alias: the alias when set, else the service name."""
    return normalize(service.connect.alias or service.name)


class NamingModel:
    """`aws_endpoint`: the local SNS/SQS emulator's URL as containers reach it
    (e.g. "http://172.18.128.1:4566"); with it, queue URLs point there and
    every container gets AWS_ENDPOINT_URL_SNS/SQS and dummy credentials."""

    def __init__(
        self,
        spec: EnvironmentSpec,
        vips: Mapping[str, str] | None = None,
        aws_endpoint: str | None = None,
    ) -> None:
        self.app = spec.app
        self.env = spec.env
        self.region = spec.workspace.region
        self.aws_endpoint = aws_endpoint
        self.pubsub: PubSubPlan = plan(spec, LOCAL_ACCOUNT_ID)
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
            name = endpoint_name(s)
            protocol = AppProtocol(s.app_protocol) if s.app_protocol else AppProtocol.TCP
            vip = (vips or {}).get(name)
            endpoints.append(ServiceConnectEndpoint(name, s.target_port, s.name, protocol, vip))
        self.sc_endpoints: tuple[ServiceConnectEndpoint, ...] = tuple(endpoints)

        self._sd_by_name = {self.sd_name(n): n for n in self.registered}
        self._sc_by_name = {e.name: e for e in self.sc_endpoints}
        self._sc_by_service = {e.service: e for e in self.sc_endpoints}
        self._service_names = frozenset(normalize(n) for n in self.services)

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

    def endpoint_of(self, service: str) -> ServiceConnectEndpoint | None:
        """The Service Connect endpoint a service serves, if any."""
        return self._sc_by_service.get(service)

    @property
    def endpoint_names(self) -> frozenset[str]:
        return frozenset(self._sc_by_name)

    def shadowed_name(self, service: str) -> str | None:
        """A server's own name when its alias replaces it (not a Service Connect name)."""
        ep = self._sc_by_service.get(service)
        if ep is not None and ep.name != normalize(service):
            return normalize(service)
        return None

    # -- Both -------------------------------------------------------------

    def resolve(self, client: str | None, name: str, view: View = None) -> Resolution | None:
        """What `name` means to a replica of service `client` (None: not a mesh replica).

        `view` holds the endpoint names the client replica saw when it started
        (ECS: a task resolves only endpoints that existed at its start); None
        means every current one. None as the result means the name is not
        visible to that client (NXDOMAIN when `is_mesh_name` is true, forward
        upstream otherwise).
        """
        key = normalize(name)
        if self.is_sc_client(client) and (view is None or key in view):
            ep = self._sc_by_name.get(key)
            if ep is not None:
                return Resolution(key, TargetKind.SERVICE_CONNECT, ep.service, ep.port)
        svc = self._sd_by_name.get(key)
        if svc is not None:
            # Cloud Map registers the target port (ServiceRegistries Port: TargetPort).
            port = self.services[svc].target_port
            return Resolution(key, TargetKind.SERVICE_DISCOVERY, svc, port)
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
        if key in self._sc_by_name or key in self._service_names:
            # A service's bare name is answered here even when it is no endpoint
            # (an alias replaced it): NXDOMAIN, as on ECS, not a forward upstream.
            return key
        return None

    def is_mesh_name(self, name: str) -> bool:
        return self.zone_of(name) is not None

    def visible_names(self, client: str, view: View = None) -> list[Resolution]:
        """Every mesh name `client` resolves, for `meshlocal plan`."""
        names = {e.name for e in self.sc_endpoints} | set(self._sd_by_name)
        out = [r for n in sorted(names) if (r := self.resolve(client, n, view)) is not None]
        return out

    def missing_from(self, client: str, view: View) -> list[ServiceConnectEndpoint]:
        """Endpoints a client replica started with `view` can't resolve until replaced."""
        if view is None or not self.is_sc_client(client):
            return []
        return [e for e in self.sc_endpoints if e.name not in view]

    # -- Containers -------------------------------------------------------

    def copilot_vars(self, service: str, lb_dns: str | None = None) -> dict[str, str]:
        """Copilot's envvars-common.yml for one service, in its order.

        Every container of the task gets these, sidecars included
        (internal/pkg/template/templates/workloads/partials/cf/). ARNs are in
        the local region and account; queue URLs point at the local SQS when
        there is one (`aws_endpoint`), else where they would be on AWS.
        """
        svc = self.services[service]
        out = {
            "COPILOT_APPLICATION_NAME": self.app,
            "COPILOT_SERVICE_DISCOVERY_ENDPOINT": self.discovery_endpoint,
            "COPILOT_ENVIRONMENT_NAME": self.env,
            "COPILOT_SERVICE_NAME": service,
        }
        if svc.publish_topics:
            # generateSNSJSON: json.Marshal of a map, so keys sorted, no spaces.
            arns = {t: self.topic_arn(service, t) for t in svc.publish_topics}
            out["COPILOT_SNS_TOPIC_ARNS"] = _json(arns)
        if svc.type is ServiceType.WORKER_SERVICE:
            # `!Ref EventsQueue`: always there, Copilot's worker template creates it.
            out["COPILOT_QUEUE_URI"] = self._planned_url(service, "EventsQueue", svc.queue_fifo)
            if svc.topic_queues:
                out["COPILOT_TOPIC_QUEUE_URIS"] = _json(
                    {_queue_key(q): self.topic_queue_url(service, q) for q in svc.topic_queues}
                )
        if lb_dns is not None and svc.http_path is not None and svc.type in _ALB_TYPES:
            out["COPILOT_LB_DNS"] = lb_dns
        return out

    def agent_vars(self) -> dict[str, str]:
        """What the ECS agent sets in every Fargate container (the metadata URIs aside)."""
        return {
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
        }

    def aws_vars(self) -> dict[str, str]:
        """What points the AWS SDKs at the local SNS/SQS; empty without one.

        AWS_ENDPOINT_URL sends every AWS call to the emulator (nothing reaches
        AWS with the dummy keys; moto answers STS too); the per-service ones
        keep SNS and SQS there when a manifest points the general one elsewhere.
        """
        if self.aws_endpoint is None:
            return {}
        return {
            "AWS_ENDPOINT_URL": self.aws_endpoint,
            "AWS_ENDPOINT_URL_SNS": self.aws_endpoint,
            "AWS_ENDPOINT_URL_SQS": self.aws_endpoint,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
        }

    def topic_arn(self, service: str, topic: str) -> str:
        # snsARNPattern in internal/pkg/template/workload.go
        return plan_topic_arn(self.region, LOCAL_ACCOUNT_ID, self.app, self.env, service, topic)

    def queue_url(self, name: str, fifo: bool = False) -> str:
        """The URL of the queue with physical name `name` (`.fifo` added when `fifo`)."""
        if fifo and not name.endswith(".fifo"):
            name += ".fifo"
        if self.aws_endpoint is not None:
            return emulator_queue_url(self.aws_endpoint, LOCAL_ACCOUNT_ID, name)
        return aws_queue_url(self.region, LOCAL_ACCOUNT_ID, name)

    def _planned_url(self, service: str, logical: str, fifo: bool) -> str:
        planned = self.pubsub.queue(service, logical)
        name = (
            planned.name
            if planned is not None
            else queue_name(self.app, self.env, service, logical, fifo)
        )
        return self.queue_url(name)

    def topic_queue_url(self, service: str, q: TopicQueue) -> str:
        # The queue's logical id in subscribe.yml: {Service}{Topic}EventsQueue.
        logical = f"{logical_id(q.service)}{logical_id(q.topic)}EventsQueue"
        return self._planned_url(service, logical, q.fifo)

    def env_vars(
        self, service: str, env_file: dict[str, str] | None = None, lb_dns: str | None = None
    ) -> dict[str, str]:
        """A replica's environment, in the order ECS applies it (the last name wins).

        env_file < the agent's < envvars-common < variables < secrets <
        COPILOT_MOUNT_POINTS: Copilot writes the manifest's variables after
        its own COPILOT_* (workload-container.yml), so a variable of the same
        name replaces them; the mount points come after the variables.
        """
        svc = self.services[service]
        env: dict[str, str] = {}
        env.update(env_file or {})
        env.update(self.agent_vars())
        env.update(self.aws_vars())
        env.update(self.copilot_vars(service, lb_dns))
        env.update(svc.variables)
        env.update(svc.secrets)
        if svc.mount_points:
            env["COPILOT_MOUNT_POINTS"] = _json(svc.mount_points)
        return env

    def sidecar_env_vars(
        self, service: str, sidecar: Sidecar, lb_dns: str | None = None
    ) -> dict[str, str]:
        """A sidecar's: the task's envvars-common, then its own variables (sidecars.yml)."""
        env = {**self.agent_vars(), **self.aws_vars(), **self.copilot_vars(service, lb_dns)}
        env.update(sidecar.variables)
        env.update(sidecar.secrets)
        if sidecar.mount_points:
            env["COPILOT_MOUNT_POINTS"] = _json(sidecar.mount_points)
        return env


_ALB_TYPES = frozenset({ServiceType.LOAD_BALANCED_WEB_SERVICE, ServiceType.BACKEND_SERVICE})


def _json(data: Mapping[str, str]) -> str:
    return json.dumps(dict(data), sort_keys=True, separators=(",", ":"))


def _queue_key(q: TopicQueue) -> str:
    # generateQueueURIJSON: {svc}{Title(topic)}EventsQueue, both stripped.
    topic = logical_id(q.topic)
    return f"{logical_id(q.service)}{topic[:1].upper()}{topic[1:].lower()}EventsQueue"


def public_rules(naming: NamingModel) -> list[tuple[str, str]]:
    """(path prefix, service) of every Load Balanced Web Service, longest prefix first."""
    rules: list[tuple[str, str]] = []
    for svc in naming.services.values():
        if svc.type is ServiceType.LOAD_BALANCED_WEB_SERVICE and svc.http_path is not None:
            if svc.target_port is None:
                continue
            rules.append(("/" + svc.http_path.strip("/"), svc.name))
    # Longest prefix first; "/" is the catch-all.
    return sorted(rules, key=lambda r: len(r[0]), reverse=True)
