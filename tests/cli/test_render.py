"""`meshlocal ps`'s table, rendered from a state document."""

from __future__ import annotations

import pytest
from rich.console import Console

from meshlocal.cli import render


def replica(name: str, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "name": name,
        "index": int(name.rsplit("-", 1)[1]),
        "address": "172.27.0.3",
        "health": "healthy",
        "in_rotation": True,
        "draining": False,
        "ejected_by": [],
    }
    row.update(fields)
    return row


def test_ps_says_which_clients_eject_a_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    console = Console(record=True, width=200)
    monkeypatch.setattr(render, "out", console)
    state = {
        "app": "kudos",
        "env": "test",
        "mode": "container",
        "address": "172.27.255.254",
        "services": {
            "api": {
                "connect": None,
                "connect_endpoints": [],
                "discovery_name": None,
                "port": 80,
                "desired": 5,
                "replicas": [
                    replica("api-1"),
                    replica("api-2", ejected_by=["public"]),
                    replica("api-3", ejected_by=["172.27.0.6"]),
                    replica("api-4", ejected_by=["172.27.0.6", "172.27.0.7"]),
                    replica("api-5", draining=True, in_rotation=False, ejected_by=["public"]),
                ],
            }
        },
    }
    render.print_ps(state, None)
    lines = {
        line.split("│")[1].strip(): line
        for line in console.export_text().splitlines()
        if line.startswith("│")
    }
    assert "│ in " in lines["api-1"]
    assert "in, ejected by the public endpoint" in lines["api-2"]
    assert "in, ejected by 172.27.0.6" in lines["api-3"]
    assert "in, ejected by 2 clients" in lines["api-4"]
    assert "draining" in lines["api-5"]
