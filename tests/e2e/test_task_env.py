"""A replica's environment as ECS gives it, and `up SERVICE...` on a partly broken workspace.

One mesh: the `single` workspace (an LBWS) plus a Worker Service that
subscribes to a topic and a service whose manifest is broken.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    container_of,
    copy_workspace,
    failed,
    leftovers,
    ok,
    project_of,
    run_cli,
    sh,
)

pytestmark = pytest.mark.docker

WORKER = """\
name: worker
type: Worker Service
image:
  location: ${BUSYBOX_IMAGE}
command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
subscribe:
  topics:
    - name: orders
      service: web
    - name: refunds
      service: web
      queue: true
storage:
  volumes:
    scratch:
      path: /var/scratch
      efs: true
publish:
  topics:
    - name: receipts
variables:
  COPILOT_SERVICE_NAME: renamed
  FLAG: on
"""
BROKEN = """\
name: broken
type: Backend Service
image:
  location: ${BUSYBOX_IMAGE}
  port: 99999
"""


def _env(client: Any, container: str) -> dict[str, str]:
    code, out = sh(client, container, "env")
    assert code == 0, out
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_up_named_services_with_a_broken_other_and_their_environment(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> None:
    ws: Path = copy_workspace(tmp_path_factory, "single")
    for name, text in (("worker", WORKER), ("broken", BROKEN)):
        (ws / "copilot" / name).mkdir()
        (ws / "copilot" / name / "manifest.yml").write_text(text)
    web_manifest = ws / "copilot" / "web" / "manifest.yml"
    # The topics the worker subscribes to: `up` checks they exist, as `copilot deploy` does.
    web_manifest.write_text(
        web_manifest.read_text() + "\npublish:\n  topics:\n    - name: orders\n"
        "    - name: refunds\n"
    )
    (ws / "copilot" / ".meshlocal.yml").write_text("region: eu-west-3\n")
    project = project_of(ws)
    try:
        # No names: refused, every error listed, and how to run the others.
        stderr = failed(run_cli(ws, "up", "-d", "--timeout", "60"))
        assert "copilot/broken/manifest.yml:5:9: error: image.port: 99999" in stderr
        assert "`meshlocal up web worker` runs them" in stderr
        assert leftovers(docker_client, project) == []

        proc = ok(run_cli(ws, "up", "-d", "web", "worker", "--timeout", "120"))
        assert "service broken is not named and its manifest is broken" in proc.stderr
        port = re.search(r"http://127\.0\.0\.1:(\d+)", proc.stdout + proc.stderr)
        assert port is not None, proc.stdout + proc.stderr

        web = _env(docker_client, container_of(docker_client, project, "web"))
        assert web["COPILOT_APPLICATION_NAME"] == "single"
        assert web["COPILOT_ENVIRONMENT_NAME"] == "test"
        assert web["COPILOT_SERVICE_NAME"] == "web"
        assert web["COPILOT_SERVICE_DISCOVERY_ENDPOINT"] == "test.single.local"
        assert web["COPILOT_LB_DNS"] == f"localhost:{port.group(1)}"
        assert web["AWS_REGION"] == web["AWS_DEFAULT_REGION"] == "eu-west-3"
        assert web["AWS_EXECUTION_ENV"] == "AWS_ECS_FARGATE"
        assert "COPILOT_QUEUE_URI" not in web

        worker = _env(docker_client, container_of(docker_client, project, "worker"))
        account = "123456789012"
        # The local SQS's own URL for the queue (docs/pubsub.md).
        emulator = worker["AWS_ENDPOINT_URL_SQS"]
        assert re.fullmatch(r"http://[\d.]+:4566", emulator), emulator
        assert worker["COPILOT_QUEUE_URI"] == f"{emulator}/{account}/single-test-worker-EventsQueue"
        assert worker["COPILOT_SNS_TOPIC_ARNS"] == (
            f'{{"receipts":"arn:aws:sns:eu-west-3:{account}:single-test-worker-receipts"}}'
        )
        assert worker["COPILOT_TOPIC_QUEUE_URIS"] == (
            f'{{"webRefundsEventsQueue":"{emulator}/'
            f'{account}/single-test-worker-webrefundsEventsQueue"}}'
        )
        assert worker["COPILOT_MOUNT_POINTS"] == '{"scratch":"/var/scratch"}'
        assert worker["COPILOT_SERVICE_NAME"] == "renamed"  # the manifest's comes last
        assert worker["FLAG"] == "on"
        assert "COPILOT_LB_DNS" not in worker

        # `up web` on the running mesh keeps the worker running, and its queues.
        ok(run_cli(ws, "up", "-d", "web", "--timeout", "120"))
        code, out = sh(
            docker_client,
            container_of(docker_client, project, "worker"),
            f"wget -q -O - '{emulator}/_meshlocal/stats'",
        )
        assert code == 0 and "single-test-worker-webrefundsEventsQueue" in out, out
    finally:
        run_cli(ws, "down", "--rmi", timeout=120)
    assert leftovers(docker_client, project) == []
