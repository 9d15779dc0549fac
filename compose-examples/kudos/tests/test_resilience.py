"""front-end degrades gracefully when api is slow or failing (docs/faults.md's example).

front-end gives every api call KUDOS_TIMEOUT_S (2 s, its default). When the
Service Connect call fails, its page still answers 200, marked
`"degraded": true`, with the last kudos it got from api or a placeholder.
The faults are injected by the mesh (`mesh.fault`), with no change to api,
and removed when each `with` block ends, even when an assertion fails.
"""

from __future__ import annotations

import time
from typing import Any

from meshlocal.testing import Mesh

TIMEOUT_S = 2.0  # front-end's KUDOS_TIMEOUT_S
KUDOS = {"great demo", "clean deploy", "fast fix", "kind review"}  # what api answers


def front_end(mesh: Mesh) -> tuple[dict[str, Any], float]:
    """front-end's /api/calls (one call each way), and how long it took, in seconds."""
    started = time.monotonic()
    response = mesh.get("front-end", "/api/calls", timeout=15)
    took = time.monotonic() - started
    assert response.status == 200, response.text
    body: dict[str, Any] = response.json()
    return body, took


def test_front_end_answers_in_time_with_a_fallback_when_api_is_slow(mesh: Mesh) -> None:
    for _ in range(4):  # both front-end replicas get a kudos to fall back on
        healthy, _ = front_end(mesh)
        assert healthy["degraded"] is False, healthy
        assert healthy["kudos"]["source"] == "api" and healthy["kudos"]["text"] in KUDOS

    with mesh.fault("api", latency="3s") as slow:
        body, took = front_end(mesh)
        page = mesh.get("front-end", "/", timeout=15)
        delayed = slow.hits()

    # front-end gave up on api after its own timeout and answered anyway.
    (sc,) = body["service-connect"]
    assert not sc["ok"] and "timed out" in sc["error"], sc
    assert TIMEOUT_S * 1000 <= sc["elapsed_ms"] < 3000, sc
    assert took < TIMEOUT_S + 1.5, took
    assert body["degraded"] is True
    assert body["kudos"]["source"] in {"last-known-good", "placeholder"}, body["kudos"]
    if body["kudos"]["source"] == "last-known-good":
        assert body["kudos"]["text"] in KUDOS
    # Service Discovery goes straight to a replica, past the proxy: not delayed.
    (sd,) = body["service-discovery"]
    assert sd["ok"] and sd["elapsed_ms"] < 1000, sd
    assert page.status == 200 and "degraded" in page.text
    assert delayed >= 2  # the JSON call and the page's

    # The fault is gone with the block: the next call is healthy again.
    again, took = front_end(mesh)
    assert again["degraded"] is False and again["kudos"]["source"] == "api", again
    assert took < 1.0


def test_front_end_falls_back_when_api_fails(mesh: Mesh) -> None:
    with mesh.fault("api", abort=503) as failing:
        body, took = front_end(mesh)
        aborted = failing.hits()
    (sc,) = body["service-connect"]
    assert (sc["ok"], sc["status"]) == (False, 503), sc
    assert body["degraded"] is True
    assert body["kudos"]["source"] in {"last-known-good", "placeholder"}, body["kudos"]
    assert took < 1.0  # an abort answers at once
    assert aborted == 1


def test_a_dns_fault_for_front_end_only_breaks_its_service_discovery_path(mesh: Mesh) -> None:
    with mesh.fault("api", dns="nxdomain", from_="front-end"):
        body, _ = front_end(mesh)
        resolved = mesh.resolve("api.test.kudos.local", from_="api")
    (sd,) = body["service-discovery"]
    assert not sd["ok"] and sd["error"].startswith("URLError"), sd
    # Service Connect resolves `api` to its endpoint address: untouched.
    (sc,) = body["service-connect"]
    assert sc["ok"], sc
    assert body["kudos"]["source"] == "api" and body["degraded"] is True
    # Another client still resolves the name.
    assert resolved.rcode == "NOERROR" and len(resolved.answers) == 3
