"""The mesh page in a real browser (headless Chromium), against the live kudos mesh.

The page is served by the data plane (`meshlocal open` prints its URL) and
kept current over Server-Sent Events: these tests never reload it; a mark
set in the page's window at the start must survive every change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By

from meshlocal.runtime import labels
from meshlocal.testing import Mesh

T = TypeVar("T")
MARK = "window.__meshlocalPageMark"


def poll(what: str, check: Callable[[], T | None], timeout: float, every: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (NoSuchElementException, StaleElementReferenceException):
            found = None  # the page re-rendered under us: look again
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"within {timeout} s: {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def page(mesh: Mesh, browser: Any) -> Any:
    url = mesh.deployment.dataplane().admin_url.rstrip("/") + "/"
    browser.get(url)
    poll("the page to go live", lambda: live(browser), 10)
    browser.execute_script(f"{MARK} = 42;")
    return browser


def live(driver: Any) -> bool:
    state = driver.find_element(By.ID, "connection").get_attribute("data-state")
    return bool(state == "live")


def not_reloaded(driver: Any) -> None:
    assert driver.execute_script(f"return {MARK};") == 42, "the page was reloaded"


def row(driver: Any, replica: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'tr.replica[data-replica="{replica}"]')


def test_the_page_lists_every_service_and_replica(mesh: Mesh, page: Any) -> None:
    for service in mesh.services():
        page.find_element(By.CSS_SELECTOR, f'g.node[data-service="{service}"]')
        section = page.find_element(By.CSS_SELECTOR, f'section.service[data-service="{service}"]')
        for r in mesh.replicas(service):

            def shown(name: str = r.name, address: str = r.address) -> bool:
                tr = row(page, name)
                return address in tr.text and tr.get_attribute("data-rotation") == "in"

            poll(f"{r.name} in rotation on the page", shown, 5)
        endpoint = mesh.state()["services"][service]["connect"]["url"]
        assert endpoint in section.text
    assert "api.test.kudos.local" in page.find_element(By.ID, "services").text
    not_reloaded(page)


def test_traffic_from_front_end_to_api_is_an_edge_with_a_rate(
    mesh: Mesh, page: Any, artifacts: Path
) -> None:
    for _ in range(5):
        response = mesh.get("front-end", "/api/calls?n=10")
        assert response.status == 200

    def rate(source: str, target: str) -> float | None:
        edge = page.find_element(
            By.CSS_SELECTOR, f'g.edge[data-from="{source}"][data-to="{target}"]'
        )
        value = float(edge.find_element(By.CSS_SELECTOR, ".rate").text or 0)
        return value if value > 0 else None

    assert poll("an edge front-end -> api with a rate", lambda: rate("front-end", "api"), 5) > 0
    label = page.find_element(
        By.CSS_SELECTOR, 'g.edge[data-from="front-end"][data-to="api"]'
    ).get_attribute("data-label")
    assert "req/s" in label and "p50" in label  # api speaks AppProtocol http
    # The calls came in through the public endpoint: that edge is drawn too.
    poll("an edge public endpoint -> front-end", lambda: rate("@public", "front-end"), 5)
    page.save_screenshot(str(artifacts / "mesh-page-kudos.png"))
    assert (artifacts / "mesh-page-kudos.png").stat().st_size > 10_000
    not_reloaded(page)


def test_clicking_a_replica_shows_its_details_and_last_log_lines(mesh: Mesh, page: Any) -> None:
    mesh.get("front-end", "/api/calls?n=3")  # something in api's logs
    target = mesh.replica("api", 1)
    row(page, "api-1").click()
    details = page.find_element(By.ID, "details")
    poll("the details of api-1", lambda: details.get_attribute("data-id") == target.container_id, 5)
    assert page.find_element(By.ID, "details-title").text == "api-1"
    assert target.address in page.find_element(By.ID, "details-body").text

    def logs() -> str | None:
        pre = page.find_element(By.ID, "logs")
        text = str(pre.text)
        done = "loading" not in (pre.get_attribute("class") or "") and "HTTP" in text
        return text if done else None

    text = poll("api-1's last log lines", logs, 10)
    assert "GET" in text  # the api's access log, read by the controller
    # A node opens the service.
    page.find_element(By.CSS_SELECTOR, 'g.node[data-service="front-end"]').click()
    poll("the details of front-end", lambda: details.get_attribute("data-id") == "front-end", 5)
    assert "Load Balanced Web Service" in page.find_element(By.ID, "details-body").text
    page.find_element(By.ID, "details-close").click()
    not_reloaded(page)


def test_a_killed_replica_changes_its_row_within_two_seconds(
    mesh: Mesh, page: Any, artifacts: Path
) -> None:
    before = row(page, "api-2").get_attribute("data-container")
    assert before == mesh.replica("api", 2).container_id
    started = time.monotonic()
    mesh.kill("api", 2)

    def changed() -> bool:
        try:
            tr = row(page, "api-2")
        except NoSuchElementException:
            return True  # gone from the table
        return (
            tr.get_attribute("data-container") != before
            or tr.get_attribute("data-rotation") != "in"
            or tr.get_attribute("data-health") != "healthy"
        )

    poll("api-2's row to change", changed, 2.0, every=0.02)
    elapsed = time.monotonic() - started
    with (artifacts / "mesh-page-timings.txt").open("a") as out:
        out.write(f"kill -> row changed on the page: {elapsed:.3f} s\n")
    assert elapsed < 2.0, elapsed
    not_reloaded(page)
    # The timeline says what happened to it.
    poll(
        "an event about api-2",
        lambda: any(
            li.get_attribute("data-kind") in ("removed", "died", "replaced", "health")
            and "api-2" in li.text
            for li in page.find_elements(By.CSS_SELECTOR, "#timeline li.event")
        ),
        5,
    )
    mesh.wait_ready()  # replaced by itself, for the tests after this one


def test_the_page_reconnects_after_a_data_plane_restart(mesh: Mesh, page: Any) -> None:
    def epoch() -> str | None:
        value = page.find_element(By.TAG_NAME, "body").get_attribute("data-epoch")
        return str(value) if value else None

    before = poll("the page to know its data plane", epoch, 5)
    container = docker.from_env().containers.get(labels.dataplane_name(mesh.project, mesh.env))
    container.restart(timeout=5)
    # A new data plane (a new epoch), followed by itself: EventSource retries each
    # second on the same port; no reload.
    poll("the page to follow the new data plane", lambda: epoch() not in (None, before), 30)
    poll("the page to be live again", lambda: live(page), 10)
    not_reloaded(page)
    mesh.wait_ready()
    # Its timeline started over, with the new data plane's first event.
    poll(
        "a controller event from the new data plane",
        lambda: any(
            li.get_attribute("data-kind") == "controller"
            for li in page.find_elements(By.CSS_SELECTOR, "#timeline li.event")
        ),
        10,
    )
    for r in mesh.replicas("api"):
        poll(f"{r.name} on the page", lambda name=r.name: row(page, name) is not None, 5)
