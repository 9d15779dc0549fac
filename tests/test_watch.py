"""What `up --watch` makes of a changed path: .dockerignore as the build reads it."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from meshlocal.deployment import Deployment
from meshlocal.watch import Batch, Targets, modified_since, watch_loop

WORKSPACE = Path(__file__).parent / "e2e" / "workspaces" / "watch"


@pytest.fixture
def targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Targets:
    ws = tmp_path / "watch"
    shutil.copytree(WORKSPACE, ws)
    (ws / "web" / ".dockerignore").write_text("*.tmp\nnotes/\nbuild\n!build/keep.txt\n")
    (ws / "web.env").write_text("A=1\n")
    manifest = ws / "copilot" / "web" / "manifest.yml"
    manifest.write_text(manifest.read_text() + "\nvariables:\n  X: '1'\nenv_file: web.env\n")
    monkeypatch.setenv("BUSYBOX_IMAGE", "busybox:test")
    return Targets.of(Deployment(ws, "test"))


def test_context_paths_follow_dockerignore(targets: Targets) -> None:
    web = Path(targets.root) / "web"
    batch = targets.classify(
        [
            str(web / "index.html"),
            str(web / "x.tmp"),
            str(web / "notes" / "todo.md"),
            str(web / "build" / "out.bin"),
            str(web / "build" / "keep.txt"),
            str(web / ".dockerignore"),
            str(web / "Dockerfile"),
        ]
    )
    assert batch.manifest == ()
    assert batch.services == {
        "web": ("web/.dockerignore", "web/Dockerfile", "web/build/keep.txt", "web/index.html")
    }


def test_manifests_and_env_files_are_manifest_changes(targets: Targets) -> None:
    root = Path(targets.root)
    batch = targets.classify(
        [
            str(root / "copilot" / "web" / "manifest.yml"),
            str(root / "web.env"),
            str(root / ".git" / "index"),
            str(root / "README.md"),
        ]
    )
    assert batch.manifest == ("copilot/web/manifest.yml", "web.env")
    assert batch.services == {}


def test_watched_paths(targets: Targets) -> None:
    root = targets.root
    assert targets.recursive == (os.path.join(root, "copilot"), os.path.join(root, "web"))
    assert targets.flat == (root,)  # web.env's directory, not the whole tree


def test_saves_made_before_the_watches_ran_are_found(targets: Targets) -> None:
    web = Path(targets.root) / "web"
    _age(Path(targets.root))
    since = time.time() - 5
    (web / "index.html").write_text("saved while `up --watch` was starting\n")
    found = modified_since(targets, since)
    assert str(web / "index.html") in found
    assert str(Path(targets.root) / "web.env") not in found
    assert targets.classify(found).services == {"web": ("web/index.html",)}
    assert modified_since(targets, time.time() + 1) == set()


def test_the_loop_applies_a_missed_save_first(targets: Targets) -> None:
    web = Path(targets.root) / "web"
    _age(Path(targets.root))
    since = time.time() - 1
    (web / "index.html").write_text("missed\n")
    stop = threading.Event()
    seen: list[Batch] = []

    def iterate(batch: Batch) -> Targets | None:
        seen.append(batch)
        stop.set()
        return None

    runner = threading.Thread(
        target=watch_loop,
        args=(targets, iterate),
        kwargs={"say": lambda _: None, "stop": stop, "since": since},
    )
    runner.start()
    runner.join(timeout=20)
    assert not runner.is_alive()
    assert [b.services for b in seen] == [{"web": ("web/index.html",)}]


def _age(root: Path) -> None:
    """Every file of the copy saved a minute ago (the fixture just wrote some)."""
    old = time.time() - 60
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))
