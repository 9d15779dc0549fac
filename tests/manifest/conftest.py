"""Helpers to write small Copilot workspaces in a temporary directory."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "workspaces"
KUDOS = Path(__file__).resolve().parents[2] / "compose-examples" / "kudos"

MakeWorkspace = Callable[..., Path]


def write_workspace(
    root: Path,
    services: dict[str, str],
    *,
    app: str = "demo",
    envs: tuple[str, ...] = ("test",),
    files: dict[str, str] | None = None,
) -> Path:
    copilot = root / "copilot"
    copilot.mkdir(parents=True, exist_ok=True)
    (copilot / ".workspace").write_text(f"application: {app}\n")
    for env in envs:
        path = copilot / "environments" / env / "manifest.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"name: {env}\ntype: Environment\n")
    for name, text in services.items():
        path = copilot / name / "manifest.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    for rel, text in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


@pytest.fixture
def make_ws(tmp_path: Path) -> MakeWorkspace:
    counter = iter(range(1000))

    def make(services: dict[str, str], **kwargs: object) -> Path:
        return write_workspace(tmp_path / f"ws{next(counter)}", services, **kwargs)  # type: ignore[arg-type]

    return make
