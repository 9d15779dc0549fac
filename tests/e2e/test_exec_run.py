"""`meshlocal exec` and `meshlocal run` against a real mesh (one per module).

The `oneoff` workspace: api (busybox httpd, 2 replicas, Service Connect),
web (a client without a port, 2 replicas, GREETING=hello) and bare (an image
with busybox as /busybox and no /bin/sh, not a client).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlocal.runtime import labels as L

from .conftest import (
    MESHLOCAL,
    cli_env,
    copy_workspace,
    failed,
    leftovers,
    ok,
    project_of,
    run_cli,
    wait_for,
)


@pytest.fixture(scope="module")
def ws(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[Path]:
    workspace = copy_workspace(tmp_path_factory, "oneoff")
    try:
        ok(run_cli(workspace, "up", "-d", "--timeout", "120"))
        yield workspace
    finally:
        run_cli(workspace, "down", "--rmi")
        assert leftovers(docker_client, project_of(workspace)) == []


def cli(ws: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Never the test runner's stdin: a worker's stdin may be its link to the controller."""
    return subprocess.run(
        [str(MESHLOCAL), "-C", str(ws), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        check=False,
    )


def state(ws: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(ok(run_cli(ws, "ps", "--json")).stdout)
    return result


def one_offs(client: Any, project: str) -> list[str]:
    """Containers of `meshlocal run` (holders and commands), any state."""
    rows = client.api.containers(all=True, filters={"label": f"{L.PROJECT}={project}"})
    return [
        str(r["Names"][0]).lstrip("/")
        for r in rows
        if (r.get("Labels") or {}).get(L.ROLE) in (L.Role.RUN.value, L.Role.RUN_COMMAND.value)
    ]


# -- exec ---------------------------------------------------------------------------------


def test_exec_returns_output_and_exit_status(ws: Path) -> None:
    proc = cli(ws, "exec", "web", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "hi\n"
    assert proc.stderr == "oops\n"
    piped = subprocess.run(
        [str(MESHLOCAL), "-C", str(ws), "exec", "web", "--", "sh"],
        input="echo $GREETING from $COPILOT_SERVICE_NAME\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        check=False,
    )
    assert (piped.returncode, piped.stdout) == (0, "hello from web\n"), piped.stderr


def test_exec_into_replica_two(ws: Path) -> None:
    proc = ok(cli(ws, "exec", "web", "-n", "2", "--", "hostname"))
    assert proc.stdout.strip().endswith("-web-2")
    first = ok(cli(ws, "exec", "web", "--", "hostname"))
    assert first.stdout.strip().endswith("-web-1")


def test_exec_unknown_replica_or_service(ws: Path) -> None:
    stderr = failed(cli(ws, "exec", "web", "-n", "7", "--", "true"))
    assert "no replica web-7 runs in environment test" in stderr
    assert "web-1, web-2" in stderr
    stderr = failed(cli(ws, "exec", "nope"))
    assert 'no service "nope"' in stderr
    assert "api, bare, web" in stderr


def test_exec_in_an_image_without_a_shell(ws: Path) -> None:
    proc = cli(ws, "exec", "bare")
    stderr = failed(proc)
    assert proc.returncode == 1
    assert "the image of bare has no /bin/sh" in stderr
    assert "meshlocal exec bare -- /busybox" in stderr
    stderr = failed(cli(ws, "exec", "bare", "--", "nope"))
    assert "has no nope on its PATH" in stderr
    named = ok(cli(ws, "exec", "bare", "--", "/busybox", "echo", "named"))
    assert named.stdout == "named\n"


def test_exec_through_a_pseudo_terminal(ws: Path) -> None:
    """A shell on a TTY: raw mode, the keys pass, and the terminal is restored after."""
    output = _on_a_terminal(ws, ["exec", "web"], b"echo $((6*7)); tty\n", b"42", exit_code=7)
    assert b"42" in output
    assert b"/dev/pts/" in output  # the command had a terminal of its own


def test_run_through_a_pseudo_terminal(ws: Path, docker_client: Any) -> None:
    """`run` on a TTY: the one-off's shell gets a terminal, keys pass, the terminal is restored."""
    # The typed line is echoed as typed: "web" only comes from the variable.
    typed = b"echo $((6*7)); tty; echo $COPILOT_SERVICE_NAME\n"
    output = _on_a_terminal(ws, ["run", "web", "--", "sh"], typed, b"web", exit_code=5)
    assert b"42" in output and b"/dev/pts/" in output  # the one-off had a terminal of its own
    wait_for("the one-off removed", lambda: one_offs(docker_client, project_of(ws)) == [], 30)


def _on_a_terminal(ws: Path, args: list[str], typed: bytes, until: bytes, exit_code: int) -> bytes:
    """`meshlocal ARGS` on a pseudo-terminal: wait for the shell's prompt, type `typed`,
    read until `until`, exit with `exit_code`; the output. The local terminal must come
    back from raw mode."""
    master, slave = pty.openpty()
    cooked = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [str(MESHLOCAL), "-C", str(ws), *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli_env(),
        start_new_session=True,
    )
    output = b""
    try:
        # The shell's prompt first: it reads what is typed from then on.
        output = _read_until(master, b"# ", 60)
        os.write(master, typed)
        output += _read_until(master, until, 15)
        os.write(master, f"exit {exit_code}\n".encode())
        assert proc.wait(timeout=60) == exit_code, output
    finally:
        if proc.poll() is None:
            proc.kill()
        output += _drain(master)
        restored = termios.tcgetattr(slave)
        os.close(master)
        os.close(slave)
    assert restored[3] == cooked[3], "the local terminal stayed in raw mode"
    return output


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} in {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def _drain(fd: int) -> bytes:
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


# -- run ----------------------------------------------------------------------------------


def test_run_is_a_service_connect_client_of_its_service(ws: Path, docker_client: Any) -> None:
    mesh = state(ws)
    vip = mesh["services"]["api"]["connect"]["vip"]
    sd = sorted(r["address"] for r in mesh["services"]["api"]["replicas"])
    script = (
        "nslookup api; nslookup api.test.oneoff.local; wget -qO- http://api; "
        "echo svc=$COPILOT_SERVICE_NAME greeting=$GREETING extra=$EXTRA"
    )
    proc = ok(cli(ws, "run", "web", "-e", "EXTRA=1", "--", "sh", "-c", script))
    _, _, sc_answer = proc.stdout.partition("Name:\tapi\n")
    assert f"Address: {vip}" in sc_answer.split("Name:")[0], proc.stdout
    for address in sd:
        assert f"Address: {address}" in proc.stdout
    assert "api oneoff-" in proc.stdout  # api's httpd answered through the endpoint
    assert "svc=web greeting=hello extra=1" in proc.stdout
    assert one_offs(docker_client, project_of(ws)) == []
    # bare is no client: the same name is NXDOMAIN from its one-off.
    outsider = cli(ws, "run", "bare", "--", "/busybox", "nslookup", "api")
    assert outsider.returncode != 0
    assert "NXDOMAIN" in outsider.stdout + outsider.stderr


def test_run_returns_the_exit_status_and_leaves_nothing(ws: Path, docker_client: Any) -> None:
    project = project_of(ws)
    proc = cli(ws, "run", "web", "--", "sh", "-c", "echo out; exit 5")
    assert (proc.returncode, proc.stdout) == (5, "out\n"), proc.stderr
    assert one_offs(docker_client, project) == []
    stderr = failed(cli(ws, "run", "bare", "--", "nope"))
    assert "the image of bare has no nope on its PATH" in stderr
    assert one_offs(docker_client, project) == []
    stderr = failed(cli(ws, "run", "nope", "--", "true"))
    assert 'no service "nope"' in stderr
    assert one_offs(docker_client, project) == []


def test_run_is_no_replica_gets_no_traffic_and_goes_on_ctrl_c(ws: Path, docker_client: Any) -> None:
    """A one-off of api serving on api's port: never in ps, DNS or the endpoint's rotation."""
    project = project_of(ws)
    serve = "mkdir -p /w && echo one-off-page > /w/index.html && exec httpd -f -p 80 -h /w"
    proc = subprocess.Popen(
        [str(MESHLOCAL), "-C", str(ws), "run", "api", "--", "sh", "-c", serve],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        runs = wait_for("the one-off in ps", lambda: state(ws)["runs"], 30, interval=0.3)
        assert [r["service"] for r in runs] == ["api"]
        address = runs[0]["address"]
        mesh = state(ws)
        replicas = mesh["services"]["api"]["replicas"]
        assert len(replicas) == 2
        assert address not in [r["address"] for r in replicas]
        table = ok(run_cli(ws, "ps")).stdout
        assert "api-3" not in table
        # Listed as what it is: a client of api, never in rotation.
        row = re.search(r"^.*api \(run [0-9a-f]{12}\).*$", table, re.M)
        assert row is not None and address in row.group(0) and "client" in row.group(0), table
        script = (
            "nslookup api.test.oneoff.local; "
            "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://api; done"
        )
        seen = ok(cli(ws, "exec", "web", "--", "sh", "-c", script)).stdout
        assert address not in seen
        assert "one-off-page" not in seen
        assert seen.count("api oneoff-") == 10
        assert len(one_offs(docker_client, project)) == 2  # holder and command
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Interrupted (Ctrl-C)" in err
    assert "Traceback" not in err
    assert one_offs(docker_client, project) == []
    wait_for("the one-off out of ps", lambda: not state(ws)["runs"], 15, interval=0.3)


def test_down_removes_a_one_off_left_behind(ws: Path, docker_client: Any) -> None:
    """Killed without a chance to clean up: `down` finds it by label. Runs last here."""
    project = project_of(ws)
    proc = subprocess.Popen(
        [str(MESHLOCAL), "-C", str(ws), "run", "web", "--", "sleep", "300"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        wait_for("the one-off", lambda: len(one_offs(docker_client, project)) == 2, 30, 0.3)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert len(one_offs(docker_client, project)) == 2
    down = ok(run_cli(ws, "down"))
    assert "-run-" in down.stderr
    assert one_offs(docker_client, project) == []
