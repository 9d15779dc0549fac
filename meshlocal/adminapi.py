"""The client side of the data plane's admin API: JSON over HTTP on a localhost port."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from meshlocal.errors import DataPlaneError, FaultError, RuntimeFailure


class AdminRefused(RuntimeFailure):
    """The admin API answered with an error status (400: bad input, 404: no such thing)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def admin_call(
    base_url: str,
    path: str,
    body: Any = None,
    timeout: float = 30.0,
    *,
    method: str | None = None,
) -> Any:
    """`method` defaults to POST with a body, GET without.

    One kept-alive connection per admin URL and thread: `up -d` polls the
    state every 50 ms, and through a tunnel (a remote engine, swarm mode)
    each new connection costs an exec in the data plane.
    """
    data = None if body is None else json.dumps(body).encode()
    verb = method or ("POST" if data is not None else "GET")
    for attempt in (0, 1):
        conn = _connection(base_url, timeout)
        reused = conn.sock is not None
        try:
            conn.request(verb, path, body=data, headers=_HEADERS)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            _drop(base_url)
            # Only a GET: a POST the server took before the connection dropped
            # must not be sent twice (a fault added twice).
            if attempt == 0 and reused and verb == "GET" and isinstance(exc, _STALE):
                continue  # a kept connection the server closed meanwhile: once more, anew
            raise DataPlaneError(
                f"the data plane's admin API at {base_url} does not answer: {exc}",
                hint="`meshlocal ps` checks it; `meshlocal up -d` restarts it",
            ) from None
        if resp.will_close:
            _drop(base_url)
        if resp.status >= 400:
            try:
                message = json.loads(raw).get("error", f"HTTP Error {resp.status}: {resp.reason}")
            except (ValueError, AttributeError):
                message = f"HTTP Error {resp.status}: {resp.reason}"
            raise AdminRefused(remote_message(str(message)), resp.status)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DataPlaneError(
                f"the data plane's admin API at {base_url} answered no JSON: {exc}"
            ) from None
    raise AssertionError("unreachable")


_HEADERS = {"content-type": "application/json"}
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_KEPT = threading.local()


def _connection(base_url: str, timeout: float) -> http.client.HTTPConnection:
    kept: dict[str, http.client.HTTPConnection] = _KEPT.__dict__.setdefault("conns", {})
    conn = kept.get(base_url)
    if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
        conn.close()  # found out before sending, so nothing is lost or sent twice: anew
    if conn is None:
        parts = urllib.parse.urlsplit(base_url)
        conn = kept[base_url] = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout
        )
    conn.timeout = timeout
    if conn.sock is not None:
        conn.sock.settimeout(timeout)
    return conn


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle kept connection is readable only once the server closed it (or broke it)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _drop(base_url: str) -> None:
    kept: dict[str, http.client.HTTPConnection] = _KEPT.__dict__.setdefault("conns", {})
    conn = kept.pop(base_url, None)
    if conn is not None:
        conn.close()


def fault_refusal(exc: AdminRefused) -> FaultError:
    """The data plane's rendered reason for refusing a fault, as our own error:
    `error:` once, its hint kept (`fault add`, `mesh.fault`)."""
    message, _, hint = exc.message.partition("\n  hint: ")
    return FaultError(message, hint=hint or None)


def remote_message(rendered: str) -> str:
    """An error the agent already rendered; re-rendering must not say `error: error:`."""
    return rendered.removeprefix("error: ")


# -- faults (the CLI's `fault` commands and the test handle's `mesh.fault`) --------------


def list_faults(base_url: str) -> list[dict[str, Any]]:
    """Every active fault: `Fault.to_json()` plus `seen`, `hits`, `description`."""
    found: list[dict[str, Any]] = admin_call(base_url, "/v1/faults")["faults"]
    return found


def add_fault(base_url: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Add a fault from parse_fault's fields; AdminRefused(400) with the rendered reason."""
    added: dict[str, Any] = admin_call(base_url, "/v1/faults", dict(fields))["fault"]
    return added


def remove_fault(base_url: str, ident: str) -> list[dict[str, Any]]:
    """The removed fault(s); AdminRefused(404) when no fault has that id."""
    path = "/v1/faults/" + urllib.parse.quote(ident, safe="")
    removed: list[dict[str, Any]] = admin_call(base_url, path, method="DELETE")["removed"]
    return removed


def clear_faults(base_url: str) -> list[dict[str, Any]]:
    removed: list[dict[str, Any]] = admin_call(base_url, "/v1/faults", method="DELETE")["removed"]
    return removed
