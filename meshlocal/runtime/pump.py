"""Bytes between this terminal and a hijacked Docker stream (exec or attach).

What `docker exec -it` and `docker run -it` do, without the docker CLI: the
local terminal in raw mode (restored on every exit), stdin forwarded until
its end (then the stream's write side is shut, so the process sees EOF),
window-size changes passed on, and the output written to stdout and
stderr. Without a TTY, Docker multiplexes stdout and stderr in frames
(8-byte header: stream, 0, 0, 0, big-endian length); with one, it is one
raw stream.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

Resize = Callable[[int, int], None]  # (rows, columns)


def raw_socket(stream: Any) -> socket.socket:
    """The socket under what the docker SDK returns for `socket=True`."""
    sock = getattr(stream, "_sock", stream)
    if not isinstance(sock, socket.socket):
        raise TypeError(f"not a socket: {type(stream).__name__}")
    return sock


def terminal_size(fd: int) -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.lines, size.columns


@contextlib.contextmanager
def raw_terminal(fd: int | None) -> Iterator[None]:
    """The terminal on `fd` in raw mode (keys go to the container, Ctrl-C too); restored after."""
    if fd is None or not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class Demux:
    """Docker's stdout/stderr frames back into two streams."""

    def __init__(self, out: int, err: int) -> None:
        self._fds = {1: out, 2: err}
        self._pending = b""

    def feed(self, data: bytes) -> None:
        self._pending += data
        while len(self._pending) >= 8:
            kind, size = struct.unpack(">BxxxL", self._pending[:8])
            if len(self._pending) < 8 + size:
                return
            chunk, self._pending = self._pending[8 : 8 + size], self._pending[8 + size :]
            write_all(self._fds.get(kind, self._fds[1]), chunk)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pump(
    sock: socket.socket,
    *,
    tty: bool,
    stdin: int | None,
    stdout: int = 1,
    stderr: int = 2,
    resize: Resize | None = None,
) -> None:
    """Until the remote side ends its output. `stdin` None: nothing is sent."""
    demux = None if tty else Demux(stdout, stderr)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    old_handler: Any = None
    watch_size = resize is not None and stdin is not None and os.isatty(stdin)
    if watch_size:

        def on_winch(_signum: int, _frame: object) -> None:
            with contextlib.suppress(OSError):  # a full pipe already says "resize"
                os.write(wake_w, b"w")

        old_handler = signal.signal(signal.SIGWINCH, on_winch)
    try:
        if watch_size:
            _resize(resize, stdin)
        reading: list[socket.socket | int] = [sock, wake_r]
        if stdin is not None:
            reading.append(stdin)
        while True:
            ready, _, _ = select.select(reading, [], [])
            if wake_r in ready:
                os.read(wake_r, 512)
                _resize(resize, stdin)
            if stdin is not None and stdin in ready:
                data = _read(stdin)
                if data:
                    sock.sendall(data)
                else:  # end of input: the process reads EOF, its output goes on
                    reading.remove(stdin)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
            if sock in ready:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    return
                if demux is None:
                    write_all(stdout, data)
                else:
                    demux.feed(data)
    finally:
        if watch_size:
            signal.signal(signal.SIGWINCH, old_handler)
        os.close(wake_r)
        os.close(wake_w)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # a closed or unreadable stdin counts as its end
        return b""


def _resize(resize: Resize | None, fd: int | None) -> None:
    size = terminal_size(fd) if fd is not None else None
    if resize is not None and size is not None:
        with contextlib.suppress(Exception):  # the process may have ended meanwhile
            resize(*size)
