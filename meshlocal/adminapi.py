"""The client side of the data plane's admin API: JSON over HTTP on a localhost port."""

from __future__ import annotations

import json
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
    """`method` defaults to POST with a body, GET without."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base_url + path,
        data=data,
        method=method or ("POST" if data is not None else "GET"),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", str(exc))
        except ValueError:
            message = str(exc)
        raise AdminRefused(remote_message(str(message)), exc.code) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataPlaneError(
            f"the data plane's admin API at {base_url} does not answer: {exc}",
            hint="`meshlocal ps` checks it; `meshlocal up -d` restarts it",
        ) from None


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
