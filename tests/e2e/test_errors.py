"""One error story: every command's exit status and message, through the real CLI.

None of these needs a running mesh: each runs on its own copy of a
workspace (its own project), so nothing of it is on the engine, and each
command must say so, or name the unknown environment or service, with
status 1. The exit-code table of docs/cli.md is checked row by row.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import cli_env, copy_workspace, run_cli

pytestmark = pytest.mark.docker

DOCS = Path(__file__).parents[2] / "docs" / "cli.md"

# Every command that works on a running mesh, with arguments naming known services.
MESH_COMMANDS = [
    ("ps",),
    ("stats",),
    ("scale", "api=1"),
    ("logs",),
    ("logs", "api"),
    ("resolve", "api", "--from", "client"),
]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, docker_client: object) -> Path:
    """The mini workspace, never brought up."""
    return copy_workspace(tmp_path_factory, "mini")


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose api manifest breaks a Copilot rule at a known line."""
    ws = copy_workspace(tmp_path_factory, "mini")
    manifest = ws / "copilot" / "api" / "manifest.yml"
    manifest.write_text(manifest.read_text() + "\ncount: lots\n")
    return ws


@pytest.fixture(scope="module")
def closed_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A unix socket nothing listens on: DOCKER_HOST for `no engine`."""
    path = tmp_path_factory.mktemp("nodocker") / "docker.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))  # bound, never listening: connect() is refused
    yield f"unix://{path}"
    sock.close()


def explained(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """stderr of a failure meshlocal explains: the status, `error:` and no traceback."""
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    stderr = proc.stderr
    assert "Traceback" not in stderr, stderr
    assert code in (0, 2) or re.search(r"^(\S+: )?error: .+\n  hint: .+", stderr, re.M), stderr
    return stderr


# -- the exit-code table -----------------------------------------------------

ROWS = ["ok", "no-mesh", "unknown-env", "unknown-service", "manifest-error", "usage", "no-engine"]


def documented_codes() -> dict[int, str]:
    """status -> its row in docs/cli.md's exit-status table."""
    section = DOCS.read_text().split("## Exit status", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([^|]+)\|", section, re.M)
    return {int(code): text for code, text in rows}


def test_the_docs_table_lists_every_status_tested_here() -> None:
    assert set(documented_codes()) == {0, 1, 2, 3, 130, 143}


@pytest.mark.parametrize("row", ROWS)
def test_exit_code_table(
    row: str, ws: Path, broken: Path, closed_socket: str, busybox_image: str
) -> None:
    env = cli_env()
    expected: tuple[int, str]
    if row == "ok":
        args, where = ("validate",), ws
        expected = (0, "")
    elif row == "no-mesh":
        args, where = ("ps",), ws
        expected = (1, "no mesh is running for environment test")
    elif row == "unknown-env":
        args, where = ("ps", "--env", "nope"), ws
        expected = (1, 'no environment "nope"')
    elif row == "unknown-service":
        args, where = ("logs", "nope"), ws
        expected = (1, 'no service "nope"')
    elif row == "manifest-error":
        args, where = ("validate",), broken
        expected = (1, "copilot/api/manifest.yml:")
    elif row == "usage":
        args, where = ("ps", "--bogus"), ws
        expected = (2, "Error: No such option '--bogus'")
    else:
        args, where = ("ps",), ws
        env = cli_env(DOCKER_HOST=closed_socket)
        expected = (3, "no Docker engine answers at " + closed_socket)
    proc = run_cli(where, *args, env=env, timeout=60)
    stderr = explained(proc, expected[0])
    assert expected[1] in stderr, stderr
    assert expected[0] in documented_codes()


# -- the same story from every command ---------------------------------------


def test_every_mesh_command_says_no_mesh_is_running_the_same_way(ws: Path) -> None:
    messages = {}
    for args in MESH_COMMANDS:
        proc = run_cli(ws, *args, timeout=60)
        messages[args] = explained(proc)
        assert proc.stdout == "", (args, proc.stdout)
    first = messages[MESH_COMMANDS[0]]
    assert first.startswith("error: no mesh is running for environment test of "), first
    assert "hint: start it with `meshlocal up -d`" in first
    assert all(m == first for m in messages.values()), messages


@pytest.mark.parametrize(
    "args", [*MESH_COMMANDS, ("down",), ("up", "-d"), ("validate",), ("plan",)], ids=" ".join
)
def test_an_unknown_environment_is_named_with_the_known_ones(
    ws: Path, args: tuple[str, ...]
) -> None:
    stderr = explained(run_cli(ws, *args, "--env", "nope", timeout=60))
    assert 'error: no environment "nope" in application mini' in stderr
    assert "hint: environments: test" in stderr


@pytest.mark.parametrize(
    "args",
    [
        ("logs", "nope"),
        ("logs", "api", "nope"),
        ("scale", "nope=2"),
        ("resolve", "api", "--from", "nope"),
        ("up", "-d", "--replace", "nope"),
    ],
    ids=" ".join,
)
def test_an_unknown_service_is_named_with_the_known_ones(
    ws: Path, args: tuple[str, ...], busybox_image: str
) -> None:
    # busybox_image: sets BUSYBOX_IMAGE, which `up` needs to load the manifests.
    stderr = explained(run_cli(ws, *args, timeout=60))
    assert 'error: no service "nope" in environment test of application mini' in stderr
    assert "hint: services: api, client, legacy, web" in stderr


def test_logs_never_prints_nothing_with_success(ws: Path) -> None:
    for args in (("logs",), ("logs", "-f"), ("logs", "--tail", "5", "api")):
        proc = run_cli(ws, *args, timeout=60)
        assert "no mesh is running" in explained(proc), args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("resolve", "api", "--from", "api", "--type", "MX"),
            "Invalid value for '--type': 'MX' is not one of",
        ),
        (("logs", "--tail", "abc"), "'abc' is not a number of lines or `all`"),
        (("logs", "--tail", "-3"), "'-3' is not a number of lines or `all`"),
    ],
    ids=["type-MX", "tail-abc", "tail-negative"],
)
def test_a_bad_option_value_is_a_usage_error(ws: Path, args: tuple[str, ...], message: str) -> None:
    proc = run_cli(ws, *args, timeout=60)
    assert proc.returncode == 2, proc
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_down_with_nothing_to_remove_is_still_a_success(ws: Path) -> None:
    proc = run_cli(ws, "down", timeout=60)
    assert proc.returncode == 0 and "Nothing to remove" in proc.stderr, proc.stderr
