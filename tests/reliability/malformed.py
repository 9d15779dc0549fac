"""A seeded generator of malformed Copilot workspaces.

Each case starts from a valid workspace (a Backend Service, a Load Balanced
Web Service and the environment) and breaks it one way: YAML syntax, wrong
types, missing or unknown keys, bad enums, undefined variables, hostile YAML
(alias bombs, deep nesting, huge scalars, binary), broken workspace and
environment files. Seeded, so a count of N cases is always the same N.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

API: dict[str, Any] = {
    "name": "api",
    "type": "Backend Service",
    "image": {
        "location": "busybox:local",
        "port": 80,
        "healthcheck": {"command": ["CMD-SHELL", "true"], "interval": "5s", "retries": 2},
    },
    "command": ["httpd", "-f"],
    "count": 2,
    "variables": {"A": "1"},
    "network": {"connect": True},
}
WEB: dict[str, Any] = {
    "name": "web",
    "type": "Load Balanced Web Service",
    "http": {"path": "/", "healthcheck": "/health"},
    "image": {"location": "busybox:local", "port": 8080},
    "count": 1,
    "network": {"connect": {"alias": "front"}},
}
ENV: dict[str, Any] = {"name": "test", "type": "Environment"}

# Values of the wrong kind for almost any key.
WRONG: list[Any] = [
    None,
    True,
    -1,
    0,
    2**70,
    3.5,
    "",
    "x" * 5000,
    "\u202e\u0000evil",
    [],
    [1, [2, [3]]],
    {},
    {"nested": {"deeper": None}},
    "${NOT_DEFINED_ANYWHERE}",
    "70000",
]
PATHS = [
    ("name",),
    ("type",),
    ("image",),
    ("image", "location"),
    ("image", "port"),
    ("image", "healthcheck"),
    ("image", "healthcheck", "command"),
    ("image", "healthcheck", "interval"),
    ("image", "healthcheck", "retries"),
    ("command",),
    ("count",),
    ("variables",),
    ("variables", "A"),
    ("network",),
    ("network", "connect"),
]


@dataclass(frozen=True)
class Case:
    kind: str
    files: dict[str, bytes]  # path inside the workspace -> content


def _dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()


def _base() -> dict[str, bytes]:
    return {
        "copilot/.workspace": b"application: fuzz\n",
        "copilot/.meshlocal.yml": b"health_check_interval: 1s\n",
        "copilot/api/manifest.yml": _dump(API),
        "copilot/web/manifest.yml": _dump(WEB),
        "copilot/environments/test/manifest.yml": _dump(ENV),
    }


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _del(doc: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = doc
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _wrong_type(rng: random.Random) -> Case:
    which, doc = rng.choice([("api", API), ("web", WEB)])
    doc = copy.deepcopy(doc)
    _set(doc, rng.choice(PATHS), rng.choice(WRONG))
    return Case("wrong type or value", {f"copilot/{which}/manifest.yml": _dump(doc)})


def _missing_key(rng: random.Random) -> Case:
    doc = copy.deepcopy(API)
    for _ in range(rng.randint(1, 3)):
        _del(doc, rng.choice(PATHS))
    return Case("missing key", {"copilot/api/manifest.yml": _dump(doc)})


def _unknown(rng: random.Random) -> Case:
    doc = copy.deepcopy(API)
    choice = rng.randrange(4)
    if choice == 0:
        doc["type"] = rng.choice(["Lambda Service", "backend service", "Worker", "Static Site"])
    elif choice == 1:
        doc["imgae"] = doc.pop("image")  # a typo of a required key
    elif choice == 2:
        doc["name"] = rng.choice(["API!", "-x", "a" * 300, "../../etc", "api\nname"])
    else:
        doc["network"] = {"connect": {"alias": rng.choice(["", "a b", "x" * 300, "api.", 5])}}
    return Case("unknown or invalid name/enum", {"copilot/api/manifest.yml": _dump(doc)})


def _syntax(rng: random.Random) -> Case:
    text = _dump(API).decode()
    lines = text.splitlines()
    i = rng.randrange(len(lines))
    broken = rng.choice(
        [
            lambda s: "\t" + s,
            lambda s: s + ' "unclosed',
            lambda s: s + " [1, 2",
            lambda s: s.replace(":", "", 1),
            lambda s: s + ": : :",
            lambda s: "  " * rng.randint(1, 5) + s,
            lambda s: s + "\n" + s,  # duplicate key
            lambda s: "%YAML 9.9\n" + s,
            lambda s: s + " &a *a",
            lambda s: "!!python/object/apply:os.system ['true']\n" + s,
        ]
    )
    lines[i] = broken(lines[i])
    return Case("YAML syntax", {"copilot/api/manifest.yml": "\n".join(lines).encode() + b"\n"})


def _hostile_yaml(rng: random.Random) -> Case:
    kind = rng.randrange(6)
    if kind == 0:  # billion laughs
        parts = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        for n in range(1, 9):
            parts.append(f"a{n}: &a{n} [" + ",".join([f"*a{n - 1}"] * 9) + "]")
        body = _dump(API).decode() + "\n".join(parts) + "\nvariables: {X: *a8}\n"
        data = body.encode()
    elif kind == 1:  # deep nesting
        depth = rng.choice([200, 2000, 20000])
        data = _dump(API) + b"variables: " + b"[" * depth + b"]" * depth + b"\n"
    elif kind == 2:  # binary and invalid UTF-8
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))
    elif kind == 3:  # a huge scalar
        data = _dump(API) + b"description: " + b"y" * 2_000_000 + b"\n"
    elif kind == 4:  # not a mapping at the top
        data = rng.choice([b"", b"---\n", b"- a\n- b\n", b"42\n", b"null\n", b"--- |\n  text\n"])
    else:  # NUL bytes and a BOM in the middle
        raw = _dump(API)
        cut = rng.randrange(len(raw))
        data = raw[:cut] + rng.choice([b"\x00", b"\xef\xbb\xbf", b"\xff\xfe"]) + raw[cut:]
    return Case("hostile YAML", {"copilot/api/manifest.yml": data})


def _workspace_files(rng: random.Random) -> Case:
    choice = rng.randrange(4)
    if choice == 0:
        return Case(
            "broken .workspace",
            {
                "copilot/.workspace": rng.choice(
                    [b"", b"app: x\n", b"application: [1]\n", b"\x00\x01"]
                )
            },
        )
    if choice == 1:
        env = copy.deepcopy(ENV)
        _set(env, (rng.choice(["name", "type", "network"]),), rng.choice(WRONG))
        return Case(
            "broken environment manifest", {"copilot/environments/test/manifest.yml": _dump(env)}
        )
    if choice == 2:
        doc = copy.deepcopy(WEB)
        doc["name"] = "api"  # two services with one name
        return Case("duplicate service", {"copilot/web/manifest.yml": _dump(doc)})
    doc = copy.deepcopy(API)
    doc["env_file"] = rng.choice(["missing.env", "../../../../etc/shadow", "/dev/zero"])
    return Case("bad env_file", {"copilot/api/manifest.yml": _dump(doc)})


GENERATORS: list[Callable[[random.Random], Case]] = [
    _wrong_type,
    _missing_key,
    _unknown,
    _syntax,
    _hostile_yaml,
    _workspace_files,
]


def cases(count: int, seed: int = 8) -> list[Case]:
    rng = random.Random(seed)
    return [GENERATORS[i % len(GENERATORS)](rng) for i in range(count)]


def materialise(case: Case, root: Path) -> Path:
    files = {**_base(), **case.files}
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def changed_lines(case: Case, limit: int = 4) -> str:
    """What a case changed, as a short `-removed +added` diff of its first file."""
    import difflib

    path, data = next(iter(case.files.items()))
    before = _base().get(path, b"").decode(errors="replace").splitlines()
    after = data.decode(errors="replace").splitlines()
    lines = [
        line[:60]
        for line in difflib.unified_diff(before, after, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    more = f" (+{len(lines) - limit} more)" if len(lines) > limit else ""
    return f"{path}: " + " | ".join(lines[:limit]) + more
