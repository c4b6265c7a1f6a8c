#!/usr/bin/env bash
# The one prepared GPU check (issue 3): under 5 minutes, figures to $OUT/gpu_check.json.
# On the device machine: the onnxruntime-gpu / onnxruntime-genai-cuda wheels staged per
# ../shared/gpu/README.md are installed first; here (no GPU) it is the CPU dry run of the same steps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
for wheel in .ortgpu/*.whl; do
  [ -e "$wheel" ] && "$PY" -m pip install -q --no-deps "$wheel"
done
exec timeout 290 "$PY" bench/gpu_check.py "$@"
