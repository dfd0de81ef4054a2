#!/usr/bin/env bash
# Create .venv (if needed) and install facefusion-tasks with its dev tools, leaving the GPU
# builds in charge: insightface drags in the CPU `onnxruntime` and `opencv-python`, which
# shadow `onnxruntime-gpu` / `opencv-python-headless` when both are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  .venv/bin/python -m pip uninstall -q -y onnxruntime opencv-python || true
  .venv/bin/python -m pip install -q --force-reinstall --no-deps onnxruntime-gpu opencv-python-headless
  touch "$stamp"
fi
.venv/bin/python - <<'PY'
import onnxruntime, cv2
providers = onnxruntime.get_available_providers()
assert "CUDAExecutionProvider" in providers, f"onnxruntime-gpu is shadowed: {providers}"
print(f"ready: onnxruntime {onnxruntime.__version__} ({', '.join(providers)}), opencv {cv2.__version__}")
PY
