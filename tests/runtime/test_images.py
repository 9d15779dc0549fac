"""Local, offline image builds against the real engine."""

from __future__ import annotations

import contextlib
import io
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlocal.errors import ImageError
from meshlocal.manifest.model import BuildSpec
from meshlocal.runtime import images, pythonbase


def test_declared_build_args(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG BASE_IMAGE=python:3.12-slim\nFROM ${BASE_IMAGE}\n  arg  LEVEL\n")
    assert images.declared_build_args(dockerfile) == {"BASE_IMAGE", "LEVEL"}
    assert images.declared_build_args(tmp_path / "missing") == set()


def test_runtime_distributions_cover_meshlocal_dependencies() -> None:
    names = {d.metadata["Name"].lower() for d in images.runtime_distributions()}
    assert {"meshlocal", "aiohttp", "dnslib", "docker", "pyyaml", "click", "rich"} <= names
    assert "pytest" not in names  # test extras are not shipped
    assert "moto" not in names and "flask" not in names  # the emulator's image has them


def test_emulator_distributions_are_moto_and_its_server() -> None:
    names = {
        d.metadata["Name"].lower() for d in images.runtime_distributions(*images.EMULATOR_ROOTS)
    }
    assert {"moto", "boto3", "botocore", "flask", "flask-cors", "werkzeug"} <= names
    assert "aiohttp" not in names and "meshlocal" not in names


@pytest.fixture
def tags(docker_client: Any) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for tag in made:
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag, force=True)


@pytest.mark.docker
def test_busybox_image_is_from_scratch_with_applets(docker_client: Any, busybox_image: str) -> None:
    assert images.ensure_busybox_image(docker_client) == busybox_image  # cached by tag
    out = docker_client.containers.run(
        busybox_image,
        ["sh", "-c", "ls /bin | grep -cx -e wget -e nslookup -e httpd -e nc"],
        remove=True,
        network_mode="none",
    )
    assert out.decode().strip() == "4"
    # From scratch means no parent: the oldest step of the image's history is its own
    # single COPY (a parent's steps would come before it), that COPY is the only
    # layer, and the size is the busybox binary plus a little for /etc and the links.
    image = docker_client.images.get(busybox_image)
    assert len(image.attrs["RootFS"]["Layers"]) == 1, image.attrs["RootFS"]
    history = docker_client.api.history(busybox_image)  # newest first
    copies = [h for h in history if "COPY" in (h.get("CreatedBy") or "")]
    assert copies == [history[-1]], [h.get("CreatedBy") for h in history]
    assert [h for h in history if h["Size"] > 0] == copies
    binary = images.find_busybox().stat().st_size
    assert binary <= image.attrs["Size"] < binary + 64 * 1024, (binary, image.attrs["Size"])


@pytest.mark.docker
def test_python_base_runs_the_hosts_python(docker_client: Any, python_base: str) -> None:
    host = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert images.image_python_version(docker_client, python_base) == host
    out = docker_client.containers.run(
        python_base, ["python3", "-c", "import ssl, json; print('ok')"], remove=True
    )
    assert out.decode().strip() == "ok"


@pytest.mark.docker
def test_dataplane_image_runs_installed_meshlocal(docker_client: Any, python_base: str) -> None:
    lines: list[str] = []
    tag = images.ensure_dataplane_image(docker_client, python_base, lines.append)
    assert tag.startswith("meshlocal/dataplane:0.")
    # Cached by content hash: the same content builds nothing. (Another tag means a file
    # of meshlocal changed in between, e.g. while developing: then a build is right.)
    again: list[str] = []
    tag2 = images.ensure_dataplane_image(docker_client, python_base, again.append)
    assert tag2 != tag or again == []
    tag = tag2
    out = docker_client.containers.run(tag, ["--version"], remove=True, network_mode="none")
    assert "meshlocal" in out.decode()
    # The compiled aiohttp parser loads: the Python versions really match.
    out = docker_client.containers.run(
        tag,
        ["-c", "import aiohttp._http_parser, dnslib, docker; print('ok')"],
        entrypoint=["python3"],
        remove=True,
        network_mode="none",
    )
    assert out.decode().strip() == "ok"


@pytest.mark.docker
def test_dataplane_refuses_a_base_with_another_python(
    docker_client: Any, busybox_image: str, tmp_path: Path, tags: list[str]
) -> None:
    tag = f"meshlocal-test/otherpython:{uuid.uuid4().hex[:8]}"
    tags.append(tag)
    (tmp_path / "Dockerfile").write_text(f"FROM {busybox_image}\nLABEL meshlocal.python=3.99\n")
    images.build_service_image(
        docker_client, BuildSpec(context=tmp_path, dockerfile=tmp_path / "Dockerfile"), tag
    )
    with pytest.raises(ImageError) as info:
        images.ensure_dataplane_image(docker_client, tag)
    assert "Python 3.99" in info.value.message
    assert info.value.hint is not None and images.PYTHON_IMAGE_ENV in info.value.hint


@pytest.mark.docker
def test_build_service_image_streams_progress_and_passes_base_image(
    docker_client: Any, busybox_image: str, tmp_path: Path, tags: list[str]
) -> None:
    tag = f"meshlocal-test/svc:{uuid.uuid4().hex[:8]}"
    tags.append(tag)
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text(
        "ARG BASE_IMAGE=python:3.12-slim\nFROM ${BASE_IMAGE} AS base\nARG GREETING\n"
        'RUN echo "hello $GREETING" > /greeting\nFROM base AS final\nRUN echo never > /x\n'
    )
    lines: list[str] = []
    image_id = images.build_service_image(
        docker_client,
        BuildSpec(
            context=tmp_path,
            dockerfile=tmp_path / "docker" / "Dockerfile",
            args={"GREETING": "mesh"},
            target="base",
        ),
        tag,
        lines.append,
        default_args={"BASE_IMAGE": busybox_image, "UNUSED": "x"},
    )
    assert image_id.startswith("sha256:")
    assert any("Step" in line for line in lines)
    rc = docker_client.containers.run(
        tag, ["sh", "-c", "cat /greeting; test ! -e /x && echo target-respected"], remove=True
    )
    assert rc.decode().split("\n")[:2] == ["hello mesh", "target-respected"]


@pytest.mark.docker
def test_failed_build_is_image_error_with_the_last_log_lines(
    docker_client: Any, busybox_image: str, tmp_path: Path, tags: list[str]
) -> None:
    tag = f"meshlocal-test/broken:{uuid.uuid4().hex[:8]}"
    tags.append(tag)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {busybox_image}\nRUN echo about-to-fail && exit 7\n"
    )
    with pytest.raises(ImageError) as info:
        images.build_service_image(
            docker_client, BuildSpec(context=tmp_path, dockerfile=tmp_path / "Dockerfile"), tag
        )
    assert "7" in info.value.message
    assert info.value.hint is not None and "about-to-fail" in info.value.hint


@pytest.mark.docker
def test_image_location_present_or_clear_error(docker_client: Any, busybox_image: str) -> None:
    assert images.ensure_image(docker_client, busybox_image) == busybox_image
    with pytest.raises(ImageError) as info:
        images.ensure_image(docker_client, "registry.invalid/meshlocal/nothing:1")
    assert "not present locally and could not be pulled" in info.value.message


@pytest.mark.docker
def test_python_base_needs_root_or_a_configured_image(
    docker_client: Any, busybox_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(images.PYTHON_IMAGE_ENV, raising=False)
    monkeypatch.setattr(pythonbase.os, "geteuid", lambda: 1000)
    with pytest.raises(ImageError) as info:
        images.ensure_python_base(docker_client, tag="meshlocal-test/absent-base:x")
    assert "needs root" in info.value.message
    assert info.value.hint is not None and images.PYTHON_IMAGE_ENV in info.value.hint
    # A configured base is used as it is: no root, no debootstrap.
    monkeypatch.setenv(images.PYTHON_IMAGE_ENV, busybox_image)
    assert images.ensure_python_base(docker_client) == busybox_image


@pytest.mark.docker
def test_superseded_images_are_pruned_unless_in_use(docker_client: Any) -> None:
    """A new data-plane build removes the old tags no container runs."""
    from meshlocal.runtime.images import ensure_busybox_image, prune_images

    repo = f"meshlocal/prunetest-{uuid.uuid4().hex[:6]}"
    base = ensure_busybox_image(docker_client)
    for tag in ("old", "in-use", "new"):  # three distinct images, as three versions are
        dockerfile = f"FROM {base}\nLABEL version={tag}-{uuid.uuid4().hex}\n".encode()
        docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=f"{repo}:{tag}", rm=True)
    user = docker_client.containers.create(f"{repo}:in-use", ["sleep", "1"])
    try:
        removed = prune_images(docker_client, repo, keep=f"{repo}:new")
        assert removed == [f"{repo}:old"]
        left = {t for i in docker_client.images.list(name=repo) for t in i.tags}
        assert left == {f"{repo}:in-use", f"{repo}:new"}
    finally:
        user.remove(force=True)
        for tag in ("old", "in-use", "new"):
            with contextlib.suppress(Exception):
                docker_client.images.remove(f"{repo}:{tag}")
