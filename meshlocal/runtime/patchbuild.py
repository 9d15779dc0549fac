"""A rebuild as one layer on the last image, when the Dockerfile says that is all it is.

`dockerfile.plan_patch` decides which image paths change; this module does
the engine's side. Every image meshlocal builds gets a record (its context's
file table and the digest of everything else the build read) in the cache;
when a service's context changes, the files that changed are put in a layer
tar on top of the last image's layers, with the image's configuration, and
loaded (`docker load` skips the layers the engine has): 0.2 s where the
legacy builder takes seconds a step. The image's content is the same a
build would make; only its history is shorter. After MAX_PATCHES patches in
a row the next change is built for real, so layers don't pile up.

`MESHLOCAL_PATCH_BUILDS=0` turns it off; `up --build` always builds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors

from meshlocal import dockerfile
from meshlocal.manifest.model import BuildSpec
from meshlocal.runtime import labels as L

Progress = Callable[[str], None]
DISABLE_ENV = "MESHLOCAL_PATCH_BUILDS"
MAX_PATCHES = 20
RECORDS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meshlocal" / "images"
_REMOVE_TRIES = 12  # about 8 s in all
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


@dataclass
class Record:
    """What an image was built from: the build's fixed inputs and its context's files."""

    fixed: str
    files: dict[str, str]
    patches: int = 0
    keys: list[str] = field(default_factory=list)  # build keys this image also answers

    @classmethod
    def load(cls, image_id: str) -> Record | None:
        try:
            data = json.loads(_record_path(image_id).read_text())
            return cls(
                str(data["fixed"]),
                {str(k): str(v) for k, v in data["files"].items()},
                int(data.get("patches", 0)),
                [str(k) for k in data.get("keys", [])],
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save(self, image_id: str) -> None:
        path = _record_path(image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps(
                {
                    "fixed": self.fixed,
                    "files": self.files,
                    "patches": self.patches,
                    "keys": self.keys,
                }
            )
        )
        tmp.replace(path)


def _record_path(image_id: str) -> Path:
    return RECORDS / f"{image_id.removeprefix('sha256:')[:32]}.json"


def remember(image_id: str, fixed: str, files: Mapping[str, str]) -> None:
    """After a real build: the image's record, from which later changes are patched."""
    Record(fixed, dict(files)).save(image_id)


def answers(image_id: str, key: str) -> bool:
    """Whether `key` is one the image also stands for (changed files no step copies)."""
    record = Record.load(image_id)
    return record is not None and key in record.keys


@dataclass(frozen=True)
class Patch:
    """What to patch: the image tagged `ref`, built from `build`, to hold `files`."""

    build: BuildSpec
    ref: str
    fixed: str  # the build's inputs other than the context's files (ContextState.fixed)
    files: Mapping[str, str]  # context path -> content hash
    key: str  # the new build key, put on the image as `key_label`
    key_label: str
    args: Mapping[str, str]


def try_patch(client: Any, patch: Patch, progress: Progress) -> str | None:
    """The new image id, patched from the one tagged `patch.ref`; None when a build must run.

    Patching only saves time: when the engine refuses any of it, the build runs.
    """
    try:
        return _patch(client, patch, progress)
    except (docker.errors.DockerException, OSError, tarfile.TarError, ValueError) as exc:
        progress(f"patching {patch.ref} failed ({exc}): building it instead")
        return None


def _patch(client: Any, patch: Patch, progress: Progress) -> str | None:
    build, ref, fixed, files, key = patch.build, patch.ref, patch.fixed, patch.files, patch.key
    key_label, args = patch.key_label, patch.args
    if os.environ.get(DISABLE_ENV) == "0" or build.target:
        return None
    try:
        old = client.api.inspect_image(ref)
    except docker.errors.DockerException:
        return None
    old_id = str(old["Id"])
    record = Record.load(old_id)
    if record is None or record.fixed != fixed or record.patches >= MAX_PATCHES:
        return None
    try:
        instructions = dockerfile.parse(build.dockerfile.read_text(errors="replace"))
    except OSError:
        return None
    if instructions is None:
        return None
    base = _base_workdir(
        client, instructions, {**_arg_defaults(instructions), **args, **build.args}
    )
    if base is None:
        return None
    layout = dockerfile.layout(instructions, base)
    if layout is None:
        return None
    started = time.monotonic()
    with _Probe(client, old_id) as probe:
        plan = dockerfile.plan_patch(layout, record.files, files, probe.is_dir)
        if plan is None:
            return None
        if plan.empty:
            # Nothing the image holds changed: the same image stands for the new key.
            record.keys = [*record.keys[-9:], key]
            record.save(old_id)
            progress(f"{ref} is up to date: the changed files are not copied into it")
            return old_id
        owners = {s.index: (s.uid, s.gid) for s in layout.copies}
        layer = _layer(
            build.context, plan.writes, _writers(layout, files, probe.is_dir), owners, probe
        )
    config = _config(old, layer, key_label, key)
    new_id = _load(client, ref, config, layer)
    Record(fixed, dict(files), record.patches + 1).save(new_id)
    progress(
        f"patched {ref}: {len(plan.writes)} file(s) as one layer on the last image "
        f"in {time.monotonic() - started:.2f} s (no build step needed)"
    )
    return new_id


def _arg_defaults(instructions: list[dockerfile.Instruction]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, sep, value = ins.args.partition("=")
            if sep:
                out[name.strip()] = value.strip().strip("\"'")
    return out


def _base_workdir(
    client: Any, instructions: list[dockerfile.Instruction], args: Mapping[str, str]
) -> str | None:
    """The FROM image's working directory: where a relative COPY lands before any WORKDIR."""
    for ins in instructions:
        if ins.keyword != "FROM":
            continue
        words = [w for w in ins.args.split() if not w.startswith("--")]
        if not words:
            return None
        ref = _VAR.sub(lambda m: args.get(m.group(1), ""), words[0])
        if ref == "scratch":
            return "/"
        try:
            found = client.api.inspect_image(ref)
        except docker.errors.DockerException:
            return None
        return str((found.get("Config") or {}).get("WorkingDir") or "/")
    return None


def _writers(
    layout: dockerfile.Layout, files: Mapping[str, str], is_dir: Callable[[str], bool]
) -> dict[str, int]:
    final = dockerfile.image_files(layout, files, is_dir) or {}
    return {path: step for path, (step, _rel) in final.items()}


class _Probe:
    """The last image's filesystem, through a container created and never started."""

    def __init__(self, client: Any, image_id: str) -> None:
        self.client = client
        self.image_id = image_id
        self._id: str | None = None
        self._headers: dict[str, tarfile.TarInfo | None] = {}

    def __enter__(self) -> _Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._id is None:
            return
        # The engine may still be reading an archive stream closed early: removing
        # the container then fails ("unable to remove filesystem") and leaves it
        # dead; a moment later the same removal succeeds.
        for attempt in range(_REMOVE_TRIES):
            try:
                self.client.api.remove_container(self._id, force=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.DockerException:
                time.sleep(0.1 * (attempt + 1))

    def header(self, path: str) -> tarfile.TarInfo | None:
        if path not in self._headers:
            self._headers[path] = self._read_header(path)
        return self._headers[path]

    def _read_header(self, path: str) -> tarfile.TarInfo | None:
        if self._id is None:
            self._id = str(
                self.client.api.create_container(
                    self.image_id,
                    command=["/probe"],
                    entrypoint=[],
                    network_disabled=True,
                    # A container inherits its image's labels: a service image's say
                    # "replica", and a controller would take the probe for one.
                    labels={L.ROLE: L.Role.PROBE.value},
                )["Id"]
            )
        api = self.client.api
        response = api._get(
            api._url("/containers/{0}/archive", self._id), params={"path": path}, stream=True
        )
        try:
            if response.status_code != 200:
                return None
            response.raw.decode_content = True
            # Only the first header: the entry itself, not a directory's contents.
            with tarfile.open(fileobj=response.raw, mode="r|") as tar:
                return tar.next()
        finally:
            response.close()

    def is_dir(self, path: str) -> bool:
        found = self.header(path)
        return found is not None and found.isdir()


def _layer(
    context: Path,
    writes: Mapping[str, str],
    writers: Mapping[str, int],
    owners: Mapping[int, tuple[int, int]],
    probe: _Probe,
) -> bytes:
    """The layer tar: every written file, and its parent directories as the image has them."""
    buf = io.BytesIO()
    dirs: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(writes):
            parent = posixpath.dirname(path)
            chain: list[str] = []
            while parent not in ("/", "") and parent not in dirs:
                chain.append(parent)
                parent = posixpath.dirname(parent)
            for directory in reversed(chain):
                dirs.add(directory)
                # Without an entry the engine makes it root's, mode 0755, and
                # that would mask the directory's owner and mode in the image.
                seen = probe.header(directory)
                info = tarfile.TarInfo(directory.lstrip("/"))
                info.type = tarfile.DIRTYPE
                info.mode = seen.mode if seen is not None else 0o755
                info.uid, info.gid = (seen.uid, seen.gid) if seen is not None else (0, 0)
                info.mtime = seen.mtime if seen is not None else int(time.time())
                tar.addfile(info)
            source = context / writes[path]
            info = tar.gettarinfo(str(source), arcname=path.lstrip("/"))
            info.uid, info.gid = owners.get(writers.get(path, -1), (0, 0))
            info.uname = info.gname = ""
            if info.isreg():
                with source.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return buf.getvalue()


def _config(old: Mapping[str, Any], layer: bytes, key_label: str, key: str) -> bytes:
    config = dict(old.get("Config") or {})
    config["Labels"] = {**(config.get("Labels") or {}), key_label: key}
    diff = "sha256:" + hashlib.sha256(layer).hexdigest()
    doc = {
        "architecture": old.get("Architecture") or "amd64",
        "os": old.get("Os") or "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [*old["RootFS"]["Layers"], diff]},
    }
    if old.get("Variant"):
        doc["variant"] = old["Variant"]
    return json.dumps(doc, sort_keys=True).encode()


def _load(client: Any, ref: str, config: bytes, layer: bytes) -> str:
    """`docker load` of the image: the engine reuses every layer it has, by content."""
    digest = hashlib.sha256(config).hexdigest()
    layers = json.loads(config)["rootfs"]["diff_ids"]
    # Paths for the layers the engine has: it never opens them (it finds them by chain id).
    names = [f"{i}/layer.tar" for i in range(len(layers) - 1)] + ["new/layer.tar"]
    manifest = [{"Config": f"{digest}.json", "RepoTags": [ref], "Layers": names}]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (
            (f"{digest}.json", config),
            ("manifest.json", json.dumps(manifest).encode()),
            ("new/layer.tar", layer),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    for _chunk in client.api.load_image(buf.getvalue()):
        pass
    return f"sha256:{digest}"
