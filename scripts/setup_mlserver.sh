#!/usr/bin/env bash
# Make .venv-mlserver/: Seldon MLServer in its own venv, the cloud tier the tests run
# (tests/cloud). Kept apart from .venv because MLServer pulls many packages, pins its own
# protobuf/grpcio, and defines the proto package `inference` that tritonclient defines too
# (two of them cannot share a process). Idempotent: does nothing when the venv already
# holds these pins and works. Needs only PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
VENV=.venv-mlserver
# uvloop<0.22: with 0.22 MLServer 1.7.1's inference worker dies and the server exits 0.
REQUIREMENTS=(
    "mlserver==1.7.1"
    "uvloop==0.21.0"
    "ai-edge-litert==2.3.0"
    "numpy==2.4.6"
)
STAMP="$VENV/.edgeshard-requirements"
start=$(date +%s)

works() {
    [ -x "$VENV/bin/mlserver" ] \
        && [ "$(cat "$STAMP" 2>/dev/null)" = "${REQUIREMENTS[*]}" ] \
        && "$VENV/bin/mlserver" --version >/dev/null 2>&1 \
        && "$VENV/bin/python" -c 'import ai_edge_litert.interpreter, numpy, uvloop' 2>/dev/null
}

if works; then
    echo "setup_mlserver: $VENV is ready ($("$VENV/bin/mlserver" --version)); nothing to do"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
rm -f "$STAMP"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
echo "${REQUIREMENTS[*]}" > "$STAMP"

if ! works; then
    echo "setup_mlserver: $VENV was installed but does not work" >&2
    exit 1
fi
echo "setup_mlserver: installed $("$VENV/bin/mlserver" --version) into $VENV in $(( $(date +%s) - start )) s"
