"""Detection, alignment, swapping and paste-back agree with insightface and change only faces."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from insightface import model_zoo

from facefusion_tasks.config import Settings
from facefusion_tasks.faces import align
from facefusion_tasks.faces.detector import Detector
from facefusion_tasks.faces.engine import mean_identity
from facefusion_tasks.faces.loader import load_models
from facefusion_tasks.faces.paste import Feather, feather_mask, paste_back
from facefusion_tasks.faces.synthetic import background, bundled_photo, draw_face
from tests.media import write_second_face, write_source_face

CPU = ["CPUExecutionProvider"]


def _frame(*centres: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> np.ndarray:
    image = background(size[0], size[1], 0)
    for cx, cy, r in centres:
        draw_face(image, cx, cy, r)
    return image


@pytest.fixture(scope="module")
def detector(models_dir: Path) -> Detector:
    return Detector(ort.InferenceSession(str(models_dir / "det_10g.onnx"), providers=CPU))


def test_detector_finds_each_synthetic_face_and_nothing_else(detector: Detector) -> None:
    faces = detector.detect([_frame((90, 120, 45), (230, 110, 40)), _frame()])
    assert [len(f) for f in faces] == [2, 0]
    centres = sorted(((f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2) for f in faces[0])
    assert np.allclose(centres, [(90, 120), (230, 110)], atol=12)


def test_detector_matches_insightface_scrfd(detector: Detector, models_dir: Path) -> None:
    reference = model_zoo.get_model(str(models_dir / "det_10g.onnx"), providers=CPU)
    reference.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    for image in (_frame((100, 100, 40)), cv2.imread(str(bundled_photo("t1.jpg")))):
        boxes, kps = reference.detect(image, input_size=(640, 640))
        ours = detector.detect([image])[0]
        assert len(ours) == len(boxes) > 0
        key = np.lexsort(boxes[:, :2].T[::-1])
        ours_boxes = np.array([f.bbox for f in ours])
        ours_kps = np.array([f.kps for f in ours])
        order = np.lexsort(ours_boxes[:, :2].T[::-1])
        assert np.allclose(ours_boxes[order], boxes[key, :4], atol=1e-3)
        assert np.allclose(ours_kps[order], kps[key], atol=1e-3)


def test_alignment_maps_landmarks_onto_the_template() -> None:
    template = align.template(128)
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = template @ rot.T * 1.7 + (40, 25)
    matrix = align.estimate_norm(kps, 128)
    mapped = np.c_[kps, np.ones(5)] @ matrix.T
    assert np.allclose(mapped, template, atol=1e-6)
    assert np.allclose(align.template(112), align.ARCFACE_TEMPLATE)
    assert np.allclose(align.template(128)[:, 0], align.ARCFACE_TEMPLATE[:, 0] + 8)


def test_swap_matches_insightface_inswapper(settings: Settings, models_dir: Path) -> None:
    loaded = load_models(settings)
    engine = loaded.engine
    frame = _frame((120, 120, 50))
    face = engine.detector.detect([frame])[0][0]
    embedding = engine.embedder.embed([(frame, face)])[0]
    crop, _ = align.crop(frame, face.kps, 128)
    ours = engine.swapper.swap(crop[None], engine.swapper.latent(embedding))[0]

    reference = model_zoo.get_model(str(models_dir / "inswapper_128.onnx"), providers=CPU)

    class _Face(dict):  # insightface's Face is a dict with attribute access
        __getattr__ = dict.get

    target = _Face(kps=face.kps, bbox=face.bbox)
    source = _Face(normed_embedding=embedding)
    theirs, _ = reference.get(frame, target, source, paste_back=False)
    # insightface truncates to uint8 where we round: at most one level apart.
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_batched_and_per_face_swaps_agree(settings: Settings, fixed_batch_models_dir: Path) -> None:
    batched = load_models(settings)
    single = load_models(settings.replace(models_dir=fixed_batch_models_dir))
    assert batched.swapper_batched and not single.swapper_batched
    frames = [_frame((80, 120, 40), (240, 120, 40)), _frame((160, 110, 50))]
    outputs = []
    for loaded in (batched, single):
        loaded.engine.set_source_embedding(np.ones(512, np.float32))
        copies = [f.copy() for f in frames]
        before = loaded.engine.swapper.calls
        assert loaded.engine.process(copies) == [2, 1]
        outputs.append((copies, loaded.engine.swapper.calls - before))
    (batched_frames, batched_calls), (single_frames, single_calls) = outputs
    assert (batched_calls, single_calls) == (1, 3)
    for a, b in zip(batched_frames, single_frames, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_paste_back_changes_only_the_face_box() -> None:
    frame = np.full((200, 300, 3), 50, np.uint8)
    kps = align.template(128) * 0.8 + (100, 40)
    matrix = align.estimate_norm(kps, 128)
    crop = np.full((128, 128, 3), 250, np.uint8)
    before = frame.copy()
    paste_back(frame, crop, matrix, Feather.of(feather_mask(128)))
    changed = np.argwhere(np.any(frame != before, axis=2))
    corners = (
        np.c_[[[0, 0], [128, 0], [0, 128], [128, 128]], np.ones(4)]
        @ cv2.invertAffineTransform(matrix).T
    )
    assert changed[:, 1].min() >= corners[:, 0].min() - 1
    assert changed[:, 1].max() <= corners[:, 0].max() + 1
    assert changed[:, 0].min() >= corners[:, 1].min() - 1
    assert changed[:, 0].max() <= corners[:, 1].max() + 1
    # Feathered: the centre takes the crop, the edge of the box barely changes.
    centre = np.c_[[[64, 64]], [1]] @ cv2.invertAffineTransform(matrix).T
    cx, cy = int(centre[0, 0]), int(centre[0, 1])
    assert frame[cy, cx].tolist() == [250, 250, 250]


def test_the_feather_fades_to_nothing_at_the_crop_edge_without_a_step() -> None:
    mask = feather_mask(128)
    alpha = Feather.of(mask).alpha[1:-1, 1:-1]  # the crop's own pixels, without the frame
    edges = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
    assert edges.max() == 0  # nothing pasted at the crop's edge (the old blur left 67/255)
    assert mask[26:102, 26:102].min() == 1.0  # the face itself is pasted whole
    assert np.allclose(mask, mask.T) and np.allclose(mask, mask[::-1])
    assert (np.diff(mask[64, :64]) >= 0).all()
    assert np.abs(np.diff(alpha.astype(int), axis=1)).max() <= 16
    # Pasted: white onto black, magnified 3x, no seam where the crop ends.
    frame = np.zeros((480, 480, 3), np.uint8)
    matrix = align.estimate_norm(align.template(128) * 3.0 + 40, 128)
    paste_back(frame, np.full((128, 128, 3), 255, np.uint8), matrix, Feather.of(mask))
    row = frame[frame.shape[0] // 2, :, 0].astype(int)
    assert row.max() == 255 and row[0] == 0
    assert np.abs(np.diff(row)).max() <= 8


def test_selectors_one_and_reference(settings: Settings, tmp_path: Path) -> None:
    frame = _frame((80, 120, 30), (230, 120, 55))
    one = load_models(settings.replace(face_selector="one")).engine
    one.set_source_embedding(np.ones(512, np.float32))
    assert one.process([frame.copy()]) == [1]

    reference_image = tmp_path / "ref.png"
    cv2.imwrite(str(reference_image), frame[:, 150:])  # only the big face
    ref = load_models(settings.replace(face_selector="reference", reference_distance=0.3)).engine
    ref.set_source_embedding(np.ones(512, np.float32))
    ref.set_reference(reference_image)
    out = frame.copy()
    assert ref.process([out]) == [1]
    # The small face (left) is untouched, the big one (right) changed.
    assert np.array_equal(out[:, :150], frame[:, :150])
    assert not np.array_equal(out[:, 150:], frame[:, 150:])


def test_source_without_a_face_is_bad_input(settings: Settings, tmp_path: Path) -> None:
    from facefusion_tasks.errors import InputError

    path = tmp_path / "noface.png"
    cv2.imwrite(str(path), background(200, 200, 0))
    engine = load_models(settings).engine
    with pytest.raises(InputError, match="no face found in the source image"):
        engine.set_source(path)


def test_converted_detector_batches_frames_with_identical_results(
    settings: Settings, detector: Detector
) -> None:
    # A batch set explicitly: on the CPU provider the detector otherwise runs frame by frame.
    batched = load_models(settings.replace(detector_batch=8)).engine.detector
    assert batched.batched and not detector.batched
    frames = [_frame((90, 120, 45)), _frame(), _frame((60, 60, 30), (250, 170, 40))]
    calls = batched.calls
    together = batched.detect(frames)
    assert batched.calls - calls == 1
    for one, frame in zip(together, frames, strict=True):
        alone = detector.detect([frame])[0]
        assert len(one) == len(alone)
        for a, b in zip(one, alone, strict=True):
            assert np.allclose(a.bbox, b.bbox) and np.allclose(a.kps, b.kps)


def test_the_identity_of_several_embeddings_is_their_normalised_mean() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((3, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    total = vectors.sum(axis=0)
    identity = mean_identity(vectors)
    assert np.allclose(identity, total / np.linalg.norm(total), atol=1e-6)
    assert np.linalg.norm(identity) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(mean_identity(vectors[:1]), vectors[0], atol=1e-6)


def test_several_sources_swap_in_the_mean_of_their_embeddings(
    settings: Settings, tmp_path: Path
) -> None:
    first, second = write_source_face(tmp_path / "a.png"), write_second_face(tmp_path / "b.png")
    engine = load_models(settings).engine
    embeddings = []
    for path in (first, second):
        image = cv2.imread(str(path))
        face = max(engine.detector.detect([image])[0], key=lambda f: f.area)
        embeddings.append(engine.embedder.embed([(image, face)])[0])
    singles = []
    for path in (first, second):
        engine.set_sources([path])
        assert engine.latent is not None
        singles.append(engine.latent)
    engine.set_sources([first, second])
    mean = (embeddings[0] + embeddings[1]) / np.linalg.norm(embeddings[0] + embeddings[1])
    assert engine.latent is not None
    assert np.allclose(engine.latent, engine.swapper.latent(mean), atol=1e-6)
    assert all(not np.allclose(engine.latent, single, atol=1e-3) for single in singles)


def test_a_source_without_a_face_among_several_is_named(settings: Settings, tmp_path: Path) -> None:
    from facefusion_tasks.errors import InputError
    from facefusion_tasks.reasons import Reason

    noface = tmp_path / "holiday.png"
    cv2.imwrite(str(noface), background(200, 200, 0))
    engine = load_models(settings).engine
    with pytest.raises(InputError, match="holiday.png: no face found") as caught:
        engine.set_sources([write_source_face(tmp_path / "a.png"), noface])
    assert caught.value.reason is Reason.NO_SOURCE_FACE
