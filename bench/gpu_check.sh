#!/usr/bin/env bash
# The one prepared GPU check: figures to $OUT/gpu_check.json, in about a minute on an H200.
# On the device machine, onnxruntime-gpu and onnxruntime-genai-cuda come from bench/gpu_stage.sh's parts
# (its printed calls put them on PYTHONPATH first); here, with no GPU, it is the CPU dry run of the same steps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec timeout "${GPU_CHECK_TIMEOUT:-290}" "$PY" bench/gpu_check.py "$@"
