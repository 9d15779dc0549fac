"""The client side of the data plane's admin API: JSON over HTTP on a localhost port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from meshlocal.errors import DataPlaneError, RuntimeFailure


def admin_call(base_url: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base_url + path,
        data=data,
        method="POST" if data is not None else "GET",
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
        raise RuntimeFailure(remote_message(str(message))) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataPlaneError(
            f"the data plane's admin API at {base_url} does not answer: {exc}",
            hint="`meshlocal ps` checks it; `meshlocal up -d` restarts it",
        ) from None


def remote_message(rendered: str) -> str:
    """An error the agent already rendered; re-rendering must not say `error: error:`."""
    return rendered.removeprefix("error: ")
