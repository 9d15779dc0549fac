"""Build the typed model of one service manifest, merged for one environment.

Steps per manifest: parse (YAML 1.2, with positions) -> split off
`environments:` -> interpolate `${VAR}` in the base and in the chosen
environment's override -> merge the override (Copilot's rules) -> read each
field into :class:`~meshlocal.manifest.model.Service`.

Errors do not stop the loader: each one is recorded with its file:line in a
:class:`Diagnostics`, so `meshlocal validate` can list them all. A field that
fails to load falls back to its default.

Only the chosen environment's override is interpolated. Copilot
interpolates the whole file, so an unset `${TAG}` under `environments.prod`
fails every deployment; locally that would force every variable of every
environment to be set, so meshlocal is deliberately lenient there.

The container fields are read by the mixins ServiceLoader inherits (over
the shared state in :mod:`~meshlocal.manifest.reader`):
:mod:`~meshlocal.manifest.image` (image.build, depends_on),
:mod:`~meshlocal.manifest.containerenv` (variables, secrets, env_file) and
:mod:`~meshlocal.manifest.sidecars`. Environment selection and the
environment manifest are in :mod:`~meshlocal.manifest.environment`
(re-exported here).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

from meshlocal.errors import (
    DecodeError,
    InterpolationError,
    Location,
    ManifestError,
)
from meshlocal.manifest import appprotocol, counts, events, healthchecks
from meshlocal.manifest.diagnostics import Diagnostics
from meshlocal.manifest.environment import (
    load_environment_manifest as load_environment_manifest,
)
from meshlocal.manifest.environment import select_environment as select_environment
from meshlocal.manifest.fields import Fields, kind_of
from meshlocal.manifest.interpolate import interpolate, predefined
from meshlocal.manifest.merge import is_null, merge
from meshlocal.manifest.model import (
    Connect,
    Environment,
    QueueSettings,
    Service,
    ServiceType,
    Sidecar,
    SkippedService,
    Subscription,
    Workspace,
)
from meshlocal.manifest.sidecars import SidecarReader
from meshlocal.manifest.yaml12 import Map, Node, Scalar, Seq, load_file

# Top-level fields Copilot accepts that only matter on AWS.
NOT_EMULATED_TOP = (
    "cpu",
    "memory",
    "platform",
    "storage",
    "nlb",
    "logging",
    "deployment",
    "observability",
    "exec",
    "tags",
    "instance",
)
NOT_EMULATED_IMAGE = ("credentials", "labels", "docker_labels")
NOT_EMULATED_HTTP = (
    "alias",
    "hosted_zone",
    "allowed_source_ips",
    "redirect_to_https",
    "stickiness",
    "deregistration_delay",
    "additional_rules",
    "version",
    "private",
    "ingress",
    "alb",  # an imported ALB (http.go ImportedALB): only its DNS name would differ
)
NOT_EMULATED_NETWORK = ("vpc",)

_ECS = frozenset(
    {
        ServiceType.LOAD_BALANCED_WEB_SERVICE,
        ServiceType.BACKEND_SERVICE,
        ServiceType.WORKER_SERVICE,
    }
)
# Services Copilot renders with a Service Connect server port mapping.
_SC_SERVERS = frozenset({ServiceType.LOAD_BALANCED_WEB_SERVICE, ServiceType.BACKEND_SERVICE})
_TOP_FIELDS: dict[ServiceType, frozenset[str]] = {
    t: frozenset(
        {
            "name",
            "type",
            "image",
            "entrypoint",
            "command",
            "count",
            "network",
            "sidecars",
            "variables",
            "secrets",
            "env_file",
            "environments",
            "taskdef_overrides",
            "publish",
            "subscribe",
            *NOT_EMULATED_TOP,
        }
        | ({"http"} if t is not ServiceType.WORKER_SERVICE else set())
    )
    for t in ServiceType
}
_IMAGE_FIELDS = frozenset({"build", "location", "port", "healthcheck", "depends_on"})
_HTTP_FIELDS = frozenset(
    {"path", "healthcheck", "target_container", "targetContainer", "target_port"}
)
_SKIP_REASONS = {
    ServiceType.STATIC_SITE: "not emulated: a Static Site is served by S3 and CloudFront",
    ServiceType.SCHEDULED_JOB: "not emulated: a Scheduled Job runs on a schedule, not in the mesh",
}


def _collect_positions(node: Node, out: set[tuple[int | None, int | None]]) -> None:
    out.add((node.loc.line, node.loc.column))
    if isinstance(node, Map):
        for key, value in node.items.items():
            loc = node.keys[key]
            out.add((loc.line, loc.column))
            _collect_positions(value, out)
    elif isinstance(node, Seq):
        for value in node.items:
            _collect_positions(value, out)


def record_locations(node: Node, prefix: str, out: dict[str, Location]) -> None:
    """Dotted path -> where it is written: the value for scalars, the key otherwise."""
    if isinstance(node, Map):
        for key, value in node.items.items():
            path = f"{prefix}.{key}" if prefix else key
            out[path] = value.loc if isinstance(value, Scalar) else node.keys[key]
            record_locations(value, path, out)
    elif isinstance(node, Seq):
        for index, value in enumerate(node.items):
            path = f"{prefix}[{index}]"
            out[path] = value.loc
            record_locations(value, path, out)


class ServiceLoader(SidecarReader):
    """Loads every service of one environment, collecting diagnostics."""

    def __init__(
        self,
        workspace: Workspace,
        environment: Environment,
        environ: Mapping[str, str],
        diag: Diagnostics,
    ) -> None:
        self.ws = workspace
        self.env = environment
        self.environ = environ
        self.diag = diag
        self.f = Fields(diag)
        self.vars = predefined(workspace.app, environment.name)
        self.secrets = self._secrets_source()
        # The last manifest's other environments: name -> (base, their block).
        self.other_overrides: dict[str, tuple[Map, Map]] = {}

    # -- manifests --------------------------------------------------------

    def merged(self, path: Path) -> Map | None:
        """The manifest at `path`, interpolated and merged for this environment."""
        try:
            raw = load_file(path)
        except ManifestError as exc:
            self.diag.add(exc)
            return None
        if raw is None:
            self.diag.error("the manifest is empty", Location(path, 1), "write name: and type:")
            return None
        if not isinstance(raw, Map):
            self.diag.error(
                f"expected a mapping of fields, got {kind_of(raw)}",
                raw.loc,
                "start with name: and type:",
            )
            return None
        # Copilot interpolates the whole file, every environment's block too,
        # before decoding it (internal/pkg/cli/svc_deploy.go, workloadManifest).
        problems: list[InterpolationError] = []
        interpolated = interpolate(raw, self.environ, self.vars, problems)
        if problems:  # all of them, so `validate` lists every undefined variable
            for problem in problems:
                self.diag.add(problem)
            return None
        assert isinstance(interpolated, Map)
        base = Map(interpolated.loc, dict(interpolated.items), dict(interpolated.keys))
        overrides = base.items.pop("environments", None)
        base.keys.pop("environments", None)
        override: Node | None = None
        self.other_overrides = {}
        if overrides is not None and not is_null(overrides):
            if not isinstance(overrides, Map):
                self.f.fail(overrides, "environments", "a mapping of environment names")
            else:
                for name, block in overrides.items.items():
                    if name not in self.ws.environments:
                        self.diag.note(
                            "warning",
                            f'environments.{name}: no environment "{name}" in this workspace',
                            overrides.keys[name],
                        )
                    if is_null(block):
                        continue
                    if not isinstance(block, Map):
                        # go-yaml decodes every block, whichever environment deploys.
                        self.f.fail(block, f"environments.{name}", "a mapping")
                    elif name == self.env.name:
                        override = block
                    else:
                        self.other_overrides[name] = (base, block)
        result = merge(base, override)
        assert isinstance(result, Map)
        return result

    def load(self, name: str, path: Path) -> Service | SkippedService | None:
        m = self.merged(path)
        if m is None:
            return None
        result = self._service(name, path, m)
        if result is not None:
            for env_name, (base, block) in self.other_overrides.items():
                self._decode_other(name, path, env_name, merge(base, block), block)
        return result

    def _decode_other(
        self, name: str, path: Path, env_name: str, merged: Node | None, block: Map
    ) -> None:
        """Another environment's block: Copilot decodes it too, and fails on a wrong shape.

        Only decoding errors count there (go-yaml's type errors); Copilot
        validates the rules for the deployed environment alone
        (internal/pkg/cli/svc_deploy.go: unmarshal, then ApplyEnv, then Validate).
        """
        if not isinstance(merged, Map):
            return
        inside: set[tuple[int | None, int | None]] = set()
        _collect_positions(block, inside)
        other = copy.copy(self)
        other.diag = Diagnostics()
        other.f = Fields(other.diag)
        other._service(name, path, merged)
        for error in other.diag.errors:
            loc = error.location
            if (
                isinstance(error, DecodeError)
                and loc is not None
                and (loc.line, loc.column) in inside
            ):
                self.diag.error(
                    f"environments.{env_name}.{error.message}", loc, error.hint, cls=DecodeError
                )

    def _service(self, name: str, path: Path, m: Map) -> Service | SkippedService | None:
        f = self.f
        type_node = m.get("type")
        type_text = f.string(type_node, "type")
        if type_node is None or type_text is None:
            self.diag.error(
                "type: the manifest has no service type",
                type_node.loc if type_node is not None else Location(path, 1),
                "add `type: Backend Service` (or Load Balanced Web Service, Worker Service, ...)",
            )
            return None
        try:
            svc_type = ServiceType(type_text)
        except ValueError:
            assert type_node is not None
            known = ", ".join(f'"{t.value}"' for t in ServiceType)
            self.diag.error(
                f'type: unknown service type "{type_text}"', type_node.loc, f"use one of {known}"
            )
            return None

        name_node = m.get("name")
        manifest_name = f.string(name_node, "name")
        if name_node is not None and manifest_name is not None and manifest_name != name:
            self.diag.error(
                f'name: "{manifest_name}" differs from its directory copilot/{name}/',
                name_node.loc,
                f"rename the directory or set `name: {name}`",
            )

        if not svc_type.emulated:
            reason = _SKIP_REASONS[svc_type]
            self.diag.note(
                "skipped", f"service {name} ({svc_type.value}) is {reason}", type_node.loc
            )
            return SkippedService(name, svc_type, path, reason)

        f.unknown(m, _TOP_FIELDS[svc_type], "")
        not_emulated: list[str] = [k for k in NOT_EMULATED_TOP if k in m]
        if isinstance(lg := m.get("logging"), Map):
            self.env_extension(lg.get("env_file"), "logging.env_file")

        locations: dict[str, Location] = {}
        record_locations(m, "", locations)

        # image
        image = f.mapping(m.get("image"), "image")
        build = location = None
        port = None
        container_hc = None
        depends_on: dict[str, str] = {}
        if image is None:
            if m.get("image") is None:
                self.diag.error(
                    "image: a service needs image.build or image.location",
                    Location(path, 1),
                    "add `image: {build: Dockerfile}` or `image: {location: repo:tag}`",
                )
        else:
            f.unknown(image, _IMAGE_FIELDS | set(NOT_EMULATED_IMAGE), "image")
            not_emulated += [f"image.{k}" for k in NOT_EMULATED_IMAGE if k in image]
            build = self.build(image.get("build"), "image.build")
            location = f.string(image.get("location"), "image.location")
            port = f.port(image.get("port"), "image.port")
            container_hc = healthchecks.container_healthcheck(
                f, image.get("healthcheck"), "image.healthcheck"
            )
            depends_on = self.depends_on(image.get("depends_on"), "image.depends_on")
            if svc_type is ServiceType.WORKER_SERVICE and "port" in image:
                self.diag.note(
                    "warning",
                    "image.port: a Worker Service takes no traffic; ignored",
                    locations["image.port"],
                )
                port = None

        # sidecars (before http: target_container may name one)
        sidecars = self.sidecars(m.get("sidecars"), not_emulated)

        # http
        http_path = None
        http_hc = None
        target_container = None
        target_port = None
        http_node = m.get("http") if svc_type is not ServiceType.WORKER_SERVICE else None
        if http_node is not None and not is_null(http_node):
            if isinstance(http_node, Scalar) and http_node.kind in ("bool", "str"):
                enabled = f.boolean(http_node, "http")
                if enabled:
                    http_path = "/"
                elif (
                    enabled is False
                    and svc_type is ServiceType.LOAD_BALANCED_WEB_SERVICE
                    and is_null(m.get("nlb"))
                ):
                    # LoadBalancedWebServiceConfig.validate (validate.go).
                    self.diag.error(
                        'must specify at least one of "http" or "nlb"',
                        http_node.loc,
                        "enable http (http: {path: /}) or add an nlb listener",
                    )
            else:
                http = f.mapping(http_node, "http")
                if http is not None:
                    f.unknown(http, _HTTP_FIELDS | set(NOT_EMULATED_HTTP), "http")
                    not_emulated += [f"http.{k}" for k in NOT_EMULATED_HTTP if k in http]
                    http_path = f.string(http.get("path"), "http.path")
                    if http_path is None and svc_type in (
                        ServiceType.LOAD_BALANCED_WEB_SERVICE,
                        ServiceType.REQUEST_DRIVEN_WEB_SERVICE,
                    ):
                        http_path = "/"
                    http_hc = healthchecks.http_healthcheck(f, http.get("healthcheck"))
                    tc = http.get("target_container") or http.get("targetContainer")
                    target_container = f.string(tc, "http.target_container")
                    target_port = f.port(http.get("target_port"), "http.target_port")
        elif svc_type is ServiceType.REQUEST_DRIVEN_WEB_SERVICE:
            http_path = "/"
        if target_port is None and target_container not in (None, name):
            for sidecar in sidecars:
                if sidecar.name == target_container:
                    target_port = sidecar.port
        if target_port is None:
            target_port = port

        count = counts.count(f, m.get("count"), svc_type, not_emulated)

        # network
        connect = Connect()
        network = f.mapping(m.get("network"), "network")
        if network is not None:
            f.unknown(network, frozenset({"connect", *NOT_EMULATED_NETWORK}), "network")
            not_emulated += [f"network.{k}" for k in NOT_EMULATED_NETWORK if k in network]
            connect = self.connect(network.get("connect"))
            if svc_type is ServiceType.REQUEST_DRIVEN_WEB_SERVICE and "connect" in network:
                # The RDWS manifest has no network.connect (rd_web_svc.go): go-yaml
                # skips the field and Copilot deploys without Service Connect.
                self.diag.note(
                    "warning",
                    "network.connect: a Request-Driven Web Service cannot use Service Connect; "
                    "Copilot ignores the field",
                    network.keys["connect"],
                )
                connect = Connect()

        app_protocol = self.app_protocol(
            m, name, svc_type, port, target_port, target_container, sidecars, not_emulated
        )

        variables = self.variables(m.get("variables"), "variables")
        secrets = self.resolve_secrets(m.get("secrets"), "secrets")
        env_file = self.env_file(m.get("env_file"))
        topics = events.publish(f, m.get("publish"))
        events_queue: QueueSettings | None = None
        subscriptions: tuple[Subscription, ...] = ()
        if svc_type is ServiceType.WORKER_SERVICE:
            events_queue, subscriptions = events.subscribe(f, m.get("subscribe"))
        elif "subscribe" in m:
            # Only WorkerServiceConfig has the field: go-yaml skips it elsewhere.
            self.diag.note(
                "warning",
                f"subscribe: only a Worker Service subscribes to topics; Copilot ignores the "
                f"field on a {svc_type.value}",
                m.keys["subscribe"],
            )

        return Service(
            name=name,
            type=svc_type,
            manifest_path=path,
            build=build,
            image_location=location,
            port=port,
            target_port=target_port,
            target_container=target_container,
            http_path=http_path,
            http_healthcheck=http_hc,
            container_healthcheck=container_hc,
            count=count,
            variables=variables,
            secrets=secrets,
            env_file=env_file,
            command=f.command(m.get("command"), "command"),
            entrypoint=f.command(m.get("entrypoint"), "entrypoint"),
            connect=connect,
            app_protocol=app_protocol,
            sidecars=tuple(sidecars),
            depends_on=depends_on,
            cpu=f.integer(m.get("cpu"), "cpu", 0) or 256,
            memory=f.integer(m.get("memory"), "memory", 0) or 512,
            topics=topics,
            events_queue=events_queue,
            subscriptions=subscriptions,
            mount_points=events.mount_points(f, m.get("storage"), "storage"),
            not_emulated=tuple(dict.fromkeys(not_emulated)),
            locations=locations,
        )

    # -- fields -----------------------------------------------------------

    def app_protocol(
        self,
        m: Map,
        name: str,
        svc_type: ServiceType,
        port: int | None,
        target_port: int | None,
        target_container: str | None,
        sidecars: list[Sidecar],
        not_emulated: list[str],
    ) -> str | None:
        """AppProtocol of the Service Connect port: .meshlocal.yml, else taskdef_overrides."""
        target = None
        if target_port is not None and svc_type in _SC_SERVERS:
            observability = m.get("observability")
            tracing = observability.get("tracing") if isinstance(observability, Map) else None
            target = appprotocol.target_index(
                main=name,
                target_container=target_container,
                target_port=target_port,
                main_ports={port} if port is not None else set(),
                sidecar_ports={sc.name: {sc.port} if sc.port else set() for sc in sidecars},
                # Copilot adds FireLens unless Logging.IsEmpty(), which ignores retention.
                logging=isinstance(lg := m.get("logging"), Map)
                and any(k != "retention" and not is_null(v) for k, v in lg.items.items()),
                # Copilot upper-cases tracing and compares with AWSXRAY.
                xray=isinstance(tracing, Scalar) and tracing.text.lower() == "awsxray",
            )
        overrides = m.get("taskdef_overrides")
        if isinstance(overrides, Seq) and not appprotocol.only_app_protocol(overrides):
            not_emulated.append("taskdef_overrides")
        found = appprotocol.read_overrides(overrides, "taskdef_overrides", target, self.diag)
        local = self.ws.app_protocols.get(name)
        if local is not None:
            return local
        return found[0] if found else None

    def connect(self, node: Node | None) -> Connect:
        f = self.f
        if node is None or is_null(node):
            return Connect()
        if isinstance(node, Map):
            f.unknown(node, frozenset({"alias"}), "network.connect")
            alias = f.string(node.get("alias"), "network.connect.alias")
            return Connect(enabled=True, alias=alias)
        enabled = f.boolean(node, "network.connect")
        return Connect(enabled=bool(enabled))
