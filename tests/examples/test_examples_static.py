"""Every example is a valid workspace, and the shared example app stays one file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from meshlocal.cli.app import main

from .conftest import EXAMPLES

WORKSPACES = sorted(p.parent.parent.name for p in EXAMPLES.glob("*/copilot/.workspace"))
APP_LINKS = sorted(p for p in EXAMPLES.glob("*/app") if p.is_symlink() or p.is_dir())


def test_the_examples_are_all_found() -> None:
    assert {
        "kudos",
        "alias-migration",
        "worker-client",
        "custom-alias",
        "port-8080",
        "legacy-namespace",
        "tcp-echo",
        "grpc",
    } <= set(WORKSPACES)


@pytest.mark.parametrize("name", WORKSPACES)
def test_every_example_is_in_the_examples_readme(name: str) -> None:
    readme = (EXAMPLES / "README.md").read_text()
    assert f"| [{name}]({name}) |" in readme, f"compose-examples/README.md has no row for {name}"


@pytest.mark.parametrize("name", WORKSPACES)
def test_example_validates(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["-C", str(EXAMPLES / name), "validate"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "service(s) valid" in out.out


def endpoint_protocols(name: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """{service: Service Connect mode} of an example, by `meshlocal plan --json`."""
    code = main(["-C", str(EXAMPLES / name), "plan", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    plan = json.loads(out.out)
    return {
        s["name"]: e["protocol"]
        for s in plan["services"]
        for e in s["service_connect"]["endpoints"]
    }


def test_tcp_echo_is_tcp_and_grpc_is_grpc(capsys: pytest.CaptureFixture[str]) -> None:
    # echo sets no AppProtocol (what Copilot deploys); greeter sets grpc in taskdef_overrides.
    assert endpoint_protocols("tcp-echo", capsys) == {"echo": "tcp", "caller": "tcp"}
    assert endpoint_protocols("grpc", capsys) == {"greeter": "grpc", "web": "tcp"}


def test_grpc_example_vendors_nothing_into_git() -> None:
    """vendor/ holds only .keep in the tree; vendor.sh's copies are ignored."""
    lines = (EXAMPLES / "grpc" / ".gitignore").read_text().splitlines()
    assert {"vendor/*", "!vendor/.keep"} <= {line.strip() for line in lines}
    assert (EXAMPLES / "grpc" / "vendor" / ".keep").is_file()


def front_end_sees(work: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The kind of target front-end gets for api.test.kudos.local, by `meshlocal plan`."""
    code = main(["-C", str(work), "plan", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    plan = json.loads(out.out)
    (client,) = [c for c in plan["clients"] if c["service"] == "front-end"]
    (entry,) = [r for r in client["resolves"] if r["name"] == "api.test.kudos.local"]
    return str(entry["kind"])


def test_alias_migration_steps_plan_the_route_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "ws"
    shutil.copytree(EXAMPLES / "alias-migration" / "copilot", work / "copilot")
    kinds = [front_end_sees(work, capsys)]
    for overlay in ("2-api-connect", "3-front-end-connect"):
        shutil.copytree(EXAMPLES / "alias-migration" / "steps" / overlay, work, dirs_exist_ok=True)
        kinds.append(front_end_sees(work, capsys))
    assert kinds == ["service-discovery", "service-discovery", "service-connect"]


def test_examples_share_one_app() -> None:
    """One app for the small examples: each `app/` links to compose-examples/example-app."""
    shared = (EXAMPLES / "example-app").resolve()
    assert len(APP_LINKS) >= 5
    for link in APP_LINKS:
        assert link.is_symlink(), f"{link} should link to ../example-app, not copy it"
        assert link.resolve() == shared
