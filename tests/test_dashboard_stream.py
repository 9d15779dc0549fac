"""The mesh page's HTTP side on an in-process data plane: the event stream
(shape, order, resuming), edges from real proxied traffic, logs through the
link, the page's files and the guard a browser meets.

Real sockets on loopback (127.0.77.x); the controller is the test's end of
a real link.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from planekit import Controller, listen, load, serving, workspace

from meshlocal.link import send
from meshlocal.registry import Health
from meshlocal.serving import DataPlane

API = "127.0.77.5"
TCP = "127.0.77.6"
FRONT = "127.0.77.7"
CID = {"api": "a" * 64, "tcp": "b" * 64, "front": "f" * 64}


def replica(service: str, address: str, port: int | None, index: int = 1) -> dict[str, Any]:
    return {
        "service": service,
        "index": index,
        "id": CID[service] if index == 1 else f"{service[0]}{index}".ljust(64, "0"),
        "address": address,
        "port": port,
        "health": "healthy",
    }


def status(services: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def svc(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "type": "Backend Service",
            "desired": len(rows),
            "port": rows[0]["port"] if rows else None,
            "discovery_name": f"{name}.test.shop.local",
            "ready": True,
            "replicas": [
                {
                    "name": f"{name}-{r['index']}",
                    "index": r["index"],
                    "container_id": r["id"],
                    "address": r["address"],
                    "port": r["port"],
                    "health": "healthy",
                }
                for r in rows
            ],
        }

    return {
        "project": "p",
        "app": "shop",
        "env": "test",
        "mode": "host",
        "ready": True,
        "services": {n: svc(n, rows) for n, rows in services.items()},
    }


class Sse:
    """A Server-Sent Events reader: (id, event, data) as they come."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.buf = b""
        self.retry: int | None = None

    async def next(self, timeout: float = 5.0) -> tuple[str | None, str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                if b"\n\n" in self.buf:
                    block, self.buf = self.buf.split(b"\n\n", 1)
                    fields: dict[str, str] = {}
                    for line in block.decode().split("\n"):
                        if line.startswith(":"):
                            continue
                        name, _, value = line.partition(": ")
                        fields[name] = value
                    if "retry" in fields:
                        self.retry = int(fields["retry"])
                    if "event" in fields:
                        return fields.get("id"), fields["event"], json.loads(fields["data"])
                    continue
                chunk = await self.response.content.readany()
                if not chunk:
                    raise ConnectionError("the stream ended")
                self.buf += chunk

    async def until(self, event: str, timeout: float = 5.0) -> tuple[str | None, Any]:
        async with asyncio.timeout(timeout):
            while True:
                ident, kind, data = await self.next(timeout)
                if kind == event:
                    return ident, data


@pytest.fixture
async def replicas() -> AsyncIterator[None]:
    """api answers HTTP on API:18080; tcp greets on TCP:19000."""
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        status_code = int(request.query.get("status", "200"))
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        return web.Response(text="hi", status=status_code)

    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, API, 18080).start()

    async def greet(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hello\n")
        await w.drain()
        w.close()

    tcp = await asyncio.start_server(greet, TCP, 19000)
    try:
        yield
    finally:
        tcp.close()
        await runner.cleanup()


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[DataPlane, Controller]]:
    dp = DataPlane(listen())
    try:
        async with Controller(dp) as link:
            await link.configure(serving(load(workspace(tmp_path)), base=77))
            await send(
                link.writer,
                {
                    "t": "replicas",
                    "replicas": [replica("api", API, 18080), replica("tcp", TCP, 19000)],
                },
            )
            await send(link.writer, {"t": "clients", "clients": [replica("front", FRONT, None)]})
            await send(
                link.writer,
                {
                    "t": "status",
                    "status": status(
                        {
                            "api": [replica("api", API, 18080)],
                            "tcp": [replica("tcp", TCP, 19000)],
                            "front": [],
                        }
                    ),
                },
            )
            await asyncio.sleep(0.1)
            yield dp, link
    finally:
        await dp.stop()


def base(dp: DataPlane) -> str:
    return f"http://127.0.0.1:{dp.admin_port}"


# -- the stream ---------------------------------------------------------------------------


async def test_the_stream_says_hello_then_the_document_then_events_in_order(
    plane: tuple[DataPlane, Controller], http: aiohttp.ClientSession
) -> None:
    dp, link = plane
    async with http.get(base(dp) + "/v1/events") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        sse = Sse(resp)
        _, kind, hello = await sse.next()
        assert kind == "hello" and hello == {"epoch": dp.dashboard.timeline.epoch, "replay": "full"}
        assert sse.retry == 1000
        _, kind, doc = await sse.next()
        assert kind == "topology"
        assert [s["name"] for s in doc["services"]] == ["api", "front", "tcp"]
        assert doc["services"][0]["replicas"][0]["name"] == "api-1"
        assert doc["services"][0]["connect"]["protocol"] == "http"
        assert doc["services"][1]["connect_client"] is True
        # What happened before: the controller connected, the replicas came as one set.
        _, kind, first = await sse.next()
        assert kind == "timeline" and first["kind"] == "controller"

        # A second api replica, then the first one's health fails.
        two = [replica("api", API, 18080), replica("api", "127.0.77.8", 18080, 2)]
        await send(link.writer, {"t": "replicas", "replicas": [*two, replica("tcp", TCP, 19000)]})
        await send(
            link.writer, {"t": "status", "status": status({"api": two, "tcp": [], "front": []})}
        )
        ids = []
        seen: list[tuple[str, str]] = []
        changed_doc = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3
        while loop.time() < deadline and (len(seen) < 1 or changed_doc is None):
            ident, kind, data = await sse.next()
            if kind == "timeline":
                ids.append(ident)
                seen.append((data["kind"], data["replica"]))
            elif kind == "topology" and len(data["services"][0]["replicas"]) == 2:
                changed_doc = data
        assert ("added", "api-2") in seen
        assert changed_doc is not None  # pushed within a second, no request needed
        dp.registry.set_health(two[1]["id"], Health.UNHEALTHY)
        ident, event = await sse.until("timeline")
        assert event["kind"] == "health" and event["replica"] == "api-2"
        ids.append(ident)
        seqs = [int(i.rsplit("-", 1)[1]) for i in ids]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert all(i.startswith(dp.dashboard.timeline.epoch + "-") for i in ids)


async def test_a_reconnecting_page_gets_exactly_what_it_missed(
    plane: tuple[DataPlane, Controller], http: aiohttp.ClientSession
) -> None:
    dp, _ = plane
    async with http.get(base(dp) + "/v1/events") as resp:
        sse = Sse(resp)
        timeline = dp.dashboard.timeline
        newest = timeline.event_id(timeline.events()[-1])
        last = None
        while last != newest:  # everything so far, as the page saw it
            last, _ = await sse.until("timeline")
    # Away: three changes happen.
    missed = [timeline.add("fault", f"missed {i}") for i in range(3)]
    async with http.get(base(dp) + "/v1/events", headers={"Last-Event-ID": str(last)}) as resp:
        sse = Sse(resp)
        _, kind, hello = await sse.next()
        assert (kind, hello["replay"]) == ("hello", "since")
        _, kind, _doc = await sse.next()
        assert kind == "topology"
        got = [await sse.next() for _ in missed]
        assert [(k, d["text"]) for _, k, d in got] == [("timeline", e.text) for e in missed]
        assert [i for i, _, _ in got] == [timeline.event_id(e) for e in missed]
    # Another data plane's id (it restarted): start over, with everything kept.
    stale = "0000-3"
    async with http.get(base(dp) + "/v1/events", headers={"Last-Event-ID": stale}) as resp:
        sse = Sse(resp)
        _, kind, hello = await sse.next()
        assert hello["replay"] == "full"


async def test_a_stream_ends_when_the_data_plane_stops(
    plane: tuple[DataPlane, Controller], http: aiohttp.ClientSession
) -> None:
    dp, _ = plane
    async with http.get(base(dp) + "/v1/events") as resp:
        sse = Sse(resp)
        await sse.until("topology")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await dp.dashboard.stop()
        with pytest.raises((ConnectionError, aiohttp.ClientPayloadError)):
            while True:
                await sse.next(timeout=3)
        assert loop.time() - started < 2


# -- edges from real traffic ----------------------------------------------------------------


async def test_traffic_through_the_proxy_becomes_edges_with_rates_errors_and_latency(
    replicas: None, plane: tuple[DataPlane, Controller]
) -> None:
    dp, _ = plane
    dp.dashboard.tick_s = 0.2
    for _ in range(100):  # the new replicas' first probes
        if all(r.in_rotation for r in dp.registry.all()):
            break
        await asyncio.sleep(0.1)
    vip = {e.service: e.vip for e in dp.naming.sc_endpoints} if dp.naming else {}
    connector = aiohttp.TCPConnector(local_addr=(FRONT, 0))
    async with aiohttp.ClientSession(connector=connector) as front:
        for i in range(20):
            query = "?status=503" if i < 2 else "?sleep=0.02"
            async with front.get(f"http://{vip['api']}:18080/{query}") as resp:
                await resp.read()
    for _ in range(3):
        reader, writer = await asyncio.open_connection(vip["tcp"], 19000, local_addr=(FRONT, 0))
        assert await reader.readline() == b"hello\n"
        writer.close()
    async with aiohttp.ClientSession() as http:
        edges: dict[tuple[str, str], dict[str, Any]] = {}
        for _ in range(30):
            await asyncio.sleep(0.2)
            async with http.get(base(dp) + "/v1/topology") as resp:
                doc = await resp.json()
            edges = {(e["from"], e["to"]): e for e in doc["edges"]}
            if {("front", "api"), ("front", "tcp")} <= edges.keys() and edges[("front", "tcp")][
                "count"
            ] == 3:
                break
    api = edges[("front", "api")]
    assert (api["count"], api["errors"], api["unit"]) == (20, 2, "requests")
    assert api["error_rate"] == pytest.approx(0.1)
    assert api["rate"] > 0
    assert api["p50_ms"] is not None and 15 <= api["p50_ms"] <= 500
    tcp = edges[("front", "tcp")]
    assert (tcp["count"], tcp["errors"], tcp["unit"], tcp["latency"]) == (
        3,
        0,
        "connections",
        "first byte",
    )
    assert tcp["p50_ms"] is not None


async def test_a_connection_no_replica_takes_is_an_error_on_its_edge(
    plane: tuple[DataPlane, Controller],
) -> None:
    dp, link = plane
    await send(link.writer, {"t": "replicas", "replicas": [replica("api", API, 18080)]})
    await asyncio.sleep(0.2)  # tcp has no replica now
    vip = {e.service: e.vip for e in dp.naming.sc_endpoints} if dp.naming else {}
    reader, writer = await asyncio.open_connection(vip["tcp"], 19000, local_addr=(FRONT, 0))
    with pytest.raises(ConnectionResetError):  # Envoy: no healthy upstream, a reset
        await reader.read()
    writer.close()
    assert dp.core is not None
    edge = dp.core.metrics.edges[("tcp", FRONT)]
    assert (edge.calls, edge.errors) == (1, 1)


# -- logs -----------------------------------------------------------------------------------


async def test_logs_come_from_the_controller(
    plane: tuple[DataPlane, Controller], http: aiohttp.ClientSession
) -> None:
    dp, link = plane

    async def answer() -> dict[str, Any]:
        asked = await link.expect("logs")
        ours = asked["container_id"] == CID["api"]
        await send(
            link.writer,
            {
                "t": "logs",
                "id": asked["id"],
                "lines": ["line 1", "line 2"] if ours else [],
                "error": None if ours else "no replica of this mesh",
                "ours": ours,
            },
        )
        return asked

    task = asyncio.create_task(answer())
    async with http.get(base(dp) + f"/v1/logs/{CID['api']}?tail=2") as resp:
        assert resp.status == 200
        assert await resp.json() == {"lines": ["line 1", "line 2"], "error": None}
    assert (await task)["tail"] == 2
    task = asyncio.create_task(answer())
    async with http.get(base(dp) + "/v1/logs/" + "9" * 64) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "no replica of this mesh"
    await task


async def test_logs_without_a_controller_say_why(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    dp = DataPlane(listen())
    await dp.configure(serving(load(workspace(tmp_path)), base=78))
    try:
        async with http.get(base(dp) + "/v1/logs/abc") as resp:
            body = await resp.json()
        assert resp.status == 200 and body["lines"] == [] and "controller is away" in body["error"]
    finally:
        await dp.stop()


# -- the page and the guard -------------------------------------------------------------------


async def test_the_page_and_its_files_are_served_and_nothing_else(
    plane: tuple[DataPlane, Controller], http: aiohttp.ClientSession
) -> None:
    dp, _ = plane
    async with http.get(base(dp) + "/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "ui/app.js" in page
    async with http.get(base(dp) + "/ui/app.js") as resp:
        assert resp.status == 200 and resp.content_type == "text/javascript"
        assert "EventSource" in await resp.text()
    for bad in ("/ui/..%2Fserver.py", "/ui/.hidden", "/ui/nothing.js", "/ui/%2E%2E%2Fx"):
        async with http.get(base(dp) + bad) as resp:
            assert resp.status == 404, bad


async def test_a_rebound_name_and_a_cross_site_change_are_refused(
    plane: tuple[DataPlane, Controller], http: aiohttp.ClientSession
) -> None:
    dp, _ = plane
    async with http.get(base(dp) + "/", headers={"Host": f"evil.example:{dp.admin_port}"}) as r:
        assert r.status == 403
    async with http.get(
        base(dp) + "/v1/state", headers={"Host": f"localhost:{dp.admin_port}"}
    ) as r:
        assert r.status == 200
    fault = {"service": "api", "abort": 503, "id": "x"}
    async with http.post(
        base(dp) + "/v1/faults", json=fault, headers={"Origin": "http://evil.example"}
    ) as r:
        assert r.status == 403
    assert list(dp.faults.table.faults()) == []
    same = f"http://127.0.0.1:{dp.admin_port}"
    async with http.post(base(dp) + "/v1/faults", json=fault, headers={"Origin": same}) as r:
        assert r.status == 200


async def test_an_outlier_ejection_is_a_timeline_event_and_shows_on_the_replica(
    replicas: None, plane: tuple[DataPlane, Controller], http: aiohttp.ClientSession
) -> None:
    """A second api replica that answers only 503: the client's proxy ejects it."""
    dp, link = plane
    bad_app = web.Application()

    async def broken(_r: web.Request) -> web.Response:
        return web.Response(status=503, text="broken")

    bad_app.router.add_get("/", broken)
    runner = web.AppRunner(bad_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.77.9", 18080).start()
    try:
        two = [replica("api", API, 18080), replica("api", "127.0.77.9", 18080, 2)]
        await send(link.writer, {"t": "replicas", "replicas": [*two, replica("tcp", TCP, 19000)]})
        await send(
            link.writer,
            {"t": "status", "status": status({"api": two, "tcp": [], "front": []})},
        )
        for _ in range(100):  # both probed into rotation
            if len([r for r in dp.registry.for_service("api") if r.in_rotation]) == 2:
                break
            await asyncio.sleep(0.1)
        vip = {e.service: e.vip for e in dp.naming.sc_endpoints} if dp.naming else {}
        connector = aiohttp.TCPConnector(local_addr=(FRONT, 0))
        async with aiohttp.ClientSession(connector=connector) as front:
            for _ in range(20):  # round robin: 10 reach the broken one, 5 in a row eject it
                async with front.get(f"http://{vip['api']}:18080/") as resp:
                    await resp.read()
        events = [e for e in dp.dashboard.timeline.events() if e.kind == "ejected"]
        assert [e.replica for e in events] == ["api-2"]
        assert "ejected by front-1's proxy" in events[0].text
        async with http.get(base(dp) + "/v1/topology") as resp:
            doc = await resp.json()
        api = next(s for s in doc["services"] if s["name"] == "api")
        rows = {r["name"]: r for r in api["replicas"]}
        assert rows["api-2"]["ejected_by"] == ["front-1"] and rows["api-1"]["ejected_by"] == []
    finally:
        await runner.cleanup()
