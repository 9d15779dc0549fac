"""The environment every container gets, in Copilot's formats and ECS's order.

Sources: internal/pkg/template/templates/workloads/partials/cf/
envvars-common.yml, envvars-container.yml, sidecars.yml; the golden stacks
under internal/pkg/deploy/cloudformation/stack/testdata/workloads/.
"""

from __future__ import annotations

import json
from pathlib import Path

from meshlocal.manifest import check, load_environment
from meshlocal.naming import NamingModel

from .conftest import MakeWorkspace

IMAGE = "image:\n  location: busybox:latest\n"


def naming(root: Path) -> NamingModel:
    return NamingModel(load_environment(root, None, {}))


def test_every_container_gets_the_common_and_agent_variables(make_ws: MakeWorkspace) -> None:
    root = make_ws({"api": "type: Backend Service\n" + IMAGE + "  port: 80\n"})
    env = naming(root).env_vars("api")
    assert env["COPILOT_APPLICATION_NAME"] == "demo"
    assert env["COPILOT_ENVIRONMENT_NAME"] == "test"
    assert env["COPILOT_SERVICE_NAME"] == "api"
    assert env["COPILOT_SERVICE_DISCOVERY_ENDPOINT"] == "test.demo.local"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_EXECUTION_ENV"] == "AWS_ECS_FARGATE"
    # none of the conditional ones
    for name in ("COPILOT_LB_DNS", "COPILOT_SNS_TOPIC_ARNS", "COPILOT_QUEUE_URI",
                 "COPILOT_TOPIC_QUEUE_URIS", "COPILOT_MOUNT_POINTS"):  # fmt: skip
        assert name not in env


def test_region_comes_from_meshlocal_settings(make_ws: MakeWorkspace) -> None:
    root = make_ws({"api": "type: Backend Service\n" + IMAGE})
    (root / "copilot" / ".meshlocal.yml").write_text("region: eu-west-3\n")
    env = naming(root).env_vars("api")
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-3"


def test_lb_dns_only_where_copilot_has_an_alb_listener(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "web": "type: Load Balanced Web Service\n" + IMAGE + "  port: 80\nhttp:\n  path: /\n",
            "nlb": "type: Load Balanced Web Service\n" + IMAGE + "  port: 80\nhttp: false\n"
            "nlb:\n  port: 80/tcp\n",
            "api": "type: Backend Service\n" + IMAGE + "  port: 80\nhttp:\n  path: /api\n",
            "plain": "type: Backend Service\n" + IMAGE + "  port: 80\n",
            "worker": "type: Worker Service\n" + IMAGE,
        }
    )
    n = naming(root)
    assert n.env_vars("web", lb_dns="localhost:8080")["COPILOT_LB_DNS"] == "localhost:8080"
    assert n.env_vars("api", lb_dns="localhost:8080")["COPILOT_LB_DNS"] == "localhost:8080"
    for name in ("nlb", "plain", "worker"):
        assert "COPILOT_LB_DNS" not in n.env_vars(name, lb_dns="localhost:8080")


def test_sns_topic_arns_as_copilot_writes_them(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "orders": "type: Backend Service\n" + IMAGE + "publish:\n  topics:\n"
            "    - name: customers\n    - name: mytopic\n      fifo: true\n"
        }
    )
    value = naming(root).env_vars("orders")["COPILOT_SNS_TOPIC_ARNS"]
    # rdws-prod.stack.yml's shape: keys sorted, no spaces, `.fifo` on FIFO topics
    assert value == (
        '{"customers":"arn:aws:sns:us-east-1:123456789012:demo-test-orders-customers",'
        '"mytopic.fifo":"arn:aws:sns:us-east-1:123456789012:demo-test-orders-mytopic.fifo"}'
    )


def test_worker_queue_uris(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "worker": "type: Worker Service\n" + IMAGE + "subscribe:\n  topics:\n"
            "    - name: events\n      service: orders\n"
            "    - name: order-events\n      service: api-svc\n      queue: true\n"
            "    - name: giveaway\n      service: api-svc\n      queue:\n        fifo: true\n",
            "plainworker": "type: Worker Service\n" + IMAGE + "subscribe:\n  queue:\n"
            "    fifo: true\n",
            "orders": "type: Backend Service\n" + IMAGE + "publish:\n  topics:\n"
            "    - name: events\n",
            "api-svc": "type: Backend Service\n" + IMAGE + "publish:\n  topics:\n"
            "    - name: order-events\n    - name: giveaway\n      fifo: true\n",
        }
    )
    n = naming(root)
    env = n.env_vars("worker")
    base = "https://sqs.us-east-1.amazonaws.com/123456789012/demo-test-worker-"
    assert env["COPILOT_QUEUE_URI"] == base + "EventsQueue"
    assert json.loads(env["COPILOT_TOPIC_QUEUE_URIS"]) == {
        "apisvcOrdereventsEventsQueue": base + "apisvcordereventsEventsQueue",
        "apisvcGiveawayfifoEventsQueue": base + "apisvcgiveawayfifoEventsQueue.fifo",
    }
    other = n.env_vars("plainworker")
    # Without subscribe.topics Copilot renders no queue settings (convertSubscribe
    # returns nil): the EventsQueue is a standard queue.
    assert other["COPILOT_QUEUE_URI"].endswith("/demo-test-plainworker-EventsQueue")
    assert "COPILOT_TOPIC_QUEUE_URIS" not in other
    assert "AWS_ENDPOINT_URL_SQS" not in other


def test_mount_points_json(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "api": "type: Backend Service\n" + IMAGE + "storage:\n  volumes:\n"
            "    persistence:\n      path: /etc/scratch\n      efs: true\n"
            "    empty:\n      efs: false\n",
        }
    )
    env = naming(root).env_vars("api")
    assert env["COPILOT_MOUNT_POINTS"] == '{"persistence":"/etc/scratch"}'


def test_user_variables_replace_copilot_common_ones_but_not_mount_points(
    make_ws: MakeWorkspace,
) -> None:
    # Copilot writes the manifest's variables after envvars-common and before
    # COPILOT_MOUNT_POINTS; ECS keeps the last value of a repeated name.
    root = make_ws(
        {
            "api": "type: Backend Service\n" + IMAGE + "variables:\n"
            "  COPILOT_SERVICE_NAME: other\n  AWS_REGION: ap-south-1\n"
            "  COPILOT_MOUNT_POINTS: mine\n  FLAG: on\n"
            "storage:\n  volumes:\n    data:\n      path: /data\n"
        }
    )
    env = naming(root).env_vars("api")
    assert env["COPILOT_SERVICE_NAME"] == "other"
    assert env["AWS_REGION"] == "ap-south-1"
    assert env["COPILOT_MOUNT_POINTS"] == '{"data":"/data"}'
    assert env["FLAG"] == "on"  # YAML 1.2: a string, exactly as written


def test_sidecars_get_the_common_variables_and_their_own(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "api": "type: Backend Service\n" + IMAGE + "  port: 80\n"
            "publish:\n  topics:\n    - name: t1\n"
            "sidecars:\n  proxy:\n    image: busybox:latest\n    variables:\n"
            "      COPILOT_ENVIRONMENT_NAME: mine\n"
            "    mount_points:\n      - source_volume: data\n        path: /var/data\n"
            "storage:\n  volumes:\n    data:\n      path: /data\n"
        }
    )
    spec = load_environment(root, None, {})
    n = NamingModel(spec)
    sidecar = spec.service("api").sidecars[0]
    env = n.sidecar_env_vars("api", sidecar)
    assert env["COPILOT_SERVICE_NAME"] == "api"
    assert env["COPILOT_ENVIRONMENT_NAME"] == "mine"
    assert "COPILOT_SNS_TOPIC_ARNS" in env
    assert env["COPILOT_MOUNT_POINTS"] == '{"data":"/var/data"}'
    assert env["AWS_EXECUTION_ENV"] == "AWS_ECS_FARGATE"


def test_redefining_a_copilot_variable_is_accepted_with_a_warning(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {"api": "type: Backend Service\n" + IMAGE + "variables:\n  COPILOT_SERVICE_NAME: x\n"}
    )
    report = check(root, None, {})
    assert report.ok
    [note] = [n for n in report.notes if n.kind == "warning"]
    assert note.message == (
        "variables.COPILOT_SERVICE_NAME: replaces the value Copilot sets in every container"
    )
    assert note.location is not None and note.location.line == 5


def test_queue_urls_and_sdk_endpoints_with_the_local_emulator(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "worker": "type: Worker Service\n" + IMAGE + "subscribe:\n  topics:\n"
            "    - name: events\n      service: orders\n      queue:\n        fifo: true\n"
            "variables:\n  AWS_ENDPOINT_URL_SQS: http://mine:1\n"
            "sidecars:\n  nginx:\n    image: nginx\n",
            "orders": "type: Backend Service\n" + IMAGE + "publish:\n  topics:\n"
            "    - name: events\n      fifo: true\n",
        }
    )
    spec = load_environment(root, None, {})
    endpoint = "http://172.18.128.1:4566"
    n = NamingModel(spec, aws_endpoint=endpoint)
    env = n.env_vars("worker")
    base = f"{endpoint}/123456789012/demo-test-worker-"
    assert env["COPILOT_QUEUE_URI"] == base + "EventsQueue"
    assert json.loads(env["COPILOT_TOPIC_QUEUE_URIS"]) == {
        "ordersEventsfifoEventsQueue": base + "orderseventsfifoEventsQueue.fifo"
    }
    assert env["AWS_ENDPOINT_URL_SNS"] == env["AWS_ENDPOINT_URL"] == endpoint
    assert env["AWS_ENDPOINT_URL_SQS"] == "http://mine:1"  # the manifest's wins
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("meshlocal", "meshlocal")
    keys = list(env)
    # after the agent's variables, before the manifest's
    assert keys.index("AWS_REGION") < keys.index("AWS_ENDPOINT_URL_SNS")
    sidecar = n.sidecar_env_vars("worker", spec.service("worker").sidecars[0])
    assert sidecar["AWS_ENDPOINT_URL_SQS"] == endpoint
    assert sidecar["COPILOT_QUEUE_URI"] == base + "EventsQueue"
    # the plan's names, one source of truth
    assert {q.name for q in n.pubsub.queues_of("worker")} == {
        "demo-test-worker-EventsQueue",
        "demo-test-worker-orderseventsfifoEventsQueue.fifo",
    }
    publisher = NamingModel(spec, aws_endpoint=endpoint).env_vars("orders")
    assert json.loads(publisher["COPILOT_SNS_TOPIC_ARNS"]) == {
        "events.fifo": "arn:aws:sns:us-east-1:123456789012:demo-test-orders-events.fifo"
    }
    assert publisher["AWS_ENDPOINT_URL_SNS"] == endpoint
    without = NamingModel(spec).env_vars("worker")
    assert without["COPILOT_QUEUE_URI"] == (
        "https://sqs.us-east-1.amazonaws.com/123456789012/demo-test-worker-EventsQueue"
    )
    assert not {"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SNS", "AWS_ACCESS_KEY_ID"} & set(without)
