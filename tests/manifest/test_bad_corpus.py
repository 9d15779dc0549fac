"""The bad-input corpus: every case names each error's exact file:line:col and message.

Each directory under tests/fixtures/workspaces/bad/ is a workspace plus an
expect.yml listing every error `meshlocal validate` must report, no more.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshlocal.errors import Location, ManifestError
from meshlocal.manifest import ManifestErrors, check, load_environment

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "workspaces" / "bad"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expect.yml").is_file())


def _at(root: Path, loc: Location | None) -> str:
    assert loc is not None, "every error must carry a location"
    assert loc.line is not None, "every error must carry a line"
    column = f":{loc.column}" if loc.column is not None else ""
    return f"{loc.path.relative_to(root)}:{loc.line}{column}"


def _expected(root: Path) -> tuple[dict[str, object], list[tuple[str, str]]]:
    expect = yaml.safe_load((root / "expect.yml").read_text())
    want = [(e["at"], e["message"].replace("{root}", str(root))) for e in expect["errors"]]
    return expect, sorted(want)


def test_corpus_is_not_empty() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES)
def test_bad_case_reports_exact_location_and_message(case: str) -> None:
    root = CORPUS / case
    expect, want = _expected(root)
    environ = expect.get("environ") or {}
    if expect.get("raises"):  # a workspace-level error: raised, not collected
        with pytest.raises(ManifestError) as info:
            check(root, expect.get("env"), environ)  # type: ignore[arg-type]
        errors = [info.value]
    else:
        errors = check(root, expect.get("env"), environ).errors  # type: ignore[arg-type]
    got = sorted((_at(root, e.location), e.message) for e in errors)
    assert got == want
    assert all(e.hint for e in errors), "every error says how to fix it"


@pytest.mark.parametrize("case", CASES)
def test_bad_case_load_raises_all_errors(case: str) -> None:
    root = CORPUS / case
    expect, want = _expected(root)
    with pytest.raises(ManifestError) as info:
        load_environment(root, expect.get("env"), expect.get("environ") or {})  # type: ignore[arg-type]
    if not expect.get("raises"):
        assert isinstance(info.value, ManifestErrors)
        assert len(info.value.errors) == len(want)
    rendered = info.value.render()
    for at, message in want:
        assert f"{root / at}: error: {message}" in rendered
