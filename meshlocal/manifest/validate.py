"""Copilot's rules that matter to the mesh, checked on the loaded model.

Parse and type errors come from the loader; this module adds the semantic
rules, per service and across the environment, and the public entry points:
:func:`check` collects every error and note (for `meshlocal validate`),
:func:`load_environment` returns the spec or raises all errors at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshlocal.errors import Location, ManifestError
from meshlocal.manifest.diagnostics import Diagnostics, ManifestErrors, Note
from meshlocal.manifest.loader import (
    ServiceLoader,
    load_environment_manifest,
    select_environment,
)
from meshlocal.manifest.model import (
    Environment,
    EnvironmentSpec,
    Service,
    ServiceType,
    SkippedService,
    Workspace,
)
from meshlocal.manifest.workspace import find_workspace

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# Directory names Copilot keeps for itself (reservedWorkloadNames, internal/pkg/cli/validate.go).
RESERVED_WORKLOAD_NAMES = frozenset({"pipelines", "environments"})


def service_name_error(name: str, svc_type: ServiceType) -> str | None:
    """Copilot's validateSvcName (internal/pkg/cli/validate.go), or None.

    `copilot svc init` refuses any other name, so no deployable workspace
    holds one; App Runner caps a Request-Driven Web Service at 40 characters.
    """
    if svc_type is ServiceType.REQUEST_DRIVEN_WEB_SERVICE and len(name) > 40:
        return "value must not exceed 40 characters"
    error = basic_name_error(name)
    if error is None and name in RESERVED_WORKLOAD_NAMES:
        error = "value is reserved"
    return error


# envvars-common.yml: what Copilot sets in every container of every service.
_COPILOT_SETS = frozenset(
    {
        "COPILOT_APPLICATION_NAME",
        "COPILOT_ENVIRONMENT_NAME",
        "COPILOT_SERVICE_NAME",
        "COPILOT_SERVICE_DISCOVERY_ENDPOINT",
    }
)

# Copilot's names for applications and environments (internal/pkg/cli/validate.go,
# basicNameValidation): what `copilot app init` / `env init` accept, so what a
# deployable workspace holds.
_BASIC_NAME = re.compile(r"[a-z][a-z0-9\-]+")
_BASIC_NAME_RULE = (
    "value must have a length of at least 2, start with a letter, contain only lower-case "
    "letters, numbers, and hyphens, and have no consecutive or trailing hyphen"
)


def basic_name_error(name: str) -> str | None:
    """Copilot's message for an invalid application or environment name, or None."""
    if not name:
        return "value must not be empty"
    if len(name) > 255:
        return "value must not exceed 255 characters"
    if not _BASIC_NAME.fullmatch(name) or "--" in name or name.endswith("-"):
        return _BASIC_NAME_RULE
    return None


def _line_of(path: Path, key: str) -> Location:
    """Where `key:` is written in a small file (its first line when absent)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return Location(path)
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith(f"{key}:"):
            return Location(path, number)
    return Location(path, 1)


def check_names(workspace: Workspace, environment: Environment, diag: Diagnostics) -> None:
    """The application's and the environment's names, by Copilot's rules and messages."""
    copilot = workspace.root / "copilot"
    app_error = basic_name_error(workspace.app)
    if app_error:
        diag.error(
            f"application name {workspace.app} is invalid: {app_error}",
            _line_of(copilot / ".workspace", "application"),
            "Copilot creates no such application: use the name `copilot app init` gave it",
        )
    env_error = basic_name_error(environment.name)
    if env_error:
        where = environment.manifest_path or copilot / ".meshlocal.yml"
        diag.error(
            f"environment name {environment.name} is invalid: {env_error}",
            Location(where) if environment.manifest_path else _line_of(where, environment.name),
            "rename the environment's folder under copilot/environments/ to a valid name",
        )


def is_dns_name(name: str) -> bool:
    if not name or len(name) > 253 or name.endswith("."):
        return False
    return all(_DNS_LABEL.fullmatch(label) for label in name.lower().split("."))


def check_service(svc: Service, diag: Diagnostics) -> None:
    """Rules local to one service."""
    name_error = service_name_error(svc.name, svc.type)
    if name_error:
        diag.error(
            f"service name {svc.name} is invalid: {name_error}",
            svc.locations.get("name", Location(svc.manifest_path, 1)),
            "Copilot creates no such service (`copilot svc init` refuses the name): rename "
            "copilot/<name>/ and its `name:`",
        )
    if svc.build is not None and svc.image_location is not None:
        diag.error(
            "image.build and image.location exclude each other",
            svc.where("image.location"),
            "keep image.build to build locally, or image.location to use an existing image",
        )
    if svc.build is None and svc.image_location is None and "image" in svc.locations:
        diag.error(
            "image: set image.build or image.location",
            svc.where("image"),
            "add build: path/to/Dockerfile or location: REPO:TAG",
        )
    if svc.connect.alias is not None:
        alias_loc = svc.where("network.connect.alias")
        if svc.type is ServiceType.WORKER_SERVICE or svc.target_port is None:
            # ServiceConnectArgs.validate is a no-op and convertServiceConnectServer
            # makes no server without a target port: Copilot deploys a client only.
            hint = (
                "a Worker Service takes no traffic"
                if svc.type is ServiceType.WORKER_SERVICE
                else "set image.port (or http.target_port) to serve it"
            )
            diag.note(
                "warning",
                f'network.connect.alias "{svc.connect.alias}" is ignored: the service exposes '
                f"no port, so it is a Service Connect client only ({hint})",
                alias_loc,
            )
        if not is_dns_name(svc.connect.alias):
            diag.error(
                f'network.connect.alias "{svc.connect.alias}" is not a valid DNS name',
                alias_loc,
                "use labels of letters, digits and hyphens separated by dots, e.g. api.local",
            )
    if svc.type is ServiceType.LOAD_BALANCED_WEB_SERVICE and svc.port is None:
        diag.error(
            "image.port is required for a Load Balanced Web Service",
            svc.where("image"),
            "set image.port to the port your container listens on",
        )
    if (
        svc.type is ServiceType.BACKEND_SERVICE
        and svc.http_path is not None
        and svc.target_port is None
    ):
        diag.error(
            "http needs image.port (or http.target_port) on a Backend Service",
            svc.where("http"),
            "set image.port",
        )
    scaling = [m for m in ("count.requests", "count.response_time") if m in svc.not_emulated]
    if svc.type is ServiceType.BACKEND_SERVICE and svc.http_path is None and scaling:
        diag.error(
            '"http" must be specified if "count.requests" or "count.response_time" are specified',
            svc.where(scaling[0]),
            "add http: {path: /api}, or scale on cpu_percentage/memory_percentage",
        )
    check_containers(svc, diag)
    for sidecar in svc.sidecars:
        if sidecar.name == svc.name:
            diag.error(
                f'sidecars.{sidecar.name}: a sidecar cannot be named like its service "{svc.name}"',
                svc.where(f"sidecars.{sidecar.name}"),
                "rename the sidecar",
            )
    for name in sorted(set(svc.variables) & _COPILOT_SETS):
        # Copilot accepts it; ECS keeps the last of a repeated name, and Copilot
        # writes the manifest's variables after its own (workload-container.yml).
        diag.note(
            "warning",
            f"variables.{name}: replaces the value Copilot sets in every container",
            svc.where(f"variables.{name}"),
        )
    containers = {svc.name, *(s.name for s in svc.sidecars)}
    if svc.target_container is not None and svc.target_container not in containers:
        diag.error(
            f'http.target_container "{svc.target_container}" is not a container of this service',
            svc.where("http.target_container"),
            "containers: " + ", ".join(sorted(containers)),
        )
    deps = [("image.depends_on", svc.depends_on)] + [
        (f"sidecars.{s.name}.depends_on", s.depends_on) for s in svc.sidecars
    ]
    for prefix, depends_on in deps:
        for container in depends_on:
            if container not in containers:
                diag.error(
                    f'{prefix}.{container}: no container "{container}" in this service',
                    svc.where(f"{prefix}.{container}"),
                    "containers: " + ", ".join(sorted(containers)),
                )


def check_containers(svc: Service, diag: Diagnostics) -> None:
    """Ports and dependencies across a task's containers, as validate.go checks them."""
    exposed: dict[int, str] = {}
    for sidecar in svc.sidecars:
        if sidecar.port is not None:
            first = exposed.setdefault(sidecar.port, sidecar.name)
            if first != sidecar.name:
                _same_port(svc, diag, sidecar.name, first, sidecar.port, f"sidecars.{sidecar.name}")
    if svc.port is not None and svc.port in exposed:
        _same_port(svc, diag, svc.name, exposed[svc.port], svc.port, "image.port")
    essential = {svc.name: True, **{s.name: s.essential for s in svc.sidecars}}
    deps = {svc.name: ("image.depends_on", svc.depends_on)} | {
        s.name: (f"sidecars.{s.name}.depends_on", s.depends_on) for s in svc.sidecars
    }
    for name, (where, depends_on) in deps.items():
        for dep, status in depends_on.items():
            if essential.get(dep) and status not in ("start", "healthy"):
                # validateDepsForEssentialContainers (validate.go).
                diag.error(
                    f"validate {name} container dependencies status: essential container "
                    f"{dep} can only have status START or HEALTHY",
                    svc.where(f"{where}.{dep}"),
                    f"wait for {dep} to start or be healthy, or mark it essential: false",
                )
    cycle = _dependency_cycle({n: list(d) for n, (_, d) in deps.items()})
    if cycle:
        where = deps[cycle[0]][0]
        message = (
            f"container {cycle[0]} cannot depend on itself"
            if len(cycle) == 1
            else "circular container dependency chain includes the following containers: "
            f"[{' '.join(sorted(cycle))}]"
        )
        diag.error(message, svc.where(where), "remove one of the depends_on entries")


def _same_port(svc: Service, diag: Diagnostics, a: str, b: str, port: int, field: str) -> None:
    diag.error(
        f'containers "{a}" and "{b}" are exposing the same port {port}',
        svc.where(field),
        "give each container its own port",
    )


def _dependency_cycle(graph: dict[str, list[str]]) -> list[str]:
    """The containers of a depends_on cycle, or [] (validateNoCircularDependencies)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return path[path.index(node) :]
        if node in done or node not in graph:
            return []
        for nxt in graph[node]:
            found = visit(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return []

    for start in graph:
        cycle = visit(start, [])
        if cycle:
            return cycle
    return []


def check_environment(services: list[Service], diag: Diagnostics) -> None:
    """Rules across the services of one environment."""
    # Servers whose endpoint is their own name (no alias replaces it).
    sc_names: dict[str, tuple[Service, Location]] = {}
    for svc in services:
        if (
            svc.connect.enabled
            and svc.connect.alias is None
            and svc.target_port is not None
            and svc.type in (ServiceType.LOAD_BALANCED_WEB_SERVICE, ServiceType.BACKEND_SERVICE)
        ):
            sc_names[svc.name] = (svc, svc.where("name"))
    seen: dict[str, Service] = {}
    for svc in services:
        alias = svc.connect.alias
        if alias is None or svc.type is ServiceType.WORKER_SERVICE or svc.target_port is None:
            continue  # no server, so no endpoint: the alias is ignored (a warning)
        key = alias.lower().rstrip(".")
        loc = svc.where("network.connect.alias")
        if key in seen:
            first = seen[key]
            diag.error(
                f'network.connect.alias "{alias}" is already used by service {first.name} '
                f"({first.where('network.connect.alias')})",
                loc,
                "aliases must be unique within an environment",
            )
            continue
        seen[key] = svc
        owner = sc_names.get(key)
        if owner is not None and owner[0].name != svc.name:
            diag.error(
                f'network.connect.alias "{alias}" is already the Service Connect name of '
                f"service {owner[0].name}",
                loc,
                "pick another alias",
            )


def check_subscriptions(
    services: list[Service],
    app: str,
    env: str,
    diag: Diagnostics,
    broken: frozenset[str] = frozenset(),
    left_out: frozenset[str] = frozenset(),
) -> None:
    """Every subscription's topic is published in the environment.

    validateTopicsExist (internal/pkg/cli/deploy/worker.go): the topic
    `{app}-{env}-{service}-{name}` (`.fifo` as Subscriptions() appends it)
    must be among the environment's topics, else `copilot deploy` stops.
    """
    from meshlocal.pubsubplan import topic_name  # it imports the model, so not at the top

    published = {
        topic_name(app, env, svc.name, topic.name): svc for svc in services for topic in svc.topics
    }
    for svc in services:
        for sub in svc.subscriptions:
            physical = topic_name(app, env, sub.service, sub.name)
            if physical in published or sub.service in broken:
                continue  # a broken publisher's own errors say why
            if sub.service in left_out:
                diag.note(
                    "warning",
                    f"SNS topic {physical}: service {sub.service} is not among the services "
                    "run, so the topic does not exist locally and the subscription is left out",
                    svc.where(sub.where),
                )
                continue
            other = (
                physical.removesuffix(".fifo") if physical.endswith(".fifo") else physical + ".fifo"
            )
            if other in published:
                # Subscriptions() added (or did not add) `.fifo` from the queue's fifo setting.
                kind = "a standard" if physical.endswith(".fifo") else "a FIFO"
                hint = (
                    f"{sub.service} publishes {sub.name.removesuffix('.fifo')} as {kind} topic; "
                    "a FIFO queue subscribes only to a FIFO topic and a standard queue only "
                    "to a standard one (subscribe.queue.fifo, subscribe.topics[].queue.fifo)"
                )
            elif published:
                names = sorted(f"{p.name}/{t.name}" for p in services for t in p.topics)
                hint = f"topics in environment {env}: " + ", ".join(
                    f"{n} ({topic_name(app, env, *n.split('/', 1))})" for n in names
                )
            else:
                hint = (
                    f"no service in environment {env} publishes a topic; add it to the "
                    "publishing service's publish.topics"
                )
            diag.error(
                f"SNS topic {physical} does not exist in environment {env}",
                svc.where(sub.where),
                hint,
            )


@dataclass
class Report:
    """Everything `meshlocal validate` prints."""

    workspace: Workspace
    environment: Environment
    spec: EnvironmentSpec
    errors: list[ManifestError] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # services whose manifest has errors

    @property
    def ok(self) -> bool:
        return not self.errors


def _workspace(start_or_workspace: Path | str | Workspace) -> Workspace:
    if isinstance(start_or_workspace, Workspace):
        return start_or_workspace
    return find_workspace(Path(start_or_workspace))


def check(
    start_or_workspace: Path | str | Workspace,
    env: str | None = None,
    environ: Mapping[str, str] | None = None,
    services: Sequence[str] | None = None,
) -> Report:
    """Load one environment and collect every rule violation and note.

    Only a missing workspace or environment raises; every manifest problem is
    in the report, each with its file:line. `services`: only those are
    loaded, as `copilot svc deploy` deploys one at a time; another service's
    broken manifest is a warning then.
    """
    workspace = _workspace(start_or_workspace)
    environment = select_environment(workspace, env)
    named = _named(workspace, services)
    diag = Diagnostics()
    check_names(workspace, environment, diag)
    load_environment_manifest(environment, diag)
    environ = os.environ if environ is None else environ
    loader = ServiceLoader(workspace, environment, environ, diag)
    loaded: list[Service] = []
    skipped: list[SkippedService] = []
    broken: list[str] = []
    for name, path in workspace.service_manifests.items():
        if named is not None and name not in named:
            own = Diagnostics()
            other = ServiceLoader(workspace, environment, environ, own)
            result = other.load(name, path)
            if isinstance(result, Service):
                check_service(result, own)
            if own.errors:
                first = own.errors[0]
                more = f" (and {len(own.errors) - 1} more)" if len(own.errors) > 1 else ""
                diag.note(
                    "left-out",
                    f"service {name} is not named and its manifest is broken, left out: "
                    f"{first.message}{more}",
                    first.location,
                )
            continue
        before = len(diag.errors)
        result = loader.load(name, path)
        if isinstance(result, Service):
            loaded.append(result)
            check_service(result, diag)
            for dotted in result.not_emulated:
                diag.note(
                    "not-emulated",
                    f"{name}: {dotted} is accepted and not emulated",
                    result.where(dotted),
                )
        elif isinstance(result, SkippedService):
            skipped.append(result)
        if len(diag.errors) > before:
            broken.append(name)
    check_environment(loaded, diag)
    loaded_names = {svc.name for svc in loaded} | {svc.name for svc in skipped}
    check_subscriptions(
        loaded,
        workspace.app,
        environment.name,
        diag,
        broken=frozenset(broken),
        left_out=frozenset(set(workspace.service_manifests) - loaded_names - set(broken)),
    )
    for name in sorted(set(workspace.app_protocols) - set(workspace.service_manifests)):
        # A typo here would otherwise leave a service in the wrong mode, silently.
        diag.note(
            "warning",
            f"services.{name}: no service named {name} in this workspace; its app_protocol "
            "is ignored",
            Location(workspace.root / "copilot" / ".meshlocal.yml"),
        )
    spec = EnvironmentSpec(workspace, environment, tuple(loaded), tuple(skipped))
    check_faults(spec, diag, unloaded=frozenset(workspace.service_manifests) - loaded_names)
    for error in over_replica_limit(spec):
        # Copilot deploys it (not an error here); `up` refuses to run it.
        diag.note("warning", f"{error.message}; `meshlocal up` refuses it", error.location)
    report = Report(workspace, environment, spec, diag.errors, diag.notes)
    report.broken = broken
    return report


def check_faults(spec: EnvironmentSpec, diag: Diagnostics, unloaded: frozenset[str]) -> None:
    """The environment's declared faults against its services, each at its own line.

    A fault on a service not loaded here (broken, or left out by `up SERVICE...`)
    is not judged: the data plane drops it with a warning if it can't apply it.
    """
    if not spec.environment.faults:
        return
    from meshlocal.errors import FaultError
    from meshlocal.faultparse import check as check_fault
    from meshlocal.naming import NamingModel

    naming = NamingModel(spec)
    for declared in spec.environment.faults:
        fault = declared.fault
        if fault.service in unloaded or fault.source in unloaded:
            continue
        try:
            check_fault(fault, naming, declared.location)
        except FaultError as exc:
            diag.error(f"fault {fault.id}: {exc.message}", exc.location, exc.hint)


def _named(workspace: Workspace, services: Sequence[str] | None) -> frozenset[str] | None:
    if not services:
        return None
    unknown = [s for s in services if s not in workspace.service_manifests]
    if unknown:
        known = ", ".join(workspace.service_manifests) or "none"
        raise ManifestError(
            f"no service {', '.join(unknown)} in this workspace",
            location=Location(workspace.root / "copilot"),
            hint=f"known services: {known}",
        )
    return frozenset(services)


def runnable_hint(report: Report) -> str | None:
    """How to run the services whose manifests load, when some don't."""
    good = [n for n in report.workspace.service_manifests if n not in report.broken]
    if not report.broken or not good:
        return None
    return (
        f"the other services load: `meshlocal up {' '.join(good)}` runs them "
        f"(`meshlocal validate {' '.join(good)}` checks them)"
    )


def over_replica_limit(spec: EnvironmentSpec) -> list[ManifestError]:
    """Counts above copilot/.meshlocal.yml's max_replicas: meshlocal's bound, not Copilot's."""
    limit = spec.workspace.max_replicas
    return [
        ManifestError(
            f"{svc.name}: count {svc.count} is above meshlocal's limit of {limit} replicas "
            "per service",
            location=svc.where("count"),
            hint=replica_limit_hint(limit),
        )
        for svc in spec.services
        if svc.count > limit
    ]


def replica_limit_hint(limit: int) -> str:
    return (
        f"lower count, or raise the limit in copilot/.meshlocal.yml (max_replicas: {limit} "
        "today): every replica is a container on this machine's Docker engine"
    )


def load_environment(
    start_or_workspace: Path | str | Workspace,
    env: str | None = None,
    environ: Mapping[str, str] | None = None,
    services: Sequence[str] | None = None,
) -> EnvironmentSpec:
    """The merged model of one environment; raises every manifest error at once.

    `services`: only those, as `copilot svc deploy` does one at a time.
    """
    report = check(start_or_workspace, env, environ, services)
    if report.errors:
        raise ManifestErrors(report.errors, footer=runnable_hint(report))
    return report.spec
