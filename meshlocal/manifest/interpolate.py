"""Copilot's `${VAR}` interpolation, applied to a parsed manifest tree.

Follows internal/pkg/manifest/interpolate.go, which runs on the whole file
(every `environments.<env>` block too) before anything is decoded:

- only `!!str` values are interpolated: never map keys, ints, bools, or
  scalars with a custom tag;
- names are POSIX (`[_a-zA-Z][_a-zA-Z0-9]*`); `${1}` or `$VAR` stay as written;
- COPILOT_APPLICATION_NAME and COPILOT_ENVIRONMENT_NAME are predefined and
  a process variable may not contradict them;
- each reference found in the original string is replaced with
  `strings.ReplaceAll`, in order, so `\\${X}` loses its backslash (and a later
  `${X}` in the same string then replaces that too, as Copilot does);
- afterwards any string that is a JSON array of strings, except a literal
  `|` block, becomes a list (Copilot v1.29), whether or not it held a variable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from meshlocal.errors import InterpolationError, Location
from meshlocal.manifest.yaml12 import Map, Node, Scalar, Seq

APP_VAR = "COPILOT_APPLICATION_NAME"
ENV_VAR = "COPILOT_ENVIRONMENT_NAME"

# interpolatorEnvVarRegExp: an optional backslash, then ${NAME}.
_TOKEN = re.compile(r"(\\?)\$\{([_a-zA-Z][_a-zA-Z0-9]*)\}")


def predefined(app: str, env: str) -> dict[str, str]:
    return {APP_VAR: app, ENV_VAR: env}


def interpolate_string(
    text: str,
    environ: Mapping[str, str],
    predefined_vars: Mapping[str, str],
) -> str:
    """Copilot's interpolatePart: substitute `${VAR}` in one string."""
    replaced = text
    for match in _TOKEN.finditer(text):
        escape, name = match.group(1), match.group(2)
        segment = "${" + name + "}"
        if escape:
            replaced = replaced.replace("\\" + segment, segment)
            continue
        if name in predefined_vars:
            value = predefined_vars[name]
            if name in environ and environ[name] != value:
                raise InterpolationError(
                    f'predefined environment variable "{name}" cannot be overridden by OS '
                    "environment variable with the same name",
                    hint=f'unset {name} in your shell (it is "{environ[name]}", Copilot '
                    f'sets "{value}")',
                )
            replaced = replaced.replace(segment, value)
        elif name in environ:
            replaced = replaced.replace(segment, environ[name])
        else:
            raise InterpolationError(
                f'environment variable "{name}" is not defined',
                hint=f"export {name}=... before running meshlocal, or write \\${{{name}}} "
                "for a literal ${",
            )
    return replaced


def _as_list(node: Scalar, value: str) -> Seq | None:
    """A JSON array of strings as a list, as Go's json.Unmarshal into []string."""
    if "[" not in value:
        return None
    try:
        decoded = json.loads(value)
    except ValueError:
        return None
    if not isinstance(decoded, list) or not decoded:
        return None
    # Go leaves a string element unset for a JSON null: "".
    if not all(item is None or isinstance(item, str) for item in decoded):
        return None
    items = ["" if item is None else item for item in decoded]
    return Seq(node.loc, [Scalar(node.loc, item, item, "str") for item in items])


def interpolate(
    node: Node | None,
    environ: Mapping[str, str],
    predefined_vars: Mapping[str, str],
    errors: list[InterpolationError] | None = None,
) -> Node | None:
    """A new tree with every string value interpolated; errors carry file:line.

    With `errors`, every failure is appended there (the scalar stays as
    written) so a caller can report them all; without, the first one raises.
    """

    def sub(text: str, loc: Location) -> str:
        try:
            return interpolate_string(text, environ, predefined_vars)
        except InterpolationError as exc:
            exc.location = loc
            if errors is None:
                raise
            errors.append(exc)
            return text

    def walk(node: Node) -> Node:
        if isinstance(node, Scalar):
            if node.kind != "str" or node.custom_tag:
                return node
            value = sub(node.text, node.loc) if "$" in node.text else node.text
            as_list = None if node.literal else _as_list(node, value)
            if as_list is not None:
                return as_list
            if value == node.text:
                return node
            return Scalar(node.loc, value, value, "str", node.literal)
        if isinstance(node, Seq):
            return Seq(node.loc, [walk(item) for item in node.items])
        assert isinstance(node, Map)
        out = Map(node.loc)
        for key, child in node.items.items():
            out.items[key] = walk(child)  # keys stay as written
            out.keys[key] = node.keys[key]
        return out

    return None if node is None else walk(node)
