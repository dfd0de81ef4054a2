"""`models trust` end to end: your own re-exported models swap like pinned ones, and a file with
the wrong contract, or one changed after it was trusted, is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from facefusion_tasks.video.samples import make_sample_video
from tests.media import decode_frames, video_times, write_source_face
from tests.models import reexport_all, renamed_copy


def _cli(
    *args: str | Path, models: Path, standins: bool = False
) -> subprocess.CompletedProcess[str]:
    """The CLI on the CPU with `models`; stand-ins are allowed only when asked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
    env |= {"FACEFUSION_MODELS_DIR": str(models), "FACEFUSION_EXECUTION_PROVIDER": "cpu"}
    if standins:
        env["FACEFUSION_ALLOW_STANDIN_MODELS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trust-media")
    return {
        "source": write_source_face(root / "source.png"),
        "clip": make_sample_video(root / "clip.mp4", seconds=1, faces=1, audio=False),
    }


def test_trusted_reexports_swap_like_the_originals_until_one_changes(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    mine = reexport_all(models_dir, tmp_path / "downloads")
    models = tmp_path / "models"
    files = sorted(mine.glob("*.onnx"))
    # Not trusted yet: re-saved bytes are not what the registry pinned.
    models.mkdir()
    for path in files:
        renamed_copy(path, models / path.name)
    refused = _cli("swap", media["source"], media["clip"], "-o", tmp_path / "early.mp4",
                   models=models)  # fmt: skip
    assert refused.returncode == 1 and "det_10g.onnx: sha256 mismatch" in refused.stderr

    trusted = _cli("models", "trust", *files, "--dir", models, models=models)
    assert trusted.returncode == 0, trusted.stderr
    lines = trusted.stdout.splitlines()
    assert [line.split(" as the ")[0] for line in lines] == [
        f"trusted {path.name}" for path in files
    ]

    # No stand-in allowance: the trusted record alone lets them load.
    out = tmp_path / "trusted.mp4"
    proc = _cli("swap", media["source"], media["clip"], "-o", out, "--json", models=models)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["faces_swapped"] == 25 and summary["standin_models"] is False
    assert video_times(out) == video_times(media["clip"])
    # The same compute as the originals (loaded as stand-ins): the same frames.
    original = tmp_path / "original.mp4"
    proc = _cli("swap", media["source"], media["clip"], "-o", original, models=models_dir,
                standins=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for a, b in zip(decode_frames(out), decode_frames(original), strict=True):
        assert (a == b).all()

    verify = _cli("models", "verify", models=models)
    assert verify.returncode == 0, verify.stdout
    assert "det_10g.onnx: trusted" in verify.stdout
    assert "trusted on purpose (`models trust`), not the published files:" in verify.stdout
    doctor = _cli("doctor", "--execution-provider", "cpu", models=models)
    assert "inswapper_128.onnx: trusted" in doctor.stdout, doctor.stdout + doctor.stderr
    assert "trusted on purpose (`models trust`), not the published file: det_10g" in doctor.stdout

    # Changed after it was trusted: refused as any digest mismatch is, nothing written.
    model = onnx.load(str(models / "w600k_r50.onnx"))
    model.doc_string = "edited later"
    onnx.save(model, str(models / "w600k_r50.onnx"))
    late = tmp_path / "late.mp4"
    proc = _cli("swap", media["source"], media["clip"], "-o", late, models=models)
    assert proc.returncode == 1
    assert "w600k_r50.onnx: sha256 mismatch" in proc.stderr
    assert "changed since `models trust` recorded it" in proc.stderr
    assert not late.exists()


def test_a_detector_offered_as_the_swapper_is_refused_with_the_reason(
    models_dir: Path, tmp_path: Path
) -> None:
    offered = renamed_copy(models_dir / "det_10g.onnx", tmp_path / "mine" / "inswapper_128.onnx")
    models = tmp_path / "models"
    proc = _cli("models", "trust", offered, "--dir", models, models=models)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == (
        f"facefusion-tasks: error: {offered}: refused as the swapper (inswapper_128.onnx): "
        "1 input where the swapper has 2 (target, source); "
        "9 outputs where the swapper has 1 (output); "
        "no 512×512 emap as the graph's last initializer (found 'kps_d' [1, 1, 1, 20]): "
        "the source identity is projected through it"
    )
    assert not models.exists() or list(models.iterdir()) == []
