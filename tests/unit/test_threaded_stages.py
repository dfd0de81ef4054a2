"""Pooled and rewritten per-frame stages equal the serial code; paste-back blends by its 8-bit alpha."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facefusion_tasks.config import Settings
from facefusion_tasks.faces import align
from facefusion_tasks.faces.detector import Detector, batch_of
from facefusion_tasks.faces.loader import load_models
from facefusion_tasks.faces.paste import Feather, face_box, feather_mask, paste_back
from facefusion_tasks.faces.pool import SERIAL, CpuPool
from facefusion_tasks.faces.swapper import to_bgr_crops
from facefusion_tasks.faces.synthetic import background, draw_face, write_source
from facefusion_tasks.video.samples import face_positions, synthetic_frame


def _letterbox_on_canvas(frame: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """The letterbox as it was: a zero canvas, normalised whole."""
    height, width = frame.shape[:2]
    scale = min(size / height, size / width)
    new_w, new_h = max(int(width * scale), 1), max(int(height * scale), 1)
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(frame, (new_w, new_h))
    blob = cv2.dnn.blobFromImage(
        canvas, 1.0 / 128.0, (size, size), (127.5, 127.5, 127.5), swapRB=True
    )
    return blob, new_h / height


def _paste_as_it_was(
    frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray
) -> None:
    """The float formula: the float mask warped apart, region + alpha·(face − region), + 0.5."""
    size = crop.shape[0]
    inverse = cv2.invertAffineTransform(matrix)
    # The float mask, warped with a zero border, is non-zero out to crop coordinate -1 and size.
    corners = np.array([[-1, -1, 1], [size, -1, 1], [-1, size, 1], [size, size, 1]], np.float64)
    mapped = corners @ inverse.T
    height, width = frame.shape[:2]
    x0 = max(int(np.floor(mapped[:, 0].min())), 0)
    y0 = max(int(np.floor(mapped[:, 1].min())), 0)
    x1 = min(int(np.ceil(mapped[:, 0].max())) + 1, width)
    y1 = min(int(np.ceil(mapped[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return
    local = inverse.copy()
    local[:, 2] -= (x0, y0)
    box = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(crop, local, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, local, box, flags=cv2.INTER_LINEAR, borderValue=0.0)[..., None]
    region = frame[y0:y1, x0:x1]
    blended = region.astype(np.float32) + alpha * (face.astype(np.float32) - region)
    region[...] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "height, width", [(720, 1280), (1080, 1920), (240, 320), (1000, 333), (37, 1001), (640, 640)]
)
def test_letterbox_without_a_canvas_is_the_same_blob(height: int, width: int) -> None:
    frame = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    detector = Detector.__new__(Detector)
    detector.size = 640
    expected, scale = _letterbox_on_canvas(frame, 640)
    got = detector.letterbox(frame)
    assert got.blob.dtype == np.float32 and got.scale == scale
    assert np.array_equal(got.blob, expected)


def test_a_blob_ring_hands_a_batch_to_the_model_as_one_view_of_the_same_blobs() -> None:
    detector = Detector.__new__(Detector)
    detector.size = 640
    ring = detector.ring(batch=3, depth=2)
    frames = [
        np.random.default_rng(i).integers(0, 256, (600 - 40 * i, 640, 3), dtype=np.uint8)
        for i in range(7)
    ]
    own = [detector.letterbox(frame) for frame in frames]
    ringed = [detector.letterbox(frame, ring.slot(i)) for i, frame in enumerate(frames[:6])]
    for mine, theirs in zip(ringed, own[:6], strict=True):
        assert np.array_equal(mine.blob, theirs.blob) and mine.scale == theirs.scale
    # Frames 0-2 and 3-5 are the two buffers' rows: each batch is a view, not a copy.
    for first in (0, 3):
        batch = batch_of(ringed[first : first + 3])
        assert np.shares_memory(batch, ringed[first].blob) and batch.shape == (3, 3, 640, 640)
        assert np.array_equal(batch, np.concatenate([b.blob for b in own[first : first + 3]]))
    assert np.shares_memory(batch_of(ringed[4:6]), ringed[4].blob)  # a backed-off slice too
    # Out-of-order rows, or blobs of their own, are concatenated.
    for items in ([ringed[1], ringed[0]], [ringed[2], ringed[3]], [own[0], own[1]]):
        joined = batch_of(items)
        assert not np.shares_memory(joined, items[0].blob)
        assert np.array_equal(joined, np.concatenate([item.blob for item in items]))
    # Frame 6 reuses buffer 0, row 0: its shorter picture pads over frame 0's taller one.
    assert ring.slot(6).batch is ringed[0].batch and ring.slot(6).row == 0
    assert np.array_equal(detector.letterbox(frames[6], ring.slot(6)).blob, own[6].blob)


def test_a_ring_row_paints_its_padding_only_when_the_picture_changes_size() -> None:
    detector = Detector.__new__(Detector)
    detector.size = 640
    ring = detector.ring(batch=1, depth=1)
    rng = np.random.default_rng(5)
    shapes = [(720, 1280), (720, 1280), (1280, 720), (720, 1280), (480, 640), (480, 640)]
    for height, width in shapes:
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        got = detector.letterbox(frame, ring.slot(0)).blob
        assert np.array_equal(got, detector.letterbox(frame).blob), (height, width)
    assert ring.painted == [[(480, 640)]]
    # A same-size frame leaves the padding as it found it (marked here); another size paints.
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    ring.buffers[0][0, :, 480:, :] = 7.0  # type: ignore[index]
    assert (detector.letterbox(frame, ring.slot(0)).blob[0, :, 480:, :] == 7.0).all()
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    assert np.array_equal(
        detector.letterbox(frame, ring.slot(0)).blob, detector.letterbox(frame).blob
    )


def test_alignment_of_many_faces_at_once_equals_one_by_one() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        kps = rng.random((int(rng.integers(1, 10)), 5, 2)) * rng.choice([1.0, 100.0, 1000.0])
        if trial % 5 == 0:
            kps[..., 0] *= -1  # mirrored faces take the reflection branch
        kps = kps.astype(np.float32)
        many = align.estimate_norms(kps, 128)
        for one, matrix in zip(kps, many, strict=True):
            assert np.array_equal(align.estimate_norm(one, 128), matrix)


def _paste_case(rng: np.random.Generator, trial: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame, a swapped crop and its frame->crop matrix: a face at any roll (so the warp
    samples at every phase), scale and place, partly outside the frame; every third a black
    frame under a white face, or the other way round."""
    frame = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    turn = rng.uniform(-np.pi, np.pi)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    kps = (align.ARCFACE_TEMPLATE - 64) @ rotation.T * rng.uniform(0.3, 3.0) + 64
    kps = kps + rng.uniform(-60, 600, 2)
    kps = (kps + rng.normal(0, 3, kps.shape)).astype(np.float32)
    crop = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    if trial % 3:
        frame[...] = 255 * (trial % 3 == 1)
        crop[...] = 255 * (trial % 3 == 2)
    return frame, crop, align.estimate_norm(kps, 128)


def test_paste_back_is_within_a_grey_level_of_the_float_formula_but_for_a_handful() -> None:
    rng = np.random.default_rng(1)
    mask = feather_mask(128)
    feather = Feather.of(mask)
    counts = np.zeros(256, np.int64)
    for trial in range(300):
        frame, crop, matrix = _paste_case(rng, trial)
        expected, got = frame.copy(), frame.copy()
        _paste_as_it_was(expected, crop, matrix, mask)
        paste_back(got, crop, matrix, feather)
        counts += np.bincount(np.abs(got.astype(int) - expected).ravel(), minlength=256)
    total = counts.sum()
    assert counts[3:].sum() == 0
    assert counts[2] <= total * 1e-7
    assert counts[1] <= total * 0.02
    assert counts[1] > 0  # not vacuous: the pastes did land in the frames


def _blend_by_8_bit_alpha(
    frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray, feather: Feather
) -> None:
    """The float formula over the same BGRA warp paste_back makes, in float64, + 0.5 floored."""
    height, width = frame.shape[:2]
    box = face_box(matrix, crop.shape[0], height, width)
    if box is None:
        return
    x0, y0, x1, y1 = box
    padded = cv2.copyMakeBorder(crop, 1, 1, 1, 1, cv2.BORDER_REPLICATE)
    source = np.dstack([padded, feather.alpha])
    local = matrix.astype(np.float64)
    local[:, 2] += local[:, 0] * x0 + local[:, 1] * y0 + 1.0
    warped = cv2.warpAffine(
        source, local, (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip
    alpha = warped[..., 3:].astype(np.float64) / 255.0
    region = frame[y0:y1, x0:x1]
    region[...] = np.floor(region + alpha * (warped[..., :3] - region.astype(np.float64)) + 0.5)


@pytest.mark.parametrize("keep_bytes", [20 << 20, 50_000])
def test_paste_back_blends_exactly_by_its_8_bit_alpha_in_kept_scratch_or_not(
    keep_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facefusion_tasks.faces import paste

    # Boxes over the cap get arrays of their own: same result, and the kept buffer stays small.
    monkeypatch.setattr(paste, "_KEEP_BYTES", keep_bytes)
    monkeypatch.setattr(paste, "_SCRATCH", paste._Scratch())
    rng = np.random.default_rng(3)
    feather = Feather.of(feather_mask(128))
    for trial in range(60):
        frame, crop, matrix = _paste_case(rng, trial)
        expected, got = frame.copy(), frame.copy()
        _blend_by_8_bit_alpha(expected, crop, matrix, feather)
        paste_back(got, crop, matrix, feather)
        assert np.array_equal(got, expected), trial
    kept = paste._SCRATCH.buffer.size
    assert kept <= keep_bytes and (kept > 0 or keep_bytes < 20 << 20)  # used when it fits


def _frames(count: int, faces: int) -> list[np.ndarray]:
    # Faces close enough to overlap after swapping, so paste order within a frame matters.
    frames = [synthetic_frame(640, 360, faces, i) for i in range(count)]
    for i, frame in enumerate(frames):
        for cx, cy, radius in face_positions(640, 360, faces, i)[:1]:
            draw_face(frame, cx + radius * 0.9, cy, radius * 0.8)
    frames.append(background(640, 360, 0))  # one without faces
    return frames


def test_engine_in_a_pool_equals_the_engine_inline(settings: Settings, tmp_path: Path) -> None:
    engine = load_models(settings).engine
    engine.set_source(write_source(tmp_path))
    serial, threaded = _frames(6, 4), _frames(6, 4)
    counts_serial = engine.process(serial, SERIAL)
    with CpuPool(3) as pool:
        counts_threaded = engine.process(threaded, pool)
    assert counts_serial == counts_threaded and sum(counts_serial) > 6 and counts_serial[-1] == 0
    for a, b in zip(serial, threaded, strict=True):
        assert np.array_equal(a, b)
    assert {"letterbox", "detect", "boxes", "align", "swap", "paste"} <= set(engine.clock.seconds)


def test_every_batch_the_pipeline_infers_holds_exactly_its_frames_letterboxes(
    settings: Settings, tmp_path: Path
) -> None:
    """The pipeline letterboxes into two reused batch buffers while earlier batches infer: a
    slow model gives the decoder every chance to run ahead, and still each batch the model gets
    is its own frames' letterboxes, as one view, never a neighbour's rows."""
    from facefusion_tasks.pipeline import SwapJob, run_swap
    from facefusion_tasks.video.samples import make_sample_video

    clip = make_sample_video(tmp_path / "clip.mp4", seconds=1.2, width=320, height=240, faces=2)
    source = write_source(tmp_path)
    engine = load_models(settings).engine
    engine.set_source(source)
    real_infer = engine.infer
    checked: list[int] = []

    def slow_checked_infer(frames, prepared, pool=SERIAL):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        batch = batch_of(prepared)
        assert all(np.shares_memory(batch, item.blob) for item in prepared)
        fresh = np.concatenate([engine.detector.letterbox(frame).blob for frame in frames])
        assert np.array_equal(batch, fresh)
        checked.append(len(frames))
        return real_infer(frames, prepared, pool)

    engine.infer = slow_checked_infer  # type: ignore[method-assign]
    result = run_swap(SwapJob((source,), clip, tmp_path / "out.mp4"), engine, settings)
    assert sum(checked) == result.frames == 30 and len(checked) == 8  # batches of 4
    assert result.faces_swapped > 0


def test_the_pool_runs_work_on_its_threads_and_inline_without_them() -> None:
    names: list[str] = []
    with CpuPool(2) as pool:
        assert pool.map(
            lambda x: (names.append(threading.current_thread().name), x * 2)[1], range(5)
        ) == [0, 2, 4, 6, 8]
        failed = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failed.result(5)
    assert all(name.startswith("ff-cpu") for name in names)
    assert (
        SERIAL.submit(lambda: threading.current_thread().name).result()
        == threading.current_thread().name
    )
    with pytest.raises(ZeroDivisionError):
        SERIAL.submit(lambda: 1 / 0).result()


def test_finer_stages_fold_into_the_metric_stage_labels() -> None:
    from facefusion_tasks.metrics.definitions import STAGES
    from facefusion_tasks.pipeline import metric_stages

    folded = metric_stages(
        {"letterbox": 1.0, "detect": 2.0, "boxes": 0.5, "align": 0.25, "swap": 1.0, "paste": 3.0}
    )
    assert folded == {"detect": 3.5, "swap": 1.25, "paste": 3.0}
    assert set(folded) <= set(STAGES)


def test_swapped_crops_convert_to_bgr_as_numpy_rounded_and_clipped_them() -> None:
    rng = np.random.default_rng(2)
    for count in (1, 5):
        out = rng.uniform(-0.5, 1.5, (count, 3, 128, 128)).astype(np.float32)
        # Exact halves after ×255 (k/510), where round-half-to-even and half-up would differ.
        ties = out.reshape(-1)[::5]
        ties[...] = rng.integers(-20, 530, ties.size) / np.float32(510.0)
        out.reshape(-1)[::5] = ties
        expected = np.clip(out.transpose(0, 2, 3, 1)[..., ::-1] * 255.0, 0, 255)
        expected = np.ascontiguousarray(expected.round().astype(np.uint8))
        got = to_bgr_crops(out)
        assert got.flags.c_contiguous and got.shape == (count, 128, 128, 3)
        assert np.array_equal(got, expected)
