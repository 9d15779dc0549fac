"""YAML 1.2 core schema with positions: what Copilot's go-yaml v3 sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlocal.errors import ManifestError
from meshlocal.manifest.yaml12 import Map, Scalar, Seq, parse, plain

P = Path("svc/manifest.yml")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("on", "on"),
        ("off", "off"),
        ("yes", "yes"),
        ("No", "No"),
        ("y", "y"),
        ("true", True),
        ("False", False),
        ("0123", 123),
        ("0o17", 15),
        ("0x1F", 31),
        ("1.10", 1.1),
        ("1_000", "1_000"),
        ("~", None),
        ("null", None),
        ("", None),
        ("2001-12-14", "2001-12-14"),
        ("'0123'", "0123"),
    ],
)
def test_core_schema(text: str, value: object) -> None:
    node = parse(f"k: {text}\n", P)
    assert isinstance(node, Map)
    assert plain(node) == {"k": value}


def test_scalars_keep_the_text_written() -> None:
    node = parse('a: 0123\nb: 1.10\nc: on\nd: "x\\ty"\n', P)
    assert isinstance(node, Map)
    texts = {k: v.text for k, v in node.items.items() if isinstance(v, Scalar)}
    assert texts == {"a": "0123", "b": "1.10", "c": "on", "d": "x\ty"}


def test_every_key_and_value_has_its_line_and_column() -> None:
    node = parse("image:\n  build: api/Dockerfile\n  port:   80\nlist:\n  - a\n  - b\n", P)
    assert isinstance(node, Map)
    image = node.items["image"]
    assert isinstance(image, Map)
    assert str(node.keys["image"]) == "svc/manifest.yml:1:1"
    assert str(image.keys["port"]) == "svc/manifest.yml:3:3"
    assert str(image.items["port"].loc) == "svc/manifest.yml:3:11"
    seq = node.items["list"]
    assert isinstance(seq, Seq)
    assert [str(i.loc) for i in seq.items] == ["svc/manifest.yml:5:5", "svc/manifest.yml:6:5"]


def test_anchors_and_merge_keys() -> None:
    node = parse("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n", P)
    assert plain(node) == {"base": {"x": 1, "y": 2}, "m": {"y": 3, "x": 1}}


def test_empty_document_is_none() -> None:
    assert parse("# only a comment\n", P) is None


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "a: 1\n---\nb: 2\n",
            "2:1",
            "malformed YAML: expected a single document in the stream, but found another document",
        ),
        ("? [a, b]\n: 1\n", "1:3", "mapping keys must be plain strings"),
        ("a: &x [*x]\n", "1:4", "document is too large or too deeply nested (alias expansion?)"),
        ("a: !!int abc\n", "1:4", "'abc' is not a valid int"),
        ("a: 'open\n", "2:1", "malformed YAML: found unexpected end of stream"),
        ("a: b\n\x07\n", "2:1", "malformed YAML: unacceptable character '\\x07'"),
    ],
)
def test_errors_are_located(text: str, where: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse(text, P)
    assert str(info.value.location) == f"svc/manifest.yml:{where}"
    assert info.value.message.startswith(message)


def test_nesting_past_the_stack_is_located_at_its_line() -> None:
    depth = 20_000  # past Python's recursion limit while PyYAML composes
    with pytest.raises(ManifestError, match="nested too deeply") as info:
        parse("a: 1\nb: " + "[" * depth + "]" * depth + "\n", P)
    assert info.value.location is not None
    assert (info.value.location.path, info.value.location.line) == (P, 2)


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    with pytest.raises(ManifestError, match="too large"):
        parse("\n".join(lines) + "\n", P)
