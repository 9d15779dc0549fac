"""The data-plane image: the host's installed meshlocal and its runtime deps, offline.

The files of meshlocal and of every installed runtime distribution go into
the build context under site/ (build_site_image, shared with the pub/sub
emulator's image); tagged by a hash of all of them.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import tarfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import docker
import docker.errors

import meshlocal
from meshlocal.errors import ImageError
from meshlocal.runtime import labels
from meshlocal.runtime.imagebuild import (
    Progress,
    _add_bytes,
    _build_stream,
    _noop,
    image_exists,
)
from meshlocal.runtime.pythonbase import DEBIAN_SUITE_ENV, PYTHON_IMAGE_ENV


def _requirement_names(dist: metadata.Distribution) -> Iterator[str]:
    for req in dist.requires or ():
        if "extra ==" in req or "extra==" in req:
            continue  # optional extras are not part of the runtime
        name = re.match(r"[A-Za-z0-9._-]+", req)
        if name:
            yield name.group(0)


# The local SNS/SQS's own requirements: they go in its image (runtime/pubsub.py),
# not in the data plane's, which never imports them.
EMULATOR_ROOTS = ("moto", "flask", "flask-cors")


def _dist_key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_distributions(
    *roots: str, skip: tuple[str, ...] = EMULATOR_ROOTS
) -> list[metadata.Distribution]:
    """The installed distributions `roots` (default meshlocal) need at run time, transitively.

    A requirement that is not installed had a false marker (e.g. a
    python_version backport), so it is skipped; so is every name in `skip`
    (and what only it needs).
    """
    seen: dict[str, metadata.Distribution] = {}
    skipped = {_dist_key(n) for n in skip} - {_dist_key(r) for r in roots}
    todo = list(roots or ("meshlocal",))
    while todo:
        name = todo.pop()
        key = _dist_key(name)
        if key in seen or key in skipped:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[key] = dist
        todo.extend(_requirement_names(dist))
    return [seen[k] for k in sorted(seen)]


def _dataplane_files() -> dict[str, Path]:
    """archive path (under site/) -> file on the host, for meshlocal and its deps."""
    files: dict[str, Path] = {}
    package_dir = Path(meshlocal.__file__).resolve().parent
    for path in sorted(package_dir.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[f"meshlocal/{path.relative_to(package_dir).as_posix()}"] = path
    files.update(distribution_files(runtime_distributions("meshlocal")))
    return files


def distribution_files(dists: list[metadata.Distribution]) -> dict[str, Path]:
    """archive path (under site/) -> file on the host, for installed distributions."""
    files: dict[str, Path] = {}
    for dist in dists:
        if dist.metadata["Name"].lower() == "meshlocal":
            continue  # may be an editable install: copied from its package dir
        for rel in dist.files or ():
            posix = rel.as_posix()
            if posix.startswith("..") or "__pycache__" in posix or posix.endswith(".pyc"):
                continue  # console scripts and byte code: not needed
            src = Path(str(dist.locate_file(rel)))
            if src.is_file():
                files[posix] = src
    return files


def dataplane_context_hash(files: dict[str, Path], base_id: str, dockerfile: str) -> str:
    digest = hashlib.sha256()
    digest.update(base_id.encode())
    digest.update(dockerfile.encode())
    for arc in sorted(files):
        digest.update(arc.encode() + b"\0")
        digest.update(hashlib.sha256(files[arc].read_bytes()).digest())
    return digest.hexdigest()


def image_python_version(client: docker.DockerClient, image: str) -> str:
    """`3.11`: what python3 in `image` is; from its label, else by running it."""
    try:
        found = client.images.get(image).labels.get("meshlocal.python")
    except docker.errors.ImageNotFound as exc:
        raise ImageError(f"image {image} is not present") from exc
    if found:
        return str(found)
    try:
        out = client.containers.run(
            image,
            ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            entrypoint=[],
            remove=True,
            network_mode="none",
            labels={labels.ROLE: labels.Role.PROBE.value},
        )
    except docker.errors.DockerException as exc:
        raise ImageError(
            f"cannot run python3 in the base image {image}: {exc}",
            hint=f"{PYTHON_IMAGE_ENV} must name an image with python3 on its PATH",
        ) from exc
    return bytes(out).decode().strip()


DATAPLANE_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY site/ /opt/meshlocal/site/
# Byte-compiled once here: uncompiled, the agent's imports take over a second
# on every start, which every `up` and data-plane restart waits for.
RUN python3 -m compileall -q -j 0 /opt/meshlocal/site >/dev/null || true
# The link volume takes this directory's owner when first mounted: the
# unprivileged data plane listens there, the root controller connects.
RUN mkdir -p /run/meshlocal/link && chown 65534:65534 /run/meshlocal/link \
    && chmod 0700 /run/meshlocal/link
ENV PYTHONPATH=/opt/meshlocal/site PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
LABEL meshlocal.image=dataplane
ENTRYPOINT ["python3", "-m", "meshlocal"]
CMD ["agent"]
"""


def ensure_dataplane_image(
    client: docker.DockerClient, base: str, progress: Progress | None = None
) -> str:
    """An image running the installed meshlocal: `python3 -m meshlocal agent ...`.

    Built offline: the files of meshlocal and of every installed runtime
    dependency are copied into the build context. Their compiled extensions
    only load on the same Python minor version, so the base must match.
    Tagged by meshlocal's version and a hash of everything copied.
    """
    say = progress or _noop
    host = f"{sys.version_info[0]}.{sys.version_info[1]}"
    theirs = image_python_version(client, base)
    if theirs != host:
        raise ImageError(
            f"the data plane base image {base} has Python {theirs}, but meshlocal runs on "
            f"Python {host} here; its compiled dependencies (aiohttp, yarl, ...) would not load",
            hint=f"set {PYTHON_IMAGE_ENV} to an image with Python {host} (e.g. python:{host}-slim)"
            f", or {DEBIAN_SUITE_ENV} to a Debian suite whose python3 is {host}",
        )
    base_id = str(client.images.get(base).id)
    files = _dataplane_files()
    digest = dataplane_context_hash(files, base_id, DATAPLANE_DOCKERFILE)
    tag = f"meshlocal/dataplane:{meshlocal.__version__}-{digest[:12]}"
    if image_exists(client, tag):
        return tag
    say(f"building {tag} from {base} ({len(files)} files)")
    build_site_image(client, tag, base, files, DATAPLANE_DOCKERFILE, say, "the data plane image")
    prune_images(client, "meshlocal/dataplane", keep=tag)
    return tag


def build_site_image(
    client: docker.DockerClient,
    tag: str,
    base: str,
    files: dict[str, Path],
    dockerfile: str,
    say: Progress,
    what: str,
) -> None:
    """Build `dockerfile` FROM `base` with `files` under site/ in its context, offline."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", dockerfile.encode())
        for arc, src in sorted(files.items()):
            info = tarfile.TarInfo(f"site/{arc}")
            data = src.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if os.access(src, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    _build_stream(
        client,
        tag,
        say,
        fileobj=buf,
        custom_context=True,
        buildargs={"BASE_IMAGE": base},
        what=what,
    )


def prune_images(client: docker.DockerClient, repository: str, keep: str) -> list[str]:
    """Remove superseded data-plane images, so upgrades leave nothing behind.

    An image a container still runs (another mesh not yet upgraded) is kept:
    the engine refuses with 409, and a later prune takes it.
    """
    removed: list[str] = []
    for image in client.images.list(name=repository):
        for ref in image.tags:
            if ref == keep:
                continue
            try:
                client.images.remove(ref, noprune=False)
            except docker.errors.APIError:  # in use, or already gone
                continue
            removed.append(ref)
    return removed
