"""Layering: producers load no model code; the pipeline never imports Celery; nothing imports
prometheus_client before the metrics directory can be prepared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _modules_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_the_producer_and_cli_load_no_model_code() -> None:
    loaded = _modules_after("import facefusion_tasks.producer, facefusion_tasks.cli")
    assert not loaded & {"onnxruntime", "onnx", "insightface", "cv2"}


def test_the_pipeline_and_runner_never_import_celery() -> None:
    loaded = _modules_after("import facefusion_tasks.pipeline, facefusion_tasks.runner")
    assert "celery" not in loaded and "kombu" not in loaded


def test_the_worker_launcher_leaves_prometheus_client_unimported() -> None:
    loaded = _modules_after(
        "import facefusion_tasks.worker, facefusion_tasks.app, facefusion_tasks.cli"
    )
    assert "prometheus_client" not in loaded


#: What a bare GPU box may lack: the job system's packages and the video/demo extras.
_ABSENT_ON_A_BARE_GPU_BOX = ("celery", "kombu", "redis", "ffmpeg", "insightface", "tqdm")

_BLOCKER = f"""
import importlib.abc, sys

class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {_ABSENT_ON_A_BARE_GPU_BOX!r}:
            raise ImportError(f"{{name}} is not installed on this box")
        return None

sys.meta_path.insert(0, _Absent())
"""


def test_doctor_and_the_face_engine_run_without_celery_redis_or_ffmpeg_python(
    tmp_path: Path,
) -> None:
    # As on a GPU box that has only onnxruntime-gpu, numpy, onnx, OpenCV, nvidia-ml-py and
    # prometheus-client: the packages are blocked in this process and every child it starts
    # (the provider proof and GPU discovery run in subprocesses).
    (tmp_path / "sitecustomize.py").write_text(_BLOCKER)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    env = {k: v for k, v in env.items() if not k.startswith("FACEFUSION_")}
    done = subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", "doctor", "--execution-provider", "cpu",
         "--models-dir", str(tmp_path / "no-models")],
        capture_output=True, text=True, timeout=180, env=env, check=False,
    )  # fmt: skip
    out = done.stdout
    assert "cpu: test model ran on CPUExecutionProvider" in out, out + done.stderr
    assert "face engine (stand-in models) ran on CPUExecutionProvider" in out
    assert "no usable GPU" in out
    # The models section reads the digest record without the download code (and its tqdm).
    assert "det_10g.onnx: missing" in out
    # The blocker really blocks.
    blocked = subprocess.run(
        [sys.executable, "-c", "import tqdm"], capture_output=True, text=True, env=env
    )
    assert "tqdm is not installed on this box" in blocked.stderr
    code = (
        "import sys\n"
        "import facefusion_tasks.doctor, facefusion_tasks.faces.loader, facefusion_tasks.gpus\n"
        "import facefusion_tasks.faces.probe, facefusion_tasks.metrics.gpu\n"
        f"print(sorted(set(sys.modules) & {set(_ABSENT_ON_A_BARE_GPU_BOX)!r}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert loaded.stdout.strip() == "[]"
