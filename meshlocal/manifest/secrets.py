"""Local values for `secrets` and `from_cfn`, which only AWS can resolve.

On AWS a secret is an SSM parameter or a Secrets Manager secret, and
`from_cfn` is a CloudFormation export. Offline, meshlocal looks each one up,
first match wins, in:

1. `copilot/.meshlocal/secrets.<env>.env` (dotenv), by the variable's
   name (`DB_PASSWORD`) and then by its reference (the SSM parameter name,
   the Secrets Manager id, or the CloudFormation export name);
2. `copilot/.meshlocal/secrets.env`, the same way;
3. the process environment variable `MESHLOCAL_SECRET_<NAME>`, where NAME is
   the variable's name upper-cased with every other character turned to `_`.

Keep `copilot/.meshlocal/` out of version control. See docs/secrets.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from meshlocal.errors import Location

SECRETS_DIR = Path("copilot") / ".meshlocal"
ENV_PREFIX = "MESHLOCAL_SECRET_"


def env_name(name: str) -> str:
    return ENV_PREFIX + re.sub(r"[^A-Z0-9_]", "_", name.upper())


def secret_files(root: Path, env: str) -> list[Path]:
    base = root / SECRETS_DIR
    return [base / f"secrets.{env}.env", base / "secrets.env"]


@dataclass
class SecretsSource:
    # (file, name -> (value, where)), most specific first
    files: list[tuple[Path, dict[str, tuple[str, Location]]]] = field(default_factory=list)
    environ: Mapping[str, str] = field(default_factory=dict)

    def lookup(self, name: str, ref: str | None = None) -> str | None:
        for _, values in self.files:
            for key in (name, ref):
                if key is not None and key in values:
                    return values[key][0]
        return self.environ.get(env_name(name))

    def how_to_provide(self, root: Path, env: str, name: str, ref: str | None) -> str:
        first = secret_files(root, env)[0]
        try:
            shown = first.relative_to(root)
        except ValueError:
            shown = first
        by_ref = f" (or {ref}=...)" if ref and ref != name else ""
        return f"add {name}=...{by_ref} to {shown}, or export {env_name(name)}=..."
