"""Give batch-1 ONNX models a symbolic batch dimension, and prove the result batches correctly."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from facefusion_tasks.errors import ModelError

log = logging.getLogger(__name__)

#: The dim_param given to dimension 0 of every input (and of outputs that had it fixed at 1).
BATCH_DIM = "batch"
#: Part of every converted copy's name and record: raise it whenever the conversion changes,
#: so copies made by an older converter are never loaded.
CONVERTER_VERSION = 1


def is_batch_dynamic(model: Path | onnx.ModelProto) -> bool:
    """Whether the first graph input's dimension 0 is anything but a fixed 1."""
    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, Path) else model
    inputs = _real_inputs(proto.graph)
    if not inputs:
        return False
    dims = inputs[0].type.tensor_type.shape.dim
    if not dims:
        return False
    return not (dims[0].HasField("dim_value") and dims[0].dim_value == 1)


def make_batch_dynamic(
    model_path: Path,
    out_path: Path,
    *,
    probe_batch: int = 3,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    spatial: int = 128,
    folded_ok: bool = False,
    patch_reshapes: bool = True,
) -> bool:
    """Write a copy of the model with a symbolic batch dim, if a batch of inputs then gives
    exactly the per-item results of the original; otherwise leave nothing at `out_path`.

    `spatial` sizes the free non-batch dims of the probe inputs (images: a multiple of 32).
    `folded_ok` also accepts outputs whose dim 0 is the items' rows stacked item after item
    (det_10g-style [-1, C] heads): the caller then splits such outputs into equal parts.
    `patch_reshapes` retries a failed conversion with constant Reshape shapes that start
    with a baked-in batch of 1 rewritten to -1.
    """
    probe = _Probe(probe_batch, rtol, atol, spatial, folded_ok)
    return _convert(model_path, out_path, probe, patch_reshapes=patch_reshapes) is None


def batched_model_path(
    model_path: Path, cache_dir: Path, *, spatial: int = 128, folded_ok: bool = False
) -> Path | None:
    """A model that accepts a batch: `model_path` itself when it already does, else a converted
    copy cached in `cache_dir`, named by the source's sha256 and CONVERTER_VERSION (a replaced
    model or a changed converter is converted again). A cached copy is loaded only when its
    record names the same source digest and its own bytes still match the recorded digest;
    else it is converted afresh. None when conversion fails; that is recorded so later starts
    do not retry it."""
    import onnxruntime as ort

    try:
        source_digest = _sha256(model_path)
    except OSError as exc:
        raise ModelError(f"cannot read {model_path}: {exc}") from None
    digest = source_digest[:16]
    suffix = ".folded" if folded_ok else ""
    stem = f"{model_path.stem}.{digest}.v{CONVERTER_VERSION}{suffix}"
    converted = cache_dir / f"{stem}.batch.onnx"
    record = cache_dir / f"{stem}.batch.json"
    marker = cache_dir / f"{stem}.batch-failed.json"
    if converted.is_file():
        if _cached_copy_ok(converted, record, source_digest):
            return converted
        log.warning(
            "%s: cached converted copy %s does not match its record; converting again",
            model_path.name,
            converted,
        )
        converted.unlink(missing_ok=True)
    if marker.is_file():
        failure = _read_marker(marker)
        # A newer onnxruntime may handle the graph: retry once per runtime version.
        if failure.get("onnxruntime") == ort.__version__:
            log.info("%s: batching unavailable (%s)", model_path.name, failure.get("reason"))
            return None
    with contextlib.suppress(Exception):  # unreadable: the conversion below records why
        if is_batch_dynamic(model_path):
            return model_path
    cache_dir.mkdir(parents=True, exist_ok=True)
    probe = _Probe(spatial=spatial, folded_ok=folded_ok)
    reason = _convert(model_path, converted, probe, patch_reshapes=True)
    if reason is None:
        marker.unlink(missing_ok=True)
        made = {
            "source": str(model_path),
            "source_sha256": source_digest,
            "converter": CONVERTER_VERSION,
            "sha256": _sha256(converted),
        }
        _write_json(record, made)
        log.info("%s: converted to dynamic batch at %s", model_path.name, converted)
        return converted
    log.warning("%s: no batching, one item per call instead: %s", model_path.name, reason)
    failed = {
        "source": str(model_path),
        "sha256_prefix": digest,
        "reason": reason,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(marker, failed)
    return None


def _cached_copy_ok(converted: Path, record: Path, source_digest: str) -> bool:
    # The source was verified against its pin before this call; the copy is trusted only as
    # far as this record vouches that it was made from that source and has not changed since.
    made = _read_marker(record)
    return (
        made.get("source_sha256") == source_digest
        and made.get("converter") == CONVERTER_VERSION
        and made.get("sha256") == _sha256(converted)
    )


@dataclass(frozen=True)
class _Probe:
    """How a converted model is put to the test."""

    batch: int = 3
    rtol: float = 1e-4
    atol: float = 1e-4
    spatial: int = 128
    folded_ok: bool = False


def _convert(
    model_path: Path, out_path: Path, probe: _Probe, *, patch_reshapes: bool
) -> str | None:
    """Convert and verify; None on success, else why it failed (nothing left at out_path)."""
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError…
        return f"cannot load {model_path}: {exc}"
    graph = model.graph
    for value in _real_inputs(graph):
        _set_batch(value, force=True)
    for value in graph.output:
        _set_batch(value, force=False)
    # Inferred intermediate shapes were computed at batch 1 and would contradict a bigger batch;
    # onnxruntime infers them again. Initializers keep their order (inswapper's emap is read as
    # the last one): only the values of small Reshape shapes may change, in place.
    del graph.value_info[:]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    reason = _save_and_verify(model, model_path, out_path, probe)
    if reason is None or not patch_reshapes:
        return reason
    # Exporters fold `x.view(1, C, …)` into a constant shape with the batch baked in; -1 lets it
    # follow the batch. Any wrong guess is caught by the verification.
    patched = _patch_leading_one_reshapes(graph)
    if not patched:
        return reason
    retry = _save_and_verify(model, model_path, out_path, probe)
    if retry is None:
        log.info("%s: batched after freeing %d Reshape shape(s)", model_path.name, patched)
    return retry


def _save_and_verify(
    model: onnx.ModelProto, model_path: Path, out_path: Path, probe: _Probe
) -> str | None:
    """Save to a temp file beside out_path; move it there only once it is proven."""
    fd, raw = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(raw)
    try:
        onnx.save(model, str(tmp))
        reason = _verify(model_path, tmp, _real_inputs(model.graph), probe)
        if reason is None:
            os.replace(tmp, out_path)
        return reason
    except Exception as exc:  # onnxruntime's errors are plain Exception subclasses
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        tmp.unlink(missing_ok=True)


def _patch_leading_one_reshapes(graph: onnx.GraphProto) -> int:
    """Rewrite constant Reshape shapes [1, d1, …] (no -1 yet) to [-1, d1, …]; return how many.

    Only shapes used by nothing but Reshape are touched, so no other op sees a changed value.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tensors = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
    patched = 0
    for name, tensor in tensors.items():
        users = consumers.get(name, [])
        if not users or any(
            n.op_type != "Reshape" or list(n.input).index(name) != 1 for n in users
        ):
            continue
        shape = numpy_helper.to_array(tensor)
        if shape.ndim != 1 or shape.size < 2 or shape[0] != 1 or bool((shape == -1).any()):
            continue
        shape = shape.copy()
        shape[0] = -1
        tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))
        patched += 1
    return patched


def _verify(
    original: Path, converted: Path, inputs: list[onnx.ValueInfoProto], probe: _Probe
) -> str | None:
    """Run a batch through the converted model and each item through the original."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Fatal only: an unused-initializer warning (inswapper's emap) or a failed probe run is
    # noise here; a failure comes back as the reason instead.
    options.log_severity_level = 4
    providers = ["CPUExecutionProvider"]
    single = ort.InferenceSession(str(original), options, providers=providers)
    batched = ort.InferenceSession(str(converted), options, providers=providers)

    rng = np.random.default_rng(0)
    feeds = {value.name: _probe_input(value, probe, rng) for value in inputs}
    outputs = batched.run(None, feeds)
    names = [out.name for out in batched.get_outputs()]
    for item in range(probe.batch):
        # A scalar input has no batch dim: every item gets the same value.
        item_feeds = {
            name: array if array.ndim == 0 else array[item : item + 1]
            for name, array in feeds.items()
        }
        expected = single.run(None, item_feeds)
        for name, got, want in zip(names, outputs, expected, strict=True):
            reason = _compare(name, np.asarray(got), np.asarray(want), item, probe)
            if reason is not None:
                return reason
    return None


def _compare(name: str, got: np.ndarray, want: np.ndarray, item: int, probe: _Probe) -> str | None:
    if got.ndim == 0 or want.ndim == 0:
        return f"output {name} is a scalar, it has no batch dimension"
    rows = want.shape[0]
    if got.shape == (probe.batch, *want.shape[1:]) and rows == 1:
        part = got[item : item + 1]
    elif probe.folded_ok and got.shape == (probe.batch * rows, *want.shape[1:]):
        part = got[item * rows : (item + 1) * rows]
    else:
        return f"output {name} has shape {got.shape} for {probe.batch} items, {want.shape} for one"
    if not np.allclose(part, want, rtol=probe.rtol, atol=probe.atol):
        error = float(np.max(np.abs(part.astype(np.float64) - want.astype(np.float64))))
        return f"output {name} of item {item} differs from a single run (max error {error:.3g})"
    return None


def _probe_input(value: onnx.ValueInfoProto, probe: _Probe, rng: np.random.Generator) -> np.ndarray:
    tensor = value.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    shape = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else probe.spatial
        for d in tensor.shape.dim
    ]
    if shape:
        shape[0] = probe.batch
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    # Integer inputs are usually indices or flags: keep them small so they stay in range.
    return rng.integers(0, 2, size=shape).astype(dtype)


def _set_batch(value: onnx.ValueInfoProto, *, force: bool) -> None:
    """Make dim 0 the symbolic batch. Outputs (force=False) keep a symbolic dim 0 as it is, and
    a fixed dim 0 other than 1 (rows of all items stacked) becomes unknown rather than wrong."""
    dims = value.type.tensor_type.shape.dim
    if not dims:
        return
    first = dims[0]
    if force or (first.HasField("dim_value") and first.dim_value == 1):
        first.dim_param = BATCH_DIM
    elif first.HasField("dim_value"):
        first.Clear()


def _real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    # Old exporters (IR < 4) also list every initializer as a graph input.
    initializers = {init.name for init in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_marker(marker: Path) -> dict[str, object]:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, record: Mapping[str, object]) -> None:
    """A conversion's record or failure marker, written whole or not at all."""
    data = (json.dumps(record, indent=2) + "\n").encode()
    fd, raw = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(raw, path)
    finally:
        Path(raw).unlink(missing_ok=True)
