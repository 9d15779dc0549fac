"""A workspace's images: build what changed, reuse what didn't, say what was pulled.

A service image is rebuilt only when its build key changes: a digest of
everything the build reads (context files, Dockerfile, args, base image).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshlocal.manifest.model import BuildSpec, EnvironmentSpec, Service
from meshlocal.runtime import images
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
    """
    out: dict[str, tuple[str, str | None]] = {}
    base: str | None = None

    def python_base() -> str:
        nonlocal base
        if base is None:
            base = images.ensure_python_base(client, progress=progress)
        return base

    for svc in spec.services:
        loc = svc.where("image")
        if svc.build is not None:
            ref = tag(svc.name, None)
            defaults = base_image_args(client, svc, python_base, progress)
            key = build_key(svc.build, defaults, client)
            image_id = None if force_build else _image_with_key(client, ref, key)
            if image_id is not None:
                progress(f"[{svc.name}] {ref} is up to date")
            else:
                progress(f"[{svc.name}] building {ref}")
                image_id = images.build_service_image(
                    client,
                    svc.build,
                    ref,
                    _prefixed(progress, svc.name),
                    default_args=defaults,
                    location=loc,
                    image_labels={**labels(L.Role.REPLICA), BUILD_KEY_LABEL: key},
                )
            out[svc.name] = (ref, image_id)
        elif svc.image_location is not None:
            ref = images.ensure_image(client, svc.image_location, progress, location=loc)
            out[svc.name] = (ref, str(client.images.get(ref).id))
        for sc in svc.sidecars:
            key = f"{svc.name}/{sc.name}"
            where = svc.where(f"sidecars.{sc.name}")
            if sc.build is not None:
                ref = tag(svc.name, sc.name)
                image_id = images.build_service_image(
                    client,
                    sc.build,
                    ref,
                    progress,
                    location=where,
                    # Labelled like a service's: undo and `down` find it and its predecessors.
                    image_labels=labels(L.Role.SIDECAR),
                )
                out[key] = (ref, image_id)
            elif sc.image is not None:
                out[key] = (images.ensure_image(client, sc.image, progress, location=where), None)
    return out


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


def build_key(build: BuildSpec, defaults: Mapping[str, str], client: Any) -> str:
    """A digest of everything a build reads: context files, Dockerfile, args, base.

    Files count by path, size and mtime (not content), so the key costs a
    directory walk, not a read of every byte.
    """
    digest = hashlib.sha256()
    digest.update(build.dockerfile.read_bytes() if build.dockerfile.is_file() else b"")
    args = {**defaults, **build.args}
    digest.update(json.dumps([args, build.target, list(build.cache_from)], sort_keys=True).encode())
    for value in args.values():  # a rebuilt base image must rebuild its users
        with contextlib.suppress(Exception):
            digest.update(str(client.images.get(value).id).encode())
    for root, dirs, files in os.walk(build.context):
        dirs[:] = sorted(d for d in dirs if d not in (".git", "__pycache__"))
        for name in sorted(files):
            path = Path(root) / name
            with contextlib.suppress(OSError):
                st = path.stat()
                rel = path.relative_to(build.context)
                digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _image_with_key(client: Any, tag: str, key: str) -> str | None:
    try:
        image = client.images.get(tag)
    except Exception:
        return None
    if (image.labels or {}).get(BUILD_KEY_LABEL) == key:
        return str(image.id)
    return None


def _prefixed(progress: Progress, name: str) -> Progress:
    return lambda line: progress(f"[{name}] {line}")


def _arg_default(dockerfile: Path, name: str) -> str | None:
    text = dockerfile.read_text(errors="replace")
    m = re.search(rf"(?im)^\s*ARG\s+{name}\s*=\s*(\S+)", text)
    return m.group(1).strip("\"'") if m else None
