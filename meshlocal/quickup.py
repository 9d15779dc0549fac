"""A second `up -d` with nothing changed: checked in milliseconds, touching nothing.

After an `up -d` that succeeded, `record` writes down what it saw: a
fingerprint of every input (the files under copilot/, the build contexts,
Dockerfiles and env files, meshlocal's own code, the environment variables
and the command's options), the containers it left running, the
configuration the controller runs and the images the replicas run. The next
`up -d` with the same options recomputes the fingerprint from file *stats*
and asks the engine and the data plane whether that mesh still runs,
converged. If so there is nothing to do. Any doubt (a file touched, a
container replaced, an image retagged, a remote engine) falls back to the
full `up`, which stays the authority.

Standard library only: the manifest parser and the Docker SDK cost more to
import than the whole check.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import tarfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import meshlocal
from meshlocal.paths import CONTAINER_STATE_FILE, locate_root

STATE_DIR = (
    Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "meshlocal" / "quick"
)
DISABLE_ENV = "MESHLOCAL_QUICK"  # "0": always run the full `up`
# Shell bookkeeping that changes between two identical commands; every other
# variable may be interpolated into a manifest (${VAR}), so it counts.
VOLATILE_ENV = frozenset(
    {"_", "PWD", "OLDPWD", "SHLVL", "COLUMNS", "LINES", "PS1", "PS2", "PROMPT_COMMAND"}
)
SCHEMA = 2  # 2: the stamp names the SNS/SQS emulator


@dataclass(frozen=True)
class Running:
    """A mesh found unchanged: what `up -d` prints for it."""

    project: str
    env: str
    state: dict[str, Any]
    public_url: str | None
    page_url: str | None = None


def _stat_tree(root: Path, out: list[str]) -> None:
    try:
        st = root.stat()
    except OSError:
        out.append(f"{root}\0missing")
        return
    if not root.is_dir():
        out.append(f"{root}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}")
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        # A directory's mtime moves when an entry is added, removed or renamed.
        out.append(f"{dirpath}\0dir\0{os.stat(dirpath).st_mtime_ns}")
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                fst = os.stat(path)
            except OSError:
                out.append(f"{path}\0missing")
                continue
            out.append(f"{path}\0{fst.st_size}\0{fst.st_mtime_ns}\0{fst.st_ino}")


def fingerprint(root: Path, inputs: Iterable[str], options: Mapping[str, Any]) -> str:
    """Everything a full `up` reads, by file stats, plus the variables and options."""
    lines: list[str] = [f"schema {SCHEMA}", f"meshlocal {meshlocal.__version__}"]
    for path in sorted({str(root / "copilot"), str(Path(meshlocal.__file__).parent), *inputs}):
        _stat_tree(Path(path), lines)
    environ = {k: v for k, v in os.environ.items() if k not in VOLATILE_ENV}
    lines.append(json.dumps(environ, sort_keys=True))
    lines.append(json.dumps(options, sort_keys=True, default=str))
    return hashlib.sha256("\n".join(lines).encode(errors="surrogateescape")).hexdigest()


def stamp_path(root: Path, options: Mapping[str, Any]) -> Path:
    key = json.dumps([str(root), dict(options)], sort_keys=True, default=str)
    return STATE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def record(
    root: Path,
    options: Mapping[str, Any],
    *,
    inputs: Iterable[str],
    project: str,
    env: str,
    dataplane_id: str,
    controller_id: str,
    admin_url: str,
    public_url: str | None,
    config_json: str,
    images: Mapping[str, str],
    emulator_id: str | None = None,
) -> None:
    """After a successful `up -d`: what the next one compares with."""
    inputs = sorted(set(inputs))
    stamp = {
        "schema": SCHEMA,
        "root": str(root),
        "fingerprint": fingerprint(root, inputs, options),
        "inputs": inputs,
        "project": project,
        "env": env,
        "dataplane": dataplane_id,
        "controller": controller_id,
        "admin_url": admin_url,
        "public_url": public_url,
        "config": hashlib.sha256(config_json.encode()).hexdigest(),
        "images": dict(images),
        "pubsub": emulator_id,  # the SNS/SQS emulator, when the mesh has one
    }
    path = stamp_path(root, options)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stamp, sort_keys=True))
    tmp.replace(path)


def forget(root: Path) -> None:
    """`down`: no stamp may vouch for a mesh of this workspace any more."""
    if not STATE_DIR.is_dir():
        return
    for path in STATE_DIR.glob("*.json"):
        try:
            mine = json.loads(path.read_text()).get("root") == str(root)
        except (OSError, ValueError):
            mine = True  # unreadable: of no use to anyone
        if mine:
            path.unlink(missing_ok=True)


def check(start: Path, options: Mapping[str, Any]) -> Running | None:
    """The mesh a previous `up -d` with these options left, if nothing changed since."""
    if os.environ.get(DISABLE_ENV) == "0":
        return None
    root = locate_root(start)
    if root is None:
        return None
    try:
        stamp = json.loads(stamp_path(root, options).read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("schema") != SCHEMA:
        return None
    if fingerprint(root, stamp["inputs"], options) != stamp["fingerprint"]:
        return None
    docker = _DockerSocket.from_env()
    if docker is None:
        return None
    try:
        if not _containers_unchanged(docker, stamp):
            return None
        config = docker.archive_file(stamp["controller"], CONTAINER_STATE_FILE)
        if config is None or hashlib.sha256(config).hexdigest() != stamp["config"]:
            return None
        for ref, image_id in stamp["images"].items():
            found = docker.get_json(f"/images/{quote(ref, safe='')}/json")
            if not isinstance(found, dict) or found.get("Id") != image_id:
                return None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    state = _converged(stamp["admin_url"])
    if state is None or state.get("faults_suppressed"):  # `up` puts declared faults back
        return None
    page = str(stamp["admin_url"]).rstrip("/") + "/"
    return Running(stamp["project"], stamp["env"], state, stamp["public_url"], page)


def _containers_unchanged(docker: _DockerSocket, stamp: Mapping[str, Any]) -> bool:
    labels = [f"meshlocal.project={stamp['project']}", f"meshlocal.env={stamp['env']}"]
    found = docker.get_json(
        "/containers/json?all=1&filters=" + quote(json.dumps({"label": labels}))
    )
    if not isinstance(found, list):
        return False
    running = {str(c.get("Id")) for c in found if c.get("State") == "running"}
    wanted = {stamp["dataplane"], stamp["controller"], stamp.get("pubsub")} - {None}
    return wanted <= running


def _converged(admin_url: str, polls: int = 2, interval: float = 0.05) -> dict[str, Any] | None:
    """Ready on two polls in a row, no error, no crash: as `up -d` waits for it."""
    host, _, port = admin_url.removeprefix("http://").rstrip("/").partition(":")
    state: dict[str, Any] = {}
    for attempt in range(polls):
        if attempt:
            time.sleep(interval)
        conn = http.client.HTTPConnection(host, int(port or 80), timeout=2.0)
        try:
            conn.request("GET", "/v1/state")
            response = conn.getresponse()
            if response.status != 200:
                return None
            state = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            conn.close()
        if not state.get("ready") or state.get("error") or state.get("crashes"):
            return None
    return state


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _DockerSocket:
    """The few engine calls the check needs, straight over the local socket."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def from_env(cls) -> _DockerSocket | None:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if not host.startswith("unix://") or os.environ.get("MESHLOCAL_ENGINE_REMOTE") == "1":
            return None  # tcp, ssh, TLS: the full `up` and the SDK know how
        return cls(host.removeprefix("unix://"))

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = _UnixConnection(self.path, timeout=5.0)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        status, body = self._get(path)
        return json.loads(body) if status == 200 else None

    def archive_file(self, container: str, path: str) -> bytes | None:
        status, body = self._get(f"/containers/{container}/archive?path={quote(path)}")
        if status != 200:
            return None
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            member = tar.next()
            handle = tar.extractfile(member) if member is not None else None
            return handle.read() if handle is not None else None
