"""The state every section reader of a service manifest shares.

:class:`~meshlocal.manifest.loader.ServiceLoader` sets it; the section
mixins (:mod:`~meshlocal.manifest.image`,
:mod:`~meshlocal.manifest.containerenv`, :mod:`~meshlocal.manifest.sidecars`)
read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from meshlocal.manifest.diagnostics import Diagnostics
from meshlocal.manifest.fields import Fields
from meshlocal.manifest.model import Environment, Workspace
from meshlocal.manifest.secrets import SecretsSource


class ManifestReader:
    """Workspace, environment, diagnostics and typed field reads for one environment."""

    ws: Workspace
    env: Environment
    environ: Mapping[str, str]
    diag: Diagnostics
    f: Fields
    secrets: SecretsSource

    def _path(self, text: str) -> Path:
        return (self.ws.root / text).resolve()
