"""The stand-in models honour the real models' I/O contracts exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from insightface import model_zoo

from facefusion_tasks.models.standin import DETECTOR_OUTPUTS, is_standin


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_detector_contract_matches_det_10g(models_dir: Path) -> None:
    session = _session(models_dir / "det_10g.onnx")
    (inp,) = session.get_inputs()
    assert inp.name == "input.1"
    assert inp.shape[:2] == [1, 3] and all(isinstance(d, str) for d in inp.shape[2:])
    assert [o.name for o in session.get_outputs()] == list(DETECTOR_OUTPUTS)
    outs = session.run(None, {"input.1": np.zeros((1, 3, 640, 640), np.float32)})
    cells = [(640 // s) ** 2 * 2 for s in (8, 16, 32)]
    expected = [(c, 1) for c in cells] + [(c, 4) for c in cells] + [(c, 10) for c in cells]
    assert [o.shape for o in outs] == expected


def test_embedder_contract_matches_w600k(models_dir: Path) -> None:
    session = _session(models_dir / "w600k_r50.onnx")
    (inp,) = session.get_inputs()
    assert inp.name == "input.1" and inp.shape[1:] == [3, 112, 112]
    assert not isinstance(inp.shape[0], int)  # dynamic batch, like the real export
    out = session.run(None, {"input.1": np.random.rand(5, 3, 112, 112).astype(np.float32)})[0]
    assert out.shape == (5, 512) and session.get_outputs()[0].name == "683"


def test_swapper_contract_matches_inswapper(models_dir: Path) -> None:
    session = _session(models_dir / "inswapper_128.onnx")
    target, source = session.get_inputs()
    assert (target.name, target.shape) == ("target", [1, 3, 128, 128])
    assert (source.name, source.shape) == ("source", [1, 512])
    assert session.get_outputs()[0].name == "output"
    last = onnx.load(str(models_dir / "inswapper_128.onnx")).graph.initializer[-1]
    assert list(last.dims) == [512, 512]


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("det_10g.onnx", "SCRFD"),
        ("w600k_r50.onnx", "ArcFaceONNX"),
        ("inswapper_128.onnx", "INSwapper"),
    ],
)
def test_insightface_recognises_each_standin(models_dir: Path, name: str, cls: str) -> None:
    model = model_zoo.get_model(str(models_dir / name), providers=["CPUExecutionProvider"])
    assert type(model).__name__ == cls


def test_standins_are_marked(models_dir: Path, tmp_path: Path) -> None:
    assert is_standin(models_dir / "det_10g.onnx")
    other = tmp_path / "x.onnx"
    other.write_bytes(b"not a model")
    assert not is_standin(other)


def test_ballast_compute_leaves_detections_unchanged(tmp_path: Path) -> None:
    from facefusion_tasks.models.standin import make_test_models

    light = make_test_models(tmp_path / "light")["detector"]
    heavy = make_test_models(tmp_path / "heavy", detector_gflops=2.0)["detector"]
    image = (np.random.default_rng(0).random((1, 3, 256, 256), np.float32) - 0.5) * 2
    a = _session(light).run(None, {"input.1": image})
    b = _session(heavy).run(None, {"input.1": image})
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert len(onnx.load(str(heavy)).graph.node) > len(onnx.load(str(light)).graph.node)
