"""YAML 1.2 loading that keeps what Copilot (go-yaml v3) sees, with positions.

PyYAML speaks YAML 1.1, where `on`, `off`, `yes` and `no` are booleans and
`0123` is octal. Copilot reads manifests with go-yaml v3, which follows the
YAML 1.2 core schema, so a SafeLoader subclass with core-schema resolvers is
used here. The composed node graph is then turned into a small tree of
:class:`Scalar`, :class:`Map` and :class:`Seq` that remembers, for every
value and key, the file:line:col it was written at, and for every scalar the
exact text written (a variable `0123` must reach the container as "0123").
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from meshlocal.errors import Location, ManifestError

ScalarValue = str | int | float | bool | None

# Guards against alias bombs ("billion laughs") and deep nesting.
MAX_NODES = 200_000
MAX_DEPTH = 200

_TAG = "tag:yaml.org,2002:"


class Loader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema resolvers."""


# Start from no implicit resolvers, then add the core schema's.
Loader.yaml_implicit_resolvers = {}
Loader.add_implicit_resolver(
    _TAG + "bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
Loader.add_implicit_resolver(
    _TAG + "int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
Loader.add_implicit_resolver(
    _TAG + "float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
Loader.add_implicit_resolver(
    _TAG + "null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
Loader.add_implicit_resolver(_TAG + "merge", re.compile(r"^(?:<<)$"), ["<"])


@dataclass(eq=False)
class Node:
    loc: Location


@dataclass(eq=False)
class Scalar(Node):
    """A scalar: its core-schema value and the text exactly as written."""

    value: ScalarValue
    text: str
    # "str", "int", "float", "bool", "null" (other explicit tags count as "str")
    kind: str = "str"
    # Copilot's interpolation skips these: a `|` block keeps a JSON array as
    # text, and a custom tag (`!Ref`) is no `!!str` to go-yaml.
    literal: bool = False
    custom_tag: bool = False

    def plain(self) -> ScalarValue:
        return self.value


@dataclass(eq=False)
class Map(Node):
    items: dict[str, Node] = field(default_factory=dict)
    keys: dict[str, Location] = field(default_factory=dict)

    def get(self, key: str) -> Node | None:
        return self.items.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self.items

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)


@dataclass(eq=False)
class Seq(Node):
    items: list[Node] = field(default_factory=list)


def plain(node: Node | None) -> object:
    """The tree as plain Python data (dicts, lists, scalars); for tests and debugging."""
    if node is None:
        return None
    if isinstance(node, Scalar):
        return node.value
    if isinstance(node, Map):
        return {k: plain(v) for k, v in node.items.items()}
    assert isinstance(node, Seq)
    return [plain(v) for v in node.items]


def _mark_loc(path: Path, mark: yaml.Mark | None) -> Location:
    if mark is None:
        return Location(path)
    return Location(path, mark.line + 1, mark.column + 1)


def _offset_loc(path: Path, text: str, offset: int) -> Location:
    before = text[:offset]
    line = before.count("\n") + 1
    col = offset - (before.rfind("\n") + 1) + 1
    return Location(path, line, col)


def _scalar_value(kind: str, text: str) -> ScalarValue:
    if kind == "null":
        return None
    if kind == "bool":
        return text.lower() == "true"
    if kind == "int":
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)
    if kind == "float":
        lowered = text.lower()
        if lowered.endswith(".inf"):
            return -math.inf if lowered.startswith("-") else math.inf
        if lowered == ".nan":
            return math.nan
        return float(text)
    return text


class _Converter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def convert(self, node: yaml.Node, depth: int = 0) -> Node:
        self.count += 1
        loc = _mark_loc(self.path, node.start_mark)
        if self.count > MAX_NODES or depth > MAX_DEPTH:
            raise ManifestError(
                "document is too large or too deeply nested (alias expansion?)",
                location=loc,
                hint="meshlocal reads manifests, not arbitrary data; remove recursive anchors",
            )
        if isinstance(node, yaml.ScalarNode):
            tag = node.tag[len(_TAG) :] if node.tag.startswith(_TAG) else "str"
            kind = tag if tag in ("str", "int", "float", "bool", "null") else "str"
            try:
                value = _scalar_value(kind, node.value)
            except ValueError:  # e.g. an explicit `!!int abc`
                raise ManifestError(f"{node.value!r} is not a valid {kind}", location=loc) from None
            custom = not node.tag.startswith(_TAG)
            return Scalar(loc, value, node.value, kind, node.style == "|", custom)
        if isinstance(node, yaml.SequenceNode):
            return Seq(loc, [self.convert(child, depth + 1) for child in node.value])
        assert isinstance(node, yaml.MappingNode)
        return self._mapping(node, loc, depth)

    def _mapping(self, node: yaml.MappingNode, loc: Location, depth: int) -> Map:
        out = Map(loc)
        merged: list[Map] = []
        for key_node, value_node in node.value:
            key_loc = _mark_loc(self.path, key_node.start_mark)
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _TAG + "merge":
                merged.extend(self._merge_sources(value_node, depth))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise ManifestError(
                    "mapping keys must be plain strings",
                    location=key_loc,
                    hint="use a plain word as the key",
                )
            key = key_node.value
            if key in out.items:
                first = out.keys[key]
                raise ManifestError(
                    f'mapping key "{key}" already defined at line {first.line}',
                    location=key_loc,
                    hint="remove one of the two entries",
                )
            out.keys[key] = key_loc
            out.items[key] = self.convert(value_node, depth + 1)
        # `<<: *base` merge keys: explicit keys win, earlier sources win.
        for source in merged:
            for key, value in source.items.items():
                if key not in out.items:
                    out.items[key] = value
                    out.keys[key] = source.keys[key]
        return out

    def _merge_sources(self, node: yaml.Node, depth: int) -> list[Map]:
        converted = self.convert(node, depth + 1)
        sources = converted.items if isinstance(converted, Seq) else [converted]
        maps: list[Map] = []
        for source in sources:
            if not isinstance(source, Map):
                raise ManifestError(
                    "a merge key (<<) needs a mapping or a list of mappings",
                    location=source.loc,
                    hint="merge an anchored mapping: <<: *base",
                )
            maps.append(source)
        return maps


def decode(data: bytes, path: Path) -> str:
    """UTF-8 (with or without BOM) text, or a ManifestError at the bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        text = data[: exc.start].decode("utf-8", errors="replace")
        raise ManifestError(
            "file is not valid UTF-8",
            location=_offset_loc(path, text, len(text)),
            hint="save the manifest as UTF-8",
        ) from None


def parse(text: str, path: Path) -> Node | None:
    """Parse one YAML document; None for an empty document.

    Every YAML error becomes a ManifestError at its line and column.
    """
    loader: Loader | None = None
    try:
        loader = Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "malformed YAML"
        if exc.context and exc.problem and exc.problem.startswith("but "):
            text_ = f"{exc.context}, {exc.problem}"  # "expected X, but found Y"
        elif exc.context and exc.problem:
            text_ = f"{problem} ({exc.context})"
        else:
            text_ = problem
        raise ManifestError(
            f"malformed YAML: {text_}",
            location=_mark_loc(path, mark),
            hint="fix the YAML syntax at this position",
        ) from None
    except yaml.reader.ReaderError as exc:
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise ManifestError(
            f"malformed YAML: unacceptable character {char!r}",
            location=_offset_loc(path, text, exc.position),
            hint="remove the control character",
        ) from None
    except yaml.YAMLError as exc:  # defensive: any other PyYAML failure
        raise ManifestError(f"malformed YAML: {exc}", location=Location(path)) from None
    except RecursionError:
        # Where the parser was when the nesting ran out of stack: the line that nests.
        where = _mark_loc(path, loader.get_mark()) if loader is not None else Location(path)
        raise ManifestError(
            "document is nested too deeply", location=where, hint="flatten the document"
        ) from None
    if root is None:
        return None
    try:
        return _Converter(path).convert(root)
    except RecursionError:
        raise ManifestError(
            "document is nested too deeply", location=Location(path), hint="flatten the document"
        ) from None


def load_file(path: Path) -> Node | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(
            f"cannot read manifest: {exc.strerror or exc}", location=Location(path)
        ) from None
    return parse(decode(data, path), path)
