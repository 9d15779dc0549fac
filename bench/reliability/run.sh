#!/usr/bin/env bash
# Run the reliability suite once and write its figures into docs/reliability.md.
#   bash bench/reliability/run.sh            # defaults, as CI runs it
#   MESHLOCAL_SOAK_SECONDS=300 bash bench/reliability/run.sh   # a longer soak
# The JSON stays in bench/reliability/results/ next to the doc that quotes it.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="$ROOT/bench/reliability/results"
rm -rf "$OUT" && mkdir -p "$OUT"
CMD="pytest -p no:cacheprovider tests/reliability"
LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
DATE="$(date -u +%Y-%m-%dT%H:%MZ)"
START=$(date +%s)
# shellcheck disable=SC2086  # CMD is split into words on purpose
MESHLOCAL_RELIABILITY_OUT="$OUT" CI=true PATH="$ROOT/.venv/bin:$PATH" $CMD > "$OUT/pytest.log" 2>&1
STATUS=$?
WALL=$(( $(date +%s) - START ))
RESULT="$(grep -E '[0-9]+ (passed|failed)' "$OUT/pytest.log" | tail -1 | tr -d '=' | xargs)"
python3 - "$OUT/run.json" <<PY
import json, sys
json.dump({"command": "$CMD", "date": "$DATE", "loadavg": "$LOAD",
           "wall_seconds": $WALL, "result": "$RESULT", "exit_status": $STATUS},
          open(sys.argv[1], "w"), indent=2)
PY
# The soak table again from its stored raw samples: the figures can be regenerated.
"$ROOT/.venv/bin/python" -m tests.reliability.figures "$OUT"
"$ROOT/.venv/bin/python" bench/reliability/report.py bench/reliability/results docs/reliability.md
echo "suite: $RESULT in ${WALL}s (exit $STATUS); figures written to docs/reliability.md"
exit $STATUS
