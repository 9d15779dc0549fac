"""compose-examples/grpc: gRPC behind Service Connect with AppProtocol grpc.

The example's containers need grpcio, which they can't pip install offline:
the module runs a copy of the example (tmp_path) into which vendor.sh has
copied grpc from this Python, so nothing is left in the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlocal.testing import Mesh

from .conftest import EXAMPLES

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]
EXAMPLE = "grpc"
GREETERS = ("greeter-1", "greeter-2", "greeter-3")


def vendored_copy(dest: Path) -> Path:
    """The example copied to `dest`, its vendor/ filled by its own vendor.sh."""
    pytest.importorskip("grpc", reason="vendor.sh copies grpcio from this Python")
    work = dest / EXAMPLE
    shutil.copytree(EXAMPLES / EXAMPLE, work, ignore=shutil.ignore_patterns("vendor"))
    (work / "vendor").mkdir()
    (work / "vendor" / ".keep").touch()
    done = subprocess.run(
        ["bash", str(work / "vendor.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (work / "vendor" / "grpc" / "__init__.py").is_file()
    assert list((work / "vendor").glob("grpcio-*.dist-info"))
    return work


@pytest.fixture(scope="module")
def example_mesh(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = vendored_copy(tmp_path_factory.mktemp("grpc-example"))
    mesh = Mesh(work, env="test", timeout=240)
    try:
        with mesh:
            yield mesh
    finally:
        # A new temporary copy is a new workspace (its own image tags) every
        # run: remove the two images it built rather than pile them up.
        mesh.deployment.remove_images()
        mesh.deployment.close()


def hello(mesh: Mesh, n: int) -> dict[str, Any]:
    """web's /hello: n unary calls to greeter:50051 over one channel."""
    response = mesh.get("web", f"/hello?n={n}", timeout=60)
    assert response.status == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_calls_over_one_channel_are_balanced_per_call(example_mesh: Mesh) -> None:
    connect = example_mesh.state()["services"]["greeter"]["connect"]
    assert connect["protocol"] == "grpc"
    body = hello(example_mesh, 30)
    calls = body["calls"]
    assert all(c["ok"] for c in calls), calls
    order = [c["replica"] for c in calls]
    # One channel is one HTTP/2 connection; with AppProtocol grpc every call
    # (stream) takes the next replica in strict round robin.
    assert body["per_replica"] == {name: 10 for name in GREETERS}, order
    assert sorted(order[:3]) == list(GREETERS)
    assert order == order[:3] * 10
    assert body["resolved"] == [connect["vip"]]


def test_a_grpc_error_status_reaches_the_client(example_mesh: Mesh) -> None:
    response = example_mesh.get("web", "/fail?code=NOT_FOUND", timeout=30)
    assert response.status == 200, response.text
    got = response.json()
    assert got["ok"] is False
    assert got["code"] == "NOT_FOUND", got
    replica = got["trailing_metadata"].get("x-replica")
    assert replica in GREETERS, got
    assert got["details"] == f"{replica} failed the call as asked (NOT_FOUND)"


def test_grpc_mode_counts_every_call_as_a_request(example_mesh: Mesh) -> None:
    before = example_mesh.stats("greeter")
    body = hello(example_mesh, 30)
    assert all(c["ok"] for c in body["calls"]), body

    def counted() -> Any:
        after = example_mesh.stats("greeter")
        return after if after.request_count >= before.request_count + 30 else None

    after = example_mesh.wait_until(counted, timeout=10, message="30 more gRPC requests counted")
    assert after.request_count >= 30
    assert after.http_2xx >= before.http_2xx + 30
    # Calls are streams on pooled connections, not a connection each.
    assert after.new_connections - before.new_connections < 30
