"""Fixtures for runtime tests against the real Docker engine.

Every test gets its own project label and everything labelled with it is
removed afterwards, whether the test passed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshlocal.registry import ReplicaRegistry
from meshlocal.runtime.engine import Engine


@pytest.fixture(scope="session")
def engine(docker_client: Any) -> Engine:
    return Engine(docker_client)


@pytest.fixture
def project(engine: Engine) -> Iterator[str]:
    name = f"mltest-{uuid.uuid4().hex[:8]}"
    yield name
    engine.remove_all(name)
    assert engine.list_containers(name) == []


async def until(
    registry: ReplicaRegistry, condition: Callable[[], bool], timeout: float, what: str
) -> None:
    """Wait (bounded) until `condition` holds, re-checking on every registry change."""
    changed = asyncio.Event()
    unsubscribe = registry.subscribe(lambda _b, _a: changed.set())
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=min(left, 0.5))
    finally:
        unsubscribe()
