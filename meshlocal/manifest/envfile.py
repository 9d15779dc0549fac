"""Two line formats: Docker/ECS env files (env_file) and dotenv (local secrets).

`env_file` follows the ECS/Docker `--env-file` format: `KEY=VALUE` taken
literally (no quotes, no escapes), `#` comment lines, blank lines ignored.
The local secrets files use dotenv, which also allows `export `, single
and double quotes, and trailing ` # comments`.
"""

from __future__ import annotations

import re
from pathlib import Path

from meshlocal.errors import Location, ManifestError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_./:\-]*")
_DOUBLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ManifestError(
            f"cannot read {path}: {exc.strerror or exc}", location=Location(path)
        ) from None
    except UnicodeDecodeError:
        raise ManifestError("file is not valid UTF-8", location=Location(path)) from None


def parse_env_file(text: str, path: Path) -> dict[str, tuple[str, Location]]:
    """ECS/Docker env-file lines; values exactly as written after the first `=`."""
    out: dict[str, tuple[str, Location]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        loc = Location(path, number, 1)
        if not sep or not key or key != key.strip() or not _KEY.fullmatch(key):
            raise ManifestError(
                f"invalid env file line {raw.strip()!r}",
                location=loc,
                hint="write KEY=VALUE; ECS does not copy variables from the host",
            )
        out[key] = (value, loc)
    return out


def read_env_file(path: Path) -> dict[str, str]:
    """The variables an `env_file` gives a container (for the runtime)."""
    return {k: v for k, (v, _) in parse_env_file(_read(path), path).items()}


def _dotenv_value(rest: str, loc: Location) -> str:
    rest = rest.strip()
    if rest[:1] == "'":
        end = rest.find("'", 1)
        if end < 0:
            raise ManifestError("unterminated single quote", location=loc)
        return rest[1:end]
    if rest[:1] == '"':
        out: list[str] = []
        i = 1
        while i < len(rest):
            ch = rest[i]
            if ch == "\\" and i + 1 < len(rest):
                out.append(_DOUBLE_ESCAPES.get(rest[i + 1], "\\" + rest[i + 1]))
                i += 2
                continue
            if ch == '"':
                return "".join(out)
            out.append(ch)
            i += 1
        raise ManifestError("unterminated double quote", location=loc)
    hash_at = rest.find(" #")
    return (rest[:hash_at] if hash_at >= 0 else rest).strip()


def parse_dotenv(text: str, path: Path) -> dict[str, tuple[str, Location]]:
    out: dict[str, tuple[str, Location]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, rest = line.partition("=")
        key = key.strip()
        loc = Location(path, number, 1)
        if not sep or not key or any(c.isspace() for c in key):
            raise ManifestError(
                f"invalid line {raw.strip()!r}",
                location=loc,
                hint="write NAME=value (quotes allowed)",
            )
        out[key] = (_dotenv_value(rest, loc), loc)
    return out


def read_dotenv(path: Path) -> dict[str, tuple[str, Location]]:
    return parse_dotenv(_read(path), path)
