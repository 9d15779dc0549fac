"""Partial workspaces: Copilot deploys one service at a time."""

from __future__ import annotations

import pytest

from meshlocal.errors import ManifestError
from meshlocal.manifest import ManifestErrors, check, load_environment

from .conftest import MakeWorkspace

GOOD = "type: Backend Service\nimage:\n  location: busybox:latest\n  port: 80\n"
BROKEN = "type: Backend Service\nimage:\n  location: busybox:latest\n  port: 99999\n"


def test_named_services_load_and_a_broken_other_is_a_warning(make_ws: MakeWorkspace) -> None:
    root = make_ws({"api": GOOD, "web": BROKEN, "other": GOOD})
    report = check(root, None, {}, services=["api"])
    assert report.ok
    assert [s.name for s in report.spec.services] == ["api"]
    [note] = [n for n in report.notes if n.kind == "left-out"]
    assert note.message.startswith("service web is not named and its manifest is broken")
    assert "image.port: 99999 is out of range" in note.message
    assert note.location is not None and note.location.line == 4
    assert load_environment(root, None, {}, ["api", "other"]).service("other").port == 80


def test_no_names_refuses_a_broken_workspace_and_says_how_to_run_the_rest(
    make_ws: MakeWorkspace,
) -> None:
    root = make_ws({"api": GOOD, "web": BROKEN, "other": GOOD})
    with pytest.raises(ManifestErrors) as info:
        load_environment(root, None, {})
    rendered = info.value.render()
    assert "copilot/web/manifest.yml:4:9: error: image.port: 99999 is out of range" in rendered
    assert "`meshlocal up api other` runs them" in rendered


def test_a_named_broken_service_is_an_error(make_ws: MakeWorkspace) -> None:
    root = make_ws({"api": GOOD, "web": BROKEN})
    report = check(root, None, {}, services=["web"])
    assert [e.message for e in report.errors] == [
        "image.port: 99999 is out of range, must be between 1 and 65535"
    ]


def test_an_unknown_name_lists_the_known_ones(make_ws: MakeWorkspace) -> None:
    root = make_ws({"api": GOOD})
    with pytest.raises(ManifestError) as info:
        check(root, None, {}, services=["nope"])
    assert info.value.message == "no service nope in this workspace"
    assert info.value.hint == "known services: api"
