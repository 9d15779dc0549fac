"""The Service Connect AppProtocol: taskdef_overrides on the port mapping Copilot
renders for Service Connect, and copilot/.meshlocal.yml `services.NAME.app_protocol`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshlocal.cli.app import main
from meshlocal.errors import ManifestError
from meshlocal.manifest import check, find_workspace, load_environment
from meshlocal.manifest.validate import Report
from meshlocal.naming import AppProtocol, NamingModel

from .conftest import MakeWorkspace

API = "name: api\ntype: Backend Service\nimage:\n  location: busybox:latest\n  port: 80\n"
CONNECT = "network:\n  connect: true\n"


def rule(path: str, value: str) -> str:
    return f"  - path: {path}\n    value: {value}\n"


def overrides(*rules: str) -> str:
    return "taskdef_overrides:\n" + "".join(rules)


def report(make_ws: MakeWorkspace, body: str, **kw: object) -> tuple[Path, Report]:
    root = make_ws({"api": API + CONNECT + body}, **kw)
    return root, check(root, None, {})


def warnings(rep: Report) -> list[str]:
    return [n.message for n in rep.notes if n.kind == "warning"]


def protocol_of(rep: Report, service: str = "api") -> AppProtocol:
    ep = NamingModel(rep.spec).endpoint_of(service)
    assert ep is not None
    return ep.protocol


# -- taskdef_overrides ----------------------------------------------------------------


def test_app_protocol_on_the_main_container(make_ws: MakeWorkspace) -> None:
    _, rep = report(
        make_ws, overrides(rule("ContainerDefinitions[0].PortMappings[0].AppProtocol", "http"))
    )
    assert rep.ok and warnings(rep) == []
    api = rep.spec.service("api")
    assert api.app_protocol == "http"
    assert protocol_of(rep) is AppProtocol.HTTP
    # the one override meshlocal acts on is no longer "not emulated"
    assert "taskdef_overrides" not in api.not_emulated


def test_no_override_is_tcp(make_ws: MakeWorkspace) -> None:
    _, rep = report(make_ws, "")
    assert rep.spec.service("api").app_protocol is None
    assert protocol_of(rep) is AppProtocol.TCP


def test_a_port_mapping_map_with_app_protocol(make_ws: MakeWorkspace) -> None:
    body = (
        "taskdef_overrides:\n"
        "  - path: ContainerDefinitions[0].PortMappings[0]\n"
        "    value:\n"
        "      ContainerPort: 80\n"
        "      AppProtocol: grpc\n"
    )
    _, rep = report(make_ws, body)
    assert rep.ok
    api = rep.spec.service("api")
    assert api.app_protocol == "grpc"
    # the rule sets more than AppProtocol: that part only matters on AWS
    assert "taskdef_overrides" in api.not_emulated


def test_other_rules_stay_not_emulated_and_the_last_app_protocol_wins(
    make_ws: MakeWorkspace,
) -> None:
    _, rep = report(
        make_ws,
        overrides(
            rule("ContainerDefinitions[0].PortMappings[0].AppProtocol", "http"),
            rule("ContainerDefinitions[0].Ulimits[-].Name", "nofile"),
            rule("ContainerDefinitions[0].PortMappings[0].AppProtocol", "http2"),
        ),
    )
    assert rep.ok
    api = rep.spec.service("api")
    assert api.app_protocol == "http2"  # rules apply in order
    assert "taskdef_overrides" in api.not_emulated


def test_the_target_port_is_the_second_mapping_when_it_sorts_after_image_port(
    make_ws: MakeWorkspace,
) -> None:
    # image.port 80 and http.target_port 8081 on the main container: PortMappings
    # are [80, 8081], so Service Connect's mapping is PortMappings[1].
    http = "http:\n  path: /\n  target_port: 8081\n"
    _, rep = report(
        make_ws,
        http + overrides(rule("ContainerDefinitions[0].PortMappings[1].AppProtocol", "http")),
    )
    assert rep.ok and warnings(rep) == []
    assert rep.spec.service("api").app_protocol == "http"
    _, wrong = report(
        make_ws,
        http + overrides(rule("ContainerDefinitions[0].PortMappings[0].AppProtocol", "http")),
    )
    assert wrong.spec.service("api").app_protocol is None
    assert len(warnings(wrong)) == 1 and "PortMappings[1]" in warnings(wrong)[0]


SIDECARS = (
    "http:\n  path: /\n  target_container: envoy\n"
    "sidecars:\n"
    "  envoy:\n    image: envoy:v1\n    port: '9901'\n"
    "  aaa:\n    image: busybox:latest\n    port: '5000'\n"
)
LOGGING = "logging:\n  image: fluent-bit:latest\n"
XRAY = "observability:\n  tracing: awsxray\n"


@pytest.mark.parametrize(
    ("extra", "index"),
    [
        ("", 2),  # main 0, aaa 1, envoy 2 (sidecars sorted by name)
        (LOGGING, 3),  # main 0, FireLens 1, aaa 2, envoy 3
        (LOGGING + XRAY, 4),  # main 0, FireLens 1, X-Ray 2, aaa 3, envoy 4
        # Copilot's Logging.IsEmpty() ignores retention: no FireLens container
        ("logging:\n  retention: 30\n", 2),
        ("logging: {}\n", 2),
        # Copilot upper-cases tracing before comparing
        ("observability:\n  tracing: AWSXRay\n", 3),
    ],
    ids=["sidecars", "logging", "logging-xray", "retention-only", "empty-logging", "xray-case"],
)
def test_a_sidecar_target_counts_firelens_xray_and_sorted_sidecars(
    make_ws: MakeWorkspace, extra: str, index: int
) -> None:
    path = f"ContainerDefinitions[{index}].PortMappings[0].AppProtocol"
    _, rep = report(make_ws, SIDECARS + extra + overrides(rule(path, "http")))
    assert rep.ok, [e.render() for e in rep.errors]
    assert warnings(rep) == []
    api = rep.spec.service("api")
    assert (api.target_container, api.target_port) == ("envoy", 9901)
    assert api.app_protocol == "http"
    assert protocol_of(rep) is AppProtocol.HTTP


def test_app_protocol_on_another_mapping_is_a_located_warning_and_tcp(
    make_ws: MakeWorkspace,
) -> None:
    # With logging the envoy target is ContainerDefinitions[3]; [2] is the sidecar aaa.
    wrong = "ContainerDefinitions[2].PortMappings[0].AppProtocol"
    root, rep = report(make_ws, SIDECARS + LOGGING + overrides(rule(wrong, "http")))
    assert rep.ok
    assert rep.spec.service("api").app_protocol is None
    assert protocol_of(rep) is AppProtocol.TCP
    [note] = [n for n in rep.notes if n.kind == "warning"]
    assert note.message == (
        "taskdef_overrides[0]: AppProtocol is set on ContainerDefinitions[2].PortMappings[0], "
        "but Copilot renders the Service Connect port (9901) as "
        "ContainerDefinitions[3].PortMappings[0]; ignored for Service Connect"
    )
    assert note.location is not None and note.location.line is not None
    # located at the rule's value
    text = (root / "copilot/api/manifest.yml").read_text().splitlines()
    assert text[note.location.line - 1] == "    value: http"
    assert note.location.column == 12


def test_app_protocol_on_a_service_without_service_connect_port_is_a_warning(
    make_ws: MakeWorkspace,
) -> None:
    root = make_ws(
        {
            "jobs": "type: Worker Service\nimage:\n  location: busybox:latest\n"
            + CONNECT
            + overrides(rule("ContainerDefinitions[0].PortMappings[0].AppProtocol", "http"))
        }
    )
    rep = check(root, None, {})
    assert rep.ok
    assert rep.spec.service("jobs").app_protocol is None
    assert any("this service has none; ignored" in w for w in warnings(rep))


def test_an_environment_override_replaces_the_base_list(make_ws: MakeWorkspace) -> None:
    base = overrides(rule("ContainerDefinitions[0].PortMappings[0].AppProtocol", "http"))
    body = (
        base
        + "environments:\n"
        + "  test:\n"
        + "    taskdef_overrides:\n"
        + "      - path: ContainerDefinitions[0].PortMappings[0].AppProtocol\n"
        + "        value: grpc\n"
        + "  staging:\n"
        + "    taskdef_overrides:\n"
        + "      - path: ContainerDefinitions[0].Ulimits[-].Name\n"
        + "        value: nofile\n"
    )
    root = make_ws({"api": API + CONNECT + body}, envs=("prod", "staging", "test"))
    assert load_environment(root, "test", {}).service("api").app_protocol == "grpc"
    assert load_environment(root, "prod", {}).service("api").app_protocol == "http"
    # Copilot replaces lists: staging's list drops the base's AppProtocol rule.
    staging = load_environment(root, "staging", {}).service("api")
    assert staging.app_protocol is None
    assert "taskdef_overrides" in staging.not_emulated


def test_unknown_app_protocol_is_an_error_at_its_value(make_ws: MakeWorkspace) -> None:
    root, rep = report(
        make_ws, overrides(rule("ContainerDefinitions[0].PortMappings[0].AppProtocol", "http3"))
    )
    [err] = rep.errors
    assert err.message == 'taskdef_overrides[0].value: unknown AppProtocol "http3"'
    assert err.location is not None
    assert err.location.path.resolve() == (root / "copilot/api/manifest.yml").resolve()
    assert (err.location.line, err.location.column) == (10, 12)  # `http3` in `    value: http3`
    assert err.hint and "http, http2, grpc" in err.hint
    with pytest.raises(ManifestError):
        load_environment(root, None, {})


def test_unknown_app_protocol_in_an_environment_override_points_there(
    make_ws: MakeWorkspace,
) -> None:
    body = (
        "environments:\n"
        "  test:\n"
        "    taskdef_overrides:\n"
        "      - path: ContainerDefinitions[0].PortMappings[0].AppProtocol\n"
        "        value: HTTP\n"
    )
    _, rep = report(make_ws, body)
    [err] = rep.errors
    assert err.message == 'taskdef_overrides[0].value: unknown AppProtocol "HTTP"'
    assert err.location is not None and (err.location.line, err.location.column) == (12, 16)


@pytest.mark.parametrize(
    ("path", "message", "column"),
    [
        (
            "ContainerDefinitions[0].PortMappings[0][0].AppProtocol",
            'taskdef_overrides[0].path: invalid override path segment "PortMappings[0][0]": '
            'segments must be of the form "array[0]", "array[-]" or "key"',
            11,
        ),
        (
            "Family",
            'taskdef_overrides[0].path: "Family" cannot be overridden with a custom value',
            11,
        ),
        (
            "ContainerDefinitions[1].Name",
            'taskdef_overrides[0].path: "ContainerDefinitions[1].Name" cannot be overridden '
            "with a custom value",
            11,
        ),
    ],
    ids=["segment", "family", "container-name"],
)
def test_copilot_rejects_these_override_paths(
    make_ws: MakeWorkspace, path: str, message: str, column: int
) -> None:
    _, rep = report(make_ws, overrides(rule(path, "x")))
    [err] = rep.errors
    assert err.message == message
    assert err.location is not None and (err.location.line, err.location.column) == (9, column)
    assert err.hint


@pytest.mark.parametrize(
    ("body", "message", "at"),
    [
        (
            "taskdef_overrides:\n  path: Family\n",
            "taskdef_overrides: expected a list of {path, value} rules",
            (9, 3),
        ),
        (
            "taskdef_overrides:\n  - Family\n",
            "taskdef_overrides[0]: expected a map with path and value",
            (9, 5),
        ),
        (
            "taskdef_overrides:\n  - value: http\n",
            "taskdef_overrides[0].path: required",
            (9, 5),
        ),
    ],
    ids=["not-a-list", "rule-not-a-map", "no-path"],
)
def test_malformed_overrides_are_located_errors_with_hints(
    make_ws: MakeWorkspace, body: str, message: str, at: tuple[int, int]
) -> None:
    _, rep = report(make_ws, body)
    [err] = rep.errors
    assert err.message == message
    assert err.location is not None and (err.location.line, err.location.column) == at
    assert err.hint


# -- copilot/.meshlocal.yml -------------------------------------------------------------


def test_meshlocal_config_app_protocol_wins_over_the_manifest(make_ws: MakeWorkspace) -> None:
    _, rep = report(
        make_ws,
        overrides(rule("ContainerDefinitions[0].PortMappings[0].AppProtocol", "http")),
        files={"copilot/.meshlocal.yml": "services:\n  api:\n    app_protocol: grpc\n"},
    )
    assert rep.ok
    assert rep.spec.service("api").app_protocol == "grpc"
    assert protocol_of(rep) is AppProtocol.GRPC


def test_meshlocal_config_tcp_turns_the_manifests_protocol_off(make_ws: MakeWorkspace) -> None:
    _, rep = report(
        make_ws,
        overrides(rule("ContainerDefinitions[0].PortMappings[0].AppProtocol", "http")),
        files={"copilot/.meshlocal.yml": "services:\n  api:\n    app_protocol: tcp\n"},
    )
    assert protocol_of(rep) is AppProtocol.TCP


def test_meshlocal_config_app_protocol_without_any_override(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {"api": API + CONNECT},
        files={
            "copilot/.meshlocal.yml": "environments:\n  legacy:\n    legacy_namespace: true\n"
            "services:\n  api:\n    app_protocol: http2\n"
        },
    )
    ws = find_workspace(root)
    assert ws.app_protocols == {"api": "http2"}
    spec = load_environment(root, "test", {})
    assert spec.service("api").app_protocol == "http2"


@pytest.mark.parametrize(
    ("text", "message", "at"),
    [
        (
            "services:\n  api:\n    app_protocol: http3\n",
            'unknown app_protocol "http3" for service api',
            "3:19",
        ),
        (
            "services:\n  api:\n    app_protocol: [http]\n",
            'unknown app_protocol "a mapping or list" for service api',
            "3:19",
        ),
        (
            "services:\n  api:\n    protocol: http\n",
            'unknown service setting "protocol"',
            "3:5",
        ),
        ("services:\n  api: http\n", 'service "api" settings must be a mapping', "2:8"),
        ("services: [api]\n", "services must be a mapping of names", "1:11"),
    ],
    ids=["unknown-value", "list-value", "unknown-key", "not-a-map", "services-not-a-map"],
)
def test_bad_meshlocal_config_app_protocol_is_a_located_error(
    make_ws: MakeWorkspace, capsys: pytest.CaptureFixture[str], text: str, message: str, at: str
) -> None:
    root = make_ws({"api": API + CONNECT}, files={"copilot/.meshlocal.yml": text})
    with pytest.raises(ManifestError) as info:
        find_workspace(root)
    assert info.value.message == message
    assert str(info.value.location).endswith(f"copilot/.meshlocal.yml:{at}")
    assert info.value.hint
    assert main(["-C", str(root), "validate"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f".meshlocal.yml:{at}: error: {message}" in err


# -- plan -------------------------------------------------------------------------------


def test_plan_json_shows_protocol_not_a_name_and_the_target_port(
    make_ws: MakeWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_ws(
        {
            "api": API
            + CONNECT
            + overrides(rule("ContainerDefinitions[0].PortMappings[0].AppProtocol", "http")),
            "front-end": "type: Load Balanced Web Service\n"
            "image:\n  location: busybox:latest\n  port: 80\n"
            "http:\n  path: /\n  target_container: envoy\n"
            "sidecars:\n  envoy:\n    image: envoy:v1\n    port: '9901'\n"
            "network:\n  connect:\n    alias: frontend.local\n",
        }
    )
    assert main(["-C", str(root), "plan", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_name = {s["name"]: s for s in doc["services"]}
    api, front = by_name["api"], by_name["front-end"]
    assert api["service_connect"] == {
        "client": True,
        "alias": None,
        "endpoints": [{"name": "api", "port": 80, "url": "http://api", "protocol": "http"}],
        "not_a_name": None,
    }
    assert front["service_connect"] == {
        "client": True,
        "alias": "frontend.local",
        "endpoints": [
            {
                "name": "frontend.local",
                "port": 9901,
                "url": "http://frontend.local:9901",
                "protocol": "tcp",
            }
        ],
        "not_a_name": "front-end",
    }
    # Cloud Map registers the target port (the sidecar's), not image.port
    assert (front["port"], front["target_port"]) == (80, 9901)
    assert front["service_discovery"] == {"name": "front-end.test.demo.local", "port": 9901}
    resolves = {c["service"]: {r["name"] for r in c["resolves"]} for c in doc["clients"]}
    assert "frontend.local" in resolves["api"] and "front-end" not in resolves["api"]


def test_plan_table_notes_the_replaced_name_and_tcp_balancing(
    make_ws: MakeWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_ws(
        {
            "front-end": "type: Load Balanced Web Service\n"
            "image:\n  location: busybox:latest\n  port: 8080\n"
            "network:\n  connect:\n    alias: frontend.local\n",
        }
    )
    assert main(["-C", str(root), "plan"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "http://frontend.local:8080 (tcp)" in out
    assert (
        "note: service front-end has alias frontend.local: http://front-end is not a "
        "Service Connect name; clients call http://frontend.local:8080"
    ) in out
    assert "tcp endpoints balance per connection" in out


def test_meshlocal_config_naming_no_service_is_a_warning(make_ws: MakeWorkspace) -> None:
    _, rep = report(
        make_ws,
        "",
        files={"copilot/.meshlocal.yml": "services:\n  apii:\n    app_protocol: http\n"},
    )
    assert rep.ok
    assert protocol_of(rep) is AppProtocol.TCP
    assert warnings(rep) == [
        "services.apii: no service named apii in this workspace; its app_protocol is ignored"
    ]
