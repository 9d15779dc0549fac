"""Shared fixtures. Docker tests fail loudly under CI=true when no engine answers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


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
