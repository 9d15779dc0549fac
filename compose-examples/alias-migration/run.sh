#!/usr/bin/env bash
# One command: Copilot's "Upgrading from Service Discovery" in three steps,
# offline. Options go to migrate.py (--keep, --calls N, --dataplane host, --json FILE).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
VENV="${MESHLOCAL_VENV:-$ROOT/.venv}"
exec "$VENV/bin/python" "$ROOT/compose-examples/alias-migration/migrate.py" "$@"
