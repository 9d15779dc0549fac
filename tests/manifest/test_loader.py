"""The loader: every field the mesh uses, in each of its Copilot forms."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from meshlocal.errors import EnvironmentNotFound, ManifestError, WorkspaceNotFound
from meshlocal.manifest import check, find_workspace, load_environment, read_env_file
from meshlocal.manifest.fields import parse_duration, split_command
from meshlocal.manifest.model import ContainerHealthCheck, HttpHealthCheck, ServiceType
from meshlocal.naming import NamingModel

from .conftest import KUDOS, MakeWorkspace

BUSYBOX = "image:\n  location: busybox:latest\n"


def one(make_ws: MakeWorkspace, body: str, environ: dict[str, str] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    root = make_ws({"api": "name: api\ntype: Backend Service\n" + body}, **kw)
    return load_environment(root, None, environ or {}).service("api")


# -- workspace discovery -------------------------------------------------------


def test_find_workspace_from_a_subdirectory_like_git(make_ws: MakeWorkspace) -> None:
    root = make_ws({"api": "type: Backend Service\n" + BUSYBOX})
    deep = root / "src" / "pkg"
    deep.mkdir(parents=True)
    ws = find_workspace(deep)
    assert ws.root == root.resolve()
    assert ws.app == "demo"
    assert list(ws.service_manifests) == ["api"]
    assert list(ws.environments) == ["test"]


def test_no_workspace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceNotFound, match=r"copilot/\.workspace"):
        find_workspace(tmp_path)


def test_workspace_without_application_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "copilot").mkdir()
    (tmp_path / "copilot" / ".workspace").write_text("app: x\n")
    with pytest.raises(ManifestError) as info:
        find_workspace(tmp_path)
    assert info.value.location is not None
    assert info.value.location.path.name == ".workspace"


def test_env_may_be_left_out_with_exactly_one_environment(make_ws: MakeWorkspace) -> None:
    root = make_ws({"api": "type: Backend Service\n" + BUSYBOX})
    assert load_environment(root, None, {}).env == "test"


def test_ambiguous_env_lists_the_environments(make_ws: MakeWorkspace) -> None:
    root = make_ws({"api": "type: Backend Service\n" + BUSYBOX}, envs=("test", "prod"))
    with pytest.raises(EnvironmentNotFound) as info:
        load_environment(root, None, {})
    assert info.value.hint == "environments: prod, test"
    with pytest.raises(EnvironmentNotFound, match='no environment "qa"'):
        load_environment(root, "qa", {})


def test_pipelines_and_environments_are_not_services(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {"api": "type: Backend Service\n" + BUSYBOX},
        files={"copilot/pipelines/release/manifest.yml": "name: release\n"},
    )
    assert list(find_workspace(root).service_manifests) == ["api"]


# -- kudos ---------------------------------------------------------------------


def test_kudos_example_loads() -> None:
    spec = load_environment(KUDOS, "test", {})
    assert spec.app == "kudos"
    api, front = spec.service("api"), spec.service("front-end")
    assert (api.type, api.port, api.count, api.connect.enabled) == (
        ServiceType.BACKEND_SERVICE,
        80,
        3,
        True,
    )
    assert (front.type, front.port, front.count, front.http_path) == (
        ServiceType.LOAD_BALANCED_WEB_SERVICE,
        8080,
        2,
        "/",
    )
    assert api.build is not None
    assert api.build.dockerfile == (KUDOS / "api" / "Dockerfile").resolve()
    assert api.build.context == (KUDOS / "api").resolve()


# -- image ---------------------------------------------------------------------


def test_build_string_is_a_dockerfile_path_relative_to_the_workspace_root(
    make_ws: MakeWorkspace,
) -> None:
    svc = one(make_ws, "image:\n  build: svc/docker/Dockerfile.dev\n")
    assert svc.build is not None
    assert svc.build.dockerfile.parts[-3:] == ("svc", "docker", "Dockerfile.dev")
    assert svc.build.context == svc.build.dockerfile.parent
    assert svc.build.dockerfile.is_absolute()


def test_build_map_with_context_only_defaults_the_dockerfile(make_ws: MakeWorkspace) -> None:
    svc = one(make_ws, "image:\n  build:\n    context: svc\n    args: {A: 007, B: on}\n")
    assert svc.build is not None
    assert svc.build.dockerfile == svc.build.context / "Dockerfile"
    assert svc.build.args == {"A": "007", "B": "on"}


def test_container_healthcheck_durations(make_ws: MakeWorkspace) -> None:
    svc = one(
        make_ws,
        "image:\n  location: x\n  healthcheck:\n    command: [CMD, /bin/check]\n"
        "    interval: 1m30s\n    retries: 5\n    timeout: 2500ms\n    start_period: 0\n",
    )
    hc = svc.container_healthcheck
    assert hc is not None
    # whole seconds, truncated, as Copilot hands them to ECS (int64(d.Seconds()))
    assert (hc.command, hc.interval_s, hc.retries, hc.timeout_s, hc.start_period_s) == (
        ("CMD", "/bin/check"),
        90.0,
        5,
        2.0,
        0.0,
    )


@pytest.mark.parametrize(
    ("field", "value", "shown", "bounds"),
    [
        ("interval", "4s", "4 seconds", "5 to 300 seconds"),
        ("interval", "301s", "301 seconds", "5 to 300 seconds"),
        ("timeout", "1999ms", "1 seconds", "2 to 60 seconds"),
        ("timeout", "61s", "61 seconds", "2 to 60 seconds"),
        ("retries", "0", "0", "1 to 10"),
        ("retries", "11", "11", "1 to 10"),
        ("start_period", "5m1s", "301 seconds", "0 to 300 seconds"),
    ],
)  # fmt: skip
def test_container_healthcheck_bounds_are_ecs(
    make_ws: MakeWorkspace, field: str, value: str, shown: str, bounds: str
) -> None:
    message = f"image.healthcheck.{field}: {shown} is outside what ECS accepts ({bounds})"
    root = make_ws(
        {
            "api": "type: Backend Service\nimage:\n  location: x\n  healthcheck:\n"
            f"    command: [CMD, /bin/check]\n    {field}: {value}\n"
        }
    )
    assert [e.message for e in check(root, None, {}).errors] == [message]


@pytest.mark.parametrize(
    ("field", "value"),
    [("interval", "5s"), ("interval", "5m"), ("timeout", "2s"), ("timeout", "60s"),
     ("retries", "1"), ("retries", "10"), ("start_period", "0s"), ("start_period", "300s")],
)  # fmt: skip
def test_container_healthcheck_bounds_include_their_ends(
    make_ws: MakeWorkspace, field: str, value: str
) -> None:
    root = make_ws(
        {
            "api": "type: Backend Service\nimage:\n  location: x\n  healthcheck:\n"
            f"    command: [CMD, /bin/check]\n    {field}: {value}\n"
        }
    )
    assert check(root, None, {}).ok


# Copilot's defaults, from its source (aws/copilot-cli): NewDefaultContainerHealthCheck in
# internal/pkg/manifest/workload_ecs.go, applied to every unset field, the command
# included, by convertContainerHealthCheck in
# internal/pkg/deploy/cloudformation/stack/transformers.go (a check that sets no
# field is no check: ContainerHealthCheck.IsEmpty).
COPILOT_CONTAINER_HEALTHCHECK = ContainerHealthCheck(
    command=("CMD-SHELL", "curl -f http://localhost/ || exit 1"),
    interval_s=10.0,
    retries=2,
    timeout_s=5.0,
    start_period_s=0.0,
)
# http.healthcheck as Copilot's manifest reference documents it
# (site/content/docs/include/http-healthcheck.en.md); path and grace period are
# DefaultHealthCheckPath / DefaultHealthCheckGracePeriod in
# internal/pkg/manifest/lb_web_svc.go, the rest are the ALB's defaults, which
# Copilot leaves to the target group (templates/workloads/partials/cf/alb.yml).
COPILOT_HTTP_HEALTHCHECK = HttpHealthCheck(
    path="/",
    port=None,
    success_codes="200",
    healthy_threshold=5,
    unhealthy_threshold=2,
    interval_s=30.0,
    timeout_s=5.0,
    grace_period_s=60.0,
)


def test_container_healthcheck_defaults_are_copilots(make_ws: MakeWorkspace) -> None:
    assert ContainerHealthCheck() == COPILOT_CONTAINER_HEALTHCHECK
    # Only the command set: every other field is Copilot's default.
    svc = one(make_ws, "image:\n  location: x\n  healthcheck:\n    command: [CMD, /bin/check]\n")
    assert svc.container_healthcheck == replace(
        COPILOT_CONTAINER_HEALTHCHECK, command=("CMD", "/bin/check")
    )
    # No command: Copilot's own, curl on localhost.
    svc = one(make_ws, "image:\n  location: x\n  healthcheck:\n    retries: 4\n")
    assert svc.container_healthcheck == replace(COPILOT_CONTAINER_HEALTHCHECK, retries=4)
    # Nothing set: no health check at all.
    for empty in ("{}", "\n    command:\n    interval: null"):
        svc = one(make_ws, f"image:\n  location: x\n  healthcheck: {empty}\n")
        assert svc.container_healthcheck is None


@pytest.mark.parametrize(
    ("healthcheck", "path"),
    [("/ping", "/ping"), ("\n    path: /ping", "/ping"), ("\n    port: null", "/")],
)
def test_http_healthcheck_defaults_are_copilots(
    make_ws: MakeWorkspace, healthcheck: str, path: str
) -> None:
    assert HttpHealthCheck() == COPILOT_HTTP_HEALTHCHECK
    root = make_ws(
        {
            "web": "name: web\ntype: Load Balanced Web Service\n"
            + BUSYBOX
            + f"  port: 80\nhttp:\n  path: /\n  healthcheck: {healthcheck}\n"
        }
    )
    svc = load_environment(root, None, {}).service("web")
    assert svc.http_healthcheck == replace(COPILOT_HTTP_HEALTHCHECK, path=path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1m30s", 90.0), ("1h", 3600.0), ("250ms", 0.25), ("1.5s", 1.5), ("0", 0.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "s", "10 s", "", "1d", "-1s"])
def test_bad_durations(text: str) -> None:
    assert parse_duration(text) is None


# -- http ----------------------------------------------------------------------


def test_http_healthcheck_string_and_target_port(make_ws: MakeWorkspace) -> None:
    svc = one(
        make_ws,
        BUSYBOX + "  port: 80\nhttp:\n  path: /api\n  healthcheck: /ping\n  target_port: 8081\n",
    )
    assert svc.http_path == "/api"
    assert svc.http_healthcheck is not None and svc.http_healthcheck.path == "/ping"
    assert (svc.port, svc.target_port) == (80, 8081)


def test_target_container_sidecar_gives_the_target_port(make_ws: MakeWorkspace) -> None:
    svc = one(
        make_ws,
        BUSYBOX + "  port: 8080\nhttp:\n  path: /\n  target_container: envoy\n"
        "sidecars:\n  envoy:\n    port: '9901'\n    image: envoy:v1\n",
    )
    assert (svc.target_container, svc.target_port) == ("envoy", 9901)


def test_lbws_http_false_disables_http(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "web": "type: Load Balanced Web Service\n" + BUSYBOX + "  port: 80\nhttp: false\n"
            "nlb:\n  port: 80/tcp\n"
        }
    )
    assert load_environment(root, None, {}).service("web").http_path is None
    # and without an nlb Copilot refuses it (LoadBalancedWebServiceConfig.validate)
    bare = make_ws(
        {"web": "type: Load Balanced Web Service\n" + BUSYBOX + "  port: 80\nhttp: false\n"}
    )
    assert [e.message for e in check(bare, None, {}).errors] == [
        'must specify at least one of "http" or "nlb"'
    ]


# -- count ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "replicas"),
    [
        ("count: 4", 4),
        ("count: 0", 0),
        ("", 1),
        ("count:\n  range: 3-10\n  cpu_percentage: 70", 3),
        ("count:\n  range: {min: 2, max: 6, spot_from: 4}\n  memory_percentage: 10", 2),
        ("count:\n  spot: 5", 5),
        ("count:\n  range: 1-10\n  cpu_percentage: 70\n  memory_percentage: 30", 1),
        (
            "count:\n  range: 2-4\n  cpu_percentage:\n    value: 70\n    cooldown:\n"
            "      in: 30s\n      out: 60s",
            2,
        ),
    ],
)
def test_count_forms_give_local_replicas(make_ws: MakeWorkspace, count: str, replicas: int) -> None:
    assert one(make_ws, BUSYBOX + count + "\n").count == replicas


def test_autoscaling_fields_are_listed_as_not_emulated(make_ws: MakeWorkspace) -> None:
    svc = one(make_ws, BUSYBOX + "count:\n  range: 1-10\n  cpu_percentage: 70\n")
    assert "count.cpu_percentage" in svc.not_emulated


# -- variables, secrets, env_file ----------------------------------------------


def test_variables_reach_the_container_exactly_as_written(make_ws: MakeWorkspace) -> None:
    svc = one(
        make_ws,
        BUSYBOX
        + "variables:\n  A: on\n  B: off\n  C: yes\n  D: no\n  E: 0123\n  F: 1.10\n  G: true\n"
        "  H: ~\n  I: 1e3\n  J: '0x1F'\n  K: 0x1F\n  L: \"quoted: yes\"\n  M: .inf\n",
    )
    assert svc.variables == {
        "A": "on",
        "B": "off",
        "C": "yes",
        "D": "no",
        "E": "0123",
        "F": "1.10",
        "G": "true",
        "H": "",
        "I": "1e3",
        "J": "0x1F",
        "K": "0x1F",
        "L": "quoted: yes",
        "M": ".inf",
    }


def test_yaml11_booleans_still_work_for_bool_fields(make_ws: MakeWorkspace) -> None:
    # go-yaml v3 reads yes/no/on/off into a typed bool, so Copilot accepts `connect: yes`.
    assert one(make_ws, BUSYBOX + "network:\n  connect: yes\n").connect.enabled is True
    assert one(make_ws, BUSYBOX + "network:\n  connect: off\n").connect.enabled is False


def test_secrets_from_files_and_environment(make_ws: MakeWorkspace) -> None:
    body = (
        BUSYBOX + "secrets:\n  A: /ssm/a\n  B:\n    secretsmanager: 'db:password::'\n"
        "  C: /ssm/c\n  D:\n    from_cfn: stack-Export\n"
    )
    root = make_ws(
        {"api": "type: Backend Service\n" + body},
        files={
            "copilot/.meshlocal/secrets.env": "A=from-common\ndb:password::='quoted value'\n",
            "copilot/.meshlocal/secrets.test.env": 'export A="from-test\\n"\nstack-Export=cfn\n',
        },
    )
    svc = load_environment(root, None, {"MESHLOCAL_SECRET_C": "from-env"}).service("api")
    assert svc.secrets == {"A": "from-test\n", "B": "quoted value", "C": "from-env", "D": "cfn"}


def test_missing_secret_says_how_to_provide_it(make_ws: MakeWorkspace) -> None:
    root = make_ws({"api": "type: Backend Service\n" + BUSYBOX + "secrets:\n  GH_TOKEN: gh\n"})
    report = check(root, None, {})
    [error] = report.errors
    assert error.hint == (
        "add GH_TOKEN=... (or gh=...) to copilot/.meshlocal/secrets.test.env, "
        "or export MESHLOCAL_SECRET_GH_TOKEN=..."
    )
    assert type(error).__name__ == "SecretNotFound"


def test_from_cfn_variable_uses_the_secrets_mechanism(make_ws: MakeWorkspace) -> None:
    svc = one(
        make_ws,
        BUSYBOX + "variables:\n  DB:\n    from_cfn: demo-test-Db\n",
        environ={"MESHLOCAL_SECRET_DB": "db.local"},
    )
    assert svc.variables == {"DB": "db.local"}


def test_env_file_is_read_relative_to_the_workspace_root(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {"api": "type: Backend Service\n" + BUSYBOX + "env_file: conf/api.env\n"},
        files={"conf/api.env": '# comment\nA=1\nB="quoted" # kept\nC=\n'},
    )
    svc = load_environment(root, None, {}).service("api")
    assert svc.env_file == (root / "conf" / "api.env").resolve()
    assert read_env_file(svc.env_file) == {"A": "1", "B": '"quoted" # kept', "C": ""}


# -- command, network, sidecars ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("node server.js", ["node", "server.js"]),
        ("sh -c 'echo $HOME && sleep 1'", ["sh", "-c", "echo $HOME && sleep 1"]),
        ('python -m app --name "a b"', ["python", "-m", "app", "--name", "a b"]),
        (r"echo a\ b", ["echo", "a b"]),
    ],
)
def test_command_strings_split_like_copilot(text: str, words: list[str]) -> None:
    assert split_command(text) == words


def test_command_and_entrypoint_string_or_list(make_ws: MakeWorkspace) -> None:
    svc = one(make_ws, BUSYBOX + "command: ./run --port 80\nentrypoint: [/bin/sh, -c]\n")
    assert svc.command == ("./run", "--port", "80")
    assert svc.entrypoint == ("/bin/sh", "-c")


def test_connect_bool_and_alias(make_ws: MakeWorkspace) -> None:
    assert one(make_ws, BUSYBOX + "network:\n  connect: true\n").connect.enabled
    svc = one(make_ws, BUSYBOX + "  port: 80\nnetwork:\n  connect:\n    alias: api.local\n")
    assert (svc.connect.enabled, svc.connect.alias) == (True, "api.local")
    assert not one(make_ws, BUSYBOX).connect.enabled


def test_sidecars_and_depends_on(make_ws: MakeWorkspace) -> None:
    svc = one(
        make_ws,
        BUSYBOX + "  depends_on:\n    proxy: healthy\n"
        "sidecars:\n  proxy:\n    port: 9000/tcp\n    image:\n      build: proxy/Dockerfile\n"
        "    essential: false\n    command: envoy -c /etc/envoy.yaml\n"
        "    variables: {LEVEL: 01}\n    healthcheck:\n      command: [CMD, true]\n",
    )
    [proxy] = svc.sidecars
    assert svc.depends_on == {"proxy": "healthy"}
    assert (proxy.name, proxy.port, proxy.essential) == ("proxy", 9000, False)
    assert proxy.build is not None and proxy.build.dockerfile.parts[-2:] == ("proxy", "Dockerfile")
    assert proxy.command == ("envoy", "-c", "/etc/envoy.yaml")
    assert proxy.variables == {"LEVEL": "01"}
    assert proxy.healthcheck is not None and proxy.healthcheck.command == ("CMD", "true")


def test_worker_port_is_ignored_with_a_note(make_ws: MakeWorkspace) -> None:
    root = make_ws({"worker": "type: Worker Service\n" + BUSYBOX + "  port: 80\n"})
    report = check(root, None, {})
    assert report.ok
    assert report.spec.service("worker").port is None
    assert any("Worker Service takes no traffic" in n.message for n in report.notes)


def test_unknown_fields_are_notes_not_errors(make_ws: MakeWorkspace) -> None:
    root = make_ws({"api": "type: Backend Service\n" + BUSYBOX + "colour: blue\n"})
    report = check(root, None, {})
    assert report.ok
    [note] = [n for n in report.notes if n.kind == "warning"]
    assert note.message == "unknown field colour, ignored"
    assert note.location is not None and note.location.line == 4


# -- types ---------------------------------------------------------------------


def test_static_site_and_scheduled_job_are_skipped_not_errors(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "site": "type: Static Site\nfiles:\n  - source: public\n",
            "job": "type: Scheduled Job\n" + BUSYBOX + "on:\n  schedule: '@daily'\n",
            "api": "type: Backend Service\n" + BUSYBOX,
        }
    )
    report = check(root, None, {})
    assert report.ok
    assert [s.name for s in report.spec.services] == ["api"]
    assert {(s.name, s.type) for s in report.spec.skipped} == {
        ("site", ServiceType.STATIC_SITE),
        ("job", ServiceType.SCHEDULED_JOB),
    }
    assert all("not emulated" in s.reason for s in report.spec.skipped)


def test_legacy_namespace_from_meshlocal_config(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {"api": "type: Backend Service\n" + BUSYBOX + "  port: 80\n"},
        envs=(),
        files={"copilot/.meshlocal.yml": "environments:\n  legacy:\n    legacy_namespace: true\n"},
    )
    spec = load_environment(root, None, {})
    assert spec.environment.legacy_namespace is True
    assert spec.environment.manifest_path is None
    assert NamingModel(spec).sd_name("api") == "api.demo.local"


def test_bad_meshlocal_config_is_located(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {"api": "type: Backend Service\n" + BUSYBOX},
        files={"copilot/.meshlocal.yml": "environments:\n  test:\n    legacy: true\n"},
    )
    with pytest.raises(ManifestError) as info:
        find_workspace(root)
    assert str(info.value.location).endswith(".meshlocal.yml:3:5")


def test_secret_overrides_replace_each_other(make_ws: MakeWorkspace) -> None:
    # map[string]Secret: mergo sets the override's entry whole, so an SSM name,
    # `secretsmanager` and `from_cfn` replace each other (secretTransformer).
    root = make_ws(
        {
            "api": "type: Backend Service\n" + BUSYBOX + "secrets:\n"
            "  A: {secretsmanager: sm-a}\n  B: /ssm/b\n  C: {from_cfn: export-c}\n"
            "environments:\n  test:\n    secrets:\n"
            "      A: /ssm/a\n      B: {from_cfn: export-b}\n      C: {secretsmanager: sm-c}\n"
        },
        files={"copilot/.meshlocal/secrets.env": "/ssm/a=1\nexport-b=2\nsm-c=3\nsm-a=x\n"},
    )
    spec = load_environment(root, None, {})
    assert spec.service("api").secrets == {"A": "1", "B": "2", "C": "3"}


def test_another_environment_is_decoded_but_not_validated(make_ws: MakeWorkspace) -> None:
    # svc_deploy.go: the whole file is unmarshalled (type errors anywhere fail),
    # then only the deployed environment is validated.
    root = make_ws(
        {
            "api": "type: Backend Service\n" + BUSYBOX + "environments:\n  prod:\n"
            "    count:\n      range: 10-2\n"
        },
        envs=("test", "prod"),
    )
    assert check(root, "test", {}).ok
    assert [e.message for e in check(root, "prod", {}).errors] == [
        "count.range: min value 10 cannot be greater than max value 2"
    ]


def test_an_alias_without_a_port_is_ignored_with_a_warning(make_ws: MakeWorkspace) -> None:
    # ServiceConnectArgs.validate is a no-op; without a target port Copilot
    # makes no Service Connect server (convertServiceConnectServer): a client.
    root = make_ws(
        {
            "jobs": "type: Backend Service\n" + BUSYBOX + "network:\n  connect:\n"
            "    alias: jobs.local\n",
            "worker": "type: Worker Service\n" + BUSYBOX + "network:\n  connect:\n"
            "    alias: work.local\n",
        }
    )
    report = check(root, None, {})
    assert report.ok
    warned = sorted(n.message for n in report.notes if n.kind == "warning")
    assert warned[0].startswith('network.connect.alias "jobs.local" is ignored')
    assert warned[1].startswith('network.connect.alias "work.local" is ignored')


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "  depends_on: {proxy: complete}\nsidecars:\n  proxy:\n    image: x\n",
            "validate api container dependencies status: essential container proxy can only "
            "have status START or HEALTHY",
        ),
        (
            "sidecars:\n  a:\n    image: x\n    depends_on: {b: start}\n"
            "  b:\n    image: x\n    depends_on: {a: start}\n",
            "circular container dependency chain includes the following containers: [a b]",
        ),
        (
            "  port: 8080\nsidecars:\n  proxy:\n    image: x\n    port: 8080\n",
            'containers "api" and "proxy" are exposing the same port 8080',
        ),
        (
            "count:\n  range: 1-4\n  requests: 10\n",
            '"http" must be specified if "count.requests" or "count.response_time" are specified',
        ),
    ],
)
def test_task_rules_as_copilot(make_ws: MakeWorkspace, body: str, message: str) -> None:
    root = make_ws({"api": "type: Backend Service\n" + BUSYBOX + body})
    assert [e.message for e in check(root, None, {}).errors] == [message]


def test_depends_on_conditions_are_case_insensitive(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "api": "type: Backend Service\n" + BUSYBOX + "  depends_on: {proxy: START}\n"
            "sidecars:\n  proxy:\n    image: x\n  log:\n    image: x\n"
            "    depends_on: {proxy: Healthy}\n"
        }
    )
    svc = load_environment(root, None, {}).service("api")
    assert svc.depends_on == {"proxy": "start"}
    assert svc.sidecars[1].depends_on == {"proxy": "healthy"}


@pytest.mark.parametrize(
    ("body", "environ"),
    [('  port: "8080"\n', {}), ("  port: ${PORT}\n", {"PORT": "8080"})],
)
def test_a_number_written_as_a_string_is_refused_as_copilot_does(
    make_ws: MakeWorkspace, body: str, environ: dict[str, str]
) -> None:
    # go-yaml won't decode a !!str into uint16; an interpolated value stays a
    # !!str (interpolate.go only rewrites node.Value; aws/copilot-cli#4928).
    root = make_ws({"api": "type: Backend Service\n" + BUSYBOX + body})
    [error] = check(root, None, environ).errors
    assert error.message == "image.port: expected an integer, got '8080'"
    assert error.hint is not None and "unquoted" in error.hint


def test_a_health_check_command_must_be_a_list(make_ws: MakeWorkspace) -> None:
    # ContainerHealthCheck.Command is a []string (workload_ecs.go).
    root = make_ws(
        {
            "api": "type: Backend Service\n" + BUSYBOX + "  healthcheck:\n"
            "    command: curl -f http://localhost/ || exit 1\n"
        }
    )
    [error] = check(root, None, {}).errors
    assert error.message.startswith("image.healthcheck.command: expected a list of strings")


def test_cpu_and_memory_default_to_copilots(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {
            "api": "type: Backend Service\n" + BUSYBOX + "cpu: 1024\nmemory: 2048\n",
            "web": "type: Backend Service\n" + BUSYBOX,
        }
    )
    spec = load_environment(root, None, {})
    assert (spec.service("api").cpu, spec.service("api").memory) == (1024, 2048)
    assert (spec.service("web").cpu, spec.service("web").memory) == (256, 512)
