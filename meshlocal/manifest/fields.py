"""Typed reads of manifest tree nodes, as go-yaml decodes them into Copilot's types.

Every failure becomes an error at the node's location; a wrong shape is a
DecodeError, which Copilot reports for any environment's block.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from meshlocal.errors import DecodeError
from meshlocal.manifest.diagnostics import Diagnostics
from meshlocal.manifest.merge import is_null
from meshlocal.manifest.yaml12 import Map, Node, Scalar, Seq

_LEGACY_BOOLS = {"yes": True, "on": True, "no": False, "off": False}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float | None:
    """Go's time.ParseDuration, which Copilot uses: "10s", "1m30s", "500ms"; seconds."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION.match(text, pos)
        if match is None:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if text else None


def split_command(text: str) -> list[str]:
    """Split a command string the way Copilot does (shell words, no expansion)."""
    return shlex.split(text, comments=False, posix=True)


def kind_of(node: Node) -> str:
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    assert isinstance(node, Scalar)
    return {"null": "null", "bool": "a boolean", "int": "an integer", "float": "a number"}.get(
        node.kind, f"{node.text!r}"
    )


@dataclass
class Fields:
    """Typed reads of tree nodes; every failure becomes an error at its location."""

    diag: Diagnostics

    def fail(self, node: Node, field: str, expected: str, hint: str | None = None) -> None:
        self.diag.error(
            f"{field}: expected {expected}, got {kind_of(node)}",
            node.loc,
            hint or f"write {expected} here (see docs/manifest-support.md)",
            cls=DecodeError,
        )

    def string(self, node: Node | None, field: str) -> str | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Scalar):
            return node.text
        self.fail(node, field, "a string")
        return None

    def integer(
        self, node: Node | None, field: str, low: int = 0, high: int | None = None
    ) -> int | None:
        if node is None or is_null(node):
            return None
        value: int | None = None
        if isinstance(node, Scalar) and node.kind == "int":
            assert isinstance(node.value, int)
            value = node.value
        if value is None:
            # go-yaml won't decode a string into an int, quoted or interpolated:
            # Copilot keeps `${PORT}` a !!str (aws/copilot-cli#4928).
            digits = isinstance(node, Scalar) and re.fullmatch(r"\s*[+-]?\d+\s*", node.text)
            self.fail(
                node,
                field,
                "an integer",
                "write the number unquoted; Copilot reads a quoted or ${VAR} value as a string here"
                if digits
                else None,
            )
            return None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.diag.error(
                f"{field}: {value} is out of range, must be {bounds}",
                node.loc,
                f"use a value {bounds}",
            )
            return None
        return value

    def port(self, node: Node | None, field: str) -> int | None:
        return self.integer(node, field, 1, 65535)

    def boolean(self, node: Node | None, field: str) -> bool | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Scalar):
            if node.kind == "bool":
                return bool(node.value)
            # go-yaml v3 still reads YAML 1.1 booleans into a typed bool field.
            lowered = node.text.strip().lower()
            if node.kind == "str" and lowered in ("true", "false"):
                return lowered == "true"
            if node.kind == "str" and lowered in _LEGACY_BOOLS:
                return _LEGACY_BOOLS[lowered]
        self.fail(node, field, "true or false")
        return None

    def duration(self, node: Node | None, field: str) -> float | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Scalar) and node.kind == "str":
            seconds = parse_duration(node.text)
            if seconds is not None:
                return seconds
        if isinstance(node, Scalar) and node.kind == "int" and node.value == 0:
            return 0.0
        # A bare number would be nanoseconds to Copilot: almost surely a mistake.
        self.fail(node, field, 'a duration such as "10s" or "1m30s"')
        return None

    def mapping(self, node: Node | None, field: str) -> Map | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Map):
            return node
        self.fail(node, field, "a mapping")
        return None

    def sequence(self, node: Node | None, field: str) -> list[Node]:
        if node is None or is_null(node):
            return []
        if isinstance(node, Seq):
            return list(node.items)
        self.fail(node, field, "a list")
        return []

    def str_list(self, node: Node | None, field: str) -> tuple[str, ...] | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Seq):
            out: list[str] = []
            for item in node.items:
                if isinstance(item, Scalar) and item.kind != "null":
                    out.append(item.text)
                else:
                    self.fail(item, f"{field}[]", "a string")
            return tuple(out)
        self.fail(node, field, "a list of strings")
        return None

    def str_map(self, node: Node | None, field: str) -> dict[str, str]:
        mapping = self.mapping(node, field)
        out: dict[str, str] = {}
        if mapping is None:
            return out
        for key, value in mapping.items.items():
            if isinstance(value, Scalar):
                out[key] = "" if value.kind == "null" else value.text
            else:
                self.fail(value, f"{field}.{key}", "a string")
        return out

    def command(self, node: Node | None, field: str) -> tuple[str, ...] | None:
        if node is None or is_null(node):
            return None
        if isinstance(node, Scalar):
            try:
                return tuple(split_command(node.text))
            except ValueError as exc:
                self.diag.error(
                    f"{field}: cannot split {node.text!r}: {exc}",
                    node.loc,
                    "close the quote, or write the command as a list",
                )
                return None
        return self.str_list(node, field)

    def unknown(self, mapping: Map, known: frozenset[str], field: str) -> None:
        for key in mapping:
            if key not in known:
                where = f"{field}.{key}" if field else key
                self.diag.note("warning", f"unknown field {where}, ignored", mapping.keys[key])
