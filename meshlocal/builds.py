"""A workspace's images: build what changed, reuse what didn't, say what was pulled.

A service image is rebuilt only when its build key changes: a digest of
everything the build reads (context files, Dockerfile, args, base image).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshlocal.errors import Location
from meshlocal.manifest.model import BuildSpec, EnvironmentSpec, Service
from meshlocal.runtime import images, patchbuild
from meshlocal.runtime import labels as L

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def build_images(
    client: Any,
    spec: EnvironmentSpec,
    *,
    tag: Callable[[str, str | None], str],
    labels: Callable[[L.Role], dict[str, str]],
    progress: Progress = _quiet,
    force_build: bool = False,
) -> dict[str, tuple[str, str | None]]:
    """Every service's image: service (or `service/sidecar`) -> (ref to run, image id).

    A build whose inputs are unchanged since the last one is skipped, as
    compose skips building an image that exists; `force_build` rebuilds.
    `tag(service, sidecar)` names a built image; `labels(role)` labels it.
    Images are built (or pulled) in parallel, one thread each, as compose
    does; the first failure cancels the others and is raised once every
    thread has stopped, so an undo sees everything this call tagged.
    """
    say = _locked(progress)
    base_lock = threading.Lock()
    base: list[str] = []

    def python_base() -> str:
        with base_lock:  # one debootstrap, however many services want it
            if not base:
                base.append(images.ensure_python_base(client, progress=say))
            return base[0]

    cancel = images.BuildCancel()
    jobs: list[tuple[str, Callable[[], tuple[str, str | None]]]] = []
    for svc in spec.services:
        if svc.build is not None:
            jobs.append(
                (
                    svc.name,
                    _builder(
                        client,
                        svc.name,
                        svc.build,
                        tag(svc.name, None),
                        labels(L.Role.REPLICA),
                        svc.where("image"),
                        functools.partial(base_image_args, client, svc, python_base, say),
                        say,
                        cancel,
                        force_build,
                    ),
                )
            )
        elif svc.image_location is not None:
            pull = _puller(client, svc.image_location, _prefixed(say, svc.name), svc.where("image"))
            jobs.append((svc.name, pull))
        for sc in svc.sidecars:
            where = svc.where(f"sidecars.{sc.name}")
            if sc.build is not None:
                jobs.append(
                    (
                        f"{svc.name}/{sc.name}",
                        _builder(
                            client,
                            f"{svc.name}/{sc.name}",
                            sc.build,
                            tag(svc.name, sc.name),
                            # Labelled as a service's: undo and `down` find it and predecessors
                            labels(L.Role.SIDECAR),
                            where,
                            dict,
                            say,
                            cancel,
                            force_build,
                        ),
                    )
                )
            elif sc.image is not None:
                ref = sc.image
                jobs.append(
                    (
                        f"{svc.name}/{sc.name}",
                        _puller(client, ref, _prefixed(say, svc.name), where, image_id=False),
                    )
                )
    return _run_all(jobs, cancel)


def _run_all(
    jobs: list[tuple[str, Callable[[], tuple[str, str | None]]]], cancel: images.BuildCancel
) -> dict[str, tuple[str, str | None]]:
    """Run every job in its own thread; their results, or the first failure in job order."""
    results: dict[str, tuple[str, str | None]] = {}
    failures: dict[str, BaseException] = {}

    def run(name: str, job: Callable[[], tuple[str, str | None]]) -> None:
        try:
            results[name] = job()
        except BaseException as exc:  # handed to the caller's thread
            failures[name] = exc
            cancel.fire()  # the others stop: this `up` fails anyway

    if len(jobs) == 1:  # no thread for a single build: Ctrl-C reaches it directly
        name, job = jobs[0]
        try:
            results[name] = job()
        except BaseException:
            cancel.fire()
            raise
        return results
    threads = [
        threading.Thread(target=run, args=job, name=f"build-{job[0]}", daemon=True) for job in jobs
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except BaseException:
        # Ctrl-C: abort the daemon's builds, so nothing is tagged after `up`'s undo.
        cancel.fire()
        for thread in threads:
            thread.join(timeout=_CANCEL_WAIT)
        raise
    for name, _ in jobs:
        exc = failures.get(name)
        if exc is not None and not isinstance(exc, images.BuildCancelled):
            raise exc
    for exc in failures.values():
        raise exc  # only cancelled ones: cannot happen without a failure, but never hide it
    return {name: results[name] for name, _ in jobs}


_CANCEL_WAIT = 10.0  # seconds per thread, once its build's connection is shut down


def _builder(
    client: Any,
    name: str,
    build: BuildSpec,
    ref: str,
    image_labels: dict[str, str],
    location: Location,
    defaults: Callable[[], dict[str, str]],
    progress: Progress,
    cancel: images.BuildCancel,
    force_build: bool,
) -> Callable[[], tuple[str, str | None]]:
    def job() -> tuple[str, str | None]:
        args = defaults()
        state = context_state(build, args, client)
        key = state.key
        image_id = None if force_build else _image_with_key(client, ref, key)
        if image_id is not None:
            progress(f"[{name}] {ref} is up to date")
            return ref, image_id
        if not force_build:
            patch = patchbuild.Patch(
                build, ref, state.fixed, state.files, key, BUILD_KEY_LABEL, args
            )
            patched = patchbuild.try_patch(client, patch, _prefixed(progress, name))
            if patched is not None:
                return ref, patched
        progress(f"[{name}] building {ref}")
        image_id = images.build_service_image(
            client,
            build,
            ref,
            _prefixed(progress, name),
            default_args=args,
            location=location,
            image_labels={**image_labels, BUILD_KEY_LABEL: key},
            cancel=cancel,
        )
        patchbuild.remember(image_id, state.fixed, state.files)
        return ref, image_id

    return job


def _puller(
    client: Any, ref: str, progress: Progress, location: Location, *, image_id: bool = True
) -> Callable[[], tuple[str, str | None]]:
    def job() -> tuple[str, str | None]:
        found = images.ensure_image(client, ref, progress, location=location)
        return found, str(client.images.get(found).id) if image_id else None

    return job


def _locked(progress: Progress) -> Progress:
    """`progress` callable from many threads: whole lines, never interleaved."""
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            progress(line)

    return say


def base_image_args(
    client: Any, svc: Service, python_base: Callable[[], str], progress: Progress
) -> dict[str, str]:
    """BASE_IMAGE -> a local Python base when the Dockerfile's default can't be had.

    Offline machines can't pull `python:*-slim`; the examples declare
    `ARG BASE_IMAGE`, so meshlocal builds one from Debian packages and
    says so, instead of failing the build.
    """
    assert svc.build is not None
    if "BASE_IMAGE" not in images.declared_build_args(svc.build.dockerfile):
        return {}
    if "BASE_IMAGE" in svc.build.args:
        return {}
    default = _arg_default(svc.build.dockerfile, "BASE_IMAGE")
    if default and images.image_exists(client, default):
        return {}
    if default:
        with contextlib.suppress(Exception):
            images.ensure_image(client, default, _quiet)
            return {}
    local = python_base()
    progress(
        f"[{svc.name}] base image {default or 'BASE_IMAGE'} cannot be pulled here: "
        f"using {local}, built locally from Debian packages"
    )
    return {"BASE_IMAGE": local}


BUILD_KEY_LABEL = "meshlocal.build-key"


@dataclass(frozen=True)
class ContextState:
    """What a build reads: `fixed` (Dockerfile, args, base images) and the context's files."""

    fixed: str
    files: dict[str, str]  # context-relative path -> mode and content digest (or link target)

    @property
    def key(self) -> str:
        digest = hashlib.sha256(self.fixed.encode())
        for rel, fingerprint in sorted(self.files.items()):
            digest.update(f"{rel}\0{fingerprint}\n".encode(errors="surrogateescape"))
        return digest.hexdigest()[:32]


def context_state(build: BuildSpec, defaults: Mapping[str, str], client: Any) -> ContextState:
    """Everything a build reads, by content.

    Files count by path, mode and content, as the build sends them
    (.dockerignore applied): nothing that differs from run to run (mtimes,
    a fresh checkout or copy) rebuilds an image whose inputs are the same.
    """
    fixed = hashlib.sha256()
    fixed.update(build.dockerfile.read_bytes() if build.dockerfile.is_file() else b"")
    args = {**defaults, **build.args}
    fixed.update(json.dumps([args, build.target, list(build.cache_from)], sort_keys=True).encode())
    for value in args.values():  # a rebuilt base image must rebuild its users
        with contextlib.suppress(Exception):
            fixed.update(str(client.images.get(value).id).encode())
    known = _DigestCache(build.context)
    files: dict[str, str] = {}
    for rel in images.context_files(build):
        path = build.context / rel
        with contextlib.suppress(OSError):
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                files[rel] = f"{st.st_mode:o}->{os.readlink(path)}"
            elif stat.S_ISREG(st.st_mode):
                files[rel] = f"{st.st_mode:o}:{known.digest(rel, path, st).hex()}"
    known.save()
    return ContextState(fixed.hexdigest(), files)


def build_key(build: BuildSpec, defaults: Mapping[str, str], client: Any) -> str:
    """A digest of everything a build reads: context files, Dockerfile, args, base."""
    return context_state(build, defaults, client).key


_DIGEST_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meshlocal" / "contexts"
)


class _DigestCache:
    """Content digests of a context's files, reused while a file's stat is unchanged.

    Keeps an unchanged `up` at the cost of a directory walk, not a read of
    every byte; a file touched but not changed re-hashes to the same digest.
    """

    def __init__(self, context: Path) -> None:
        name = hashlib.sha256(str(context.resolve()).encode()).hexdigest()[:16]
        self.path = _DIGEST_CACHE / f"{name}.json"
        self.old: dict[str, list[Any]] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self.old = loaded
        self.new: dict[str, list[Any]] = {}

    def digest(self, rel: str, path: Path, st: os.stat_result) -> bytes:
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = self.old.get(rel)
        if isinstance(entry, list) and entry[:3] == stamp and isinstance(entry[3], str):
            value = bytes.fromhex(entry[3])
        else:
            with path.open("rb") as f:
                value = hashlib.file_digest(f, "sha256").digest()
        self.new[rel] = [*stamp, value.hex()]
        return value

    def save(self) -> None:
        if self.new == self.old:
            return
        # Best effort: a cache that cannot be written costs a re-read next time.
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(self.new))
            os.replace(tmp, self.path)


def _image_with_key(client: Any, tag: str, key: str) -> str | None:
    try:
        image = client.images.get(tag)
    except Exception:
        return None
    if (image.labels or {}).get(BUILD_KEY_LABEL) == key or patchbuild.answers(str(image.id), key):
        return str(image.id)
    return None


def _prefixed(progress: Progress, name: str) -> Progress:
    return lambda line: progress(f"[{name}] {line}")


def _arg_default(dockerfile: Path, name: str) -> str | None:
    text = dockerfile.read_text(errors="replace")
    m = re.search(rf"(?im)^\s*ARG\s+{name}\s*=\s*(\S+)", text)
    return m.group(1).strip("\"'") if m else None
