"""The benchmark's method: interleaved rounds, ratios inside a round, the models it is given, and
ceiling stand-ins that give the light stand-ins' exact outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from facefusion_tasks.bench import _models_for, describe_models, run_ceiling
from facefusion_tasks.bench_models import make_ceiling_models
from facefusion_tasks.bench_report import render
from facefusion_tasks.bench_rounds import Run, interleave, per_round
from facefusion_tasks.config import Settings
from facefusion_tasks.faces.detector import Detector
from facefusion_tasks.models.standin import make_test_models
from facefusion_tasks.video.samples import synthetic_frame


def test_rounds_rotate_the_order_and_ratios_come_from_one_round() -> None:
    order: list[str] = []

    def measure(name: str, seconds: float) -> Run:
        order.append(name)
        return Run(frames=10, seconds=seconds + len(order) * 0.001)

    rounds = interleave(
        {"a": lambda: measure("a", 1.0), "b": lambda: measure("b", 2.0), "c": lambda: measure("c", 4.0)},
        repeats=3,
    )  # fmt: skip
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    ratio = per_round(rounds, lambda r: r["a"].seconds / r["b"].seconds)
    assert ratio["rounds"] == [r["a"].seconds / r["b"].seconds for r in rounds]
    assert ratio["min"] == min(ratio["rounds"]) and ratio["median"] == sorted(ratio["rounds"])[1]


def test_cpu_per_frame_names_what_no_stage_claims() -> None:
    run = Run(frames=10, seconds=1.0, cpu_self=2.0, cpu_children=1.0, stage_cpu={"paste": 0.5})
    table = run.cpu_per_frame()
    assert table["stage:paste"] == pytest.approx(0.05)
    assert table["unstaged (models' threads, rest)"] == pytest.approx(0.15)
    assert table["ffmpeg processes"] == pytest.approx(0.1) and table["total"] == pytest.approx(0.3)


def test_bench_uses_the_stand_ins_in_the_models_dir_with_their_compute(tmp_path: Path) -> None:
    make_test_models(tmp_path / "heavy", detector_gflops=10)
    settings, made = _models_for(Settings(models_dir=tmp_path / "heavy"), tmp_path / "scratch")
    assert not made and settings.models_dir == tmp_path / "heavy"
    assert "detector with ~9.4 GFLOPs" in describe_models(tmp_path / "heavy")  # 5 layers
    settings, made = _models_for(Settings(models_dir=tmp_path / "empty"), tmp_path / "scratch")
    assert made and "light detector" in describe_models(settings.models_dir)


def test_ceiling_detector_gives_the_light_stand_ins_detections(tmp_path: Path) -> None:
    make_test_models(tmp_path / "light")
    make_ceiling_models(tmp_path / "ceiling")
    cpu = ["CPUExecutionProvider"]
    light = ort.InferenceSession(str(tmp_path / "light" / "det_10g.onnx"), providers=cpu)
    ceiling = ort.InferenceSession(str(tmp_path / "ceiling" / "det_10g.onnx"), providers=cpu)
    detector = Detector(light)
    rng = np.random.default_rng(0)
    blobs = [detector.letterbox(synthetic_frame(1280, 720, 8, i)).blob for i in range(3)]
    blobs.append(rng.random((1, 3, 640, 640), dtype=np.float32) * 2 - 1)
    fired = 0
    for blob in blobs:
        want = light.run(None, {"input.1": blob})
        got = ceiling.run(None, {"input.1": blob})
        # Scores within float rounding (warmth averaged per colour first), the same anchors
        # fire, and the box and landmark distances are the same constants.
        for a, b in zip(want[:3], got[:3], strict=True):
            assert np.allclose(a, b, rtol=0, atol=1e-5) and np.array_equal(a > 0.5, b > 0.5)
        assert all(np.array_equal(a, b) for a, b in zip(want[3:], got[3:], strict=True))
        fired += int((want[2] > 0.5).sum())
    assert fired == 3 * 8 * 2  # 8 faces in each synthetic frame, 2 anchors per cell


def test_ceiling_run_reports_every_case_with_ratios_per_round() -> None:
    report = run_ceiling(
        Settings(execution_provider="cpu"), seconds=0.4, repeats=3, cases=[(320, 240, 2)]
    )
    case = report["cases"]["240p 2 faces"]
    assert case["frames"] == 10 and len(case["ratio"]["rounds"]) == 3
    assert report["inference_threads"] == 1
    assert (
        case["cpu_per_frame"]["stage:paste"] > 0 and case["cpu_per_frame"]["ffmpeg processes"] > 0
    )
    assert len(case["cpu_ratio"]["rounds"]) == 3
    assert "| 240p 2 faces | 10 |" in render(report)


def test_bench_runs_without_celery_or_redis_importable() -> None:
    """On a GPU box with only the inference stack installed, `bench` must still start."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'celery', 'kombu', 'redis'}:\n"
        "            raise ImportError(name + ' is not installed here')\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from facefusion_tasks.cli import main\n"
        "import facefusion_tasks.bench, facefusion_tasks.bench_models\n"
        "sys.exit(main(['bench', '--help']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--ceiling" in done.stdout and "--io-binding" in done.stdout
