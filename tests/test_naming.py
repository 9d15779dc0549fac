"""The naming model: which client resolves which name to what (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlocal.manifest.model import (
    Connect,
    Environment,
    EnvironmentSpec,
    Service,
    ServiceType,
    Workspace,
)
from meshlocal.naming import NamingModel, TargetKind

LBWS = ServiceType.LOAD_BALANCED_WEB_SERVICE
BACKEND = ServiceType.BACKEND_SERVICE
WORKER = ServiceType.WORKER_SERVICE
RDWS = ServiceType.REQUEST_DRIVEN_WEB_SERVICE


def svc(
    name: str,
    type_: ServiceType = BACKEND,
    port: int | None = 80,
    connect: bool = False,
    alias: str | None = None,
    **kw: object,
) -> Service:
    return Service(
        name=name,
        type=type_,
        manifest_path=Path(f"/ws/copilot/{name}/manifest.yml"),
        port=port,
        target_port=port,
        connect=Connect(connect, alias),
        **kw,  # type: ignore[arg-type]
    )


def model(*services: Service, legacy: bool = False, env: str = "test") -> NamingModel:
    ws = Workspace(Path("/ws"), "kudos", {}, {})
    return NamingModel(
        EnvironmentSpec(ws, Environment(env, None, legacy_namespace=legacy), tuple(services))
    )


def test_service_discovery_name_and_endpoint() -> None:
    m = model(svc("api"))
    assert m.sd_name("api") == "api.test.kudos.local"
    assert m.discovery_endpoint == "test.kudos.local"
    assert m.copilot_vars("api")["COPILOT_SERVICE_DISCOVERY_ENDPOINT"] == "test.kudos.local"


def test_legacy_namespace_drops_the_environment() -> None:
    m = model(svc("api"), legacy=True)
    assert m.sd_name("api") == "api.kudos.local"
    assert m.discovery_endpoint == "kudos.local"
    assert m.resolve(None, "api.kudos.local") is not None
    assert m.resolve(None, "api.test.kudos.local") is None


def test_workers_and_rdws_do_not_register() -> None:
    m = model(svc("api"), svc("jobs", WORKER, port=None), svc("web", RDWS, port=8080))
    assert m.registered == {"api"}
    assert m.resolve(None, "jobs.test.kudos.local") is None
    assert m.resolve(None, "web.test.kudos.local") is None


def test_backend_without_port_does_not_register() -> None:
    m = model(svc("api"), svc("cron", port=None))
    assert m.registered == {"api"}


def test_only_service_connect_clients_see_service_connect_names() -> None:
    m = model(svc("api", connect=True), svc("front", LBWS, 8080, connect=True), svc("legacy"))
    r = m.resolve("front", "api")
    assert r is not None and r.kind is TargetKind.SERVICE_CONNECT and r.port == 80
    assert m.resolve("legacy", "api") is None
    assert m.resolve(None, "api") is None
    # ... while Service Discovery names answer everyone.
    sd = m.resolve("legacy", "api.test.kudos.local")
    assert sd is not None and sd.kind is TargetKind.SERVICE_DISCOVERY


def test_endpoints_are_name_and_alias_on_target_port() -> None:
    m = model(svc("api", port=8080, connect=True, alias="frontend.local"))
    assert [(e.name, e.port) for e in m.sc_endpoints] == [("api", 8080), ("frontend.local", 8080)]
    assert [e.url for e in m.sc_endpoints] == ["http://api:8080", "http://frontend.local:8080"]
    assert m.sc_ports == {8080}
    assert m.endpoint_for("API", 8080) is not None
    assert m.endpoint_for("api", 80) is None  # wrong port: not an endpoint


def test_alias_equal_to_sd_name_goes_through_service_connect_only_when_both_use_it() -> None:
    api = svc("api", connect=True, alias="api.test.kudos.local")
    m = model(api, svc("front", LBWS, 8080, connect=True), svc("old", LBWS, 8080))
    via_sc = m.resolve("front", "api.test.kudos.local.")
    assert via_sc is not None and via_sc.kind is TargetKind.SERVICE_CONNECT
    via_sd = m.resolve("old", "api.test.kudos.local")
    assert via_sd is not None and via_sd.kind is TargetKind.SERVICE_DISCOVERY


def test_server_without_connect_is_sd_only_even_for_sc_clients() -> None:
    m = model(svc("api"), svc("front", LBWS, 8080, connect=True))
    assert m.resolve("front", "api") is None
    assert all(e.service != "api" for e in m.sc_endpoints)


def test_client_only_services() -> None:
    m = model(
        svc("api", connect=True),
        svc("jobs", WORKER, port=None, connect=True),
        svc("batch", port=None, connect=True),
    )
    assert m.sc_clients == {"api", "jobs", "batch"}
    assert {e.service for e in m.sc_endpoints} == {"api"}
    assert m.resolve("jobs", "api") is not None
    assert m.resolve("batch", "api") is not None


def test_rdws_is_never_a_service_connect_client() -> None:
    m = model(svc("api", connect=True), svc("web", RDWS, 8080, connect=True))
    assert "web" not in m.sc_clients
    assert m.resolve("web", "api") is None


def test_zones_decide_nxdomain_versus_forwarding() -> None:
    m = model(svc("api", connect=True, alias="frontend.local"))
    assert m.zone_of("nope.test.kudos.local") == "test.kudos.local"
    assert m.zone_of("frontend.local") == "frontend.local"
    assert m.zone_of("api") == "api"
    assert m.zone_of("example.com") is None


def test_visible_names_per_client() -> None:
    m = model(
        svc("api", connect=True), svc("front", LBWS, 8080, connect=True), svc("old", LBWS, 8080)
    )
    front = {(r.name, r.kind) for r in m.visible_names("front")}
    assert ("api", TargetKind.SERVICE_CONNECT) in front
    assert ("front", TargetKind.SERVICE_CONNECT) in front
    assert ("api.test.kudos.local", TargetKind.SERVICE_DISCOVERY) in front
    old = {r.name for r in m.visible_names("old")}
    assert "api" not in old and "api.test.kudos.local" in old


@pytest.mark.parametrize("name", ["COPILOT_SERVICE_NAME", "COPILOT_ENVIRONMENT_NAME"])
def test_env_vars_layering_keeps_copilot_vars(name: str) -> None:
    api = svc("api", variables={"LOG": "on", name: "spoof"}, secrets={"TOKEN": "s3cret"})
    env = model(api).env_vars("api", env_file={"LOG": "off", "FROM_FILE": "1"})
    assert env["LOG"] == "on"  # variables beat env_file
    assert env["FROM_FILE"] == "1"
    assert env["TOKEN"] == "s3cret"
    assert env[name] != "spoof"
    assert env["COPILOT_APPLICATION_NAME"] == "kudos"
