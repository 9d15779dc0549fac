"""The kudos example's images build offline on the local Python base and behave."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlocal.manifest.model import BuildSpec
from meshlocal.runtime import images
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerSpec, Engine

pytestmark = pytest.mark.docker
KUDOS = Path(__file__).resolve().parents[2] / "compose-examples" / "kudos"


@pytest.fixture(scope="module")
def kudos_images(docker_client: Any, python_base: str) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    built = {}
    for svc in ("api", "front-end"):
        built[svc] = f"meshlocal-test/kudos-{svc}:{tag}"
        images.build_service_image(
            docker_client,
            BuildSpec(context=KUDOS / svc, dockerfile=KUDOS / svc / "Dockerfile"),
            built[svc],
            default_args={"BASE_IMAGE": python_base},
        )
    yield built
    for ref in built.values():
        docker_client.images.remove(ref, force=True)


def _wait_http(engine: Engine, client: str, url: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        # Not `wget -T`: it segfaults in Debian busybox-static 1.35 (docs/docker-notes.md).
        code, out = engine.exec(client, ["timeout", "3", "wget", "-q", "-O", "-", url])
        if code == 0:
            return out
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer: {out}")


def test_front_end_calls_api_both_ways_and_names_the_replica(
    engine: Engine, project: str, kudos_images: dict[str, str], busybox_image: str
) -> None:
    net = engine.ensure_network(project, "test")

    def run(name: str, image: str, env: dict[str, str]) -> tuple[str, str]:
        cid = engine.run_container(
            ContainerSpec(
                name=f"{project}-{name}",
                image=image,
                labels=L.base_labels(project, "test", L.Role.PROBE),
                network=net.name,
                hostname=f"{project}-{name}",
                environment=env,
            )
        )
        info = engine.inspect(cid)
        assert info is not None
        return cid, info.address_on(net.name) or ""

    _, ip1 = run("api-1", kudos_images["api"], {"COPILOT_SERVICE_NAME": "api"})
    _, ip2 = run("api-2", kudos_images["api"], {"COPILOT_SERVICE_NAME": "api"})
    # Without the mesh, point each path straight at one replica.
    _, fe_ip = run(
        "fe",
        kudos_images["front-end"],
        {"API_SC_URL": f"http://{ip1}/", "API_SD_URL": f"http://{ip2}/"},
    )
    client = engine.run_container(
        ContainerSpec(
            name=f"{project}-client",
            image=busybox_image,
            labels=L.base_labels(project, "test", L.Role.PROBE),
            network=net.name,
            command=("sleep", "300"),
        )
    )
    api = json.loads(_wait_http(engine, client, f"http://{ip1}/"))
    assert api["replica"] == f"{project}-api-1" and api["address"] == ip1
    _wait_http(engine, client, f"http://{fe_ip}:8080/healthz")
    calls = json.loads(_wait_http(engine, client, f"http://{fe_ip}:8080/api/calls?n=2"))
    sc, sd = calls["service-connect"], calls["service-discovery"]
    assert [c["replica"] for c in sc] == [f"{project}-api-1"] * 2
    assert [c["replica"] for c in sd] == [f"{project}-api-2"] * 2
    assert all(c["ok"] and c["seen_client"] == fe_ip for c in sc + sd)
    page = _wait_http(engine, client, f"http://{fe_ip}:8080/")
    assert f"{project}-api-1" in page and "service-discovery" in page


def test_default_discovery_url_uses_the_namespace(
    engine: Engine, project: str, kudos_images: dict[str, str], busybox_image: str
) -> None:
    net = engine.ensure_network(project, "test")
    cid = engine.run_container(
        ContainerSpec(
            name=f"{project}-fe",
            image=kudos_images["front-end"],
            labels=L.base_labels(project, "test", L.Role.PROBE),
            network=net.name,
            environment={"COPILOT_SERVICE_DISCOVERY_ENDPOINT": "test.kudos.local"},
        )
    )
    code, out = engine.exec(
        cid,
        [
            "python3",
            "-c",
            "import sys; sys.path.insert(0, '/app'); import app; print(app.targets())",
        ],
    )
    assert code == 0, out
    assert "http://api.test.kudos.local/" in out and "http://api/" in out
