"""The typed model of a Copilot workspace, after overrides and interpolation.

Pure data: the loader builds it, naming/runtime/dns/proxy read it. Every
field is already merged for one environment, so consumers never see
`environments:` blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from meshlocal.errors import Location
from meshlocal.faults import Fault


class ServiceType(StrEnum):
    LOAD_BALANCED_WEB_SERVICE = "Load Balanced Web Service"
    BACKEND_SERVICE = "Backend Service"
    WORKER_SERVICE = "Worker Service"
    REQUEST_DRIVEN_WEB_SERVICE = "Request-Driven Web Service"
    STATIC_SITE = "Static Site"
    SCHEDULED_JOB = "Scheduled Job"

    @property
    def emulated(self) -> bool:
        return self not in (ServiceType.STATIC_SITE, ServiceType.SCHEDULED_JOB)


@dataclass(frozen=True)
class BuildSpec:
    """image.build, normalised from its string or map form."""

    context: Path  # absolute
    dockerfile: Path  # absolute
    args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    cache_from: tuple[str, ...] = ()


# Copilot's default container health check: NewDefaultContainerHealthCheck in
# internal/pkg/manifest/workload_ecs.go. convertContainerHealthCheck
# (internal/pkg/deploy/cloudformation/stack/transformers.go) fills every field a
# manifest leaves unset from it, the command included; a check that sets no
# field at all is no check.
DEFAULT_HEALTHCHECK_COMMAND = ("CMD-SHELL", "curl -f http://localhost/ || exit 1")


@dataclass(frozen=True)
class ContainerHealthCheck:
    """image.healthcheck, becomes the container's Docker health check."""

    command: tuple[str, ...] = DEFAULT_HEALTHCHECK_COMMAND
    interval_s: float = 10.0
    timeout_s: float = 5.0
    retries: int = 2
    start_period_s: float = 0.0


@dataclass(frozen=True)
class HttpHealthCheck:
    """http.healthcheck: the ALB target-group check, probed by the mesh itself.

    Defaults as Copilot documents them (site/content/docs/include/
    http-healthcheck.en.md): path "/" and grace period 60 s are Copilot's own
    (DefaultHealthCheckPath, DefaultHealthCheckGracePeriod in
    internal/pkg/manifest/lb_web_svc.go); the rest Copilot leaves unset in the
    target group (workloads/partials/cf/alb.yml), and its reference states the
    ALB's defaults for them: 200, 5 healthy, 2 unhealthy, every 30 s, 5 s
    timeout. (The ELBv2 API reference now gives 6 s for an HTTP target
    group's timeout; meshlocal follows Copilot's reference.)
    """

    path: str = "/"
    port: int | None = None  # None: the target port
    success_codes: str = "200"
    healthy_threshold: int = 5
    unhealthy_threshold: int = 2
    interval_s: float = 30.0
    timeout_s: float = 5.0
    grace_period_s: float = 60.0


@dataclass(frozen=True)
class Connect:
    """network.connect, from `true`/`false` or `{alias: ...}`."""

    enabled: bool = False
    alias: str | None = None


@dataclass(frozen=True)
class TopicQueue:
    """A Worker's subscription with its own queue: COPILOT_TOPIC_QUEUE_URIS."""

    service: str
    topic: str  # with `.fifo` for a FIFO queue, as Copilot names the subscription
    fifo: bool = False


# SQS FIFO settings (internal/pkg/manifest/workload.go).
THROUGHPUT_PER_MESSAGE_GROUP = "perMessageGroupId"
THROUGHPUT_PER_QUEUE = "perQueue"
DEDUP_SCOPE_MESSAGE_GROUP = "messageGroup"
DEDUP_SCOPE_QUEUE = "queue"


@dataclass(frozen=True)
class PublishedTopic:
    """publish.topics[i], as publishedTopics() gives it (workload.go)."""

    name: str  # with `.fifo` on a FIFO topic: the COPILOT_SNS_TOPIC_ARNS key
    fifo: bool = False
    # fifo.content_based_deduplication; None: unset (publish.yml writes nothing)
    content_based_deduplication: bool | None = None


@dataclass(frozen=True)
class FifoQueueConfig:
    """A FIFO queue's settings after convertQueue (transformers.go).

    `high_throughput: true` has already set throughput_limit to
    perMessageGroupId and deduplication_scope to messageGroup.
    """

    content_based_deduplication: bool | None = None
    deduplication_scope: str | None = None
    throughput_limit: str | None = None
    high_throughput: bool | None = None


@dataclass(frozen=True)
class QueueSettings:
    """An SQS queue's manifest settings after convertQueue; whole seconds (convertTime)."""

    retention_s: int | None = None
    delay_s: int | None = None
    timeout_s: int | None = None
    dead_letter_tries: int | None = None
    fifo: FifoQueueConfig | None = None  # None: a standard queue

    @property
    def is_fifo(self) -> bool:
        return self.fifo is not None


@dataclass(frozen=True)
class Subscription:
    """subscribe.topics[i] of a Worker Service, as WorkerService.Subscriptions() gives it."""

    service: str  # the publisher
    name: str  # the topic's name, `.fifo` appended as Subscriptions() does
    # json.Marshal of filter_policy (convertFilterPolicy); None when unset or empty.
    filter_policy: str | None = None
    # Its own queue (`queue: true` or settings); None: it delivers to the EventsQueue.
    queue: QueueSettings | None = None
    where: str = ""  # dotted path of the entry, for Service.where()


@dataclass(frozen=True)
class Sidecar:
    name: str
    image: str | None  # image location (sidecars.image may be a string)
    build: BuildSpec | None
    port: int | None
    variables: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    essential: bool = True
    depends_on: dict[str, str] = field(default_factory=dict)
    healthcheck: ContainerHealthCheck | None = None
    mount_points: dict[str, str] = field(default_factory=dict)  # volume -> path


@dataclass(frozen=True)
class Service:
    """One service manifest, merged for one environment."""

    name: str
    type: ServiceType
    manifest_path: Path
    build: BuildSpec | None = None
    image_location: str | None = None
    # image.port: the container port; None for a client-only backend/worker.
    port: int | None = None
    # http.target_port, else image.port: the port Service Connect and the ALB reach.
    target_port: int | None = None
    target_container: str | None = None
    http_path: str | None = None  # LBWS http.path; None when http is disabled
    http_healthcheck: HttpHealthCheck | None = None
    container_healthcheck: ContainerHealthCheck | None = None
    count: int = 1
    variables: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # resolved values
    env_file: Path | None = None
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    connect: Connect = field(default_factory=Connect)
    # The Service Connect port mapping's AppProtocol (http, http2, grpc) from
    # taskdef_overrides or copilot/.meshlocal.yml; None: unset, so ECS proxies TCP.
    app_protocol: str | None = None
    sidecars: tuple[Sidecar, ...] = ()
    depends_on: dict[str, str] = field(default_factory=dict)  # container -> condition
    # Task size (Copilot's defaults: 256 CPU units, 512 MiB); reported by the task
    # metadata endpoint, not enforced.
    cpu: int = 256
    memory: int = 512
    # publish.topics, `.fifo` on FIFO topics.
    topics: tuple[PublishedTopic, ...] = ()
    # Worker Services: the default queue's settings, only when subscribe.topics
    # is set (convertSubscribe returns nil otherwise), and the subscriptions.
    events_queue: QueueSettings | None = None
    subscriptions: tuple[Subscription, ...] = ()
    mount_points: dict[str, str] = field(default_factory=dict)  # storage.volumes: name -> path
    # Dotted paths of fields that load fine but only matter on AWS.
    not_emulated: tuple[str, ...] = ()
    # Dotted field path -> where it was written; for error messages downstream.
    locations: dict[str, Location] = field(default_factory=dict)

    @property
    def publish_topics(self) -> tuple[str, ...]:
        """Topic names (`.fifo` on FIFO topics), for COPILOT_SNS_TOPIC_ARNS."""
        return tuple(t.name for t in self.topics)

    @property
    def queue_fifo(self) -> bool:
        """Whether the default queue (EventsQueue) is FIFO."""
        return self.events_queue is not None and self.events_queue.is_fifo

    @property
    def topic_queues(self) -> tuple[TopicQueue, ...]:
        """The subscriptions with their own queue."""
        return tuple(
            TopicQueue(s.service, s.name, s.queue.is_fifo)
            for s in self.subscriptions
            if s.queue is not None
        )

    def where(self, dotted: str) -> Location:
        """Best location for a field: itself, else its nearest parent, else the file."""
        parts = dotted.split(".")
        while parts:
            loc = self.locations.get(".".join(parts))
            if loc is not None:
                return loc
            parts.pop()
        return Location(self.manifest_path)


@dataclass(frozen=True)
class Environment:
    name: str
    manifest_path: Path | None
    # Legacy environments (created before Copilot v1.9) register
    # `{svc}.{app}.local`. Marked in meshlocal's own copilot/.meshlocal.yml
    # (`environments: {<env>: {legacy_namespace: true}}`), so Copilot's
    # manifests stay untouched (see docs/secrets.md).
    legacy_namespace: bool = False
    # copilot/.meshlocal.yml `environments: {<env>: {faults: [...]}}`: injected
    # from `up` on (faults.py), checked against the workspace by validate.
    faults: tuple[DeclaredFault, ...] = ()


@dataclass(frozen=True)
class DeclaredFault:
    """A fault written in copilot/.meshlocal.yml (`declared` set, an id given), and where."""

    fault: Fault
    location: Location | None = None


@dataclass(frozen=True)
class SkippedService:
    """A service that was recognised but is not emulated (Static Site, Scheduled Job)."""

    name: str
    type: ServiceType
    manifest_path: Path
    reason: str


# The default upper bound on one service's replicas: a count meant for a
# cluster (ECS allows 5,000 tasks per service) would swamp a laptop's engine.
MAX_REPLICAS = 50
# Where AWS_REGION points and ARNs/URLs live when copilot/.meshlocal.yml names
# no region; the account id stands in for the AWS account (moto's default).
DEFAULT_REGION = "us-east-1"
LOCAL_ACCOUNT_ID = "123456789012"


@dataclass(frozen=True)
class Workspace:
    """A copilot/ workspace on disk, before an environment is chosen."""

    root: Path  # the directory that holds copilot/
    app: str
    environments: dict[str, Environment]
    service_manifests: dict[str, Path]  # service name -> manifest.yml
    # copilot/.meshlocal.yml `services: {NAME: {app_protocol: ...}}`: a local
    # Service Connect protocol that wins over the manifest's taskdef_overrides.
    app_protocols: dict[str, str] = field(default_factory=dict)
    # copilot/.meshlocal.yml `max_replicas`: meshlocal's own bound on a count.
    max_replicas: int = MAX_REPLICAS
    max_replicas_location: Location | None = None
    region: str = DEFAULT_REGION
    # copilot/.meshlocal.yml `health_check_interval`: a local probe period for
    # container health checks, in place of the manifest's (ECS's minimum is 5 s).
    health_check_interval: float | None = None


@dataclass(frozen=True)
class EnvironmentSpec:
    """Everything needed to run one environment of one workspace."""

    workspace: Workspace
    environment: Environment
    services: tuple[Service, ...]
    skipped: tuple[SkippedService, ...] = ()

    @property
    def app(self) -> str:
        return self.workspace.app

    @property
    def env(self) -> str:
        return self.environment.name

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)
