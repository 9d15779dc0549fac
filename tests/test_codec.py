"""The spec survives the JSON trip to the data-plane container unchanged."""

from __future__ import annotations

from pathlib import Path

from meshlocal.errors import Location
from meshlocal.manifest.codec import dump_spec, load_spec
from meshlocal.manifest.model import (
    BuildSpec,
    Connect,
    ContainerHealthCheck,
    Environment,
    EnvironmentSpec,
    HttpHealthCheck,
    Service,
    ServiceType,
    Sidecar,
    SkippedService,
    Workspace,
)


def test_round_trip_keeps_every_field() -> None:
    api = Service(
        name="api",
        type=ServiceType.BACKEND_SERVICE,
        manifest_path=Path("/ws/copilot/api/manifest.yml"),
        build=BuildSpec(Path("/ws/api"), Path("/ws/api/Dockerfile"), {"A": "on"}, "prod", ("x",)),
        port=80,
        target_port=80,
        http_healthcheck=HttpHealthCheck(path="/healthz"),
        container_healthcheck=ContainerHealthCheck(("CMD", "true"), 5.0, 2.0, 3, 1.0),
        count=3,
        variables={"FLAG": "on", "N": "0123"},
        secrets={"TOKEN": "t"},
        command=("python3", "app.py"),
        connect=Connect(True, "api.local"),
        app_protocol="http",
        sidecars=(Sidecar("nginx", "nginx:1", None, 8080, essential=False),),
        depends_on={"nginx": "start"},
        not_emulated=("cpu", "memory"),
        locations={"count": Location(Path("/ws/copilot/api/manifest.yml"), 7, 1)},
    )
    spec = EnvironmentSpec(
        Workspace(
            Path("/ws"),
            "kudos",
            {"test": Environment("test", None)},
            {"api": Path("/m")},
            {"api": "grpc"},
        ),
        Environment("test", None, legacy_namespace=True),
        (api,),
        (SkippedService("site", ServiceType.STATIC_SITE, Path("/s"), "not emulated"),),
    )
    back = load_spec(dump_spec(spec))
    assert back == spec
    assert back.services[0].app_protocol == "http"
    assert back.workspace.app_protocols == {"api": "grpc"}
