"""fp16 model copies (fp32 inputs and outputs kept), checked against fp32, cached by digest."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from facefusion_tasks.errors import ModelError
from facefusion_tasks.faces.batching import (
    _Probe,
    _probe_input,
    _read_marker,
    _real_inputs,
    _sha256,
    _write_json,
)

log = logging.getLogger(__name__)

#: An fp16 output may differ from the fp32 one by at most this fraction of the fp32 output's
#: largest magnitude (at least 1): 0.01 is 2.5 grey levels of the swapper's 0..1 pixels, and a
#: hundredth of a detector score.
FP16_TOLERANCE = 1e-2


def fp16_model_path(
    model_path: Path,
    cache_dir: Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    spatial: int = 128,
) -> Path | None:
    """An fp16 copy of `model_path` with fp32 inputs and outputs, converted by onnxconverter-common
    and verified on `providers` against the fp32 model within FP16_TOLERANCE. Cached in
    `cache_dir` under the source's sha256 and the converter's version; a cached copy is used only
    while its record names that source and its own bytes still match the recorded digest. None
    when conversion fails (recorded, so later starts do not retry on the same onnxruntime)."""
    import onnxruntime as ort

    try:
        source_digest = _sha256(model_path)
    except OSError as exc:
        raise ModelError(f"cannot read {model_path}: {exc}") from None
    # Verified where it will run: a copy checked on the CPU (or at another input size) says
    # nothing about CUDA's fp16 kernels, so the provider and the size are part of its name.
    checked_on = providers[0].removesuffix("ExecutionProvider").lower() if providers else "cpu"
    stem = (
        f"{model_path.stem}.{source_digest[:16]}.fp16-{_converter_version()}.{checked_on}-{spatial}"
    )
    converted = cache_dir / f"{stem}.onnx"
    record = cache_dir / f"{stem}.json"
    marker = cache_dir / f"{stem}.failed.json"
    if converted.is_file():
        made = _read_marker(record)
        if made.get("source_sha256") == source_digest and made.get("sha256") == _sha256(converted):
            return converted
        log.warning("%s: cached fp16 copy does not match its record; converting again", model_path)
        converted.unlink(missing_ok=True)
    if marker.is_file() and _read_marker(marker).get("onnxruntime") == ort.__version__:
        log.info("%s: fp16 unavailable (%s)", model_path.name, _read_marker(marker).get("reason"))
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    reason = _convert(model_path, converted, providers, spatial)
    if reason is None:
        marker.unlink(missing_ok=True)
        made = {"source_sha256": source_digest, "sha256": _sha256(converted)}
        _write_json(record, made)
        log.info("%s: fp16 copy at %s", model_path.name, converted)
        return converted
    log.warning("%s: staying in fp32: %s", model_path.name, reason)
    failure = {
        "source": str(model_path),
        "source_sha256": source_digest,
        "reason": reason,
        "onnxruntime": ort.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(marker, failure)
    return None


def _converter_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxconverter-common")
    except PackageNotFoundError:
        return "unknown"


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter's fp16 model with fp32 graph inputs and outputs (Casts at the edges)."""
    from onnxconverter_common import float16

    # The converter names each edge Cast after the node it feeds; unnamed nodes would give two
    # Casts the same name, which onnxruntime rejects.
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return float16.convert_float_to_float16(model, keep_io_types=True)


def _convert(
    model_path: Path, out_path: Path, providers: Sequence[str], spatial: int
) -> str | None:
    try:
        half = to_fp16(onnx.load(str(model_path)))
    except Exception as exc:  # the converter raises whatever its graph walk meets
        return f"conversion failed: {type(exc).__name__}: {exc}".splitlines()[0]
    fd, raw = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(raw)
    try:
        onnx.save(half, str(tmp))
        reason = compare_fp16(model_path, tmp, providers=providers, spatial=spatial)
        if reason is None:
            os.replace(tmp, out_path)
        return reason
    except Exception as exc:  # onnxruntime's errors are plain Exception subclasses
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        tmp.unlink(missing_ok=True)


def compare_fp16(
    original: Path,
    half: Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    spatial: int = 128,
    tolerance: float = FP16_TOLERANCE,
) -> str | None:
    """Run both models on the same random inputs; None when every output is within tolerance,
    else which output is off and by how much."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    full = ort.InferenceSession(str(original), options, providers=list(providers))
    reduced = ort.InferenceSession(str(half), options, providers=list(providers))
    for session in (full, reduced):
        ran_on = session.get_providers()[0]
        if providers and ran_on != providers[0]:
            # onnxruntime dropped the provider: a check on another one would prove nothing.
            return f"the check ran on {ran_on}, not {providers[0]}"
    inputs = _real_inputs(onnx.load(str(original), load_external_data=False).graph)
    probe = _Probe(batch=1, spatial=spatial)
    rng = np.random.default_rng(0)
    feeds = {value.name: _probe_input(value, probe, rng) for value in inputs}
    names = [out.name for out in full.get_outputs()]
    for name, want, got in zip(names, full.run(None, feeds), reduced.run(None, feeds), strict=True):
        want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
        if want.shape != got.shape:
            return f"output {name} has shape {got.shape} in fp16, {want.shape} in fp32"
        bound = tolerance * max(1.0, float(np.abs(want).max(initial=0.0)))
        error = float(np.abs(got - want).max(initial=0.0))
        if not error <= bound:  # also catches NaN
            return f"output {name} differs from fp32 by {error:.3g} (allowed {bound:.3g})"
    return None
