#!/usr/bin/env bash
# Stages onnxruntime-gpu and onnxruntime-genai-cuda for the GPU machine, which has no registry access, an
# onnxruntime without CUDA, no onnxruntime-genai, and takes at most 64 MiB per call (the working tree included).
#
# Run here, from the project root. It downloads both cp312 wheels (the GPU machine runs Python 3.12), unpacks
# them into one site folder without the TensorRT provider (unused; the CUDA provider is most of the 255 MB),
# packs that with xz (214 MB) and splits it into four 54 MiB parts under .ortgpu/ (ignored by git), then
# prints the five device calls that run bench/gpu_check.sh: make them back to back, since the machine goes back
# after 30 s idle. Measured on 2026-12-04: the four parts and the check took 72 s of device time after start-up.
set -euo pipefail
ort=${ORT_GPU_VERSION:-1.31.1}
genai=${ORT_GENAI_VERSION:-0.18.0}
grep -qx '/.ortgpu/' .git/info/exclude 2>/dev/null || echo '/.ortgpu/' >> .git/info/exclude
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$work" "onnxruntime-gpu==$ort" "onnxruntime-genai-cuda==$genai"
mkdir "$work/site"
for wheel in "$work"/*.whl; do unzip -q -o "$wheel" -d "$work/site"; done
rm -f "$work"/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
rm -rf .ortgpu && mkdir .ortgpu
tar -C "$work/site" -cf - . | xz -T0 -8 > "$work/site.tar.xz"
sha256sum "$work/site.tar.xz" | cut -d' ' -f1 > .ortgpu/site.sha256
split -b 54M -d "$work/site.tar.xz" .ortgpu/part-
ls -l .ortgpu
cat <<'EOF'
Device calls, back to back (carry, then command):
  [.ortgpu/part-00, .ortgpu/site.sha256]  mkdir -p /tmp/ortgpu && cp .ortgpu/* /tmp/ortgpu/
  [.ortgpu/part-01]                       cp .ortgpu/part-01 /tmp/ortgpu/
  [.ortgpu/part-02]                       cp .ortgpu/part-02 /tmp/ortgpu/
  [.ortgpu/part-03]                       set -e; cp .ortgpu/part-03 /tmp/ortgpu/; R=$PWD; cd /tmp/ortgpu;
    cat part-0* > site.tar.xz; echo "$(cat site.sha256)  site.tar.xz" | sha256sum -c -; mkdir -p /tmp/site;
    xz -T0 -dc site.tar.xz | tar -C /tmp/site -xf -; cd "$R"; mkdir -p /tmp/ns; ln -sfn "$R" /tmp/ns/ghostls;
    export PYTHONPATH=/tmp/site:/tmp/ns PYTHONUNBUFFERED=1; set +e;
    PY=python3 GPU_CHECK_TIMEOUT=400 bash bench/gpu_check.sh --out $OUT 2>&1 | tee $OUT/gpu_check.log
(/tmp/ns/ghostls lets the check import ghostls's own provider probe from the bare tree.)
EOF
