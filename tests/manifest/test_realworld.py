"""A full real-world Copilot workspace loads and plans correctly in each environment."""

from __future__ import annotations

import pytest

from meshlocal.errors import InterpolationError
from meshlocal.manifest import check, load_environment
from meshlocal.manifest.diagnostics import ManifestErrors
from meshlocal.manifest.model import ServiceType
from meshlocal.naming import NamingModel, TargetKind

from .conftest import FIXTURES

ROOT = FIXTURES / "realworld"
ENV = {"MESHLOCAL_SECRET_DB_HOST": "db.local", "TAG": "v1.2.3"}


def test_test_environment() -> None:
    spec = load_environment(ROOT, "test", ENV)
    assert [s.name for s in spec.services] == ["emails", "frontend", "orders"]
    assert {s.name for s in spec.skipped} == {"docs", "nightly"}
    fe = spec.service("frontend")
    assert fe.type is ServiceType.LOAD_BALANCED_WEB_SERVICE
    assert fe.count == 1  # range 1-4: the minimum
    assert fe.build is not None and fe.build.target == "runtime"
    assert fe.build.args == {"NODE_ENV": "production", "BUILD_NUMBER": "0042"}
    assert fe.build.context == (ROOT / "frontend").resolve()
    assert fe.image_location is None
    assert (fe.port, fe.target_port, fe.http_path) == (8080, 8080, "/")
    assert fe.http_healthcheck is not None
    assert (fe.http_healthcheck.path, fe.http_healthcheck.grace_period_s) == ("/healthz", 90.0)
    assert fe.container_healthcheck is not None and fe.container_healthcheck.retries == 3
    assert fe.command == ("node", "server.js", "--port", "8080", "--name", "shop front")
    assert fe.entrypoint == ("/usr/bin/tini", "--")
    assert fe.connect.alias == "frontend.local"
    assert fe.depends_on == {"nginx": "start"}
    assert [s.name for s in fe.sidecars] == ["nginx"]
    assert fe.variables["FEATURE_FLAGS"] == "on"
    assert fe.variables["ZIP_PREFIX"] == "0123"
    assert fe.variables["API_VERSION"] == "1.10"
    assert fe.variables["APP_ENV"] == "test"
    assert fe.variables["LITERAL"] == "${NOT_A_VAR}"
    assert fe.secrets == {"SESSION_SECRET": "local-session-secret", "DB_PASSWORD": "p@ss word"}
    for field in (
        "cpu",
        "memory",
        "platform",
        "storage",
        "nlb",
        "logging",
        "observability",
        "deployment",
        "taskdef_overrides",
        "http.alias",
        "count.cpu_percentage",
    ):
        assert field in fe.not_emulated
    orders = spec.service("orders")
    assert orders.count == 1  # test override: spot: 1
    assert orders.variables == {"DB_HOST": "db.local"}
    assert orders.http_healthcheck is not None and orders.http_healthcheck.path == "/orders/health"
    emails = spec.service("emails")
    assert (emails.type, emails.count, emails.port) == (ServiceType.WORKER_SERVICE, 1, None)
    assert emails.connect.enabled  # `connect: yes` is a typed bool to Copilot


def test_staging_image_location_with_tag_replaces_build() -> None:
    fe = load_environment(ROOT, "staging", ENV).service("frontend")
    assert fe.image_location == "123456789012.dkr.ecr.us-west-2.amazonaws.com/shop/frontend:v1.2.3"
    assert fe.build is None
    assert fe.count == 1
    assert fe.variables["LOG_LEVEL"] == "debug"
    assert fe.variables["APP_ENV"] == "staging"
    # the override's location is where errors about it point
    assert fe.where("image.location").line == 126


def test_staging_without_tag_names_the_variable_and_line() -> None:
    with pytest.raises(ManifestErrors) as info:
        load_environment(ROOT, "staging", {"MESHLOCAL_SECRET_DB_HOST": "x"})
    [error] = info.value.errors
    assert isinstance(error, InterpolationError)
    assert error.message == 'environment variable "TAG" is not defined'
    assert error.location is not None
    assert (error.location.path.name, error.location.line) == ("manifest.yml", 126)
    # Copilot interpolates the whole file before choosing an environment
    # (interpolate.go runs on the raw manifest): prod needs TAG as well.
    prod = check(ROOT, "prod", {"MESHLOCAL_SECRET_DB_HOST": "x"})
    assert [(e.message, e.location.line if e.location else 0) for e in prod.errors] == [
        ('environment variable "TAG" is not defined', 126)
    ]
    assert check(ROOT, "prod", {"MESHLOCAL_SECRET_DB_HOST": "x", "TAG": "v1"}).ok


def test_prod_count_range_and_connect_override() -> None:
    spec = load_environment(ROOT, "prod", ENV)
    fe = spec.service("frontend")
    assert fe.count == 2  # range 2-10 with cpu_percentage 70
    assert "count.cpu_percentage" in fe.not_emulated
    assert fe.build is not None and fe.image_location is None
    # prod sets `connect: true`: the bool replaces the base's alias map
    assert (fe.connect.enabled, fe.connect.alias) == (True, None)
    assert fe.secrets["SESSION_SECRET"] == "prod-session-secret"
    assert spec.service("orders").connect.alias == "orders.shop.internal"


def test_prod_plan_naming() -> None:
    spec = load_environment(ROOT, "prod", ENV)
    naming = NamingModel(spec)
    assert naming.registered == {"frontend", "orders"}
    assert naming.sd_name("orders") == "orders.prod.shop.local"
    # one endpoint per server: orders' alias replaces its name
    assert {(e.name, e.port) for e in naming.sc_endpoints} == {
        ("frontend", 8080),
        ("orders.shop.internal", 9000),
    }
    assert naming.shadowed_name("orders") == "orders"
    assert naming.shadowed_name("frontend") is None  # prod's `connect: true` drops the alias
    # the worker is a Service Connect client only
    seen = {r.name: r.kind for r in naming.visible_names("emails")}
    assert seen["orders.shop.internal"] is TargetKind.SERVICE_CONNECT
    assert seen["orders.prod.shop.local"] is TargetKind.SERVICE_DISCOVERY
    assert "orders" not in seen
    assert naming.is_mesh_name("orders")  # NXDOMAIN, never forwarded upstream


def test_validate_lists_not_emulated_fields_and_skipped_services() -> None:
    report = check(ROOT, "test", ENV)
    assert report.ok
    not_emulated = {n.message for n in report.notes if n.kind == "not-emulated"}
    assert "frontend: nlb is accepted and not emulated" in not_emulated
    assert "frontend: storage is accepted and not emulated" in not_emulated
    # publish and subscribe run on the local SNS/SQS
    assert "emails: subscribe is accepted and not emulated" not in not_emulated
    assert "frontend: publish is accepted and not emulated" not in not_emulated
    skipped = [n.message for n in report.notes if n.kind == "skipped"]
    assert len(skipped) == 2


@pytest.mark.parametrize("env", ["test", "staging", "prod"])
def test_spec_round_trips_through_the_agent_codec(env: str) -> None:
    from meshlocal.manifest.codec import dump_spec, load_spec

    spec = load_environment(ROOT, env, ENV)
    assert load_spec(dump_spec(spec)) == spec
