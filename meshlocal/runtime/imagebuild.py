"""What every image builder shares: the engine's image calls.

Whether an image exists (every builder's cache check), a build streamed from
the engine (progress lines, the log's tail in errors, cancellation from
another thread), and image.location: a ref used as is, pulled when missing.
"""

from __future__ import annotations

import collections
import contextlib
import io
import socket
import tarfile
import threading
from collections.abc import Callable, Iterable
from typing import Any

import docker
import docker.errors

from meshlocal.errors import ImageError, Location

Progress = Callable[[str], None]

_BUILD_LOG_TAIL = 20


def _noop(_line: str) -> None:
    return None


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


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
