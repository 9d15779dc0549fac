"""What a failed `meshlocal up` leaves behind, per failure kind, against the real engine.

    .venv/bin/python bench/reliability/leaks.py

Each kind runs once on a fresh copy of a test workspace (tests/e2e/workspaces),
through the `meshlocal` executable as a user runs it. Containers, networks and
images labelled with the project (`meshlocal.project`) are counted before the
failing `up` and right after it, before any `down`: the difference is the leak.
Prints a Markdown table (pasted into docs/reliability.md, "Leaks after a failed up").
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from meshlocal.manifest import find_workspace
from meshlocal.runtime import images
from meshlocal.runtime import labels as L

ROOT = Path(__file__).resolve().parents[2]
WORKSPACES = ROOT / "tests" / "e2e" / "workspaces"
MESHLOCAL = Path(sys.executable).with_name("meshlocal")


@dataclass
class Outcome:
    kind: str
    command: str
    exit_code: int
    before: dict[str, int]
    after: dict[str, int]


def counts(client: Any, project: str) -> dict[str, int]:
    label = f"{L.PROJECT}={project}"
    return {
        "containers": len(client.api.containers(all=True, filters={"label": label})),
        "networks": len(client.api.networks(filters={"label": label})),
        "images": len(client.api.images(filters={"label": label})),
    }


def project_of(ws: Path) -> str:
    found = find_workspace(ws)
    return L.project_id(found.app, found.root)


def env() -> dict[str, str]:
    out = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    out.pop("MESHLOCAL_DATAPLANE", None)
    return out


def cli(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MESHLOCAL), "-C", str(ws), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env(),
        check=False,
    )


def interrupted(ws: Path, args: list[str], ready: Callable[[str], bool], sig: int) -> int:
    """Run `meshlocal ARGS`, send `sig` once `ready(line)` holds for an output line."""
    proc = subprocess.Popen(
        [str(MESHLOCAL), "-C", str(ws), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if ready(line) or time.monotonic() > deadline:
            break
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    return proc.returncode


def copy(name: str, tmp: Path) -> Path:
    dest = Path(tempfile.mkdtemp(dir=tmp)) / name
    shutil.copytree(WORKSPACES / name, dest)
    return dest


def add_broken_service(ws: Path) -> None:
    (ws / "broken").mkdir()
    (ws / "broken" / "Dockerfile").write_text(
        'ARG BUSYBOX\nFROM ${BUSYBOX}\nRUN echo "compiling the broken service" && exit 7\n'
    )
    (ws / "copilot" / "broken").mkdir()
    (ws / "copilot" / "broken" / "manifest.yml").write_text(
        "name: broken\ntype: Backend Service\nimage:\n  build:\n"
        "    dockerfile: broken/Dockerfile\n    context: broken\n"
        "    args:\n      BUSYBOX: ${BUSYBOX_IMAGE}\n  port: 80\n"
    )


def run_kind(client: Any, tmp: Path, kind: str) -> Outcome:
    if kind == "build of one service fails":
        ws = copy("rebuild", tmp)
        add_broken_service(ws)
        before = counts(client, project_of(ws))
        code = cli(ws, "up", "-d").returncode
        command = "up -d (app builds, broken's build fails)"
    elif kind == "--port taken":
        ws = copy("single", tmp)
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            before = counts(client, project_of(ws))
            code = cli(ws, "up", "-d", "--port", str(held.getsockname()[1])).returncode
        command = "up -d --port <a port held by another process>"
    elif kind == "not healthy in time":
        ws = copy("unhealthy", tmp)
        before = counts(client, project_of(ws))
        code = cli(ws, "up", "-d", "--timeout", "3").returncode
        command = "up -d --timeout 3 (2 replicas never listen)"
    elif kind == "crash loop":
        ws = copy("crashloop", tmp)
        before = counts(client, project_of(ws))
        code = cli(ws, "up", "-d", "--timeout", "90").returncode
        command = "up -d (the replica exits 3 at once, every time)"
    elif kind in ("SIGINT during up -d's wait", "SIGTERM during up -d's wait"):
        ws = copy("unhealthy", tmp)
        project = project_of(ws)
        before = counts(client, project)
        sig = signal.SIGINT if kind.startswith("SIGINT") else signal.SIGTERM
        proc = subprocess.Popen(
            [str(MESHLOCAL), "-C", str(ws), "up", "-d", "--timeout", "120"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env(),
        )
        replicas = {"label": [f"{L.PROJECT}={project}", f"{L.ROLE}=replica"]}
        deadline = time.monotonic() + 60
        while len(client.api.containers(filters=replicas)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
        command = f"up -d, {sig.name} once both replicas run"
    elif kind == "Ctrl-C during a foreground build":
        ws = copy("rebuild", tmp)
        dockerfile = ws / "app" / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text() + "RUN sleep 20\n")
        before = counts(client, project_of(ws))
        code = interrupted(ws, ["up"], lambda line: "RUN sleep 20" in line, signal.SIGINT)
        command = "up, SIGINT while its RUN sleep 20 builds"
    elif kind == "re-up of a running mesh fails":
        ws = copy("rebuild", tmp)
        if cli(ws, "up", "-d").returncode != 0:
            raise SystemExit("the first up of the running-mesh case failed")
        (ws / "app" / "index.html").write_text("version 2\n")
        add_broken_service(ws)
        before = counts(client, project_of(ws))
        code = cli(ws, "up", "-d").returncode
        command = "up -d; change app, add broken; up -d (app rebuilt, broken fails)"
    else:
        raise ValueError(kind)
    after = counts(client, project_of(ws))
    cli(ws, "down")  # whatever is left, so the next kind starts clean
    return Outcome(kind, command, code, before, after)


KINDS = (
    "build of one service fails",
    "--port taken",
    "not healthy in time",
    "crash loop",
    "SIGINT during up -d's wait",
    "SIGTERM during up -d's wait",
    "Ctrl-C during a foreground build",
    "re-up of a running mesh fails",
)


def fmt(c: dict[str, int]) -> str:
    return f"{c['containers']}/{c['networks']}/{c['images']}"


def main() -> int:
    client = docker.from_env()
    os.environ["BUSYBOX_IMAGE"] = images.ensure_busybox_image(client)
    images.ensure_dataplane_image(client, images.ensure_python_base(client))
    print("| failure | what runs (`meshlocal ...`) | exit | before c/n/i | after c/n/i | leaked |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="meshlocal-leaks-") as tmp:
        for kind in KINDS:
            o = run_kind(client, Path(tmp), kind)
            leaked = sum(max(0, o.after[k] - o.before[k]) for k in o.after)
            print(
                f"| {o.kind} | `{o.command}` | {o.exit_code} | {fmt(o.before)} | "
                f"{fmt(o.after)} | **{leaked}** |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
