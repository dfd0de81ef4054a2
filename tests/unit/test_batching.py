"""Dynamic-batch conversion: a batch of N gives N single results, or the model is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from facefusion_tasks.faces import batching
from facefusion_tasks.faces.batching import (
    batched_model_path,
    is_batch_dynamic,
    make_batch_dynamic,
)

OPSET = [helper.make_opsetid("", 17)]


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def swapper_like(path: Path) -> Path:
    """inswapper's shape contract: image [1,3,8,8] + vector [1,4] → image, emap last."""
    rng = np.random.default_rng(1)
    inits = [
        _init("conv_w", rng.standard_normal((3, 3, 3, 3)).astype(np.float32)),
        _init("conv_b", rng.standard_normal(3).astype(np.float32)),
        _init("proj", rng.standard_normal((4, 3)).astype(np.float32)),
        _init("shape", np.array([-1, 3, 1, 1], np.int64)),
        # Unused by the graph, read by the caller as the last initializer (like inswapper's emap).
        _init("emap", rng.standard_normal((4, 4)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["target", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MatMul", ["source", "proj"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["m4"]),
        helper.make_node("Add", ["r", "m4"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "swapper_like",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 4]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])],
        inits,
        # Exporters leave inferred intermediate shapes pinned at batch 1.
        value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    return _save(graph, path)


def reshape_to_one_row(path: Path) -> Path:
    """Reshape to a constant [1, -1]: a batch collapses into one row of the wrong width."""
    inits = [_init("shape", np.array([1, -1], np.int64))]
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "one_row",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 192])],
        inits,
    )
    return _save(graph, path)


def reshape_then_matmul(path: Path) -> Path:
    """Reshape to [1, -1] then a fixed-width MatMul: batched, the graph fails to run at all."""
    rng = np.random.default_rng(2)
    inits = [
        _init("shape", np.array([1, -1], np.int64)),
        _init("w", rng.standard_normal((192, 2)).astype(np.float32)),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["y"]),
        ],
        "fixed_width",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    return _save(graph, path)


def item_mixer(path: Path) -> Path:
    """Reshape [4, -1] then transpose: right output shape for any batch, items interleaved."""
    inits = [_init("shape", np.array([4, -1], np.int64))]
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["t"]),
            helper.make_node("Transpose", ["t"], ["y"], perm=[1, 0]),
        ],
        "mixer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return _save(graph, path)


def fixed_width_flatten(path: Path, *, as_constant_node: bool = False) -> Path:
    """Reshape to [1, 192] then MatMul: the batch is baked in, but -1 in its place is right."""
    rng = np.random.default_rng(4)
    shape = np.array([1, 192], np.int64)
    inits = [_init("w", rng.standard_normal((192, 2)).astype(np.float32))]
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    if as_constant_node:
        nodes.insert(0, helper.make_node("Constant", [], ["shape"], value=_init("shape", shape)))
    else:
        inits.insert(0, _init("shape", shape))
    graph = helper.make_graph(
        nodes,
        "flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    return _save(graph, path)


def patched_but_mixed(path: Path) -> Path:
    """Baked-in batch-1 shapes whose -1 version runs but interleaves items (a transpose over
    the batch axis): the patch must still be refused."""
    inits = [
        _init("s1", np.array([1, 2, 2], np.int64)),
        _init("s2", np.array([1, 4], np.int64)),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "s1"], ["a"]),
            helper.make_node("Transpose", ["a"], ["b"], perm=[2, 1, 0]),
            helper.make_node("Reshape", ["b", "s2"], ["y"]),
        ],
        "patched_mixer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return _save(graph, path)


def folded_head(path: Path) -> Path:
    """An SCRFD-style head: NCHW → NHWC → [-1, C], so a batch stacks each item's rows."""
    inits = [_init("shape", np.array([-1, 2], np.int64))]
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["nhwc"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["nhwc", "shape"], ["rows"]),
        ],
        "folded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, "h", "w"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["n", 2])],
        inits,
    )
    return _save(graph, path)


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


def test_a_swapper_like_model_batches_and_matches_single_calls(tmp_path: Path) -> None:
    source = swapper_like(tmp_path / "swapper.onnx")
    out = tmp_path / "swapper.batch.onnx"

    assert make_batch_dynamic(source, out) is True

    rng = np.random.default_rng(7)
    target = rng.random((5, 3, 8, 8), dtype=np.float32)
    vector = rng.random((5, 4), dtype=np.float32)
    batched = _run(out, {"target": target, "source": vector})
    assert batched.shape == (5, 3, 8, 8)
    for i in range(5):
        single = _run(source, {"target": target[i : i + 1], "source": vector[i : i + 1]})
        np.testing.assert_allclose(batched[i : i + 1], single, rtol=1e-5, atol=1e-5)

    before, after = onnx.load(str(source)), onnx.load(str(out))
    assert [i.name for i in after.graph.initializer] == [i.name for i in before.graph.initializer]
    np.testing.assert_array_equal(
        numpy_helper.to_array(after.graph.initializer[-1]),
        numpy_helper.to_array(before.graph.initializer[-1]),
    )
    assert len(after.graph.value_info) == 0
    assert after.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert after.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in after.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 8, 8]


@pytest.mark.parametrize(
    "build",
    [reshape_to_one_row, reshape_then_matmul, item_mixer, patched_but_mixed],
    ids=lambda f: f.__name__,
)
def test_a_model_that_cannot_batch_is_refused_and_leaves_no_file(
    tmp_path: Path, build: object
) -> None:
    assert callable(build)
    source = build(tmp_path / "model.onnx")
    out = tmp_path / "out" / "model.batch.onnx"

    assert make_batch_dynamic(source, out, probe_batch=3) is False

    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temp file either


@pytest.mark.parametrize("as_constant_node", [False, True], ids=["initializer", "constant"])
def test_a_baked_in_batch_of_one_in_a_reshape_is_freed(
    tmp_path: Path, as_constant_node: bool
) -> None:
    source = fixed_width_flatten(tmp_path / "flat.onnx", as_constant_node=as_constant_node)
    out = tmp_path / "flat.batch.onnx"

    assert make_batch_dynamic(source, out, patch_reshapes=False) is False
    assert make_batch_dynamic(source, out) is True

    x = np.random.default_rng(5).random((4, 3, 8, 8), dtype=np.float32)
    batched = _run(out, {"x": x})
    assert batched.shape == (4, 2)
    np.testing.assert_allclose(batched[2:3], _run(source, {"x": x[2:3]}), rtol=1e-5, atol=1e-5)


def test_stacked_rows_are_accepted_only_when_asked(tmp_path: Path) -> None:
    source = folded_head(tmp_path / "head.onnx")
    out = tmp_path / "head.batch.onnx"

    assert make_batch_dynamic(source, out, spatial=4) is False
    assert make_batch_dynamic(source, out, spatial=4, folded_ok=True) is True

    x = np.random.default_rng(3).random((3, 2, 4, 4), dtype=np.float32)
    rows = _run(out, {"x": x})
    assert rows.shape == (3 * 16, 2)
    np.testing.assert_allclose(rows[16:32], _run(source, {"x": x[1:2]}), rtol=1e-6)


def test_a_broken_file_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "broken.onnx"
    source.write_bytes(b"not a model")
    assert make_batch_dynamic(source, tmp_path / "out.onnx") is False
    assert not (tmp_path / "out.onnx").exists()


def test_converted_copy_is_cached_by_source_digest(tmp_path: Path) -> None:
    source = swapper_like(tmp_path / "swapper.onnx")
    cache = tmp_path / "cache"

    first = batched_model_path(source, cache)
    assert first is not None and first.parent == cache and first != source
    assert is_batch_dynamic(first)
    mtime = first.stat().st_mtime_ns

    assert batched_model_path(source, cache) == first
    assert first.stat().st_mtime_ns == mtime

    # A replaced source (different bytes) gets its own conversion.
    model = onnx.load(str(source))
    model.graph.initializer[-1].float_data[:] = []
    model.graph.initializer[-1].raw_data = np.ones((4, 4), np.float32).tobytes()
    onnx.save(model, str(source))
    second = batched_model_path(source, cache)
    assert second is not None and second != first


def test_failed_conversion_is_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = reshape_to_one_row(tmp_path / "model.onnx")
    cache = tmp_path / "cache"

    assert batched_model_path(source, cache) is None
    markers = list(cache.glob("*.batch-failed.json"))
    assert len(markers) == 1
    assert "shape" in markers[0].read_text()

    def must_not_run(*args: object, **kwargs: object) -> str | None:
        raise AssertionError("conversion retried despite the failure marker")

    monkeypatch.setattr(batching, "_convert", must_not_run)
    assert batched_model_path(source, cache) is None


def test_a_dynamic_model_is_used_as_it_is(tmp_path: Path) -> None:
    source = swapper_like(tmp_path / "swapper.onnx")
    converted = tmp_path / "dynamic.onnx"
    assert make_batch_dynamic(source, converted)

    assert batched_model_path(converted, tmp_path / "cache") == converted
    assert not (tmp_path / "cache").exists()


def test_is_batch_dynamic(tmp_path: Path) -> None:
    source = swapper_like(tmp_path / "swapper.onnx")
    assert is_batch_dynamic(source) is False
    assert is_batch_dynamic(onnx.load(str(source))) is False

    model = onnx.load(str(source))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    assert is_batch_dynamic(model) is True
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert is_batch_dynamic(model) is True

    # Old exporters list initializers as inputs; they are not the batch input.
    model = onnx.load(str(source))
    weight = helper.make_tensor_value_info("conv_w", TensorProto.FLOAT, [3, 3, 3, 3])
    model.graph.input.insert(0, weight)
    assert is_batch_dynamic(model) is False
