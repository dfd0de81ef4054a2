"""GPU out-of-memory at a model call: the batch halves, the same inputs are retried, nothing is
lost, the lower cap is remembered; at batch 1 the chunk fails for a retry elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException
from prometheus_client import REGISTRY

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import GpuOutOfMemory, TransientError
from facefusion_tasks.faces.backoff import BatchBackoff
from facefusion_tasks.faces.loader import load_models
from facefusion_tasks.faces.synthetic import background, draw_face
from tests.faults.oom import OomSession


def _frames() -> list[np.ndarray]:
    frames = []
    for shift in range(3):
        image = background(320, 240, shift)
        for cx in (60, 160, 260):
            draw_face(image, cx + shift, 120, 40)
        frames.append(image)
    return frames  # 3 frames x 3 faces = 9 faces per batch


def _ooms(model: str) -> float:
    return (
        REGISTRY.get_sample_value("facefusion_gpu_oom_total", {"kind": "arena", "model": model})
        or 0.0
    )


def test_oom_halves_the_batch_and_loses_no_face(settings: Settings) -> None:
    clean = load_models(settings).engine
    flaky = load_models(settings).engine
    for engine in (clean, flaky):
        engine.set_source_embedding(np.ones(512, np.float32))
    flaky.swapper.session = OomSession(flaky.swapper.session, fits=2)  # type: ignore[assignment]
    before = _ooms("swapper")

    expected = [f.copy() for f in _frames()]
    got = [f.copy() for f in _frames()]
    assert clean.process(expected) == flaky.process(got) == [3, 3, 3]
    for a, b in zip(expected, got, strict=True):
        assert np.array_equal(a, b)  # same faces, same pixels: the retry redid exactly them
    # 9 faces: 9 -> OOM, 4 -> OOM, then slices of 2 (2,2,2,2,1): two OOMs, cap remembered.
    assert _ooms("swapper") - before == 2
    assert flaky.swapper.backoff.limit == 2
    assert REGISTRY.get_sample_value("facefusion_model_batch_limit", {"model": "swapper"}) == 2
    # The next batch goes straight to the remembered cap: no new OOM.
    flaky.process([f.copy() for f in _frames()])
    assert _ooms("swapper") - before == 2


def test_oom_at_batch_one_fails_the_chunk_for_a_retry_elsewhere(settings: Settings) -> None:
    engine = load_models(settings).engine
    engine.set_source_embedding(np.ones(512, np.float32))
    engine.swapper.session = OomSession(engine.swapper.session, fits=0)  # type: ignore[assignment]
    with pytest.raises(GpuOutOfMemory, match="even at batch 1") as caught:
        engine.process(_frames())
    assert isinstance(caught.value, TransientError) and caught.value.reason == "gpu_oom"


def test_an_oom_while_the_models_load_is_counted_and_retried(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A GPU another tenant filled: cuDNN cannot create its handle as the session starts (the
    # text recorded on an H100). It was a plain model error, which no OOM metric counted, so
    # the OOM alert stayed silent while every chunk on that worker was retried elsewhere.
    from facefusion_tasks.faces import sessions
    from facefusion_tasks.model_cache import _ModelCache
    from tests.unit.test_metrics_oom import CUDNN_H100

    real = sessions.ort.InferenceSession

    def full_gpu(path: object, *args: object, **kwargs: object) -> object:
        if "inswapper" in str(path):
            raise RuntimeException(CUDNN_H100)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sessions.ort, "InferenceSession", full_gpu)
    labels = {"kind": "cudnn", "model": "swapper"}
    before = REGISTRY.get_sample_value("facefusion_gpu_oom_total", labels) or 0.0
    with pytest.raises(
        GpuOutOfMemory, match=r"out of GPU memory while loading \(cudnn\)"
    ) as caught:
        _ModelCache().get(settings, [])
    assert caught.value.reason == "gpu_oom"  # retried, as an OOM at batch 1 is
    assert REGISTRY.get_sample_value("facefusion_gpu_oom_total", labels) == before + 1


def test_the_cap_grows_back_after_a_quiet_period() -> None:
    now = [0.0]
    backoff = BatchBackoff("detector", 8, recover_seconds=60, clock=lambda: now[0])
    fail = {"fits": 3}

    def call(start: int, stop: int) -> int:
        if stop - start > fail["fits"]:
            raise RuntimeError("CUDA failure 2: out of memory ; GPU=0 ; hostname=x")
        return stop - start

    assert backoff.run(8, call) == [2, 2, 2, 2]  # 8 -> 4 -> 2
    fail["fits"] = 8
    now[0] = 30
    assert backoff.run(8, call) == [2, 2, 2, 2]  # still remembered
    now[0] = 61
    assert backoff.run(8, call) == [4, 4]  # doubled back after the quiet period
    now[0] = 122
    assert backoff.run(8, call) == [8] and backoff.limit == 8


def test_the_cap_is_served_before_any_oom() -> None:
    """The dashboard's cap panel was empty until a model's first OOM (a metrics probe)."""
    BatchBackoff("embedder", 6)
    assert REGISTRY.get_sample_value("facefusion_model_batch_limit", {"model": "embedder"}) == 6


def test_other_errors_are_not_mistaken_for_oom() -> None:
    backoff = BatchBackoff("embedder", 4)

    def call(start: int, stop: int) -> int:
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError):
        backoff.run(4, call)
    assert backoff.limit == 4
