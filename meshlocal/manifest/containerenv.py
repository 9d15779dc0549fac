"""A container's environment: `variables`, `secrets` and `env_file`.

Secrets resolve from the local secret files and the process environment
(:mod:`meshlocal.manifest.secrets`); an env_file is checked, not read into
the model. Mixed into :class:`~meshlocal.manifest.loader.ServiceLoader`,
whose state it reads.
"""

from __future__ import annotations

from pathlib import Path

from meshlocal.errors import ManifestError, SecretNotFound
from meshlocal.manifest.envfile import parse_env_file, read_dotenv
from meshlocal.manifest.reader import ManifestReader
from meshlocal.manifest.secrets import SecretsSource, secret_files
from meshlocal.manifest.yaml12 import Map, Node, Scalar


def has_env_extension(path: str) -> bool:
    """Go's filepath.Ext(path) == ".env": the final element's last dot onwards."""
    name = path.rsplit("/", 1)[-1]
    return "." in name and name[name.rfind(".") :] == ".env"


class ContainerEnvReader(ManifestReader):
    """`variables`, `secrets` and `env_file` of the main container and the sidecars."""

    def _secrets_source(self) -> SecretsSource:
        files = []
        for path in secret_files(self.ws.root, self.env.name):
            if path.is_file():
                try:
                    files.append((path, read_dotenv(path)))
                except ManifestError as exc:
                    self.diag.add(exc)
        return SecretsSource(files, self.environ)

    def variables(self, node: Node | None, field: str) -> dict[str, str]:
        mapping = self.f.mapping(node, field)
        out: dict[str, str] = {}
        if mapping is None:
            return out
        for key, value in mapping.items.items():
            if isinstance(value, Scalar):
                # The exact text written: 0123 stays "0123", on stays "on".
                out[key] = "" if value.kind == "null" else value.text
            elif isinstance(value, Map) and set(value) == {"from_cfn"}:
                resolved = self._secret(key, value.get("from_cfn"), f"{field}.{key}.from_cfn")
                if resolved is not None:
                    out[key] = resolved
            else:
                self.f.fail(value, f"{field}.{key}", "a string or {from_cfn: EXPORT}")
        return out

    def resolve_secrets(self, node: Node | None, field: str) -> dict[str, str]:
        mapping = self.f.mapping(node, field)
        out: dict[str, str] = {}
        if mapping is None:
            return out
        for key, value in mapping.items.items():
            ref_node: Node | None = value
            if isinstance(value, Map) and len(value.items) == 1:
                kind = next(iter(value))
                if kind in ("secretsmanager", "from_cfn"):
                    ref_node = value.get(kind)
            if not isinstance(ref_node, Scalar) or ref_node.kind == "null":
                self.f.fail(
                    value,
                    f"{field}.{key}",
                    "an SSM parameter name, {secretsmanager: ID} or {from_cfn: EXPORT}",
                )
                continue
            resolved = self._secret(key, ref_node, f"{field}.{key}")
            if resolved is not None:
                out[key] = resolved
        return out

    def _secret(self, name: str, ref_node: Node | None, field: str) -> str | None:
        ref = self.f.string(ref_node, field)
        value = self.secrets.lookup(name, ref)
        if value is None:
            self.diag.error(
                f'{field}: no local value for secret "{name}"'
                + (f" ({ref})" if ref and ref != name else ""),
                ref_node.loc if ref_node is not None else None,
                self.secrets.how_to_provide(self.ws.root, self.env.name, name, ref),
                cls=SecretNotFound,
            )
        return value

    def env_extension(self, node: Node | None, field: str) -> bool:
        """validate.go: filepath.Ext(envFile) must be ".env", for every container."""
        text = self.f.string(node, field)
        if text is None or node is None or has_env_extension(text):
            return True
        self.diag.error(
            f"{field}: environment file {text} must have a .env file extension",
            node.loc,
            "rename the file to end in .env (Copilot uploads only .env files)",
        )
        return False

    def env_file(self, node: Node | None, field: str = "env_file") -> Path | None:
        text = self.f.string(node, field)
        if text is None or node is None:
            return None
        if not self.env_extension(node, field):
            return None
        path = self._path(text)
        if not path.is_file():
            self.diag.error(
                f"env_file: {text} does not exist (looked for {path})",
                node.loc,
                "env_file is relative to the workspace root, the directory that holds copilot/",
            )
            return None
        try:
            parse_env_file(path.read_bytes().decode("utf-8-sig"), path)
        except ManifestError as exc:
            self.diag.add(exc)
        except (OSError, UnicodeDecodeError) as exc:
            self.diag.error(
                f"env_file: cannot read {text}: {exc}", node.loc, "save it as a UTF-8 text file"
            )
        return path
