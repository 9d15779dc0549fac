"""Service image builds: in parallel, labelled in one step, keyed on what they read."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlocal import builds
from meshlocal.builds import BUILD_KEY_LABEL
from meshlocal.deployment import Deployment
from meshlocal.errors import ImageError
from meshlocal.manifest.model import BuildSpec
from meshlocal.runtime import images
from meshlocal.runtime import labels as L

# -- pure: the Dockerfile meshlocal sends ----------------------------------------


def test_labels_become_one_label_line_at_the_end() -> None:
    text = images.labelled_dockerfile("FROM a\nRUN x", {"b": "1", "a": 'x$y"z'}, None)
    assert text == 'FROM a\nRUN x\nLABEL "a"="x\\$y\\"z" "b"="1"\n'


def test_labels_go_into_the_target_stage() -> None:
    dockerfile = "FROM --platform=linux/amd64 a AS build\nRUN x\nfrom b as final\nRUN y\n"
    text = images.labelled_dockerfile(dockerfile, {"k": "v"}, "BUILD")
    assert text.splitlines()[2:4] == ['LABEL "k"="v"', "from b as final"]
    # The last stage: at the end, as without a target.
    assert images.labelled_dockerfile(dockerfile, {"k": "v"}, "final").endswith('LABEL "k"="v"\n')


def test_labels_use_the_dockerfiles_escape_character() -> None:
    text = images.labelled_dockerfile("# escape=`\nFROM a\n", {"k": 'c:\\x"'}, None)
    assert text.endswith('LABEL "k"="c:\\x`""\n')


def test_build_key_ignores_mtimes_and_dockerignored_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builds, "_DIGEST_CACHE", tmp_path / "cache")
    tmp_path = tmp_path / "ctx"
    tmp_path.mkdir()
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY app.txt /\n")
    (tmp_path / "app.txt").write_text("v1\n")
    (tmp_path / ".dockerignore").write_text("scratch/\n")
    build = BuildSpec(context=tmp_path, dockerfile=tmp_path / "Dockerfile")
    key = _key(build)
    os.utime(tmp_path / "app.txt", (1, 1))  # a checkout or copy: same content
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "notes").write_text("not sent to the daemon\n")
    assert _key(build) == key
    (tmp_path / "app.txt").write_text("v2\n")  # same size, new mtime: read again
    assert _key(build) != key
    assert list((tmp_path.parent / "cache").iterdir())  # digests kept for the next run


def _key(build: BuildSpec) -> str:
    return builds.build_key(build, {}, client=None)


# -- against the engine ------------------------------------------------------------


def _workspace(root: Path, services: dict[str, str]) -> Path:
    """A workspace whose services build the given Dockerfile bodies (after FROM busybox)."""
    copilot = root / "copilot"
    (copilot / "environments" / "test").mkdir(parents=True)
    (copilot / ".workspace").write_text(f"application: b{uuid.uuid4().hex[:6]}\n")
    (copilot / "environments" / "test" / "manifest.yml").write_text(
        "name: test\ntype: Environment\n"
    )
    for name, body in services.items():
        (copilot / name).mkdir()
        (copilot / name / "manifest.yml").write_text(
            f"name: {name}\ntype: Backend Service\nimage:\n  build:\n"
            f"    dockerfile: {name}/Dockerfile\n    context: {name}\n"
            "    args:\n      BUSYBOX: ${BUSYBOX_IMAGE}\n"
            'command: ["sleep", "3600"]\n'
        )
        (root / name).mkdir()
        (root / name / "Dockerfile").write_text(f"ARG BUSYBOX\nFROM ${{BUSYBOX}}\n{body}\n")
    return root


@pytest.fixture
def deployment(
    tmp_path: Path, docker_client: Any, busybox_image: str
) -> Iterator[tuple[Path, Any]]:
    made: list[Deployment] = []

    def make(services: dict[str, str]) -> Deployment:
        ws = _workspace(tmp_path / f"ws{len(made)}", services)
        dep = Deployment(ws, "test", environ={**os.environ, "BUSYBOX_IMAGE": busybox_image})
        made.append(dep)
        return dep

    yield tmp_path, make
    for dep in made:
        with contextlib.suppress(Exception):
            dep.remove_images()
        dep.close()


@pytest.mark.docker
def test_two_services_build_at_the_same_time(
    deployment: tuple[Path, Any], docker_client: Any
) -> None:
    _, make = deployment
    nonce = uuid.uuid4().hex  # in the RUN line: no layer cache from an earlier run
    dep = make({name: f"RUN sleep 4 # {name} {nonce}" for name in ("one", "two")})
    lines: list[tuple[float, str]] = []
    dep.build(lambda line: lines.append((time.monotonic(), line)))

    def window(name: str) -> tuple[float, float]:
        mine = [(t, line) for t, line in lines if line.startswith(f"[{name}] ")]
        start = next(t for t, line in mine if "Step 1/" in line)
        end = next(t for t, line in mine if "Successfully tagged" in line)
        return start, end

    (a0, a1), (b0, b1) = window("one"), window("two")
    # Each build sleeps 4 s: one after the other, the windows could not overlap.
    assert a0 < b1 and b0 < a1, lines
    for name in ("one", "two"):  # every line of a build is prefixed with its service
        assert any(line.startswith(f"[{name}]  ---> Running in") for _, line in lines), lines


@pytest.mark.docker
def test_a_failed_build_names_its_manifest_and_cancels_the_others(
    deployment: tuple[Path, Any], docker_client: Any
) -> None:
    _, make = deployment
    nonce = uuid.uuid4().hex
    dep = make({"slow": f"RUN sleep 30 # {nonce}", "broken": f"RUN echo {nonce} && exit 3"})
    started = time.monotonic()
    with pytest.raises(ImageError) as info:
        dep.build()
    assert time.monotonic() - started < 25  # slow's build was cancelled, not waited for
    assert info.value.location is not None
    assert info.value.location.path.parts[-2:] == ("broken", "manifest.yml"), info.value.location
    assert "broken" in info.value.message and "3" in info.value.message, info.value.message
    time.sleep(2)  # the cancelled build is not tagged later either
    assert not docker_client.api.images(name=dep.image_tag("slow"))


@pytest.mark.docker
def test_labels_cost_one_build_step(
    deployment: tuple[Path, Any], docker_client: Any, busybox_image: str
) -> None:
    _, make = deployment
    dep = make({"app": f"COPY Dockerfile /Dockerfile.{uuid.uuid4().hex[:8]}"})
    built = dep.build()
    ref, image_id = built["app"]
    image = docker_client.images.get(ref)
    assert image.id == image_id
    assert image.labels[L.PROJECT] == dep.base_project
    assert image.labels[L.ENV] == "test"
    assert image.labels[L.ROLE] == L.Role.REPLICA.value
    assert image.labels[BUILD_KEY_LABEL]
    history = docker_client.api.history(ref)  # newest first
    base = docker_client.api.history(busybox_image)
    steps = [str(h.get("CreatedBy") or "") for h in history[: len(history) - len(base)]]
    assert len(steps) == 2, steps  # the Dockerfile's COPY, and the labels
    label_steps = [s for s in steps if "LABEL" in s]
    assert len(label_steps) == 1, steps
    assert steps[0] == label_steps[0]  # the last step
    for key in (L.PROJECT, L.ENV, L.ROLE, BUILD_KEY_LABEL):
        assert key in label_steps[0]
    # Unchanged: not built again, the same image.
    lines: list[str] = []
    assert dep.build(lines.append)["app"] == (ref, image_id)
    assert f"[app] {ref} is up to date" in lines and not any("Step" in x for x in lines)
