"""`up --env-var-override` / `--port-override`: parsing, checks, and what replicas get.

Copilot's own reading (internal/pkg/cli/flag.go portOverrides.Set,
run_local.go fillEnvOverrides) is the reference for the syntax.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from meshlocal.agentconfig import AgentConfig
from meshlocal.deployment import Deployment
from meshlocal.errors import ServiceNotFound
from meshlocal.manifest import load_environment
from meshlocal.manifest.model import EnvironmentSpec
from meshlocal.overrides import (
    EnvOverride,
    OverrideError,
    OverrideSyntaxError,
    PortOverride,
    apply,
    check,
    parse_env_override,
    parse_port_override,
    summary,
)

WEB = """\
name: web
type: Load Balanced Web Service
http:
  path: '/'
image:
  location: busybox:latest
  port: 8080
variables:
  GREETING: manifest
"""
API = """\
name: api
type: Backend Service
image:
  location: busybox:latest
  port: 80
variables:
  GREETING: manifest
  LOG: info
secrets:
  TOKEN: /ssm/token
sidecars:
  nginx:
    image: busybox:latest
    port: 9000
    variables:
      GREETING: sidecar
"""
WORKER = """\
name: worker
type: Worker Service
image:
  location: busybox:latest
"""


def write_ws(root: Path, services: dict[str, str]) -> Path:
    (root / "copilot" / "environments" / "test").mkdir(parents=True)
    (root / "copilot" / ".workspace").write_text("application: demo\n")
    (root / "copilot" / "environments" / "test" / "manifest.yml").write_text(
        "name: test\ntype: Environment\n"
    )
    for name, text in services.items():
        (root / "copilot" / name).mkdir()
        (root / "copilot" / name / "manifest.yml").write_text(textwrap.dedent(text))
    return root


ENVIRON = {"MESHLOCAL_SECRET_TOKEN": "s3cret"}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return write_ws(tmp_path / "ws", {"web": WEB, "api": API, "worker": WORKER})


@pytest.fixture
def spec(ws: Path) -> EnvironmentSpec:
    return load_environment(ws, None, ENVIRON)


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("LOG=debug", EnvOverride("LOG", "debug")),
        ("api:LOG=debug", EnvOverride("LOG", "debug", "api")),
        ("api/nginx:LOG=debug", EnvOverride("LOG", "debug", "api", "nginx")),
        # Only the first '=' splits: the value keeps the others (and any ':').
        ("DSN=postgres://u:p@db:5432/x?a=b", EnvOverride("DSN", "postgres://u:p@db:5432/x?a=b")),
        ("web:Q=a=b=", EnvOverride("Q", "a=b=", "web")),
        ("EMPTY=", EnvOverride("EMPTY", "")),
        ("api:EMPTY=", EnvOverride("EMPTY", "", "api")),
        ("spring.profiles-active=dev", EnvOverride("spring.profiles-active", "dev")),
        ("_X=1,2", EnvOverride("_X", "1,2")),  # one override per flag: no comma splitting
    ],
)
def test_env_override_parses(text: str, want: EnvOverride) -> None:
    assert parse_env_override(text) == want


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("LOG", "has no '='"),
        ("api:LOG", "has no '='"),
        ("=debug", "is no variable name"),
        ("api:=debug", "is no variable name"),
        (":LOG=debug", "nothing before ':'"),
        ("1LOG=x", "is no variable name"),
        ("LO G=x", "is no variable name"),
        ("a:b:c=1", "'b:c' is no variable name"),
        ("api/:LOG=x", "no SERVICE or SERVICE/SIDECAR"),
        ("/nginx:LOG=x", "no SERVICE or SERVICE/SIDECAR"),
        ("api/a/b:LOG=x", "no SERVICE or SERVICE/SIDECAR"),
    ],
)
def test_env_override_syntax_errors(text: str, says: str) -> None:
    with pytest.raises(OverrideSyntaxError) as info:
        parse_env_override(text)
    assert says in info.value.message
    assert "[SERVICE[/SIDECAR]:]KEY=VALUE" in info.value.hint


NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,12}", fullmatch=True)


@given(
    key=KEYS,
    value=st.text(),
    service=st.none() | NAMES,
    sidecar=st.none() | NAMES,
)
def test_env_override_round_trips(
    key: str, value: str, service: str | None, sidecar: str | None
) -> None:
    override = EnvOverride(key, value, service, sidecar if service else None)
    assert parse_env_override(str(override)) == override


@given(st.text())
def test_env_override_parser_never_crashes(text: str) -> None:
    try:
        parsed = parse_env_override(text)
    except OverrideSyntaxError:
        return
    assert text.endswith(f"{parsed.key}={parsed.value}")


@pytest.mark.parametrize(
    ("text", "want"), [("8000:80", PortOverride(8000, 80)), ("1:65535", PortOverride(1, 65535))]
)
def test_port_override_parses(text: str, want: PortOverride) -> None:
    assert parse_port_override(text) == want


@pytest.mark.parametrize(
    "text",
    ["80", "8000:80:1", "a:80", "8000:", ":80", "-1:80", " 8000:80", "8000:\uff180", "8000-80"],
)
def test_port_override_format_errors(text: str) -> None:
    with pytest.raises(OverrideSyntaxError) as info:
        parse_port_override(text)
    assert "should be in format 8080:80" in info.value.message  # Copilot's words


@pytest.mark.parametrize("text", ["0:80", "8000:0", "70000:80", "8000:65536"])
def test_port_override_range(text: str) -> None:
    with pytest.raises(OverrideSyntaxError, match="out of range"):
        parse_port_override(text)


@given(st.integers(1, 65535), st.integers(1, 65535))
def test_port_override_round_trips(host: int, port: int) -> None:
    assert parse_port_override(str(PortOverride(host, port))) == PortOverride(host, port)


# -- checked against the environment ----------------------------------------------------------


def test_an_unknown_service_is_the_usual_no_service_error(spec: EnvironmentSpec) -> None:
    with pytest.raises(ServiceNotFound) as info:
        check(spec, [parse_env_override("nope:X=1")], [])
    assert info.value.message == 'no service "nope" in environment test of application demo'
    assert info.value.hint == "services: api, web, worker"


def test_an_unknown_sidecar_names_the_sidecars(spec: EnvironmentSpec) -> None:
    with pytest.raises(OverrideError) as info:
        check(spec, [parse_env_override("api/envoy:X=1")], [])
    assert "service api has no sidecar 'envoy'" in info.value.message
    assert "sidecars of api: nginx" in (info.value.hint or "")
    with pytest.raises(OverrideError, match="sidecars of web: none"):
        check(spec, [parse_env_override("web/x:X=1")], [])


def test_a_port_override_of_the_public_endpoint_sets_its_host_port(spec: EnvironmentSpec) -> None:
    got = check(spec, [], [PortOverride(8000, 8080)])
    assert got.public_port == 8000
    # Repeated with the same host port, or agreeing with --port: fine.
    assert check(spec, [], [PortOverride(8000, 8080)] * 2, 8000).public_port == 8000
    assert check(spec, [], []).public_port == 0


def test_a_backend_port_is_not_published(spec: EnvironmentSpec) -> None:
    with pytest.raises(OverrideError) as info:
        check(spec, [], [PortOverride(8000, 80)])
    assert "port 80 is api (Backend Service)'s" in info.value.message
    assert "only the public endpoint" in info.value.message
    assert "ports that can be overridden: 8080 (web)" in (info.value.hint or "")
    with pytest.raises(OverrideError, match="port 9000 is api"):
        check(spec, [], [PortOverride(8000, 9000)])  # a sidecar's port


def test_a_port_nobody_has(spec: EnvironmentSpec) -> None:
    with pytest.raises(OverrideError) as info:
        check(spec, [], [PortOverride(8000, 81)])
    assert "no service listens on port 81" in info.value.message
    assert "8080 (web)" in (info.value.hint or "")


def test_two_host_ports_for_the_one_public_endpoint(spec: EnvironmentSpec) -> None:
    with pytest.raises(OverrideError, match="two host ports"):
        check(spec, [], [PortOverride(8000, 8080), PortOverride(9000, 8080)])
    with pytest.raises(OverrideError, match="--port 8001 and --port-override 8000:8080"):
        check(spec, [], [PortOverride(8000, 8080)], 8001)


def test_without_a_public_endpoint_nothing_can_be_overridden(tmp_path: Path) -> None:
    spec = load_environment(write_ws(tmp_path / "b", {"worker": WORKER}), None, {})
    with pytest.raises(OverrideError) as info:
        check(spec, [], [PortOverride(8000, 80)])
    assert "no service is published on the host" in (info.value.hint or "")


# -- applied ----------------------------------------------------------------------------------


def desired_env(ws: Path, *overrides: str) -> dict[str, dict[str, str]]:
    """Container -> environment, as `up` would run them: main as SERVICE, sidecars SVC/NAME."""
    dep = Deployment(ws, environ=ENVIRON)
    dep.use_overrides([parse_env_override(o) for o in overrides], [])
    built = {s.name: ("busybox:latest", None) for s in dep.spec.services}
    out: dict[str, dict[str, str]] = {}
    for name, d in dep.desired(built, 8000).items():
        out[name] = dict(d.template.environment)
        for sc in d.template.sidecars:
            out[f"{name}/{sc.name}"] = dict(sc.environment)
    return out


def test_overrides_win_over_the_manifest_and_everything_else(ws: Path) -> None:
    plain = desired_env(ws)
    assert plain["api"]["GREETING"] == "manifest"
    assert plain["api"]["TOKEN"] == "s3cret"
    env = desired_env(
        ws,
        "api:GREETING=hi",
        "api:TOKEN=local",  # over a secret, as Copilot skips an overridden secret
        "api:COPILOT_SERVICE_NAME=renamed",
        "web:COPILOT_LB_DNS=example:1",
    )
    assert env["api"]["GREETING"] == "hi"
    assert env["api"]["TOKEN"] == "local"
    assert env["api"]["COPILOT_SERVICE_NAME"] == "renamed"
    assert env["web"]["COPILOT_LB_DNS"] == "example:1"
    # A service's prefix is its main container only, as a container name in Copilot.
    assert env["api/nginx"]["GREETING"] == "sidecar"
    assert env["web"]["GREETING"] == "manifest"
    # Everything else is untouched.
    assert {k: v for k, v in env["worker"].items()} == plain["worker"]


def test_no_prefix_reaches_every_container_and_a_prefix_wins_over_it(ws: Path) -> None:
    for order in (("api:GREETING=api", "GREETING=all"), ("GREETING=all", "api:GREETING=api")):
        env = desired_env(ws, *order, "api/nginx:ONLY=sidecar")
        assert env["api"]["GREETING"] == "api"
        assert env["api/nginx"]["GREETING"] == "all"
        assert env["web"]["GREETING"] == env["worker"]["GREETING"] == "all"
        assert env["api/nginx"]["ONLY"] == "sidecar"
        assert "ONLY" not in env["api"]
    # Repeated for one container: the last one wins.
    assert desired_env(ws, "api:X=1", "api:X=2")["api"]["X"] == "2"


def test_an_override_rolls_its_service_and_its_absence_rolls_back(ws: Path) -> None:
    def hashes(*overrides: str) -> dict[str, str]:
        dep = Deployment(ws, environ=ENVIRON)
        dep.use_overrides([parse_env_override(o) for o in overrides], [])
        built = {s.name: ("busybox:latest", None) for s in dep.spec.services}
        return {n: d.template.config_hash() for n, d in dep.desired(built, 8000).items()}

    before = hashes()
    during = hashes("web:GREETING=hi")
    assert during["web"] != before["web"]
    assert {k: v for k, v in during.items() if k != "web"} == {
        k: v for k, v in before.items() if k != "web"
    }
    assert hashes() == before


def test_apply_without_overrides_is_the_template_itself(ws: Path) -> None:
    dep = Deployment(ws, environ=ENVIRON)
    built = {s.name: ("busybox:latest", None) for s in dep.spec.services}
    template = dep.desired(built)["api"].template
    assert apply(template, []) is template


def test_use_overrides_gives_the_public_port(ws: Path) -> None:
    dep = Deployment(ws, environ=ENVIRON)
    assert dep.use_overrides([], [PortOverride(8123, 8080)]) == 8123
    assert dep.use_overrides([], [], 8124) == 8124
    assert dep.use_overrides([], []) == 0


# -- carried to `ps` --------------------------------------------------------------------------


def test_the_config_carries_them_for_ps(spec: EnvironmentSpec) -> None:
    got = check(
        spec,
        [parse_env_override("api:LOG=debug"), parse_env_override("X=1")],
        [PortOverride(8000, 8080)],
    )
    config = AgentConfig(project="p", spec=spec, desired={}, overrides=got.describe())
    back = AgentConfig.from_json(config.to_json())
    assert back.overrides == {
        "env": [
            {"target": "api", "key": "LOG", "value": "debug"},
            {"target": None, "key": "X", "value": "1"},
        ],
        "ports": [{"host": 8000, "service_port": 8080}],
    }
    assert summary(back.overrides) == (
        "overrides: api: LOG=debug; all containers: X=1; "
        "public endpoint 127.0.0.1:8000 (--port-override 8000:8080)"
    )
    # An older state file, without them: none.
    raw = json.loads(config.to_json())
    del raw["overrides"]
    assert AgentConfig.from_json(json.dumps(raw)).overrides == {}
    assert summary({"env": [], "ports": []}) is None
    assert summary(None) is None


# -- the CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port-override", "80"], "should be in format 8080:80"),
        (["--env-var-override", "LOG"], "has no '='"),
    ],
)
def test_bad_syntax_is_a_usage_error_before_anything_runs(
    tmp_path: Path, args: list[str], says: str
) -> None:
    from meshlocal.cli import cli

    # No workspace here: a usage error comes before the workspace is even looked for.
    result = CliRunner().invoke(cli, ["-C", str(tmp_path), "up", "-d", *args])
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "hint:" in result.output
