#!/usr/bin/env bash
# Shared set-up for the two README commands: a virtualenv with meshlocal and
# its test extra, and the Debian tools the tests and examples call.
# Idempotent: a second run only checks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MESHLOCAL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

need_apt=()
command -v dig >/dev/null || need_apt+=(bind9-dnsutils)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v docker >/dev/null || need_apt+=(docker.io)
# The mesh page's browser tests (Playwright's browser download can't be reached).
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages: ${need_apt[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: please install these Debian packages: ${need_apt[*]}" >&2
  fi
fi

# No engine answering, as root on Debian: start one (the README's promise).
if ! docker info >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
  echo "bootstrap: no Docker engine answers; starting dockerd" >&2
  (dockerd >/tmp/meshlocal-dockerd.log 2>&1 &)
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating virtualenv $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.meshlocal-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "bootstrap: installing meshlocal[test,speed] into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test,speed]"
  touch "$stamp"
fi
