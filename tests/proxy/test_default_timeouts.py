"""Service Connect's default proxy timeouts, exercised with their real values.

- http mode, 15 s per request (until the response head): run for real, so the
  test is marked slow (about 15 s; CI runs it all the same).
- http mode, 300 s idle: can't be waited for in CI time. A proxy built with the
  default settings has the sweeper's pass run with an injected clock (`sweep(now)`
  at 299 s and 301 s of silence): what is tested is that the default value is the
  one wired to the sweeper; the wall-clock path of the sweeper is covered with
  short values in test_resilience.py.
- tcp mode (no AppProtocol) has no request timeout and a 1 h idle timeout; that
  one is in test_tcp.py, the same way.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import Replica

from .helpers import MeshFactory, raw_exchange, split_response


def test_the_defaults_are_service_connects() -> None:
    # ECS Service Connect: perRequestTimeoutSeconds 15, idleTimeoutSeconds 300 (HTTP),
    # idleTimeoutSeconds 3600 for TCP.
    s = ProxySettings()
    assert (s.request_timeout_s, s.idle_timeout_s, s.tcp_idle_timeout_s) == (15.0, 300.0, 3600.0)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_replica_that_never_answers_gets_504_after_15_s(
    mesh_factory: MeshFactory,
) -> None:
    mesh = await mesh_factory()  # default settings
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # reads nothing, answers nothing, keeps the connection

    silent = await asyncio.start_server(never_answer, "127.0.0.11", 0)
    port = silent.sockets[0].getsockname()[1]
    mesh.registry.upsert(Replica("api", 1, "cid-api-1", "127.0.0.11", port))
    try:
        started = time.monotonic()
        out = await raw_exchange(
            "127.0.0.2",
            mesh.proxy.bound_port(8080),
            b"GET / HTTP/1.1\r\nHost: api\r\n\r\n",
            timeout=25,
        )
        elapsed = time.monotonic() - started
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
    status, _, body = split_response(out)
    assert status == 504, out
    assert b"api-1" in body and b"15 s" in body
    # The sweeper checks deadlines every second (a tenth of the timeout, at most 1 s).
    assert 15.0 <= elapsed < 17.0, elapsed
    assert len(held) == 1  # it reached the replica, once: a timeout is not retried


async def test_connections_idle_300_s_are_closed_by_default(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)  # default settings
    engine = mesh.proxy.engine
    reader, writer = await asyncio.open_connection("127.0.0.2", mesh.proxy.bound_port(8080))
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        async with asyncio.timeout(5):
            await reader.readuntil(b"\r\n\r\napi-1")
        quiet_since = time.monotonic()
        assert engine.pool.idle_count("cid-api-1") == 1  # the pooled replica connection

        # 299 s of silence: the client connection and the pooled one both stay.
        engine.forwarder.sweep(quiet_since + 299)
        engine.pool.sweep(quiet_since + 299)
        await asyncio.sleep(0.2)
        assert not reader.at_eof()
        assert engine.pool.idle_count("cid-api-1") == 1

        # 301 s: both are closed.
        engine.forwarder.sweep(quiet_since + 301)
        engine.pool.sweep(quiet_since + 301)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        assert engine.pool.idle_count("cid-api-1") == 0
    finally:
        writer.close()
