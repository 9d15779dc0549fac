"""Whole pytest sessions in subprocesses: the docs' example, interrupts, xdist."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshlocal.runtime import labels as L

from .conftest import KUDOS

pytestmark = [pytest.mark.docker, pytest.mark.slow]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "pytest.md"
FAST = ("-p", "no:hypothesispytest", "-p", "no:asyncio", "-p", "no:cacheprovider")
# The tiny-workspace sessions run the host data plane where it is available
# (Linux, root): it starts in seconds, and it exercises the option end to end.
DATAPLANE = (
    "--meshlocal-dataplane=host"
    if sys.platform == "linux" and os.geteuid() == 0
    else "--meshlocal-dataplane=container"
)


def docs_files() -> dict[str, str]:
    """The files of docs/pytest.md's complete example, by name."""
    text = DOCS.read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```python\n(.*?)```", text, re.S)
    return dict(blocks)


def projects_of(docker_client: Any, base: str) -> set[str]:
    # One list call each, no per-item inspect: another worker's containers come and go.
    labelled = {"label": L.PROJECT}
    labels = [
        *(c["Labels"] for c in docker_client.api.containers(all=True, filters=labelled)),
        *(n["Labels"] for n in docker_client.api.networks(filters=labelled)),
    ]
    return {lb[L.PROJECT] for lb in labels if lb[L.PROJECT].startswith(base)}


def test_the_docs_example_passes_against_kudos(
    pytester: pytest.Pytester, docker_client: Any, dataplane_image: str
) -> None:
    """Done-when of issue 7: a user's test file, written from the docs, passes."""
    from meshlocal.deployment import Deployment

    files = docs_files()
    assert set(files) == {"conftest.py", "test_kudos.py"}
    root = pytester.path / "kudos"
    for part in ("copilot", "api", "front-end"):
        shutil.copytree(KUDOS / part, root / part)
    (root / "tests").mkdir()
    for name, text in files.items():
        (root / "tests" / name).write_text(text)
    dep = Deployment(root, "test")
    base = dep.base_project
    try:
        result = pytester.runpytest_subprocess(*FAST, "-v", str(root / "tests"), timeout=600)
        result.assert_outcomes(passed=5)
        result.stdout.fnmatch_lines(
            ["meshlocal*: [[]api] building *", f"meshlocal*: {base}-t-*/test up in *s"]
        )
        assert projects_of(docker_client, base) == set()
    finally:
        # The copy has its own project id, hence its own image tags: drop them.
        dep.remove_images()
        dep.close()


def test_sigterm_mid_session_still_tears_down(
    pytester: pytest.Pytester, tiny: Path, leftovers: Callable[[str], list[str]]
) -> None:
    """Two meshes (fixture and factory), a failing test, then SIGTERM: all gone."""
    record = pytester.path / "projects.txt"
    pytester.makepyfile(
        f"""
        import os, signal

        def test_fails_with_a_mesh_report(mesh):
            assert mesh.get("web").status == 418

        def test_terminated(mesh, meshlocal_factory):
            second = meshlocal_factory({str(tiny)!r}, "test")
            assert second.project != mesh.project
            open({str(record)!r}, "w").write(mesh.project + " " + second.project)
            os.kill(os.getpid(), signal.SIGTERM)

        def test_never_runs(mesh):
            raise AssertionError("the session was terminated")
        """
    )
    result = pytester.runpytest_subprocess(
        *FAST, DATAPLANE, f"--meshlocal-workspace={tiny}", "--meshlocal-env=test", timeout=300
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*- meshlocal -*",
            "project *-t-*, env test, data plane *",
            "  mesh page: http://127.0.0.1:*/",
            "  api desired 2: api-1=healthy, api-2=healthy",
            "  web desired 1: web-1=healthy",
            "*KeyboardInterrupt*",
        ]
    )
    result.stdout.no_fnmatch_line("*test_never_runs*PASSED*")
    projects = record.read_text().split()
    assert len(projects) == 2
    for project in projects:
        assert leftovers(project) == []
    # Host data plane: the agents were stopped too (pytester's HOME holds their pid files).
    if DATAPLANE.endswith("host"):
        result.stdout.fnmatch_lines(["*, data plane host"])
        home = os.environ.get("XDG_STATE_HOME") or pytester.path / ".local" / "state"
        state = Path(home) / "meshlocal"
        assert state.is_dir()
        for project in projects:
            assert list(state.glob(f"{project}-*.pid")) == []


def test_xdist_workers_run_separate_meshes(
    pytester: pytest.Pytester, tiny: Path, leftovers: Callable[[str], list[str]]
) -> None:
    out = pytester.mkdir("projects")
    pytester.makepyfile(
        f"""
        import os

        def test_serves(mesh):
            worker = os.environ["PYTEST_XDIST_WORKER"]
            open(os.path.join({str(out)!r}, worker), "w").write(mesh.project)
            assert mesh.get("web").status == 200
        """
    )
    result = pytester.runpytest_subprocess(
        *FAST,
        DATAPLANE,
        "-n",
        "2",
        "--dist",
        "each",
        f"--meshlocal-workspace={tiny}",
        timeout=300,
    )
    result.assert_outcomes(passed=2)
    projects = {p.name: p.read_text() for p in out.iterdir()}
    assert sorted(projects) == ["gw0", "gw1"]
    assert len(set(projects.values())) == 2
    for project in projects.values():
        assert leftovers(project) == []
