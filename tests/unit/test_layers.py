"""Layering: producers load no model code; the pipeline never imports Celery; nothing imports
prometheus_client before the metrics directory can be prepared."""

from __future__ import annotations

import subprocess
import sys


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
