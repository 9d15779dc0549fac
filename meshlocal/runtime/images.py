"""The images meshlocal needs, built locally and offline.

No registry is assumed reachable: the Python base comes from Debian packages
(debootstrap), tiny test services from Debian's static busybox, the data
plane from the meshlocal installed on the host. Every builder is cached by
tag, and the tag carries a content hash where the content can change.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils
import docker.utils.build

import meshlocal
from meshlocal.errors import ImageError, Location
from meshlocal.manifest.model import BuildSpec
from meshlocal.runtime import labels

Progress = Callable[[str], None]

PYTHON_IMAGE_ENV = "MESHLOCAL_PYTHON_IMAGE"  # use this image instead of building one
DEBIAN_SUITE_ENV = "MESHLOCAL_DEBIAN_SUITE"
DEBIAN_MIRROR_ENV = "MESHLOCAL_DEBIAN_MIRROR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Debian's python3 by suite: the base must run the host's Python minor
# version, because the data plane copies the host's compiled wheels.
_SUITE_FOR_PYTHON = {(3, 11): "bookworm", (3, 13): "trixie"}
BUSYBOX_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
_BUILD_LOG_TAIL = 20


def _noop(_line: str) -> None:
    return None


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def default_suite() -> str:
    return os.environ.get(DEBIAN_SUITE_ENV) or _SUITE_FOR_PYTHON.get(
        sys.version_info[:2], "bookworm"
    )


def python_base_tag(suite: str | None = None) -> str:
    return f"meshlocal/python-base:{suite or default_suite()}"


# -- (a) the Python base --------------------------------------------------


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


# -- (b) busybox ------------------------------------------------------------


def find_busybox() -> Path:
    for path in BUSYBOX_PATHS:
        if path.is_file():
            return path
    raise ImageError(
        "no static busybox binary found (looked in /bin/busybox, /usr/bin/busybox)",
        hint="apt-get install busybox-static",
    )


def ensure_busybox_image(client: docker.DockerClient, busybox: Path | None = None) -> str:
    """A FROM scratch image with /bin/busybox and every applet linked in /bin.

    Tagged by the binary's hash, so a new busybox builds a new image.
    """
    binary = busybox or find_busybox()
    data = binary.read_bytes()
    tag = f"meshlocal/busybox:{hashlib.sha256(data).hexdigest()[:12]}"
    if image_exists(client, tag):
        return tag
    listing = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True)
    applets = sorted({a for a in listing.stdout.split() if a and a != "busybox"})
    dockerfile = (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        f"LABEL {labels.IMAGE_KIND}=busybox\n"
        "ENV PATH=/bin\n"
        'CMD ["/bin/sh"]\n'
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", dockerfile.encode())
        for directory in ("rootfs/bin", "rootfs/tmp", "rootfs/etc", "rootfs/var/www"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory.endswith("tmp") else 0o755
            tar.addfile(info)
        _add_bytes(tar, "rootfs/bin/busybox", data, mode=0o755)
        # httpd and friends look these up; scratch has neither.
        _add_bytes(tar, "rootfs/etc/passwd", b"root:x:0:0:root:/:/bin/sh\n")
        _add_bytes(tar, "rootfs/etc/group", b"root:x:0:\n")
        for applet in applets:
            info = tarfile.TarInfo(f"rootfs/bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
    buf.seek(0)
    _build_stream(
        client,
        tag,
        _noop,
        fileobj=buf,
        custom_context=True,
        what="the busybox image",
    )
    return tag


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


# -- (c) the data plane -------------------------------------------------------


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


# -- (d) service images ------------------------------------------------------


def declared_build_args(dockerfile: Path) -> set[str]:
    """The ARG names a Dockerfile declares (so meshlocal passes only those)."""
    names: set[str] = set()
    try:
        text = dockerfile.read_text(errors="replace")
    except OSError:
        return names
    for match in re.finditer(r"(?im)^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", text):
        names.add(match.group(1))
    return names


def build_service_image(
    client: docker.DockerClient,
    build: BuildSpec,
    tag: str,
    progress: Progress | None = None,
    *,
    default_args: dict[str, str] | None = None,
    location: Location | None = None,
    image_labels: dict[str, str] | None = None,
    cancel: BuildCancel | None = None,
) -> str:
    """`docker build` of image.build; returns the image id.

    `default_args` (e.g. BASE_IMAGE -> the local Python base) are passed for
    the ARGs the Dockerfile declares, unless the manifest sets them itself.
    Progress lines stream to `progress`; a failure raises ImageError with the
    last lines of the build log. `image_labels` cost one LABEL step (see
    labelled_dockerfile); `cancel` aborts the build from another thread.
    """
    if not build.dockerfile.is_file():
        raise ImageError(
            f"Dockerfile {build.dockerfile} does not exist",
            location=location,
            hint="image.build must name a Dockerfile relative to the workspace root",
        )
    if not build.context.is_dir():
        raise ImageError(f"build context {build.context} is not a directory", location=location)
    declared = declared_build_args(build.dockerfile)
    args = {k: v for k, v in (default_args or {}).items() if k in declared}
    args.update(build.args)
    text = build.dockerfile.read_text(errors="replace")
    if image_labels:
        text = labelled_dockerfile(text, image_labels, build.target)
    # The Dockerfile travels inside the context under its own name, as
    # docker-py sends one that lies outside the context.
    name = f".meshlocal.Dockerfile.{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    context = docker.utils.tar(
        str(build.context), exclude=dockerignore(build.context), dockerfile=(name, text)
    )
    with context:
        return _build_stream(
            client,
            tag,
            progress or _noop,
            fileobj=context,
            custom_context=True,
            dockerfile=name,
            buildargs=args,
            target=build.target,
            cache_from=list(build.cache_from) or None,
            what=f"image {tag}",
            location=location,
            cancel=cancel,
        )


def dockerignore(context: Path) -> list[str] | None:
    """The context's .dockerignore patterns, read as docker-py and the CLI read them."""
    try:
        lines = (context / ".dockerignore").read_text(errors="replace").splitlines()
    except OSError:
        return None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def context_files(build: BuildSpec) -> list[str]:
    """The context's files a build sends (.dockerignore applied), relative, sorted."""
    patterns = dockerignore(build.context) or []
    return sorted(
        docker.utils.build.exclude_paths(
            str(build.context), patterns, dockerfile=build.dockerfile.name
        )
    )


_FROM = re.compile(r"(?im)^[ \t]*FROM(?:[ \t]+--\S+)*[ \t]+\S+(?:[ \t]+AS[ \t]+(\S+))?[ \t]*$")
_ESCAPE = re.compile(r"(?i)^#[ \t]*escape[ \t]*=[ \t]*(\S)")


def labelled_dockerfile(text: str, image_labels: dict[str, str], target: str | None) -> str:
    """`text` with one LABEL instruction for all of `image_labels`, in the stage built.

    The legacy builder turns the build API's `labels` into a LABEL step per
    label; one line makes one step. It goes at the end of the `target`
    stage (the last stage without a target), where the builder puts its own.
    """
    escape = "\\"
    for line in text.splitlines():
        if not line.startswith("#"):
            break  # parser directives come first
        found = _ESCAPE.match(line)
        if found:
            escape = found.group(1)
    words = []
    for key, value in sorted(image_labels.items()):
        words.append(f"{_quoted(key, escape)}={_quoted(value, escape)}")
    label = "LABEL " + " ".join(words) + "\n"
    if target:
        stages = list(_FROM.finditer(text))
        for i, stage in enumerate(stages):
            if (stage.group(1) or "").lower() == target.lower() and i + 1 < len(stages):
                cut = stages[i + 1].start()
                return text[:cut] + label + text[cut:]
    return text + ("" if text.endswith("\n") else "\n") + label


def _quoted(word: str, escape: str) -> str:
    """A double-quoted Dockerfile word: no variable expansion, no line continuation."""
    for special in (escape, '"', "$"):
        word = word.replace(special, escape + special)
    return '"' + word.replace("\n", " ") + '"'


class BuildCancelled(ImageError):
    """A build stopped because another one failed or the user interrupted."""


class BuildCancel:
    """Aborts running builds from another thread: their connections are shut down.

    The daemon cancels a legacy build whose client went away, so nothing is
    tagged later; shutting the socket down also wakes the thread reading it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fired = False
        self._sockets: set[socket.socket] = set()

    @property
    def fired(self) -> bool:
        return self._fired

    def fire(self) -> None:
        with self._lock:
            self._fired = True
            live = list(self._sockets)
        for sock in live:
            _shutdown(sock)

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            fired = self._fired
        if fired:
            _shutdown(sock)

    def detach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _stream_socket(stream: object) -> socket.socket | None:
    """The socket under a docker-py build stream (the response its generator reads)."""
    frame = getattr(stream, "gi_frame", None)
    response = frame.f_locals.get("response") if frame is not None else None
    with contextlib.suppress(AttributeError):
        raw = response.raw._fp.fp.raw  # type: ignore[union-attr]
        sock = getattr(raw, "_sock", raw)
        if isinstance(sock, socket.socket):
            return sock
    return None


def _build_stream(
    client: docker.DockerClient,
    tag: str,
    say: Progress,
    *,
    what: str,
    location: Location | None = None,
    cancel: BuildCancel | None = None,
    **kwargs: Any,
) -> str:
    tail: collections.deque[str] = collections.deque(maxlen=_BUILD_LOG_TAIL)
    image_id: str | None = None
    sock: socket.socket | None = None
    try:
        stream: Iterable[dict[str, Any]] = client.api.build(
            tag=tag, rm=True, forcerm=True, decode=True, **kwargs
        )
        if cancel is not None:
            sock = _stream_socket(stream)
            if sock is not None:
                cancel.attach(sock)
        for chunk in stream:
            if "error" in chunk:
                tail.append(str(chunk["error"]).rstrip())
                raise ImageError(
                    f"building {what} failed: {str(chunk['error']).strip()}",
                    location=location,
                    hint="last build output:\n" + "\n".join(tail),
                )
            text = chunk.get("stream")
            if isinstance(text, str):
                for line in text.splitlines():
                    if line.strip():
                        tail.append(line)
                        say(line)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                image_id = str(aux["ID"])
    except docker.errors.APIError as exc:
        raise ImageError(
            f"building {what} failed: {exc.explanation or exc}",
            location=location,
            hint="last build output:\n" + "\n".join(tail) if tail else None,
        ) from exc
    except docker.errors.DockerException as exc:
        from meshlocal.runtime.engine import map_docker_error

        raise map_docker_error(exc) from exc
    except Exception as exc:
        if cancel is not None and cancel.fired:
            raise BuildCancelled(f"building {what} was cancelled", location=location) from exc
        raise
    finally:
        if cancel is not None and sock is not None:
            cancel.detach(sock)
    if cancel is not None and cancel.fired:
        # The stream may end quietly when its socket is shut down: the tag is not ours.
        raise BuildCancelled(f"building {what} was cancelled", location=location)
    if image_id is None:
        image_id = str(client.images.get(tag).id)
    return image_id


# -- image.location ------------------------------------------------------------


def ensure_image(
    client: docker.DockerClient,
    ref: str,
    progress: Progress | None = None,
    *,
    location: Location | None = None,
) -> str:
    """`ref` itself once it is present: local first, else pulled."""
    say = progress or _noop
    if image_exists(client, ref):
        return ref
    repository, tag = _split_ref(ref)
    say(f"pulling {ref}")
    try:
        for chunk in client.api.pull(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise docker.errors.APIError(str(chunk["error"]))
            status = chunk.get("status")
            if status and "id" not in chunk:
                say(str(status))
    except docker.errors.DockerException as exc:
        reason = exc.explanation if isinstance(exc, docker.errors.APIError) else None
        raise ImageError(
            f"image {ref} is not present locally and could not be pulled: {reason or exc}",
            location=location,
            hint=f"build it locally (docker build -t {ref} ...) or check the name and "
            "the registry login",
        ) from exc
    if not image_exists(client, ref):
        raise ImageError(f"pulling {ref} produced no image", location=location)
    return ref


def _split_ref(ref: str) -> tuple[str, str | None]:
    if "@" in ref:
        return ref, None
    repository, sep, tag = ref.rpartition(":")
    if sep and "/" not in tag:
        return repository, tag
    return ref, "latest"


__all__ = [
    "PYTHON_IMAGE_ENV",
    "BuildCancel",
    "BuildCancelled",
    "build_service_image",
    "context_files",
    "declared_build_args",
    "ensure_busybox_image",
    "ensure_dataplane_image",
    "ensure_image",
    "ensure_python_base",
    "image_exists",
    "image_python_version",
    "labelled_dockerfile",
    "runtime_distributions",
]
