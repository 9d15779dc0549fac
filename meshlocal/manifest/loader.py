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
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshlocal.errors import (
    EnvironmentNotFound,
    InterpolationError,
    Location,
    ManifestError,
    SecretNotFound,
)
from meshlocal.manifest import appprotocol
from meshlocal.manifest.diagnostics import Diagnostics
from meshlocal.manifest.envfile import parse_env_file, read_dotenv
from meshlocal.manifest.interpolate import interpolate, predefined
from meshlocal.manifest.merge import is_null, merge
from meshlocal.manifest.model import (
    DEFAULT_HEALTHCHECK_COMMAND,
    BuildSpec,
    Connect,
    ContainerHealthCheck,
    Environment,
    HttpHealthCheck,
    Service,
    ServiceType,
    Sidecar,
    SkippedService,
    Workspace,
)
from meshlocal.manifest.secrets import SecretsSource, secret_files
from meshlocal.manifest.yaml12 import Map, Node, Scalar, Seq, load_file

# Top-level fields Copilot accepts that only matter on AWS.
NOT_EMULATED_TOP = (
    "cpu",
    "memory",
    "platform",
    "storage",
    "nlb",
    "logging",
    "publish",
    "deployment",
    "observability",
    "exec",
    "tags",
    "subscribe",
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
)
NOT_EMULATED_NETWORK = ("vpc",)
AUTOSCALING_METRICS = (
    "cpu_percentage",
    "memory_percentage",
    "requests",
    "response_time",
    "queue_delay",
    "cooldown",
)

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
_HTTP_HC_FIELDS = frozenset(
    {
        "path",
        "port",
        "success_codes",
        "healthy_threshold",
        "unhealthy_threshold",
        "interval",
        "timeout",
        "grace_period",
    }
)
_CONTAINER_HC_FIELDS = frozenset({"command", "interval", "retries", "timeout", "start_period"})
_BUILD_FIELDS = frozenset({"dockerfile", "context", "args", "target", "cache_from"})
_SIDECAR_FIELDS = frozenset(
    {
        "port",
        "image",
        "essential",
        "variables",
        "secrets",
        "depends_on",
        "healthcheck",
        "command",
        "entrypoint",
    }
)
_SIDECAR_NOT_EMULATED = ("credentialsParameter", "mount_points", "labels", "env_file")
DEPENDS_ON_CONDITIONS = frozenset({"start", "complete", "success", "healthy"})
_LEGACY_BOOLS = {"yes": True, "on": True, "no": False, "off": False}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_SKIP_REASONS = {
    ServiceType.STATIC_SITE: "not emulated: a Static Site is served by S3 and CloudFront",
    ServiceType.SCHEDULED_JOB: "not emulated: a Scheduled Job runs on a schedule, not in the mesh",
}
_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")


def parse_duration(text: str) -> float | None:
    """Go's time.ParseDuration, which Copilot uses: "10s", "1m30s", "500ms"; seconds."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION.match(text, pos)
        if match is None:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if text else None


def split_command(text: str) -> list[str]:
    """Split a command string the way Copilot does (shell words, no expansion)."""
    return shlex.split(text, comments=False, posix=True)


def _kind(node: Node) -> str:
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    assert isinstance(node, Scalar)
    return {"null": "null", "bool": "a boolean", "int": "an integer", "float": "a number"}.get(
        node.kind, f"{node.text!r}"
    )


@dataclass
class _Fields:
    """Typed reads of tree nodes; every failure becomes an error at its location."""

    diag: Diagnostics

    def fail(self, node: Node, field: str, expected: str, hint: str | None = None) -> None:
        self.diag.error(
            f"{field}: expected {expected}, got {_kind(node)}",
            node.loc,
            hint or f"write {expected} here (see docs/manifest-support.md)",
        )

    def string(self, node: Node | None, field: str) -> str | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Scalar):
            return node.text
        self.fail(node, field, "a string")
        return None

    def integer(
        self, node: Node | None, field: str, low: int = 0, high: int | None = None
    ) -> int | None:
        if node is None or is_null(node):
            return None
        value: int | None = None
        if isinstance(node, Scalar):
            if node.kind == "int":
                assert isinstance(node.value, int)
                value = node.value
            elif node.kind == "str" and re.fullmatch(r"\s*[+-]?\d+\s*", node.text):
                value = int(node.text)  # an interpolated "${PORT}"
        if value is None:
            self.fail(node, field, "an integer")
            return None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.diag.error(
                f"{field}: {value} is out of range, must be {bounds}",
                node.loc,
                f"use a value {bounds}",
            )
            return None
        return value

    def port(self, node: Node | None, field: str) -> int | None:
        return self.integer(node, field, 1, 65535)

    def boolean(self, node: Node | None, field: str) -> bool | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Scalar):
            if node.kind == "bool":
                return bool(node.value)
            # go-yaml v3 still reads YAML 1.1 booleans into a typed bool field.
            lowered = node.text.strip().lower()
            if node.kind == "str" and lowered in ("true", "false"):
                return lowered == "true"
            if node.kind == "str" and lowered in _LEGACY_BOOLS:
                return _LEGACY_BOOLS[lowered]
        self.fail(node, field, "true or false")
        return None

    def duration(self, node: Node | None, field: str) -> float | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Scalar) and node.kind == "str":
            seconds = parse_duration(node.text)
            if seconds is not None:
                return seconds
        if isinstance(node, Scalar) and node.kind == "int" and node.value == 0:
            return 0.0
        # A bare number would be nanoseconds to Copilot: almost surely a mistake.
        self.fail(node, field, 'a duration such as "10s" or "1m30s"')
        return None

    def mapping(self, node: Node | None, field: str) -> Map | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Map):
            return node
        self.fail(node, field, "a mapping")
        return None

    def str_list(self, node: Node | None, field: str) -> tuple[str, ...] | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Seq):
            out: list[str] = []
            for item in node.items:
                if isinstance(item, Scalar) and item.kind != "null":
                    out.append(item.text)
                else:
                    self.fail(item, f"{field}[]", "a string")
            return tuple(out)
        self.fail(node, field, "a list of strings")
        return None

    def str_map(self, node: Node | None, field: str) -> dict[str, str]:
        mapping = self.mapping(node, field)
        out: dict[str, str] = {}
        if mapping is None:
            return out
        for key, value in mapping.items.items():
            if isinstance(value, Scalar):
                out[key] = "" if value.kind == "null" else value.text
            else:
                self.fail(value, f"{field}.{key}", "a string")
        return out

    def command(self, node: Node | None, field: str) -> tuple[str, ...] | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Scalar):
            try:
                return tuple(split_command(node.text))
            except ValueError as exc:
                self.diag.error(
                    f"{field}: cannot split {node.text!r}: {exc}",
                    node.loc,
                    "close the quote, or write the command as a list",
                )
                return None
        return self.str_list(node, field)

    def unknown(self, mapping: Map, known: frozenset[str], field: str) -> None:
        for key in mapping:
            if key not in known:
                where = f"{field}.{key}" if field else key
                self.diag.note("warning", f"unknown field {where}, ignored", mapping.keys[key])


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


class ServiceLoader:
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
        self.f = _Fields(diag)
        self.vars = predefined(workspace.app, environment.name)
        self.secrets = self._secrets_source()

    def _secrets_source(self) -> SecretsSource:
        files = []
        for path in secret_files(self.ws.root, self.env.name):
            if path.is_file():
                try:
                    files.append((path, read_dotenv(path)))
                except ManifestError as exc:
                    self.diag.add(exc)
        return SecretsSource(files, self.environ)

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
                f"expected a mapping of fields, got {_kind(raw)}",
                raw.loc,
                "start with name: and type:",
            )
            return None
        base = Map(raw.loc, dict(raw.items), dict(raw.keys))
        overrides = base.items.pop("environments", None)
        base.keys.pop("environments", None)
        override: Node | None = None
        if overrides is not None and not is_null(overrides):
            if not isinstance(overrides, Map):
                self.f.fail(overrides, "environments", "a mapping of environment names")
            else:
                for name in overrides:
                    if name not in self.ws.environments:
                        self.diag.note(
                            "warning",
                            f'environments.{name}: no environment "{name}" in this workspace',
                            overrides.keys[name],
                        )
                override = overrides.get(self.env.name)
                if override is not None and not is_null(override) and not isinstance(override, Map):
                    self.f.fail(override, f"environments.{self.env.name}", "a mapping")
                    override = None
        problems: list[InterpolationError] = []
        base_i = interpolate(base, self.environ, self.vars, problems)
        override_i = interpolate(override, self.environ, self.vars, problems)
        if problems:  # all of them, so `validate` lists every undefined variable
            for problem in problems:
                self.diag.add(problem)
            return None
        result = merge(base_i, override_i)
        assert isinstance(result, Map)
        return result

    def load(self, name: str, path: Path) -> Service | SkippedService | None:
        m = self.merged(path)
        if m is None:
            return None
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
            container_hc = self.container_healthcheck(image.get("healthcheck"), "image.healthcheck")
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
                    http_hc = self.http_healthcheck(http.get("healthcheck"))
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

        count = self.count(m.get("count"), svc_type, not_emulated)

        # network
        connect = Connect()
        network = f.mapping(m.get("network"), "network")
        if network is not None:
            f.unknown(network, frozenset({"connect", *NOT_EMULATED_NETWORK}), "network")
            not_emulated += [f"network.{k}" for k in NOT_EMULATED_NETWORK if k in network]
            connect = self.connect(network.get("connect"))

        app_protocol = self.app_protocol(
            m, name, svc_type, port, target_port, target_container, sidecars, not_emulated
        )

        variables = self.variables(m.get("variables"), "variables")
        secrets = self.resolve_secrets(m.get("secrets"), "secrets")
        env_file = self.env_file(m.get("env_file"))

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

    def _path(self, text: str) -> Path:
        return (self.ws.root / text).resolve()

    def build(self, node: Node | None, field: str) -> BuildSpec | None:
        f = self.f
        if node is None or is_null(node):
            return None
        if isinstance(node, Scalar):
            # Copilot: a string is the Dockerfile's path; its directory is the context.
            dockerfile = self._path(node.text)
            return BuildSpec(context=dockerfile.parent, dockerfile=dockerfile)
        spec = f.mapping(node, field)
        if spec is None:
            return None
        f.unknown(spec, _BUILD_FIELDS, field)
        dockerfile_text = f.string(spec.get("dockerfile"), f"{field}.dockerfile")
        context_text = f.string(spec.get("context"), f"{field}.context")
        if context_text is not None:
            context = self._path(context_text)
            dockerfile = self._path(dockerfile_text) if dockerfile_text else context / "Dockerfile"
        elif dockerfile_text is not None:
            dockerfile = self._path(dockerfile_text)
            context = dockerfile.parent
        else:
            context = self.ws.root.resolve()
            dockerfile = context / "Dockerfile"
        return BuildSpec(
            context=context,
            dockerfile=dockerfile,
            args=f.str_map(spec.get("args"), f"{field}.args"),
            target=f.string(spec.get("target"), f"{field}.target"),
            cache_from=f.str_list(spec.get("cache_from"), f"{field}.cache_from") or (),
        )

    def container_healthcheck(self, node: Node | None, field: str) -> ContainerHealthCheck | None:
        f = self.f
        hc = f.mapping(node, field)
        if hc is None:
            return None
        f.unknown(hc, _CONTAINER_HC_FIELDS, field)
        if all(is_null(hc.get(key)) for key in _CONTAINER_HC_FIELDS):
            return None  # Copilot: a check that sets nothing is no check (IsEmpty)
        cmd_node = hc.get("command")
        command: tuple[str, ...] | None
        if is_null(cmd_node):
            command = DEFAULT_HEALTHCHECK_COMMAND  # Copilot's default, as for every field
        elif isinstance(cmd_node, Scalar) and cmd_node.kind == "str":
            command = ("CMD-SHELL", cmd_node.text)
        else:
            command = f.str_list(cmd_node, f"{field}.command")
            if command is None:
                return None  # not a list of strings: reported
        if not command:
            self.diag.error(
                f"{field}.command: a health check needs a command",
                cmd_node.loc if cmd_node is not None else hc.loc,
                'write command: ["CMD-SHELL", "curl -f http://localhost/ || exit 1"]',
            )
            return None
        defaults = ContainerHealthCheck(command=command)
        interval = f.duration(hc.get("interval"), f"{field}.interval")
        timeout = f.duration(hc.get("timeout"), f"{field}.timeout")
        start = f.duration(hc.get("start_period"), f"{field}.start_period")
        retries = f.integer(hc.get("retries"), f"{field}.retries", 1)
        return ContainerHealthCheck(
            command=command,
            interval_s=defaults.interval_s if interval is None else interval,
            timeout_s=defaults.timeout_s if timeout is None else timeout,
            retries=defaults.retries if retries is None else retries,
            start_period_s=defaults.start_period_s if start is None else start,
        )

    def http_healthcheck(self, node: Node | None) -> HttpHealthCheck | None:
        f = self.f
        field = "http.healthcheck"
        if node is None or is_null(node):
            return None
        if isinstance(node, Scalar):
            return HttpHealthCheck(path=node.text)
        hc = f.mapping(node, field)
        if hc is None:
            return None
        f.unknown(hc, _HTTP_HC_FIELDS, field)
        d = HttpHealthCheck()
        path = f.string(hc.get("path"), f"{field}.path")
        codes = f.string(hc.get("success_codes"), f"{field}.success_codes")
        healthy = f.integer(hc.get("healthy_threshold"), f"{field}.healthy_threshold", 1)
        unhealthy = f.integer(hc.get("unhealthy_threshold"), f"{field}.unhealthy_threshold", 1)
        interval = f.duration(hc.get("interval"), f"{field}.interval")
        timeout = f.duration(hc.get("timeout"), f"{field}.timeout")
        grace = f.duration(hc.get("grace_period"), f"{field}.grace_period")
        return HttpHealthCheck(
            path=d.path if path is None else path,
            port=f.port(hc.get("port"), f"{field}.port"),
            success_codes=d.success_codes if codes is None else codes,
            healthy_threshold=d.healthy_threshold if healthy is None else healthy,
            unhealthy_threshold=d.unhealthy_threshold if unhealthy is None else unhealthy,
            interval_s=d.interval_s if interval is None else interval,
            timeout_s=d.timeout_s if timeout is None else timeout,
            grace_period_s=d.grace_period_s if grace is None else grace,
        )

    def depends_on(self, node: Node | None, field: str) -> dict[str, str]:
        deps = self.f.str_map(node, field)
        mapping = node if isinstance(node, Map) else None
        for container, condition in deps.items():
            if condition not in DEPENDS_ON_CONDITIONS:
                loc = mapping.items[container].loc if mapping is not None else None
                self.diag.error(
                    f'{field}.{container}: unknown condition "{condition}"',
                    loc,
                    "use one of " + ", ".join(sorted(DEPENDS_ON_CONDITIONS)),
                )
        return deps

    def count(self, node: Node | None, svc_type: ServiceType, not_emulated: list[str]) -> int:
        f = self.f
        if node is None or is_null(node):
            return 1
        if svc_type is ServiceType.REQUEST_DRIVEN_WEB_SERVICE:
            # RDWS `count` names an App Runner auto scaling configuration.
            not_emulated.append("count")
            return 1
        if isinstance(node, Scalar):
            value = f.integer(node, "count")
            return 1 if value is None else value
        if not isinstance(node, Map):
            f.fail(node, "count", "an integer or a mapping")
            return 1
        m = node
        known = frozenset({"spot", "range", *AUTOSCALING_METRICS})
        f.unknown(m, known, "count")
        metrics = [k for k in AUTOSCALING_METRICS if k in m]
        not_emulated += [f"count.{k}" for k in metrics]
        spot, rng = m.get("spot"), m.get("range")
        if spot is not None and (rng is not None or metrics):
            self.diag.error(
                "count: spot and range/autoscaling exclude each other",
                m.keys["spot"],
                "use `spot: N` alone, or `range: {min, max, spot_from}`",
            )
        if spot is not None:
            value = f.integer(spot, "count.spot")
            return 1 if value is None else value
        if rng is None:
            if metrics:
                self.diag.error(
                    f"count.{metrics[0]}: autoscaling needs count.range",
                    m.keys[metrics[0]],
                    'add range: "1-10" (meshlocal runs the minimum)',
                )
            return 1
        not_emulated.append("count.range")
        if isinstance(rng, Scalar):
            match = _RANGE.fullmatch(rng.text) if rng.kind == "str" else None
            if match is None:
                f.fail(rng, "count.range", 'a range "min-max" or {min, max, spot_from}')
                return 1
            low, high = int(match.group(1)), int(match.group(2))
            if low > high:
                self.diag.error(
                    f"count.range: minimum {low} is above maximum {high}",
                    rng.loc,
                    'write the range as "min-max"',
                )
            return low
        rm = f.mapping(rng, "count.range")
        if rm is None:
            return 1
        f.unknown(rm, frozenset({"min", "max", "spot_from"}), "count.range")
        low_v = f.integer(rm.get("min"), "count.range.min")
        high_v = f.integer(rm.get("max"), "count.range.max")
        f.integer(rm.get("spot_from"), "count.range.spot_from")
        if low_v is None or high_v is None:
            missing = "min" if "min" not in rm else "max"
            if missing not in rm:
                self.diag.error(
                    f"count.range: {missing} is required", rm.loc, "set both min and max"
                )
            return 1 if low_v is None else low_v
        if low_v > high_v:
            self.diag.error(
                f"count.range: min {low_v} is above max {high_v}", rm.loc, "swap min and max"
            )
        return low_v

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

    def variables(self, node: Node | None, field: str) -> dict[str, str]:
        mapping = self.f.mapping(node, field)
        out: dict[str, str] = {}
        if mapping is None:
            return out
        for key, value in mapping.items.items():
            if isinstance(value, Scalar):
                # The exact text written: 0123 stays "0123", on stays "on".
                out[key] = "" if value.kind == "null" else value.text
            elif isinstance(value, Map) and set(value) == {"from_cfn"}:
                resolved = self._secret(key, value.get("from_cfn"), f"{field}.{key}.from_cfn")
                if resolved is not None:
                    out[key] = resolved
            else:
                self.f.fail(value, f"{field}.{key}", "a string or {from_cfn: EXPORT}")
        return out

    def resolve_secrets(self, node: Node | None, field: str) -> dict[str, str]:
        mapping = self.f.mapping(node, field)
        out: dict[str, str] = {}
        if mapping is None:
            return out
        for key, value in mapping.items.items():
            ref_node: Node | None = value
            if isinstance(value, Map) and len(value.items) == 1:
                kind = next(iter(value))
                if kind in ("secretsmanager", "from_cfn"):
                    ref_node = value.get(kind)
            if not isinstance(ref_node, Scalar) or ref_node.kind == "null":
                self.f.fail(
                    value,
                    f"{field}.{key}",
                    "an SSM parameter name, {secretsmanager: ID} or {from_cfn: EXPORT}",
                )
                continue
            resolved = self._secret(key, ref_node, f"{field}.{key}")
            if resolved is not None:
                out[key] = resolved
        return out

    def _secret(self, name: str, ref_node: Node | None, field: str) -> str | None:
        ref = self.f.string(ref_node, field)
        value = self.secrets.lookup(name, ref)
        if value is None:
            self.diag.error(
                f'{field}: no local value for secret "{name}"'
                + (f" ({ref})" if ref and ref != name else ""),
                ref_node.loc if ref_node is not None else None,
                self.secrets.how_to_provide(self.ws.root, self.env.name, name, ref),
                cls=SecretNotFound,
            )
        return value

    def env_file(self, node: Node | None) -> Path | None:
        text = self.f.string(node, "env_file")
        if text is None or node is None:
            return None
        path = self._path(text)
        if not path.is_file():
            self.diag.error(
                f"env_file: {text} does not exist (looked for {path})",
                node.loc,
                "env_file is relative to the workspace root, the directory that holds copilot/",
            )
            return None
        try:
            parse_env_file(path.read_bytes().decode("utf-8-sig"), path)
        except ManifestError as exc:
            self.diag.add(exc)
        except (OSError, UnicodeDecodeError) as exc:
            self.diag.error(
                f"env_file: cannot read {text}: {exc}", node.loc, "save it as a UTF-8 text file"
            )
        return path

    def sidecars(self, node: Node | None, not_emulated: list[str]) -> list[Sidecar]:
        f = self.f
        mapping = f.mapping(node, "sidecars")
        out: list[Sidecar] = []
        if mapping is None:
            return out
        for name, value in mapping.items.items():
            field = f"sidecars.{name}"
            sc = f.mapping(value, field)
            if sc is None:
                continue
            f.unknown(sc, _SIDECAR_FIELDS | set(_SIDECAR_NOT_EMULATED), field)
            not_emulated += [f"{field}.{k}" for k in _SIDECAR_NOT_EMULATED if k in sc]
            image_node = sc.get("image")
            image: str | None = None
            build: BuildSpec | None = None
            if isinstance(image_node, Map):
                build = self.build(image_node.get("build"), f"{field}.image.build")
                image = f.string(image_node.get("location"), f"{field}.image.location")
                if build is not None and image is not None:
                    self.diag.error(
                        f"{field}.image: build and location exclude each other",
                        image_node.loc,
                        "keep one of them",
                    )
            else:
                image = f.string(image_node, f"{field}.image")
            if image is None and build is None:
                self.diag.error(
                    f"{field}.image: a sidecar needs an image",
                    sc.loc,
                    "add image: REPO:TAG or image: {build: path/to/Dockerfile}",
                )
            out.append(
                Sidecar(
                    name=name,
                    image=image,
                    build=build,
                    port=self.sidecar_port(sc.get("port"), f"{field}.port"),
                    variables=self.variables(sc.get("variables"), f"{field}.variables"),
                    secrets=self.resolve_secrets(sc.get("secrets"), f"{field}.secrets"),
                    command=f.command(sc.get("command"), f"{field}.command"),
                    entrypoint=f.command(sc.get("entrypoint"), f"{field}.entrypoint"),
                    essential=f.boolean(sc.get("essential"), f"{field}.essential") is not False,
                    depends_on=self.depends_on(sc.get("depends_on"), f"{field}.depends_on"),
                    healthcheck=self.container_healthcheck(
                        sc.get("healthcheck"), f"{field}.healthcheck"
                    ),
                )
            )
        return out

    def sidecar_port(self, node: Node | None, field: str) -> int | None:
        # Copilot writes sidecar ports as strings, optionally with a protocol: "2000/udp".
        if isinstance(node, Scalar) and node.kind == "str":
            match = re.fullmatch(r"\s*(\d+)(?:/(tcp|udp))?\s*", node.text)
            if match is None or not 1 <= int(match.group(1)) <= 65535:
                self.f.fail(node, field, 'a port such as "8080" or "8080/tcp"')
                return None
            return int(match.group(1))
        return self.f.port(node, field)


def select_environment(workspace: Workspace, env: str | None) -> Environment:
    """The environment named `env`, or the only one when `env` is None."""
    known = ", ".join(workspace.environments) or "none"
    if env is None:
        if len(workspace.environments) == 1:
            return next(iter(workspace.environments.values()))
        raise EnvironmentNotFound(
            "choose an environment with --env"
            if workspace.environments
            else "the workspace has no environment",
            hint=f"environments: {known}"
            if workspace.environments
            else "create copilot/environments/<env>/manifest.yml, or name it in "
            "copilot/.meshlocal.yml under environments:",
        )
    if env not in workspace.environments:
        raise EnvironmentNotFound(
            f'no environment "{env}" in application {workspace.app}',
            hint=f"environments: {known}",
        )
    return workspace.environments[env]


# Environment-manifest sections whose value is always a map in Copilot.
_ENV_SECTIONS = frozenset({"network", "http", "observability"})


def load_environment_manifest(environment: Environment, diag: Diagnostics) -> None:
    """Parse the environment manifest so its YAML errors are reported; nothing in it is emulated."""
    if environment.manifest_path is None:
        return
    path = environment.manifest_path
    try:
        root = load_file(path)
    except ManifestError as exc:
        diag.add(exc)
        return
    if root is None:
        return
    if not isinstance(root, Map):
        diag.error(
            f"expected a mapping of fields, got {_kind(root)}",
            root.loc,
            "start with name: and type:",
        )
        return
    type_node = root.get("type")
    if isinstance(type_node, Scalar) and type_node.text != "Environment":
        diag.error(
            f'type: an environment manifest has type "Environment", not "{type_node.text}"',
            type_node.loc,
            "write type: Environment",
        )
    name_node = root.get("name")
    if isinstance(name_node, Scalar) and name_node.text != environment.name:
        diag.error(
            f'name: "{name_node.text}" differs from its directory '
            f"copilot/environments/{environment.name}/",
            name_node.loc,
            f"set `name: {environment.name}`",
        )
    for key in ("name", "type"):
        node = root.get(key)
        if node is not None and not isinstance(node, Scalar):
            diag.error(
                f"{key}: expected a string, got {_kind(node)}",
                node.loc,
                f"write `{key}: {environment.name if key == 'name' else 'Environment'}`",
            )
    for key in root:
        if key not in ("name", "type"):
            node = root.get(key)
            if key in _ENV_SECTIONS and node is not None and not isinstance(node, Map):
                # Copilot rejects these too; saying so here beats a surprise at deploy.
                diag.error(
                    f"{key}: expected a mapping of fields, got {_kind(node)}",
                    node.loc,
                    f"see Copilot's environment manifest reference for `{key}:`",
                )
            diag.note("not-emulated", f"environment {key} is not emulated", root.keys[key])
