"""Copilot's `${VAR}` interpolation, applied to a parsed manifest tree.

Copilot substitutes shell variables in every string scalar (keys included)
after parsing, never in ints or bools. Names follow POSIX
(`[_a-zA-Z][_a-zA-Z0-9]*`); anything else, like `${1}` or `$VAR`, stays as
written. COPILOT_APPLICATION_NAME and COPILOT_ENVIRONMENT_NAME are
predefined and a process variable may not contradict them. `\\${` writes a
literal `${`. A string that becomes a JSON array of strings turns into a
list, as Copilot documents for fields such as security_groups.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from meshlocal.errors import InterpolationError, Location
from meshlocal.manifest.yaml12 import Map, Node, Scalar, Seq

APP_VAR = "COPILOT_APPLICATION_NAME"
ENV_VAR = "COPILOT_ENVIRONMENT_NAME"

_TOKEN = re.compile(r"\\\$\{|\$\{([_a-zA-Z][_a-zA-Z0-9]*)\}")
# An unescaped reference: only a substituted value may turn into a list.
_REFERENCE = re.compile(r"(?<!\\)\$\{[_a-zA-Z][_a-zA-Z0-9]*\}")


def predefined(app: str, env: str) -> dict[str, str]:
    return {APP_VAR: app, ENV_VAR: env}


def interpolate_string(
    text: str,
    environ: Mapping[str, str],
    predefined_vars: Mapping[str, str],
) -> str:
    """Substitute `${VAR}` in one string; KeyError-free: raises InterpolationError."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:  # the `\${` escape
            return "${"
        if name in predefined_vars:
            value = predefined_vars[name]
            if name in environ and environ[name] != value:
                raise InterpolationError(
                    f'predefined variable "{name}" cannot be overridden by the process '
                    f'environment ("{environ[name]}" != "{value}")',
                    hint=f"unset {name} in your shell",
                )
            return value
        if name in environ:
            return environ[name]
        raise InterpolationError(
            f'environment variable "{name}" is not defined',
            hint=f"export {name}=... before running meshlocal, or write \\${{{name}}} "
            "for a literal ${",
        )

    return _TOKEN.sub(replace, text)


def _as_list(node: Scalar, value: str) -> Seq | None:
    if not value.startswith("["):
        return None
    try:
        decoded = json.loads(value)
    except ValueError:
        return None
    if not isinstance(decoded, list) or not decoded:
        return None
    if not all(isinstance(item, str) for item in decoded):
        return None
    return Seq(node.loc, [Scalar(node.loc, item, item, "str") for item in decoded])


def interpolate(
    node: Node | None,
    environ: Mapping[str, str],
    predefined_vars: Mapping[str, str],
    errors: list[InterpolationError] | None = None,
) -> Node | None:
    """A new tree with every string scalar interpolated; errors carry file:line.

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
            if node.kind != "str" or "$" not in node.text:
                return node
            value = sub(node.text, node.loc)
            if value == node.text:
                return node
            as_list = _as_list(node, value) if _REFERENCE.search(node.text) else None
            return as_list if as_list is not None else Scalar(node.loc, value, value, "str")
        if isinstance(node, Seq):
            return Seq(node.loc, [walk(item) for item in node.items])
        assert isinstance(node, Map)
        out = Map(node.loc)
        for key, child in node.items.items():
            new_key = sub(key, node.keys[key]) if "$" in key else key
            out.items[new_key] = walk(child)
            out.keys[new_key] = node.keys[key]
        return out

    return None if node is None else walk(node)
