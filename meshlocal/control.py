"""How the CLI tells the controller what to do (`up`, `scale`, `up --replace`).

The controller listens on no network at all. Its one door is a unix socket
in its own filesystem, mode 0600: in container mode only `docker exec` into
the controller reaches it, so only someone who already holds the engine can
change the mesh; in host mode a file in the state directory, owned by root.
One JSON request line, one JSON response line.

The CLI's side in container mode is a few lines of Python run by `docker
exec` (importing meshlocal there would cost 0.6 s per command).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import stat
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from meshlocal.errors import DataPlaneError, MeshlocalError, RuntimeFailure
from meshlocal.privileges import peer_uid
from meshlocal.runtime.engine import Engine

if TYPE_CHECKING:
    import asyncio

CONTAINER_SOCKET = "/run/meshlocal/control.sock"
REQUEST_ENV = "MESHLOCAL_REQUEST"

Handler = Callable[[str, Any], Awaitable[Any]]

# Run inside the controller container by `docker exec`: the request comes in
# the environment (compressed: an environment string is at most 128 KiB).
_EXEC_CLIENT = """\
import base64, os, socket, sys, zlib
s = socket.socket(socket.AF_UNIX)
s.settimeout(float(sys.argv[2]))
s.connect(sys.argv[1])
s.sendall(zlib.decompress(base64.b64decode(os.environ["MESHLOCAL_REQUEST"])) + b"\\n")
buf = b""
while not buf.endswith(b"\\n"):
    chunk = s.recv(1 << 16)
    if not chunk:
        break
    buf += chunk
sys.stdout.buffer.write(buf)
"""


class ControlError(RuntimeFailure):
    """The controller refused a command: its own words."""


async def serve(path: str, handler: Handler) -> asyncio.AbstractServer:
    """Answer requests on a unix socket only its owner may open."""
    import asyncio  # the controller's side only: the CLI calls, and need not load it

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                op, body = str(request["op"]), request.get("body")
            except (ValueError, KeyError, TypeError) as exc:
                reply: dict[str, Any] = {"error": f"bad request: {exc!r}"}
            else:
                try:
                    reply = {"result": await handler(op, body)}
                except MeshlocalError as exc:
                    reply = {"error": exc.render()}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        # Someone else's directory, or a link to one (a shared /tmp), could
        # swap the socket for theirs.
        raise DataPlaneError(
            f"{folder} is not a directory of this user: the controller will not listen there",
            hint="remove it, or set XDG_STATE_HOME to a directory of your own",
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old = os.umask(0o077)
    try:
        return await asyncio.start_unix_server(one, path=path, limit=64 * 1024 * 1024)
    finally:
        os.umask(old)


def _reply(raw: bytes, where: str) -> Any:
    try:
        reply = json.loads(raw)
    except ValueError:
        raise DataPlaneError(
            f"the controller ({where}) did not answer",
            hint="`meshlocal ps` checks it; `meshlocal up -d` restarts it",
        ) from None
    if "error" in reply:
        raise ControlError(str(reply["error"]).removeprefix("error: "))
    return reply.get("result")


def call_socket(path: str, op: str, body: Any = None, timeout: float = 120.0) -> Any:
    """Host mode: the controller's socket, from this process."""
    request = json.dumps({"op": op, "body": body}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            if peer_uid(sock) not in (0, os.geteuid()):
                raise OSError(f"{path} is served by another user")
            sock.sendall(request)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
    except OSError as exc:
        raise DataPlaneError(
            f"the host-mode controller at {path} does not answer: {exc}",
            hint="`meshlocal up -d` restarts it",
        ) from None
    return _reply(buf, path)


def call_container(
    engine: Engine, container_id: str, op: str, body: Any = None, timeout: float = 120.0
) -> Any:
    """Container mode: through `docker exec` into the controller."""
    request = json.dumps({"op": op, "body": body}).encode()
    packed = base64.b64encode(zlib.compress(request, 6)).decode()
    code, out, err = engine.exec_capture(
        container_id,
        ["python3", "-c", _EXEC_CLIENT, CONTAINER_SOCKET, str(timeout)],
        {REQUEST_ENV: packed},
        timeout,
    )
    if code != 0:
        words = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise DataPlaneError(
            f"the controller did not take the command ({words[0]})",
            hint="`meshlocal ps` checks it; `meshlocal up -d` restarts it",
        )
    return _reply(out, "container")
