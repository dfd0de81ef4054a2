"""`doctor` reports this host truthfully and flags the onnxruntime CPU/GPU clash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from facefusion_tasks import doctor
from facefusion_tasks.config import Settings


def test_doctor_on_this_host(settings: Settings) -> None:
    report = doctor.diagnose(settings)
    assert report["ffmpeg"]["encoders"]["libx264"] == "usable"
    assert "CPUExecutionProvider" in report["onnxruntime"]["usable_providers"]
    gpus = report["gpus"]
    if gpus["count"] == 0:
        # No NVIDIA GPU: nvenc may be listed by the build but must not be called usable, and
        # the CPU is the only provider.
        assert "note" in gpus
        assert report["ffmpeg"]["encoders"]["h264_nvenc"] != "usable"
        assert report["onnxruntime"]["usable_providers"] == ["CPUExecutionProvider"]
    else:
        # A GPU host: every device is named, with its memory.
        assert len(gpus["devices"]) == gpus["count"]
        assert all(d["name"] and d["memory_total_bytes"] > 0 for d in gpus["devices"])
    assert report["onnxruntime"]["clashes"] == []
    assert sorted(report["models"]["standin"]) == [
        "det_10g.onnx",
        "inswapper_128.onnx",
        "w600k_r50.onnx",
    ]
    assert report["ok"] is True


def test_doctor_flags_cpu_onnxruntime_shadowing_the_gpu_build(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}
    monkeypatch.setattr(doctor, "_installed", versions.get)
    report = doctor.diagnose(settings)
    (clash,) = report["onnxruntime"]["clashes"]
    assert "onnxruntime 1.32.0 shadows onnxruntime-gpu 1.31.1" in clash
    assert "pip uninstall -y onnxruntime" in clash
    assert report["ok"] is False
    assert "CLASH" in doctor.render(report)


def test_doctor_json_cli_and_missing_models(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "facefusion_tasks",
            "doctor",
            "--json",
            "--models-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["ok"] is False
    assert set(report["models"]["files"].values()) == {"missing"}
