#!/usr/bin/env bash
# Create .venv (if needed) and install facefusion-tasks with its dev tools and exactly one
# onnxruntime build and one OpenCV build, with no uninstall step:
#   FACEFUSION_ORT=gpu        onnxruntime-gpu with its CUDA 13 / cuDNN 9 pip libraries
#                             (the default where nvidia-smi answers)
#   FACEFUSION_ORT=gpu-build  onnxruntime-gpu alone, as a plain install has it (the default
#                             elsewhere): its CUDA provider is listed but cannot start, which is
#                             what the tests check on a CPU host
# insightface (the tests' reference implementation) goes in with --no-deps: it requires the CPU
# onnxruntime and opencv-python, which would shadow onnxruntime-gpu and the headless OpenCV.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${FACEFUSION_ORT:-}" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    FACEFUSION_ORT=gpu
  else
    FACEFUSION_ORT=gpu-build
  fi
fi
case "$FACEFUSION_ORT" in
  gpu) target=".[gpu,dev]"; extra=() ;;
  gpu-build) target=".[dev]"; extra=() ;;
  *) echo "FACEFUSION_ORT must be gpu or gpu-build" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$FACEFUSION_ORT-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$target" "${extra[@]}"
  .venv/bin/python -m pip install -q --no-deps "insightface>=0.7.3"
  touch "$stamp"
fi
.venv/bin/python - "$FACEFUSION_ORT" <<'PY'
import importlib.metadata as md
import sys

import cv2
import onnxruntime

def installed(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None

builds = [n for n in ("onnxruntime", "onnxruntime-gpu") if installed(n)]
opencv = [n for n in ("opencv-python", "opencv-python-headless") if installed(n)]
assert len(builds) == 1, f"exactly one onnxruntime build must be installed, found {builds}"
assert opencv == ["opencv-python-headless"], f"only the headless OpenCV may be installed: {opencv}"
providers = onnxruntime.get_available_providers()
assert "CUDAExecutionProvider" in providers, f"onnxruntime-gpu is shadowed: {providers}"
print(f"ready: {builds[0]} {onnxruntime.__version__} ({', '.join(providers)}), opencv {cv2.__version__}")
PY
