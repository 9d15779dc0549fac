"""The environment: choose it (`--env`) and check its own manifest.

copilot/environments/<env>/manifest.yml is parsed so its YAML errors are
reported; nothing in it is emulated.
"""

from __future__ import annotations

from meshlocal.errors import EnvironmentNotFound, ManifestError
from meshlocal.manifest.diagnostics import Diagnostics
from meshlocal.manifest.fields import kind_of
from meshlocal.manifest.model import Environment, Workspace
from meshlocal.manifest.yaml12 import Map, Scalar, load_file


def select_environment(workspace: Workspace, env: str | None) -> Environment:
    """The environment named `env`, or the only one when `env` is None."""
    known = ", ".join(workspace.environments) or "none"
    if env is None:
        if len(workspace.environments) == 1:
            return next(iter(workspace.environments.values()))
        raise EnvironmentNotFound(
            "choose an environment with --env"
            if workspace.environments
            else "the workspace has no environment",
            hint=f"environments: {known}"
            if workspace.environments
            else "create copilot/environments/<env>/manifest.yml, or name it in "
            "copilot/.meshlocal.yml under environments:",
        )
    if env not in workspace.environments:
        raise EnvironmentNotFound(
            f'no environment "{env}" in application {workspace.app}',
            hint=f"environments: {known}",
        )
    return workspace.environments[env]


# Environment-manifest sections whose value is always a map in Copilot.
_ENV_SECTIONS = frozenset({"network", "http", "observability"})


def load_environment_manifest(environment: Environment, diag: Diagnostics) -> None:
    """Parse the environment manifest so its YAML errors are reported; nothing in it is emulated."""
    if environment.manifest_path is None:
        return
    path = environment.manifest_path
    try:
        root = load_file(path)
    except ManifestError as exc:
        diag.add(exc)
        return
    if root is None:
        return
    if not isinstance(root, Map):
        diag.error(
            f"expected a mapping of fields, got {kind_of(root)}",
            root.loc,
            "start with name: and type:",
        )
        return
    type_node = root.get("type")
    if isinstance(type_node, Scalar) and type_node.text != "Environment":
        diag.error(
            f'type: an environment manifest has type "Environment", not "{type_node.text}"',
            type_node.loc,
            "write type: Environment",
        )
    name_node = root.get("name")
    if isinstance(name_node, Scalar) and name_node.text != environment.name:
        diag.error(
            f'name: "{name_node.text}" differs from its directory '
            f"copilot/environments/{environment.name}/",
            name_node.loc,
            f"set `name: {environment.name}`",
        )
    for key in ("name", "type"):
        node = root.get(key)
        if node is not None and not isinstance(node, Scalar):
            diag.error(
                f"{key}: expected a string, got {kind_of(node)}",
                node.loc,
                f"write `{key}: {environment.name if key == 'name' else 'Environment'}`",
            )
    for key in root:
        if key not in ("name", "type"):
            node = root.get(key)
            if key in _ENV_SECTIONS and node is not None and not isinstance(node, Map):
                # Copilot rejects these too; saying so here beats a surprise at deploy.
                diag.error(
                    f"{key}: expected a mapping of fields, got {kind_of(node)}",
                    node.loc,
                    f"see Copilot's environment manifest reference for `{key}:`",
                )
            diag.note("not-emulated", f"environment {key} is not emulated", root.keys[key])
