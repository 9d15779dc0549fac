"""Application and environment names, by Copilot's rules (internal/pkg/cli/validate.go)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlocal.cli.app import main
from meshlocal.manifest import check
from meshlocal.manifest.validate import basic_name_error

from .conftest import MakeWorkspace

API = "name: api\ntype: Backend Service\nimage:\n  location: busybox\n  port: 80\n"
RULE = (
    "value must have a length of at least 2, start with a letter, contain only lower-case "
    "letters, numbers, and hyphens, and have no consecutive or trailing hyphen"
)


@pytest.mark.parametrize("name", ["shop", "my-shop", "a1", "shop2-eu", "x" * 255])
def test_names_copilot_accepts(name: str) -> None:
    assert basic_name_error(name) is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "value must not be empty"),
        ("x" * 256, "value must not exceed 255 characters"),
        ("a", RULE),
        ("Shop", RULE),
        ("shöp", RULE),
        ("my_shop", RULE),
        ("a.b", RULE),
        ("1shop", RULE),
        ("my--shop", RULE),
        ("shop-", RULE),
    ],
)
def test_names_copilot_rejects_with_its_message(name: str, message: str) -> None:
    assert basic_name_error(name) == message


@pytest.mark.parametrize("app", ["shöp", "Shop", "my_shop", "a.b"])
def test_an_invalid_application_name_is_an_error_at_the_workspace_file(
    make_ws: MakeWorkspace, app: str
) -> None:
    root = make_ws({"api": API}, app=app)
    errors = check(root, "test", {}).errors
    assert [e.message for e in errors] == [f"application name {app} is invalid: {RULE}"]
    loc = errors[0].location
    assert loc is not None and loc.path == root / "copilot" / ".workspace" and loc.line == 1


def test_an_invalid_environment_folder_is_an_error_at_its_manifest(
    make_ws: MakeWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_ws({"api": API}, envs=("Dev",))
    errors = check(root, "Dev", {}).errors
    assert [e.message for e in errors] == [f"environment name Dev is invalid: {RULE}"]
    assert errors[0].location is not None
    assert errors[0].location.path == root / "copilot" / "environments" / "Dev" / "manifest.yml"
    # Through the CLI: a message with the file, a hint, exit non-zero, no traceback.
    assert main(["-C", str(root), "validate", "--env", "Dev"]) != 0
    err = capsys.readouterr().err
    assert "environment name Dev is invalid" in err and "Traceback" not in err
    assert str(Path("copilot") / "environments" / "Dev" / "manifest.yml") in err
