#!/usr/bin/env bash
# Make .third_party_models/mediapipe/: the real, pretrained TFLite models that ship inside
# the MediaPipe 0.10.21 wheel on PyPI (face, palm and pose detectors, landmark and
# segmentation models; Apache-2.0). The "serve any model" tests (tests/edge_node/
# test_any_model.py, tests/coordinator/.../test_any_model_jobs.py) serve them as a user would.
#
# Only the .tflite files are taken from the wheel: the wheel is downloaded without its
# dependencies (it pins numpy<2 and protobuf<5, which edgeshard's venv cannot hold) and
# checked against the sha256 below before anything is extracted. Idempotent; needs only PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
WHEEL=mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl
SHA256=05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3
DEST=.third_party_models/mediapipe
STAMP="$DEST/.wheel-sha256"

if [ "$(cat "$STAMP" 2>/dev/null)" = "$SHA256" ]; then
    echo "setup_test_models: $DEST is ready ($(ls "$DEST" | wc -l) models); nothing to do"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$tmp" "mediapipe==0.10.21"
echo "$SHA256  $tmp/$WHEEL" | sha256sum --check --quiet
rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" - "$tmp/$WHEEL" "$DEST" <<'PYEOF'
import sys
import zipfile
from pathlib import Path

wheel, dest = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith("mediapipe/modules/") and name.endswith(".tflite"):
            (dest / Path(name).name).write_bytes(zf.read(name))
PYEOF
echo "$SHA256" > "$STAMP"
echo "setup_test_models: $(ls "$DEST" | wc -l) models from $WHEEL in $DEST"
