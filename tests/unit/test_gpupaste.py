"""The paste graph gives paste_back's frames within a grey level (two where faces overlap), in
order; settings.paste picks it (auto: on CUDA); a GPU out-of-memory pastes on the CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException
from prometheus_client import REGISTRY

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import GpuOutOfMemory, InputError, ModelError
from facefusion_tasks.faces import align, gpupaste
from facefusion_tasks.faces.gpupaste import MODEL, GpuPaster, cpu_choice
from facefusion_tasks.faces.loader import _paster, load_models
from facefusion_tasks.faces.paste import Feather, feather_mask, paste_back
from facefusion_tasks.faces.pool import CpuPool
from facefusion_tasks.faces.sessions import CUDA, ProviderUnavailable
from facefusion_tasks.faces.swapper import SWAP_SIZE
from facefusion_tasks.faces.synthetic import write_source
from facefusion_tasks.video.samples import synthetic_frame
from tests.faults.oom import ARENA_OOM

FEATHER = Feather.of(feather_mask(SWAP_SIZE))


@pytest.fixture(scope="module")
def paster() -> GpuPaster:
    return GpuPaster(cpu_choice(), side=SWAP_SIZE + 2)


def _face(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A swapped crop and its frame->crop affine: any turn, 0.3x to 3x, partly or wholly off
    the frame sometimes; smooth or noisy crops (noise is the worst case for resampling)."""
    turn = rng.uniform(-np.pi, np.pi)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    kps = (align.ARCFACE_TEMPLATE - 64) @ rotation.T * rng.uniform(0.3, 3.0) + 64
    kps = (kps + rng.uniform(-80, max(width, height), 2)).astype(np.float32)
    crop = rng.integers(0, 256, (SWAP_SIZE, SWAP_SIZE, 3), dtype=np.uint8)
    if rng.random() < 0.5:
        crop = cv2.GaussianBlur(crop, (0, 0), 2.0)
    return crop, align.estimate_norm(kps, SWAP_SIZE)


def test_the_graph_is_within_a_grey_level_of_paste_back(paster: GpuPaster) -> None:
    rng = np.random.default_rng(7)
    counts = np.zeros(256, np.int64)
    changed = 0
    for trial in range(60):
        width, height = (int(v) for v in rng.integers(40, 420, 2))
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if trial % 2:
            frame = cv2.GaussianBlur(frame, (0, 0), 3.0)
        # Several faces a frame, overlapping often: each blends over the ones before it.
        faces = [_face(rng, width, height) for _ in range(int(rng.integers(1, 6)))]
        expected, got = frame.copy(), frame.copy()
        for crop, matrix in faces:
            paste_back(expected, crop, matrix, FEATHER)
        paster.paste(got, faces, FEATHER)
        changed += int((got != frame).sum())
        counts += np.bincount(np.abs(got.astype(int) - expected).ravel(), minlength=256)
    total = counts.sum()
    # Off by one only where a float sample sits on a rounding edge (measured: 5e-5 of the
    # values); where faces overlap, two such edges can add up.
    assert counts[3:].sum() == 0
    assert counts[2] <= total * 1e-6
    assert counts[1] <= total * 1e-3
    assert changed > 0  # not vacuous: the pastes did change the frames


def test_overlapping_faces_blend_in_order(paster: GpuPaster) -> None:
    frame = np.full((160, 160, 3), 40, np.uint8)
    matrix = align.estimate_norm(align.ARCFACE_TEMPLATE.astype(np.float32) + 16, SWAP_SIZE)
    red = np.zeros((SWAP_SIZE, SWAP_SIZE, 3), np.uint8)
    red[..., 2] = 255
    green = np.zeros_like(red)
    green[..., 1] = 255
    one_way, other_way = frame.copy(), frame.copy()
    paster.paste(one_way, [(red, matrix), (green, matrix)], FEATHER)
    paster.paste(other_way, [(green, matrix), (red, matrix)], FEATHER)
    centre = (16 + 64, 16 + 64)
    assert tuple(one_way[centre][1:]) == (255, 0)  # green last, on top
    assert tuple(other_way[centre][1:]) == (0, 255)


def test_a_frame_without_faces_is_left_alone_and_off_frame_faces_change_nothing(
    paster: GpuPaster,
) -> None:
    frame = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    kept = frame.copy()
    paster.paste(frame, [], FEATHER)
    far = align.estimate_norm(align.ARCFACE_TEMPLATE.astype(np.float32) + 5000, SWAP_SIZE)
    paster.paste(frame, [(np.full((SWAP_SIZE, SWAP_SIZE, 3), 255, np.uint8), far)], FEATHER)
    assert np.array_equal(frame, kept)


def test_settings_choose_where_paste_runs(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # auto is the default, and on the CPU provider it keeps OpenCV's paste; onnx runs the
    # graph there (as it would on the GPU), and the summary says which.
    assert Settings().paste == "auto"
    auto = load_models(settings.replace(execution_provider="cpu", paste="auto"))
    assert auto.engine.paster is None and auto.facts()["paste"] == "cpu"
    with caplog.at_level(logging.WARNING, logger="facefusion_tasks.faces.loader"):
        graph = load_models(settings.replace(execution_provider="cpu", paste="onnx"))
    assert graph.facts()["paste"] == "onnx on CPUExecutionProvider"
    assert "far slower than OpenCV's paste" in caplog.text
    with pytest.raises(InputError, match="unknown paste"):
        settings.replace(paste="gpu").validate()
    assert Settings.from_env({"FACEFUSION_PASTE": "onnx"}).paste == "onnx"
    # The whole engine, in a pool: the same faces swapped, frames within a grey level.
    source = write_source(tmp_path)
    outputs, counts = {}, {}
    for loaded in (auto, graph):
        loaded.engine.set_source(source)
        frames = [synthetic_frame(640, 360, 3, i) for i in range(5)]
        with CpuPool(2) as pool:
            counts[loaded.facts()["paste"]] = loaded.engine.process(frames, pool)
        outputs[loaded.facts()["paste"]] = frames
    assert counts["cpu"] == counts["onnx on CPUExecutionProvider"] and sum(counts["cpu"]) >= 10
    differences = np.concatenate([
        np.abs(a.astype(int) - b).ravel()
        for a, b in zip(outputs["cpu"], outputs["onnx on CPUExecutionProvider"], strict=True)
    ])  # fmt: skip
    # Flat synthetic colours put more samples on rounding edges than noise does (0.4 %).
    assert differences.max() <= 2 and (differences > 0).mean() <= 1e-2


def test_an_out_of_memory_pastes_that_frame_on_the_cpu_and_is_counted(
    paster: GpuPaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = {"kind": "arena", "model": MODEL}
    # Its series exists at 0 before any OOM, as the models' do, so the first one is an increase.
    before = REGISTRY.get_sample_value("facefusion_gpu_oom_total", labels)
    assert before is not None

    class FullGpu:
        def run(self, *args: object, **kwargs: object) -> object:
            raise RuntimeException(ARENA_OOM.format(size=1 << 24))

    monkeypatch.setattr(paster, "session", FullGpu())
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    faces = [_face(rng, 300, 200) for _ in range(3)]
    expected, got = frame.copy(), frame.copy()
    for crop, matrix in faces:
        paste_back(expected, crop, matrix, FEATHER)
    paster.paste(got, faces, FEATHER)
    assert np.array_equal(got, expected)
    assert REGISTRY.get_sample_value("facefusion_gpu_oom_total", labels) == before + 1


def test_other_errors_of_the_graph_are_raised(
    paster: GpuPaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        def run(self, *args: object, **kwargs: object) -> object:
            raise RuntimeException("[ONNXRuntimeError] : 1 : FAIL : something else")

    monkeypatch.setattr(paster, "session", Broken())
    frame = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(RuntimeException, match="something else"):
        paster.paste(frame, [_face(np.random.default_rng(0), 64, 64)], FEATHER)


def test_auto_pastes_on_the_cpu_when_the_graph_cannot_load(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A CUDA worker whose paste session will not start: auto (the default) keeps OpenCV's
    # paste and says so; onnx, asked for by name, fails as a model would; an out-of-memory
    # is the device's and is raised as such in both cases (counted, retried).
    def refused(*args: object, **kwargs: object) -> object:
        raise ProviderUnavailable("execution provider cuda cannot run here: test")

    monkeypatch.setattr(gpupaste, "create_session", refused)
    with caplog.at_level(logging.WARNING, logger="facefusion_tasks.faces.loader"):
        assert _paster(settings.replace(paste="auto"), CUDA) is None
    assert "paste graph: cannot be loaded (execution provider cuda cannot run here" in caplog.text
    with pytest.raises(ModelError, match="paste graph: cannot be loaded"):
        _paster(settings.replace(paste="onnx"), CUDA)

    def full(*args: object, **kwargs: object) -> object:
        raise RuntimeException(ARENA_OOM.format(size=1 << 24))

    monkeypatch.setattr(gpupaste, "create_session", full)
    for paste in ("auto", "onnx"):
        with pytest.raises(GpuOutOfMemory):
            _paster(settings.replace(paste=paste), CUDA)
