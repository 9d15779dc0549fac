"""The `meshlocal` command line, in docker compose's idiom.

One module per command family keeps the files small and lets each family
grow on its own: `workspace` (validate, plan), `mesh` (up, down, ps, logs,
resolve, scale, stats). Errors are mapped here, at the boundary: a
MeshlocalError becomes its message and exit status, never a traceback.
"""

from __future__ import annotations

from meshlocal.cli.app import cli, main

__all__ = ["cli", "main"]
