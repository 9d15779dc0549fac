#!/usr/bin/env bash
# The README's main job: set up, then `meshlocal up` on the kudos example.
# Extra arguments go to `meshlocal up` (e.g. -d to detach).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
VENV="${MESHLOCAL_VENV:-$ROOT/.venv}"
exec "$VENV/bin/meshlocal" -C "$ROOT/compose-examples/kudos" up "$@"
