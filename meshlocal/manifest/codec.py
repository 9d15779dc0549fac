"""JSON round trip for the model, so the agent can run where the workspace isn't.

The data-plane container has no copy of the workspace; `meshlocal up` hands
it the merged EnvironmentSpec as JSON. Decoding is driven by the dataclass
type hints, so a new model field needs no change here.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from meshlocal.errors import Location
from meshlocal.manifest.model import EnvironmentSpec

T = TypeVar("T")


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def from_jsonable(tp: Any, data: Any) -> Any:
    """Rebuild a value of type `tp` from `to_jsonable` output."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return from_jsonable(inner, data)
    if origin is tuple:
        args = get_args(tp)
        item = args[0]
        return tuple(from_jsonable(item, v) for v in data)
    if origin is list:
        return [from_jsonable(get_args(tp)[0], v) for v in data]
    if origin is dict:
        kt, vt = get_args(tp)
        return {from_jsonable(kt, k): from_jsonable(vt, v) for k, v in data.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp)
        kwargs = {
            f.name: from_jsonable(hints[f.name], data[f.name])
            for f in dataclasses.fields(tp)
            if f.name in data
        }
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, Enum | Path):
        return tp(data)
    return data


def dump_spec(spec: EnvironmentSpec) -> str:
    return json.dumps(to_jsonable(spec), sort_keys=True)


def load_spec(text: str) -> EnvironmentSpec:
    spec = from_jsonable(EnvironmentSpec, json.loads(text))
    assert isinstance(spec, EnvironmentSpec)
    return spec


__all__ = ["Location", "dump_spec", "from_jsonable", "load_spec", "to_jsonable"]
