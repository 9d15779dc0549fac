"""Property tests: override merging, interpolation, and parsing never crashing."""

from __future__ import annotations

import shlex
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshlocal.errors import InterpolationError, Location, MeshlocalError
from meshlocal.manifest import check, load_environment
from meshlocal.manifest.fields import split_command
from meshlocal.manifest.interpolate import interpolate, interpolate_string
from meshlocal.manifest.merge import merge
from meshlocal.manifest.model import ServiceType
from meshlocal.manifest.yaml12 import Map, Node, Scalar, Seq, parse, plain

from .conftest import write_workspace

HERE = Path("m.yml")

# -- building trees from plain data ---------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.text(string.ascii_lowercase, max_size=3)
)
keys = st.sampled_from(["a", "b", "c", "d"])
data = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
maps = st.dictionaries(keys, data, max_size=4)


def tree(value: Any, line: int = 1) -> Node:
    loc = Location(HERE, line, 1)
    if isinstance(value, dict):
        m = Map(loc)
        for k, v in value.items():
            m.items[k] = tree(v, line)
            m.keys[k] = loc
        return m
    if isinstance(value, list):
        return Seq(loc, [tree(v, line) for v in value])
    kind = {type(None): "null", bool: "bool", int: "int", str: "str"}[type(value)]
    text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return Scalar(loc, value, text, kind)


def reference_merge(base: Any, override: Any) -> Any:
    """The rule, stated plainly: maps merge, null keeps, everything else replaces."""
    if override is None:
        return base
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            merged = reference_merge(out.get(k), v)
            if merged is not None or k in out:
                out[k] = merged
        return {k: v for k, v in out.items() if not (v is None and k not in base)}
    return override


@settings(deadline=None)  # shared, noisy CI cores
@given(maps, maps)
def test_merge_matches_the_reference_rule(base: dict[str, Any], override: dict[str, Any]) -> None:
    assert plain(merge(tree(base), tree(override))) == reference_merge(base, override)


@settings(deadline=None)  # shared, noisy CI cores
@given(maps, maps)
def test_merge_is_idempotent(a: dict[str, Any], b: dict[str, Any]) -> None:
    # Applying the same override twice changes nothing more (not associative:
    # an empty map merges into a map but replaces a list).
    once = merge(tree(a), tree(b))
    assert plain(merge(once, tree(b))) == plain(once)


@settings(deadline=None)  # shared, noisy CI cores
@given(maps)
def test_merge_with_empty_override_is_identity(base: dict[str, Any]) -> None:
    assert plain(merge(tree(base), tree({}))) == base


@settings(deadline=None)  # shared, noisy CI cores
@given(maps, maps)
def test_merge_does_not_modify_its_inputs(base: dict[str, Any], override: dict[str, Any]) -> None:
    b, o = tree(base), tree(override)
    merge(b, o)
    assert plain(b) == base
    assert plain(o) == override


@settings(deadline=None)  # shared, noisy CI cores
@given(st.booleans(), st.text(string.ascii_lowercase, min_size=1, max_size=5))
def test_connect_bool_and_map_replace_each_other(flag: bool, alias: str) -> None:
    as_map = tree({"network": {"connect": {"alias": alias}}})
    as_bool = tree({"network": {"connect": flag}})
    assert plain(merge(as_map, as_bool)) == {"network": {"connect": flag}}
    assert plain(merge(as_bool, as_map)) == {"network": {"connect": {"alias": alias}}}


@settings(deadline=None)  # shared, noisy CI cores
@given(st.sampled_from(["build", "location"]), st.integers(1, 65535))
def test_image_build_and_location_replace_each_other(key: str, port: int) -> None:
    other = "location" if key == "build" else "build"
    base = tree({"image": {other: "x", "port": port}})
    result = plain(merge(base, tree({"image": {key: "y"}})))
    assert result == {"image": {key: "y", "port": port}}


@settings(deadline=None)  # shared, noisy CI cores
@given(st.integers(0, 9), st.integers(0, 9))
def test_count_spot_and_range_replace_each_other(spot: int, low: int) -> None:
    base = tree({"count": {"range": f"{low}-10", "cpu_percentage": 70}})
    assert plain(merge(base, tree({"count": {"spot": spot}}))) == {"count": {"spot": spot}}
    back = plain(merge(tree({"count": {"spot": spot}}), base))
    assert back == {"count": {"range": f"{low}-10", "cpu_percentage": 70}}


# -- interpolation ---------------------------------------------------------------

names = st.from_regex(r"[_A-Za-z][_A-Za-z0-9]{0,6}", fullmatch=True)
literal = st.text(alphabet=st.characters(blacklist_characters="$\\"), max_size=8)
# A value holding `${` would be replaced again by a later reference (Copilot's
# ReplaceAll); test_replace_all_quirks covers that.
values = st.text(alphabet=st.characters(blacklist_characters="$"), max_size=8)


@settings(deadline=None)  # shared, noisy CI cores
@given(st.lists(st.one_of(literal, names.map(lambda n: ("var", n))), max_size=6), st.data())
def test_interpolation_substitutes_each_reference(parts: list[Any], draw: st.DataObject) -> None:
    environ: dict[str, str] = {}
    template, expected = "", ""
    for part in parts:
        if isinstance(part, tuple):
            name = part[1]
            if name.startswith("COPILOT_"):
                continue
            environ.setdefault(name, draw.draw(values))
            template += "${" + name + "}"
            expected += environ[name]
        else:
            template += part
            expected += part
    assert interpolate_string(template, environ, {}) == expected


@settings(deadline=None)  # shared, noisy CI cores
@given(literal)
def test_text_without_references_is_unchanged(text: str) -> None:
    assert interpolate_string(text, {}, {}) == text


@settings(deadline=None)  # shared, noisy CI cores
@given(names, literal)
def test_escaped_reference_is_literal(name: str, tail: str) -> None:
    assert interpolate_string("\\${" + name + "}" + tail, {}, {}) == "${" + name + "}" + tail


@settings(deadline=None)  # shared, noisy CI cores
@given(names)
def test_undefined_variable_is_named_with_its_location(name: str) -> None:
    node = parse(f"image:\n  location: repo:${{{name}}}\n", HERE)
    with pytest.raises(InterpolationError) as info:
        interpolate(
            node,
            {},
            {"COPILOT_APPLICATION_NAME": "a", "COPILOT_ENVIRONMENT_NAME": "e"}
            if not name.startswith("COPILOT_")
            else {},
        )
    assert info.value.message == f'environment variable "{name}" is not defined'
    assert str(info.value.location) == "m.yml:2:13"


def test_predefined_variables() -> None:
    pre = {"COPILOT_APPLICATION_NAME": "shop", "COPILOT_ENVIRONMENT_NAME": "prod"}
    text = "/copilot/${COPILOT_APPLICATION_NAME}/${COPILOT_ENVIRONMENT_NAME}/x"
    assert interpolate_string(text, {}, pre) == "/copilot/shop/prod/x"
    # the same value from the shell is fine; a different one is refused
    assert interpolate_string(text, {"COPILOT_ENVIRONMENT_NAME": "prod"}, pre)
    with pytest.raises(InterpolationError):
        interpolate_string(text, {"COPILOT_ENVIRONMENT_NAME": "test"}, pre)


def test_non_posix_references_stay_as_written() -> None:
    assert interpolate_string("$HOME ${1X} ${} ${A-B}", {}, {}) == "$HOME ${1X} ${} ${A-B}"


def test_json_array_becomes_a_list_and_ints_are_not_interpolated() -> None:
    node = parse('groups: ${SGS}\nport: 80\nname: "${N}"\n', HERE)
    out = interpolate(node, {"SGS": '["sg-1","sg-2"]', "N": "x"}, {})
    assert plain(out) == {"groups": ["sg-1", "sg-2"], "port": 80, "name": "x"}


def test_json_array_without_a_reference_becomes_a_list_but_not_in_a_literal_block() -> None:
    # interpolate.go converts every !!str value, not only interpolated ones,
    # and skips yaml.LiteralStyle.
    text = (
        'a: \'["x", "y"]\'\n'
        'b: |\n  ["x"]\n'
        'c: >\n  ["x"]\n'
        "d: '[]'\n"
        "e: '[1, 2]'\n"
        "f: ' [\"x\", null]'\n"
    )
    out = plain(interpolate(parse(text, HERE), {}, {}))
    assert out == {
        "a": ["x", "y"],
        "b": '["x"]\n',
        "c": ["x"],
        "d": "[]",
        "e": "[1, 2]",
        "f": ["x", ""],
    }


def test_keys_and_custom_tags_are_not_interpolated() -> None:
    node = parse("variables:\n  ${K}: ${V}\nref: !Ref ${V}\n", HERE)
    out = plain(interpolate(node, {"K": "key", "V": "value"}, {}))
    assert out == {"variables": {"${K}": "value"}, "ref": "${V}"}


def test_replace_all_quirks() -> None:
    # Each reference of the original string is replaced everywhere with
    # strings.ReplaceAll, in order, as interpolate.go does.
    env = {"A": "x", "B": "${C}", "C": "z"}
    assert interpolate_string("\\${A} ${A}", env, {}) == "x x"
    assert interpolate_string("${A} \\${A}", env, {}) == "x \\x"
    assert interpolate_string("${B} ${C}", env, {}) == "z z"
    assert interpolate_string("\\${1} \\$A", env, {}) == "\\${1} \\$A"
    with pytest.raises(InterpolationError, match='"Q" is not defined'):
        interpolate_string("\\${A} ${Q}", env, {})


# -- fuzz: never anything but a model or a MeshlocalError ------------------------

FIELDS = [
    "name", "type", "image", "build", "location", "port", "healthcheck", "http", "path",
    "count", "range", "spot", "min", "max", "network", "connect", "alias", "variables",
    "secrets", "env_file", "command", "entrypoint", "sidecars", "depends_on", "environments",
    "test", "interval", "retries", "target_port", "target_container", "from_cfn",
]  # fmt: skip
manifest_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-2, 70000),
        st.floats(allow_nan=False),
        st.sampled_from(
            [
                "Backend Service",
                "Load Balanced Web Service",
                "Worker Service",
                "Request-Driven Web Service",
                "Static Site",
                "1-3",
                "10s",
                "api",
                "x y 'z",
                "${COPILOT_ENVIRONMENT_NAME}",
                "${UNSET}",
                "a.local",
                "80/tcp",
                "on",
            ]
        ),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5)
    ),
    max_leaves=25,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(st.sampled_from(FIELDS), manifest_values, max_size=8),
    st.sampled_from([t.value for t in ServiceType]),
)
def test_manifest_shaped_input_never_crashes(
    tmp_path: Path, doc: dict[str, Any], svc_type: str
) -> None:
    doc.setdefault("type", svc_type)
    root = write_workspace(tmp_path / "fuzz", {"api": yaml.safe_dump(doc)})
    # Only workspace/environment problems raise; this workspace has neither.
    report = check(root, None, {})
    for error in report.errors:
        assert isinstance(error, MeshlocalError)
        assert error.location is not None


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_arbitrary_text_parses_or_raises_manifest_error(text: str) -> None:
    try:
        parse(text, HERE)
    except MeshlocalError as error:
        assert error.location is not None


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_a_manifest(tmp_path: Path, raw: bytes) -> None:
    root = write_workspace(tmp_path / "bytes", {"api": ""})
    (root / "copilot" / "api" / "manifest.yml").write_bytes(raw)
    report = check(root, None, {})
    for error in report.errors:
        assert error.location is not None


# -- field parsers ----------------------------------------------------------------

plain_tokens = st.one_of(
    st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,3})?", fullmatch=True),
    st.sampled_from(["on", "off", "yes", "no", "y", "n", "true", "False", "0x1F", "1e3", ".5"]),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,6}", fullmatch=True), plain_tokens))
def test_plain_variables_reach_the_container_as_written(
    tmp_path: Path, variables: dict[str, str]
) -> None:
    variables = {k: v for k, v in variables.items() if not k.startswith("COPILOT_")}
    body = "".join(f"  {k}: {v}\n" for k, v in variables.items())
    root = write_workspace(
        tmp_path / "vars",
        {"api": "type: Backend Service\nimage:\n  location: x\nvariables:\n" + body},
    )
    report = check(root, None, {})
    assert report.ok, [e.render() for e in report.errors]
    assert report.spec.service("api").variables == variables


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 50), st.integers(0, 50), st.booleans())
def test_count_range_gives_its_minimum(tmp_path: Path, low: int, span: int, as_map: bool) -> None:
    high = low + span
    count = f"{{min: {low}, max: {high}}}" if as_map else f"{low}-{high}"
    root = write_workspace(
        tmp_path / "count",
        {
            "api": "type: Backend Service\nimage:\n  location: x\n"
            f"count:\n  range: {count}\n  cpu_percentage: 50\n"
        },
    )
    assert load_environment(root, None, {}).service("api").count == low


@settings(deadline=None)
@given(
    st.lists(st.text(string.ascii_letters + string.digits + " '\"$\\-_/.", min_size=1), min_size=1)
)
def test_command_split_inverts_shell_quoting(words: list[str]) -> None:
    assert split_command(" ".join(shlex.quote(w) for w in words)) == words
