#!/usr/bin/env bash
# The README's test command: set up, lint, type-check, run the whole suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
VENV="${MESHLOCAL_VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"

echo "== ruff"
ruff check meshlocal tests bench compose-examples conftest.py
echo "== mypy (strict)"
mypy
echo "== pytest"
# Two workers, each test module on one: most tests wait on the engine, so
# the suite takes about half as long (10 min instead of 20 on 2 cores).
pytest -n 2 --dist loadfile --durations=20 "$@"
if [ "$#" -eq 0 ]; then
  # `docker swarm init` changes the engine under every other test: a step of its own.
  echo "== pytest (swarm, alone)"
  MESHLOCAL_SWARM_TESTS=1 pytest -m swarm -p no:xdist
fi
