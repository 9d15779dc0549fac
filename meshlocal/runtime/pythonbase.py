"""The Python base image, built offline from Debian packages (debootstrap).

Or $MESHLOCAL_PYTHON_IMAGE instead. The data plane and the pub/sub emulator
run on it, so its python3 must be the host's minor version.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import docker

from meshlocal.errors import ImageError
from meshlocal.runtime import labels
from meshlocal.runtime.imagebuild import (
    _BUILD_LOG_TAIL,
    Progress,
    _noop,
    ensure_image,
    image_exists,
)

PYTHON_IMAGE_ENV = "MESHLOCAL_PYTHON_IMAGE"  # use this image instead of building one
DEBIAN_SUITE_ENV = "MESHLOCAL_DEBIAN_SUITE"
DEBIAN_MIRROR_ENV = "MESHLOCAL_DEBIAN_MIRROR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Debian's python3 by suite: the base must run the host's Python minor
# version, because the data plane copies the host's compiled wheels.
_SUITE_FOR_PYTHON = {(3, 11): "bookworm", (3, 13): "trixie"}


def default_suite() -> str:
    return os.environ.get(DEBIAN_SUITE_ENV) or _SUITE_FOR_PYTHON.get(
        sys.version_info[:2], "bookworm"
    )


def python_base_tag(suite: str | None = None) -> str:
    return f"meshlocal/python-base:{suite or default_suite()}"


def ensure_python_base(
    client: docker.DockerClient,
    tag: str | None = None,
    progress: Progress | None = None,
    *,
    suite: str | None = None,
    mirror: str | None = None,
) -> str:
    """The Python base image ref: $MESHLOCAL_PYTHON_IMAGE, else a debootstrapped one.

    The debootstrapped image (~45 s to build) is cached by tag: it is only
    built when the tag is missing. Building needs root (debootstrap chroots).
    """
    say = progress or _noop
    configured = os.environ.get(PYTHON_IMAGE_ENV)
    if configured and tag is None:
        return ensure_image(client, configured, progress)
    suite = suite or default_suite()
    tag = tag or python_base_tag(suite)
    if image_exists(client, tag):
        return tag
    if os.geteuid() != 0:
        raise ImageError(
            f"the Python base image {tag} is missing and building it needs root (debootstrap)",
            hint=f"run once as root to build it, or set {PYTHON_IMAGE_ENV}=python:"
            f"{sys.version_info[0]}.{sys.version_info[1]}-slim (any image with python3 "
            "of the host's version)",
        )
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageError(
            f"the Python base image {tag} is missing and debootstrap is not installed",
            hint=f"apt-get install debootstrap, or set {PYTHON_IMAGE_ENV} to an image with python3",
        )
    mirror = mirror or os.environ.get(DEBIAN_MIRROR_ENV) or DEFAULT_MIRROR
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meshlocal" / "debs"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="meshlocal-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        say(f"building {tag}: debootstrap {suite} from {mirror}")
        cmd = [
            debootstrap,
            "--variant=minbase",
            "--include=python3,ca-certificates",
            f"--cache-dir={cache}",
            suite,
            str(root),
            mirror,
        ]
        tail = _run_streaming(cmd, say)
        if tail is not None:
            raise ImageError(
                f"debootstrap of Debian {suite} failed",
                hint="is the Debian mirror reachable? last output:\n" + "\n".join(tail),
            )
        for junk in (
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
            "usr/share/locale",
        ):
            shutil.rmtree(root / junk, ignore_errors=True)
        version = _python_version_in(root)
        say(f"importing {tag} (python {version})")
        _import_rootfs(client, root, tag, version)
    return tag


def _python_version_in(root: Path) -> str:
    found = sorted(
        p.name.removeprefix("python")
        for p in (root / "usr/lib").glob("python3.*")
        if re.fullmatch(r"python3\.\d+", p.name)
    )
    if not found:
        raise ImageError(f"debootstrap produced no python3 in {root}")
    return found[-1]


def _import_rootfs(client: docker.DockerClient, root: Path, tag: str, version: str) -> None:
    repository, _, name_tag = tag.rpartition(":")
    changes = [
        "ENV LANG=C.UTF-8",
        "ENV PYTHONDONTWRITEBYTECODE=1",
        "ENV PYTHONUNBUFFERED=1",
        f"LABEL {labels.IMAGE_KIND}=python-base",
        f"LABEL meshlocal.python={version}",
        'CMD ["python3"]',
    ]
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
    )
    assert tar.stdout is not None
    try:
        out = client.api.import_image_from_stream(
            tar.stdout, repository=repository, tag=name_tag, changes=changes
        )
    finally:
        tar.stdout.close()
        tar.wait()
    text = out if isinstance(out, str) else json.dumps(out)
    if "error" in text.lower() and not image_exists(client, tag):
        raise ImageError(f"docker import of {tag} failed: {text[-500:]}")


def _run_streaming(cmd: list[str], say: Progress) -> list[str] | None:
    """Run `cmd`, passing its output lines to `say`; the last lines if it failed."""
    tail: collections.deque[str] = collections.deque(maxlen=_BUILD_LOG_TAIL)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            say(line)
    return None if proc.returncode == 0 else list(tail)
