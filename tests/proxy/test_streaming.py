"""Large bodies stream through in bounded memory, with back-pressure both ways."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from .helpers import Backend

SIZE = 96 * 1024 * 1024
LIMIT = 32 * 1024 * 1024  # growth allowed over the warmed-up RSS


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[str, int]]:
    backend = await Backend("api-1", "127.0.0.41").start()
    port = free_port("127.0.0.42")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("serve.py")),
            f"127.0.0.42:{port}",
            f"127.0.0.41:{backend.port}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.strip() == b"ready"
        yield f"http://127.0.0.42:{port}", proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await backend.stop()


async def warm(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(20):
        async with session.get(url + "/", headers={"Host": "api"}) as resp:
            await resp.read()
        async with session.post(url + "/echo", data=b"x" * 300_000, headers={"Host": "api"}) as r:
            await r.read()


async def test_large_download_and_upload_in_bounded_memory(
    proxied: tuple[str, int],
) -> None:
    url, pid = proxied
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await warm(session, url)
        base = memory_kb(pid, "VmRSS") * 1024

        # Download; the client stalls early, so without back-pressure the proxy
        # would buffer almost all of it.
        received = 0
        async with session.get(f"{url}/big?n={SIZE}", headers={"Host": "api"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(SIZE)
            first = await resp.content.read(1 << 20)
            received += len(first)
            await asyncio.sleep(1.0)
            peak_during_stall = memory_kb(pid, "VmRSS") * 1024
            async for chunk in resp.content.iter_chunked(1 << 20):
                received += len(chunk)
        assert received == SIZE
        assert peak_during_stall - base < LIMIT

        # Upload, chunked, from a generator: the client never holds it all either.
        async def body() -> AsyncIterator[bytes]:
            block = b"u" * (1 << 20)
            for _ in range(SIZE // len(block)):
                yield block

        async with session.post(f"{url}/upload", data=body(), headers={"Host": "api"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["received"] == SIZE

    peak = memory_kb(pid, "VmHWM") * 1024
    assert peak - base < LIMIT, f"proxy peak RSS grew by {(peak - base) >> 20} MiB"
