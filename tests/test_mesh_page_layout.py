"""The mesh page in headless Chromium with a large mesh (20 services, 60
replicas), served by the real Dashboard from a synthetic state: it stays
readable (no node overlaps another or a label), and untrusted text (log
lines) is shown as text, never as markup."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from selenium.webdriver.common.by import By

from meshlocal.dashboard.server import Dashboard
from meshlocal.proxy.metrics import Metrics
from meshlocal.registry import Replica

SERVICES = [f"svc-{i:02d}" for i in range(20)]
HOSTILE = '<img src=x id=pwned onerror="document.title=1"> & </pre><b>bold</b>'


def address(s: int, r: int) -> str:
    return f"10.9.{s}.{r + 1}"


def state() -> dict[str, Any]:
    services = {}
    for s, name in enumerate(SERVICES):
        services[name] = {
            "type": "Backend Service",
            "desired": 3,
            "port": 8080,
            "discovery_name": f"{name}.test.big.local",
            "ready": True,
            "replicas": [
                {
                    "name": f"{name}-{r + 1}",
                    "index": r + 1,
                    "container_id": f"{s:02d}{r}".ljust(64, "c"),
                    "address": address(s, r),
                    "port": None if s == 0 else 8080,  # svc-00 is a client only
                    "health": "unhealthy" if (s, r) == (3, 1) else "healthy",
                    "in_rotation": (s, r) != (3, 1),
                    "draining": False,
                    "ejected_by": [],
                }
                for r in range(3)
            ],
        }
    return {
        "app": "big",
        "env": "test",
        "mode": "host",
        "ready": True,
        "controller_connected": True,
        "address": "10.9.99.2",
        "dns_port": 53,
        "services": services,
    }


def calls() -> list[tuple[int, int]]:
    """Three layers, as a real mesh fans out: 4 front services call 8 middle
    ones (two each), which call 8 back ones (two each): 24 edges."""
    out = [(a, 4 + 2 * a + k) for a in range(4) for k in range(2)]
    out += [(4 + j, 12 + (j + k) % 8) for j in range(8) for k in range(2)]
    return out


def traffic(metrics: Metrics) -> None:
    for s, t in calls():
        for r in range(3):
            edge = metrics.edge(SERVICES[t], address(s, r))
            for i in range(10):
                edge.response(503 if (s == 5 and i == 0) else 200, 3.0 + i)


@pytest.fixture(scope="module")
def big_page() -> Iterator[tuple[str, Dashboard]]:
    """A Dashboard on loopback, in its own thread's loop."""
    metrics = Metrics()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def logs(_cid: str, _tail: int) -> dict[str, Any]:
        return {"lines": ["plain line", HOSTILE], "error": None, "ours": True}

    async def main() -> None:
        dashboard = Dashboard(
            state=state,
            naming=lambda: None,
            edges=lambda: metrics.edges,
            faults=lambda: [],
            ask_logs=logs,
            tick_s=0.2,
        )
        for s, name in enumerate(SERVICES):
            for r in range(3):
                dashboard.directory.remember(
                    Replica(name, r + 1, f"{s:02d}{r}".ljust(64, "c"), address(s, r), 8080)
                )
        app = web.Application()
        dashboard.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        await dashboard.start()
        holder["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        holder["dashboard"] = dashboard
        holder["stop"] = stop = asyncio.Event()
        holder["loop"] = asyncio.get_running_loop()
        await asyncio.sleep(0.3)  # a first sample, then the traffic
        traffic(metrics)
        ready.set()
        await stop.wait()
        await dashboard.stop()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield holder["url"], holder["dashboard"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["w"] - 0.5
        and b["x"] < a["x"] + a["w"] - 0.5
        and a["y"] < b["y"] + b["h"] - 0.5
        and b["y"] < a["y"] + a["h"] - 0.5
    )


def test_twenty_services_and_sixty_replicas_stay_readable(
    browser: Any, big_page: tuple[str, Dashboard], artifacts: Path
) -> None:
    url, _ = big_page
    browser.get(url)
    deadline = time.monotonic() + 10
    while len(browser.find_elements(By.CSS_SELECTOR, "g.edge")) < len(calls()):
        assert time.monotonic() < deadline, "the edges never came"
        time.sleep(0.1)
    # One read of the page (it re-renders every second): counts, boxes, names.
    seen: dict[str, Any] = browser.execute_script(
        """
        const box = (e) => { const r = e.getBoundingClientRect();
          return {x: r.left, y: r.top, w: r.width, h: r.height}; };
        const rows = [...document.querySelectorAll('tr.replica')];
        return {
          nodes: [...document.querySelectorAll('g.node rect.box')].map(box),
          labels: [...document.querySelectorAll('g.edge rect.label-bg')].map(box),
          names: [...document.querySelectorAll('g.node')].map(
            (g) => [g.dataset.service, g.querySelector('text.name').textContent]),
          rows: rows.length,
          unhealthy: rows.find((r) => r.dataset.replica === 'svc-03-2').dataset.rotation,
          portless: rows.find((r) => r.dataset.replica === 'svc-00-1')
            .querySelector('td.address').textContent,
        };
        """
    )
    assert seen["rows"] == 60 and seen["unhealthy"] == "out"
    assert seen["portless"] == "10.9.0.1"  # no port, no ":null"
    nodes, labels = seen["nodes"], seen["labels"]
    assert len(nodes) == 20 and len(labels) == len(calls())
    for i, a in enumerate(nodes):
        assert a["w"] >= 100 and a["h"] >= 30, a  # not shrunk to nothing
        for b in nodes[i + 1 :]:
            assert not overlap(a, b), (a, b)
    for label in labels:
        for node in nodes:
            assert not overlap(label, node), (label, node)
    assert all(service == name for service, name in seen["names"]), seen["names"]
    browser.save_screenshot(str(artifacts / "mesh-page-20-services.png"))


def test_log_lines_are_shown_as_text_never_as_markup(
    browser: Any, big_page: tuple[str, Dashboard]
) -> None:
    url, _ = big_page
    browser.get(url)
    deadline = time.monotonic() + 10
    while not browser.find_elements(By.CSS_SELECTOR, 'tr.replica[data-replica="svc-00-1"]'):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    browser.find_element(By.CSS_SELECTOR, 'tr.replica[data-replica="svc-00-1"]').click()
    deadline = time.monotonic() + 5
    while "plain line" not in browser.find_element(By.ID, "logs").text:
        assert time.monotonic() < deadline, "the logs never came"
        time.sleep(0.1)
    assert HOSTILE in browser.find_element(By.ID, "logs").text
    assert browser.find_elements(By.ID, "pwned") == []
    assert browser.find_elements(By.CSS_SELECTOR, "#logs b") == []
    assert browser.title != "1"
