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
from meshlocal.naming import AppProtocol, NamingModel, TargetKind

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
    target_port: int | None = None,
    **kw: object,
) -> Service:
    return Service(
        name=name,
        type=type_,
        manifest_path=Path(f"/ws/copilot/{name}/manifest.yml"),
        port=port,
        target_port=target_port if target_port is not None else port,
        connect=Connect(connect, alias),
        **kw,  # type: ignore[arg-type]
    )


def model(
    *services: Service,
    legacy: bool = False,
    env: str = "test",
    vips: dict[str, str] | None = None,
) -> NamingModel:
    ws = Workspace(Path("/ws"), "kudos", {}, {})
    return NamingModel(
        EnvironmentSpec(ws, Environment(env, None, legacy_namespace=legacy), tuple(services)),
        vips,
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


def test_endpoint_is_the_alias_on_target_port() -> None:
    m = model(svc("api", port=8080, connect=True, alias="frontend.local"))
    # Copilot writes one ClientAliases entry: the alias replaces the name.
    assert [(e.name, e.port) for e in m.sc_endpoints] == [("frontend.local", 8080)]
    assert [e.url for e in m.sc_endpoints] == ["http://frontend.local:8080"]
    assert [e.address for e in m.sc_endpoints] == ["frontend.local:8080"]
    assert m.sc_ports == {8080}
    assert m.sc_endpoint("FRONTEND.local.") is not None
    assert m.sc_endpoint("api") is None  # the service's own name is no endpoint


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


def test_one_endpoint_per_server_the_alias_replaces_the_name() -> None:
    m = model(
        svc("front-end", LBWS, 8080, connect=True, alias="frontend.local"),
        svc("api", connect=True),
        svc("client", connect=True, port=None),
    )
    assert sorted((e.service, e.name) for e in m.sc_endpoints) == [
        ("api", "api"),
        ("front-end", "frontend.local"),
    ]
    assert m.endpoint_names == {"api", "frontend.local"}
    ep = m.endpoint_of("front-end")
    assert ep is not None and (ep.name, ep.port) == ("frontend.local", 8080)
    assert m.endpoint_of("client") is None  # client only: serves nothing
    via_alias = m.resolve("client", "frontend.local")
    assert via_alias is not None and via_alias.kind is TargetKind.SERVICE_CONNECT
    assert via_alias.service == "front-end" and via_alias.port == 8080
    # The own name is no Service Connect name, for any client, yet stays a mesh
    # name (NXDOMAIN, never forwarded upstream).
    for client in ("client", "api", "front-end", None):
        assert m.resolve(client, "front-end") is None
    assert m.zone_of("front-end") == "front-end"
    assert "front-end" not in {r.name for r in m.visible_names("client")}


def test_shadowed_name() -> None:
    m = model(
        svc("front-end", LBWS, 8080, connect=True, alias="frontend.local"),
        svc("api", connect=True),
        svc("same", connect=True, alias="Same."),  # an alias equal to the name replaces nothing
        svc("plain", alias=None),
        svc("client", connect=True, port=None),
    )
    assert m.shadowed_name("front-end") == "front-end"
    assert m.shadowed_name("api") is None
    assert m.shadowed_name("same") is None
    assert [e.name for e in m.sc_endpoints if e.service == "same"] == ["same"]
    assert m.shadowed_name("plain") is None  # no Service Connect at all
    assert m.shadowed_name("client") is None
    assert m.shadowed_name("nobody") is None


def test_a_client_resolves_only_the_endpoints_of_its_view() -> None:
    m = model(
        svc("api", connect=True),
        svc("orders", connect=True, alias="orders.local"),
        svc("front", LBWS, 8080, connect=True),
    )
    # A replica that started before any endpoint existed resolves none of them...
    for name in ("api", "orders.local", "front"):
        assert m.resolve("front", name, frozenset()) is None
    # ... while Service Discovery names do not depend on the view.
    sd = m.resolve("front", "api.test.kudos.local", frozenset())
    assert sd is not None and sd.kind is TargetKind.SERVICE_DISCOVERY
    # One that saw only api resolves api, and not the endpoint added after it started.
    seen = frozenset({"api"})
    r = m.resolve("front", "API.", seen)
    assert r is not None and r.kind is TargetKind.SERVICE_CONNECT and r.service == "api"
    assert m.resolve("front", "orders.local", seen) is None
    assert m.resolve("front", "orders.local") is not None  # None: every current endpoint
    assert {r.name for r in m.visible_names("front", seen)} >= {"api"}
    assert "orders.local" not in {r.name for r in m.visible_names("front", seen)}
    assert [e.name for e in m.missing_from("front", seen)] == ["orders.local", "front"]
    assert m.missing_from("front", None) == []
    assert m.missing_from("front", m.endpoint_names) == []
    # A view cannot grant Service Connect to a client without it.
    plain = model(svc("api", connect=True), svc("old", LBWS, 8080))
    assert plain.resolve("old", "api", frozenset({"api"})) is None
    assert plain.missing_from("old", frozenset()) == []


def test_service_discovery_reports_the_target_port() -> None:
    # http.target_container names a sidecar on 9000; image.port is 80.
    m = model(
        svc("api", port=80, target_port=9000, connect=True), svc("c", port=None, connect=True)
    )
    sd = m.resolve(None, "api.test.kudos.local")
    assert sd is not None and sd.kind is TargetKind.SERVICE_DISCOVERY
    assert sd.port == 9000  # Cloud Map registers TargetPort, not image.port
    sc = m.resolve("c", "api")
    assert sc is not None and sc.port == 9000
    assert m.sc_ports == {9000}


@pytest.mark.parametrize(
    ("app_protocol", "expected"),
    [
        (None, AppProtocol.TCP),
        ("tcp", AppProtocol.TCP),
        ("http", AppProtocol.HTTP),
        ("http2", AppProtocol.HTTP2),
        ("grpc", AppProtocol.GRPC),
    ],
)
def test_endpoint_protocol_comes_from_the_service(
    app_protocol: str | None, expected: AppProtocol
) -> None:
    m = model(svc("api", connect=True, alias="api.local", app_protocol=app_protocol))
    ep = m.endpoint_of("api")
    assert ep is not None and ep.protocol is expected
    assert ep.protocol.per_request is (expected is not AppProtocol.TCP)


def test_vips_give_each_endpoint_its_own_address() -> None:
    services = (
        svc("api", connect=True),
        svc("front-end", LBWS, 8080, connect=True, alias="frontend.local"),
        svc("orders", connect=True),
    )
    # Keyed by endpoint name: a VIP for the shadowed "front-end" applies to nothing.
    vips = {"api": "127.255.0.2", "frontend.local": "127.255.0.3", "front-end": "127.255.0.9"}
    m = model(*services, vips=vips)
    by_name = {e.name: e.vip for e in m.sc_endpoints}
    assert by_name == {"api": "127.255.0.2", "frontend.local": "127.255.0.3", "orders": None}
    assert all(e.vip is None for e in model(*services).sc_endpoints)


COPILOT_VARS = {
    "COPILOT_APPLICATION_NAME": "kudos",
    "COPILOT_ENVIRONMENT_NAME": "test",
    "COPILOT_SERVICE_NAME": "api",
    "COPILOT_SERVICE_DISCOVERY_ENDPOINT": "test.kudos.local",
}


def test_copilot_vars_are_exact() -> None:
    assert model(svc("api"), svc("web")).copilot_vars("api") == COPILOT_VARS
    legacy = model(svc("api"), legacy=True, env="prod").copilot_vars("api")
    assert legacy == {
        **COPILOT_VARS,
        "COPILOT_ENVIRONMENT_NAME": "prod",
        "COPILOT_SERVICE_DISCOVERY_ENDPOINT": "kudos.local",
    }


def test_env_vars_layering_env_file_copilot_vars_variables_then_secrets() -> None:
    api = svc(
        "api",
        variables={"LOG": "on", "SHARED": "variable", "COPILOT_SERVICE_NAME": "spoof"},
        secrets={"TOKEN": "s3cret", "SHARED": "secret", "COPILOT_ENVIRONMENT_NAME": "spoof"},
    )
    env = model(api).env_vars(
        "api",
        env_file={"LOG": "off", "FROM_FILE": "1", "TOKEN": "file", "COPILOT_APPLICATION_NAME": "x"},
    )
    assert env == {
        **COPILOT_VARS,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
        "LOG": "on",  # variables beat env_file
        "FROM_FILE": "1",
        "TOKEN": "s3cret",  # secrets beat env_file
        "SHARED": "secret",  # secrets beat variables
        # Copilot writes the manifest's after its own (workload-container.yml),
        # and ECS keeps the last of a repeated name: the manifest wins; an
        # env_file never does (the task definition's environment beats it).
        "COPILOT_SERVICE_NAME": "spoof",
        "COPILOT_ENVIRONMENT_NAME": "spoof",
    }
