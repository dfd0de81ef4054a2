"""Recognise GPU out-of-memory errors from onnxruntime by their text (no onnxruntime import)."""

from __future__ import annotations

import re

# onnxruntime raises OOM as a plain Exception subclass (RuntimeException / Fail) whose only
# distinguishing feature is the message, so this is text matching, most specific first. The
# patterns come from real reports (onnxruntime, FaceFusion, Deep-Live-Cam, roop, Triton issues);
# the unit tests carry those texts verbatim.

#: Every kind classify_oom can return (the `kind` label of facefusion_gpu_oom_total).
OOM_KINDS = ("arena", "cuda", "cudnn", "cublas", "tensorrt")

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # The TensorRT EP wraps CUDA allocation failures in its own logger/allocator lines; check it
    # before "cuda" so those count as TensorRT's (its workspace is the usual culprit).
    (
        "tensorrt",
        re.compile(
            r"(tensorrt|\[TRT\]|rtSafe|defaultAllocator\.cpp|virtualMemoryBuffer\.cpp)"
            r".*(out of memory|OutOfMemory|could not be allocated)",
            re.IGNORECASE | re.DOTALL,
        ),
    ),
    # BFC arena (CUDA EP's default allocator) could not grow: the everyday OOM.
    (
        "arena",
        re.compile(
            r"BFCArena::AllocateRawInternal|Failed to allocate memory for requested buffer of size"
        ),
    ),
    # cuDNN 9 reports a handle it cannot allocate as INTERNAL_ERROR, not ALLOC_FAILED: seen on an
    # H100 (onnxruntime-gpu 1.31.1, cuDNN 9, CUDA 13) whose memory another process had taken.
    (
        "cudnn",
        re.compile(
            r"CUDNN_STATUS_ALLOC_FAILED|CUDNN_STATUS_INTERNAL_ERROR.*cudnnCreate\(", re.DOTALL
        ),
    ),
    # cuBLAS < 12 prints the enum name; newer onnxruntime prints cublasGetStatusString's text.
    ("cublas", re.compile(r"CUBLAS_STATUS_ALLOC_FAILED|CUBLAS failure 3: the resource allocation")),
    (
        "cuda",
        re.compile(
            r"CUDA failure 2: out of memory|CUDA out of memory|CUDA error: out of memory"
            r"|cudaErrorMemoryAllocation|CUDA_ERROR_OUT_OF_MEMORY",
            re.IGNORECASE,
        ),
    ),
)

_MAX_CHAIN = 8


def classify_oom(exc: BaseException) -> str | None:
    """The OOM kind (one of OOM_KINDS) if `exc` or an exception it wraps is a GPU OOM, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    depth = 0
    while current is not None and id(current) not in seen and depth < _MAX_CHAIN:
        seen.add(id(current))
        kind = classify_message(str(current))
        if kind is not None:
            return kind
        # Our own wrappers raise `... from exc`; implicit chaining covers `raise X` in except.
        current = current.__cause__ or current.__context__
        depth += 1
    return None


def classify_message(message: str) -> str | None:
    """The OOM kind for an error message, else None."""
    for kind, pattern in _PATTERNS:
        if pattern.search(message):
            return kind
    return None
