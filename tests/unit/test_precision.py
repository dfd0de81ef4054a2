"""fp16 copies stay within tolerance of fp32 and are cached by digest; IO binding reuses its
buffers and changes no result; the CPU detector runs one frame per call unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from facefusion_tasks.config import Settings
from facefusion_tasks.faces import precision
from facefusion_tasks.faces.iobinding import BoundSession
from facefusion_tasks.faces.loader import load_models
from facefusion_tasks.faces.synthetic import write_source
from facefusion_tasks.video.samples import synthetic_frame

CPU = ["CPUExecutionProvider"]


@pytest.mark.parametrize("name", ["det_10g.onnx", "w600k_r50.onnx", "inswapper_128.onnx"])
def test_fp16_copy_keeps_fp32_io_and_stays_within_tolerance(
    models_dir: Path, tmp_path: Path, name: str
) -> None:
    converted = precision.fp16_model_path(models_dir / name, tmp_path)
    assert converted is not None and converted.parent == tmp_path
    graph = onnx.load(str(converted)).graph
    io_types = {v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    assert io_types == {onnx.TensorProto.FLOAT}
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    assert precision.compare_fp16(models_dir / name, converted) is None


def test_fp16_copy_is_cached_by_digest_and_a_bad_one_is_refused(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = precision.fp16_model_path(models_dir / "w600k_r50.onnx", tmp_path)
    assert first is not None

    def no_second_conversion(model: onnx.ModelProto) -> onnx.ModelProto:
        raise AssertionError("converted again")

    monkeypatch.setattr(precision, "to_fp16", no_second_conversion)
    assert precision.fp16_model_path(models_dir / "w600k_r50.onnx", tmp_path) == first
    monkeypatch.undo()
    # An fp16 model far from its fp32 original (here: another model altogether) fails the check.
    assert "differs from fp32" in str(
        precision.compare_fp16(models_dir / "w600k_r50.onnx", _other_embedder(tmp_path))
    )


def _other_embedder(tmp_path: Path) -> Path:
    from facefusion_tasks.models.standin import _save, build_embedder

    path = _save(build_embedder(seed=99), tmp_path / "other.onnx")
    half = precision.to_fp16(onnx.load(str(path)))
    onnx.save(half, str(tmp_path / "other.fp16.onnx"))
    return tmp_path / "other.fp16.onnx"


def test_fp16_engine_finds_the_same_faces_and_swaps_them_nearly_alike(
    settings: Settings, tmp_path: Path
) -> None:
    """Landmarks move by hundredths of a pixel and a pixel here and there by a few grey levels
    (models' outputs are checked to FP16_TOLERANCE when converted); nothing more."""
    source = write_source(tmp_path)
    frames = {p: [synthetic_frame(640, 360, 3, i) for i in range(4)] for p in ("fp32", "fp16")}
    found, counts = {}, {}
    for name in ("fp32", "fp16"):
        engine = load_models(settings.replace(precision=name)).engine
        engine.set_source(source)
        found[name] = engine.detector.detect([f.copy() for f in frames[name]])
        counts[name] = engine.process(frames[name])
    assert counts["fp32"] == counts["fp16"] == [3, 3, 3, 3]
    for full, half in zip(found["fp32"], found["fp16"], strict=True):
        # Near-equal scores may swap places in fp16: compare faces by position.
        key = lambda f: tuple(np.round(f.bbox[:2], -1))  # noqa: E731
        for a, b in zip(sorted(full, key=key), sorted(half, key=key), strict=True):
            assert np.abs(a.kps - b.kps).max() < 0.1
    for full_frame, half_frame in zip(frames["fp32"], frames["fp16"], strict=True):
        difference = np.abs(full_frame.astype(np.int16) - half_frame.astype(np.int16))
        assert difference.mean() < 0.1 and difference.max() <= 16


def test_io_binding_reuses_its_buffers_and_matches_a_plain_run(models_dir: Path) -> None:
    plain = ort.InferenceSession(str(models_dir / "w600k_r50.onnx"), providers=CPU)
    bound = BoundSession(plain, depth=2)
    rng = np.random.default_rng(0)
    inputs = [rng.random((3, 3, 112, 112), dtype=np.float32) for _ in range(6)]
    results = [bound.run(None, {"input.1": x})[0] for x in inputs]
    for x, got in zip(inputs[-2:], results[-2:], strict=True):
        assert np.array_equal(got, plain.run(None, {"input.1": x})[0])
    # After the ring of 2 is filled, every call returns one of those 2 buffers, alternately.
    assert results[2] is results[0] and results[3] is results[1] and results[4] is results[0]


def test_io_binding_engine_gives_identical_frames(settings: Settings, tmp_path: Path) -> None:
    source = write_source(tmp_path)
    outputs = {}
    for bound in (False, True):
        engine = load_models(settings.replace(io_binding=bound, batch_size=3)).engine
        engine.set_source(source)
        frames = [synthetic_frame(640, 360, 2, i) for i in range(7)]
        for start in range(0, len(frames), 3):
            engine.process(frames[start : start + 3])
        outputs[bound] = frames
    for plain, bound_frame in zip(outputs[False], outputs[True], strict=True):
        assert np.array_equal(plain, bound_frame)


def test_cpu_detector_runs_a_frame_per_call_unless_a_batch_is_set(settings: Settings) -> None:
    frames = [synthetic_frame(320, 240, 1, i) for i in range(4)]
    auto = load_models(settings.replace(execution_provider="cpu", batch_size=4)).engine.detector
    calls = auto.calls
    auto.detect(frames)
    assert auto.calls - calls == 4
    batched = load_models(settings.replace(execution_provider="cpu", detector_batch=4))
    detector = batched.engine.detector
    calls = detector.calls
    together = detector.detect(frames)
    assert detector.calls - calls == 1
    for a, b in zip(together, auto.detect(frames), strict=True):
        assert [f.score for f in a] == [f.score for f in b]


def test_a_cached_fp16_copy_that_changed_is_converted_again(
    models_dir: Path, tmp_path: Path
) -> None:
    first = precision.fp16_model_path(models_dir / "w600k_r50.onnx", tmp_path)
    assert first is not None
    first.write_bytes(first.read_bytes() + b"tampered")
    again = precision.fp16_model_path(models_dir / "w600k_r50.onnx", tmp_path)
    assert again == first and precision.compare_fp16(models_dir / "w600k_r50.onnx", again) is None
    assert not again.read_bytes().endswith(b"tampered")
