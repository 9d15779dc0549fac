"""Fixtures: a proxy over real backends on 127.0.0.x, and a real client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from meshlocal.manifest.model import Service
from meshlocal.proxy.settings import ProxySettings

from .helpers import Mesh, MeshFactory, naming, service


@pytest.fixture
async def mesh_factory() -> AsyncIterator[MeshFactory]:
    made: list[Mesh] = []

    async def make(
        *services: Service,
        settings: ProxySettings | None = None,
        clock: Callable[[], float] | None = None,
        replicas: int = 0,
    ) -> Mesh:
        model = naming(*(services or (service("api"),)))
        ports = {p: 0 for p in model.sc_ports}
        base = settings or ProxySettings()
        settings_ = ProxySettings(**{**base.__dict__, "port_map": ports})
        m = Mesh(model, settings_, clock or time.monotonic)
        await m.proxy.start()
        made.append(m)
        for _ in range(replicas):
            await m.add()
        return m

    yield make
    for m in made:
        await m.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session
