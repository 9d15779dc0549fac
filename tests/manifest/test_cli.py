"""`meshlocal validate` and `meshlocal plan`: exit codes, no tracebacks, stable JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meshlocal.cli.app import main

from .conftest import FIXTURES, KUDOS, MakeWorkspace

BAD = FIXTURES / "bad"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshlocal", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_validate_bad_workspace_in_a_real_process() -> None:
    proc = run("-C", str(BAD / "many-errors"), "validate")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    for where in (
        "copilot/svc-a/manifest.yml:5:13: error: image.build and image.location exclude each other",
        "copilot/svc-b/manifest.yml:5:3: error: container svc-b cannot depend on itself",
        "copilot/svc-c/manifest.yml:5:11: error: env_file: environment file config/c.txt must",
    ):
        assert where in proc.stderr
    assert "5 errors" in proc.stderr
    # Copilot ignores an RDWS's network.connect: a warning, not one of the errors
    assert "svc-c/manifest.yml:4:11: note: network.connect: a Request-Driven" in proc.stdout


def test_validate_unknown_app_protocol_in_a_real_process() -> None:
    proc = run("-C", str(BAD / "appprotocol-unknown"), "validate")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert (
        "copilot/api/manifest.yml:10:12: error: "
        'taskdef_overrides[0].value: unknown AppProtocol "http3"'
    ) in proc.stderr
    assert "hint: ECS accepts http, http2, grpc" in proc.stderr
    assert "1 error" in proc.stderr


def test_plan_malformed_yaml_in_a_real_process() -> None:
    proc = run("-C", str(BAD / "malformed-yaml"), "plan")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "copilot/api/manifest.yml:5:8: error: malformed YAML" in proc.stderr


@pytest.mark.parametrize("case", sorted(p.name for p in BAD.iterdir() if p.is_dir()))
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_every_bad_case_exits_non_zero_without_traceback(
    case: str, command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    expect = yaml.safe_load((BAD / case / "expect.yml").read_text())
    for name, value in (expect.get("environ") or {}).items():
        monkeypatch.setenv(name, value)
    assert main(["-C", str(BAD / case), command]) != 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    assert ": error: " in out.err


def test_validate_kudos_lists_notes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-C", str(KUDOS), "validate"]) == 0
    out = capsys.readouterr().out
    assert "kudos/test: 2 service(s) valid (api, front-end)" in out
    assert "api: cpu is accepted and not emulated" in out


def test_validate_skipped_services_are_notes(
    make_ws: MakeWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_ws(
        {
            "site": "type: Static Site\n",
            "api": "type: Backend Service\nimage:\n  location: busybox\n",
        }
    )
    assert main(["-C", str(root), "validate"]) == 0
    assert "service site (Static Site) is not emulated" in capsys.readouterr().out


def test_ambiguous_environment_lists_them(
    make_ws: MakeWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_ws(
        {"api": "type: Backend Service\nimage:\n  location: busybox\n"}, envs=("prod", "test")
    )
    assert main(["-C", str(root), "plan"]) != 0
    err = capsys.readouterr().err
    assert "choose an environment with --env" in err
    assert "environments: prod, test" in err
    assert main(["-C", str(root), "plan", "--env", "prod"]) == 0


def test_no_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-C", str(tmp_path), "validate"]) == 1
    assert "no Copilot workspace" in capsys.readouterr().err


def test_plan_json_kudos(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-C", str(KUDOS), "plan", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == 1
    assert (doc["application"], doc["environment"]) == ("kudos", "test")
    assert doc["service_discovery_namespace"] == "test.kudos.local"
    api = next(s for s in doc["services"] if s["name"] == "api")
    assert api["replicas"] == 3
    assert api["service_discovery"] == {"name": "api.test.kudos.local", "port": 80}
    # kudos sets AppProtocol http through taskdef_overrides
    assert api["service_connect"]["endpoints"] == [
        {"name": "api", "port": 80, "url": "http://api", "protocol": "http"}
    ]
    assert api["service_connect"]["not_a_name"] is None
    front = next(c for c in doc["clients"] if c["service"] == "front-end")
    kinds = {r["name"]: r["kind"] for r in front["resolves"]}
    assert kinds["api"] == "service-connect"
    assert kinds["api.test.kudos.local"] == "service-discovery"


def test_plan_json_keys_are_stable() -> None:
    proc = run("-C", str(KUDOS), "plan", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert list(doc) == [
        "schema",
        "application",
        "environment",
        "legacy_namespace",
        "service_discovery_namespace",
        "services",
        "clients",
        "skipped",
        "pubsub",
    ]
    assert doc["pubsub"] == {"topics": [], "queues": [], "subscriptions": []}  # kudos has none
    assert list(doc["services"][0]) == [
        "name",
        "type",
        "replicas",
        "port",
        "target_port",
        "target_container",
        "http_path",
        "image",
        "service_discovery",
        "service_connect",
        "sidecars",
        "variables",
        "secrets",
        "not_emulated",
        "manifest",
    ]
    api = next(s for s in doc["services"] if s["name"] == "api")
    assert list(api["service_connect"]) == ["client", "alias", "endpoints", "not_a_name"]
    assert list(api["service_connect"]["endpoints"][0]) == ["name", "port", "url", "protocol"]
    assert list(doc["clients"][0]) == ["service", "service_connect_client", "resolves"]


def test_plan_table_realworld(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHLOCAL_SECRET_DB_HOST", "db")
    monkeypatch.setenv("TAG", "v1")  # staging's image tag: Copilot interpolates every block
    assert main(["-C", str(FIXTURES / "realworld"), "plan", "--env", "prod"]) == 0
    out = capsys.readouterr().out
    assert "orders.prod.shop.local:9000" in out
    assert "http://orders.shop.internal:9000" in out
    assert "client only" in out  # the worker
    assert "skipped docs (Static Site)" in out


def test_plan_json_does_not_leak_secret_values(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHLOCAL_SECRET_DB_HOST", "db")
    monkeypatch.setenv("TAG", "v1")
    assert main(["-C", str(FIXTURES / "realworld"), "plan", "--env", "test", "--json"]) == 0
    out = capsys.readouterr().out
    assert "local-session-secret" not in out
    fe = next(s for s in json.loads(out)["services"] if s["name"] == "frontend")
    assert fe["secrets"] == ["DB_PASSWORD", "SESSION_SECRET"]


def test_plan_alias_equal_to_sd_name_depends_on_the_client(
    make_ws: MakeWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_ws(
        {
            "api": "type: Backend Service\nimage:\n  location: x\n  port: 8080\n"
            "network:\n  connect:\n    alias: api.test.demo.local\n",
            "meshed": "type: Backend Service\nimage:\n  location: x\nnetwork:\n  connect: true\n",
            "plain": "type: Backend Service\nimage:\n  location: x\n",
        }
    )
    assert main(["-C", str(root), "plan", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_client = {
        c["service"]: {r["name"]: r["kind"] for r in c["resolves"]} for c in doc["clients"]
    }
    assert by_client["meshed"]["api.test.demo.local"] == "service-connect"
    assert by_client["plain"] == {"api.test.demo.local": "service-discovery"}
    meshed = next(s for s in doc["services"] if s["name"] == "meshed")
    assert meshed["service_connect"] == {
        "client": True,
        "alias": None,
        "endpoints": [],
        "not_a_name": None,
    }
    assert meshed["service_discovery"] is None  # no port: does not register
    # api's alias replaces its name: `api` is no Service Connect name for anyone
    api = next(s for s in doc["services"] if s["name"] == "api")
    assert [e["name"] for e in api["service_connect"]["endpoints"]] == ["api.test.demo.local"]
    assert api["service_connect"]["not_a_name"] == "api"
    assert "api" not in by_client["meshed"]


def test_plan_json_lists_the_local_sns_and_sqs(capsys: pytest.CaptureFixture[str]) -> None:
    example = KUDOS.parent / "pubsub"
    assert main(["-C", str(example), "plan", "--json"]) == 0
    pubsub = json.loads(capsys.readouterr().out)["pubsub"]
    assert pubsub["topics"] == [
        {
            "service": "orders",
            "topic": "events",
            "name": "pubsub-test-orders-events",
            "arn": "arn:aws:sns:us-east-1:123456789012:pubsub-test-orders-events",
        }
    ]
    events = next(q for q in pubsub["queues"] if q["name"].endswith("-EventsQueue"))
    assert events["dead_letter"] == "pubsub-test-processor-DeadLetterQueue"
    assert (events["max_receive_count"], events["attributes"]["VisibilityTimeout"]) == (2, "1")
    [sub] = pubsub["subscriptions"]
    assert (sub["queue"], sub["filter_policy"]) == (events["name"], '{"kind":["order"]}')
