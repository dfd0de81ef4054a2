"""`doctor` reports this host truthfully and flags the onnxruntime CPU/GPU clash."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facefusion_tasks import doctor
from facefusion_tasks.config import Settings


def test_doctor_on_this_host(settings: Settings) -> None:
    report = doctor.diagnose(settings)
    assert report["ffmpeg"]["encoders"]["libx264"] == "usable"
    proofs = report["onnxruntime"]["proofs"]
    assert proofs["cpu"]["ok"] and proofs["cpu"]["ran_on"] == "CPUExecutionProvider"
    assert report["onnxruntime"]["clashes"] == []
    assert report["engine"]["frames_per_second"] > 0
    gpus = report["gpus"]
    if gpus["count"] == 0:
        # No NVIDIA GPU: nvenc and -hwaccel cuda may be listed by the build but must not be
        # called usable, and the CUDA proof must fail with a reason.
        assert "note" in gpus
        assert report["ffmpeg"]["encoders"]["h264_nvenc"] != "usable"
        assert report["ffmpeg"]["hwaccel_cuda"] != "usable"
        assert not proofs["cuda"]["ok"]
        assert report["gpu"]["gpu_usable"] is False
        assert report["gpu"]["line"].startswith("no usable GPU: ")
        assert report["engine"]["provider"] == "CPUExecutionProvider"
        # auto, the default, keeps OpenCV's paste off CUDA, and the text says where it ran.
        assert report["engine"]["paste"] == "cpu"
        assert "CPUExecutionProvider, paste-back cpu:" in doctor.render(report)
    else:
        # A GPU host: every device is named, with its memory.
        assert len(gpus["devices"]) == gpus["count"]
        assert all(d["name"] and d["memory_total_bytes"] > 0 for d in gpus["devices"])
        assert proofs["cuda"]["ok"] and proofs["cuda"]["ran_on"] == "CUDAExecutionProvider"
    assert sorted(report["models"]["standin"]) == [
        "det_10g.onnx",
        "inswapper_128.onnx",
        "w600k_r50.onnx",
    ]
    # CPU was asked for: no GPU is not a failure.
    assert report["ok"] is True


def test_doctor_asked_for_cuda_on_this_host_says_so_and_exits_non_zero(models_dir: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "facefusion_tasks",
            "doctor",
            "--execution-provider",
            "cuda",
            "--models-dir",
            str(models_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
        | {"FACEFUSION_ALLOW_STANDIN_MODELS": "1"},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("[BAD] no usable GPU: ")
    assert "CUDAExecutionProvider is listed but did not start" in first
    assert "(requested: cuda)" in first
    assert "cuda: FAILED: CUDAExecutionProvider is listed but did not start" in proc.stdout
    assert "[BAD] face engine: execution provider cuda cannot run here" in proc.stdout


def test_doctor_reports_a_missing_onnxruntime_instead_of_crashing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    report = doctor.diagnose(settings)
    assert report["ok"] is False
    assert "facefusion-tasks[gpu]" in report["onnxruntime"]["error"]
    assert "[BAD] onnxruntime: no onnxruntime installed" in doctor.render(report)


def test_doctor_flags_cpu_onnxruntime_shadowing_the_gpu_build(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}
    monkeypatch.setattr(doctor, "_installed", versions.get)
    report = doctor.diagnose(settings)
    (clash,) = report["onnxruntime"]["clashes"]
    assert "onnxruntime 1.32.0 shadows onnxruntime-gpu 1.31.1" in clash
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in clash
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


def _fake_cpu_onnxruntime(directory: Path, *, with_module: bool) -> None:
    """A CPU `onnxruntime` distribution in its own directory (as `pip install --target` makes)."""
    info = directory / "onnxruntime-1.30.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime\nVersion: 1.30.0\n")
    if with_module:
        (directory / "onnxruntime").mkdir()
        (directory / "onnxruntime" / "__init__.py").write_text("")


def test_a_cpu_build_elsewhere_on_the_path_is_a_clash_only_if_the_import_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Like a GPU box with a preinstalled CPU onnxruntime: where each build lives and which one
    # `import onnxruntime` finds decides, not merely that both are installed.
    behind, ahead = tmp_path / "behind", tmp_path / "ahead"
    # As in a fresh doctor process: nothing imported yet, so the path decides.
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    _fake_cpu_onnxruntime(behind, with_module=True)
    monkeypatch.syspath_prepend(str(behind))
    monkeypatch.setattr(sys, "path", [*sys.path[1:], str(behind)])  # after site-packages
    importlib.invalidate_caches()
    assert doctor._clashes() == []
    _fake_cpu_onnxruntime(ahead, with_module=True)
    monkeypatch.syspath_prepend(str(ahead))
    importlib.invalidate_caches()
    (clash,) = doctor._clashes()
    assert clash.startswith("onnxruntime 1.30.0 shadows onnxruntime-gpu")
