#!/usr/bin/env bash
# Vendor grpcio for a machine whose containers can't pip install it (no PyPI).
#
# Copies the grpc package, its grpcio-*.dist-info and its one dependency,
# typing_extensions, from a local Python environment into vendor/ next to
# this script; the Dockerfile COPYs vendor/ onto PYTHONPATH and only runs
# `pip install grpcio` when the vendored copy doesn't import.
#
# grpc is a compiled extension (cygrpc.cpython-311-...so): it imports only in
# the same CPython minor version it was built for. meshlocal's local base
# image (Debian bookworm) has python3.11, so vendor from a 3.11 environment.
#
#   compose-examples/grpc/vendor.sh                     # python3 on PATH
#   PYTHON=.venv/bin/python compose-examples/grpc/vendor.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
DEST="$HERE/vendor"

read -r GRPC_DIR TE_FILE SITE ABI < <("$PYTHON" -c '
import os, sys, grpc, typing_extensions
print(os.path.dirname(grpc.__file__), typing_extensions.__file__,
      os.path.dirname(os.path.dirname(grpc.__file__)), "cp%d%d" % sys.version_info[:2])
') || {
    echo "vendor.sh: $PYTHON cannot import grpc; install grpcio there first" >&2
    exit 1
}

find "$DEST" -mindepth 1 ! -name .keep -exec rm -rf {} +
cp -a "$GRPC_DIR" "$DEST/grpc"
cp -a "$TE_FILE" "$DEST/"
for info in "$SITE"/grpcio-*.dist-info "$SITE"/typing_extensions-*.dist-info; do
    [ -d "$info" ] && cp -a "$info" "$DEST/"
done
find "$DEST" -name __pycache__ -type d -prune -exec rm -rf {} +

echo "vendored grpc $("$PYTHON" -c 'import grpc; print(grpc.__version__)') ($ABI) into $DEST"
echo "it imports only where the image's python3 is the same version ($ABI);"
echo "meshlocal's local base image (Debian bookworm) has CPython 3.11 (cp311)."
