"""Shared fixtures. Docker tests fail loudly under CI=true when no engine answers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from meshlocal.runtime import images


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # any failure to reach the engine
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no Docker engine answers: {exc}", pytrace=False)
        pytest.skip(f"no Docker engine: {exc}")
    yield client
    client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A real HTTP client, for in-process admin APIs on loopback."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> Iterator[str]:
    """The FROM scratch busybox image; test manifests name it as ${BUSYBOX_IMAGE}.

    Set in the environment too, for the `meshlocal` subprocesses tests run.
    """
    yield from _exported("BUSYBOX_IMAGE", images.ensure_busybox_image(docker_client))


@pytest.fixture(scope="session")
def pubsub_image(docker_client: Any) -> Iterator[str]:
    """The SNS/SQS emulator's image (python3, boto3, moto): ${PUBSUB_IMAGE} in manifests."""
    from meshlocal.runtime import pubsub

    yield from _exported("PUBSUB_IMAGE", pubsub.ensure_image(docker_client, lambda _: None))


def _exported(name: str, value: str) -> Iterator[str]:
    """`value`, set as $name for the test's duration (and its `meshlocal` subprocesses)."""
    old = os.environ.get(name)
    os.environ[name] = value
    yield value
    if old is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = old


@pytest.fixture(scope="session")
def python_base(docker_client: Any) -> str:
    """Built once (~45 s) and then cached by tag between runs."""
    return images.ensure_python_base(docker_client)


@pytest.fixture(scope="session")
def dataplane_image(docker_client: Any, python_base: str) -> str:
    """Built once per session (cached by content hash), so no single test pays for it."""
    return images.ensure_dataplane_image(docker_client, python_base)
