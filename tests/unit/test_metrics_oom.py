"""GPU OOM recognition on the texts onnxruntime really raises (copied from public bug reports)."""

from __future__ import annotations

import pytest

from facefusion_tasks.metrics.oom import OOM_KINDS, classify_message, classify_oom

# onnxruntime-gpu 1.19, CUDA EP, Linux (microsoft/onnxruntime#22702).
ARENA_LINUX = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
    "Conv node. Name:'/patch_embed/stages/stages.0/blocks/blocks.0/mlp/fc1/Conv' Status Message: "
    "\n/onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 void* onnxruntime::BFCArena::"
    "AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn)"
    " Failed to allocate memory for requested buffer of size 4585490524328388608"
)
# Windows build, as Deep-Live-Cam users see it (hacksider/Deep-Live-Cam#547).
ARENA_WINDOWS = (
    "Non-zero status code returned while running FusedConv node. Name:'Conv_3' Status Message: "
    "D:\\a\\_work\\1\\s\\onnxruntime\\core\\framework\\bfc_arena.cc:376 onnxruntime::BFCArena::"
    "AllocateRawInternal Failed to allocate memory for requested buffer of size 643840"
)
# cudaMalloc itself failing (triton-inference-server/server#5014).
CUDA_MALLOC = (
    "Non-zero status code returned while running FusedConv node. Name:'model/action/S0R1_conv1_1'"
    " Status Message: /workspace/onnxruntime/onnxruntime/core/providers/cuda/cuda_call.cc:122 bool"
    " onnxruntime::CudaCall(ERRTYPE, const char*, const char*, ERRTYPE, const char*) [with ERRTYPE"
    " = cudaError; bool THRW = true] /workspace/onnxruntime/onnxruntime/core/providers/cuda/"
    "cuda_call.cc:116 bool onnxruntime::CudaCall(ERRTYPE, const char*, const char*, ERRTYPE, const"
    " char*) [with ERRTYPE = cudaError; bool THRW = true] CUDA failure 2: out of memory ; GPU=0 ; "
    "hostname=e14ca68f-learner-0 ; expr=cudaMalloc((void**)&p, size);"
)
# FAIL status while creating a stream mid-video (hacksider/Deep-Live-Cam#584).
CUDA_STREAM = (
    "[ONNXRuntimeError] : 1 : FAIL : D:\\a\\_work\\1\\s\\onnxruntime\\core\\providers\\cuda\\"
    "cuda_call.cc:121 onnxruntime::CudaCall D:\\a\\_work\\1\\s\\onnxruntime\\core\\providers\\cuda"
    "\\cuda_call.cc:114 onnxruntime::CudaCall CUDA failure 2: out of memory ; GPU=0 ; "
    "hostname=DESKTOP-QUBEI ; file=D:\\a\\_work\\1\\s\\onnxruntime\\core\\providers\\cuda\\"
    "cuda_stream_handle.cc ; line=175 ; expr=cudaStreamCreateWithFlags(&stream, "
    "cudaStreamNonBlocking);"
)
# cuBLAS handle creation without memory (C0untFloyd/roop-unleashed#1065).
CUBLAS = (
    "D:\\a\\_work\\1\\s\\onnxruntime\\core\\providers\\cuda\\cuda_call.cc:121 onnxruntime::CudaCall"
    " D:\\a\\_work\\1\\s\\onnxruntime\\core\\providers\\cuda\\cuda_call.cc:114 onnxruntime::"
    "CudaCall CUBLAS failure 3: CUBLAS_STATUS_ALLOC_FAILED ; GPU=0 ; hostname=LAPTOP-LNF9BQ81 ; "
    "file=D:\\a\\_work\\1\\s\\onnxruntime\\core\\providers\\cuda\\cuda_stream_handle.cc ; line=73 "
    "; expr=cublasCreate(&cublas_handle_);"
)
# onnxruntime's CudaCall format with the cuBLAS 12 status string / the cuDNN enum name (the
# statuses are real; these two lines are assembled, not copied from one report).
CUBLAS_NEW = "CUBLAS failure 3: the resource allocation failed ; GPU=0 ; expr=cublasCreate(&h);"
CUDNN = "CUDNN failure 2: CUDNN_STATUS_ALLOC_FAILED ; GPU=0 ; expr=cudnnCreate(&cudnn_handle_);"
# Recorded on an NVIDIA H100 (onnxruntime-gpu 1.31.1, cuDNN 9, CUDA 13, driver 580) by
# scripts/gpu_check.py: another process held all but 96 MiB, then a session ran.
CUDNN_H100 = (
    "[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/providers/cuda/"
    "cuda_call.cc:146 std::conditional_t<THRW, void, onnxruntime::common::Status> onnxruntime::"
    "CudaCall(ERRTYPE, const char*, const char*, SUCCTYPE, const char*, const char*, int) [with "
    "ERRTYPE = cudnnStatus_t; bool THRW = true; SUCCTYPE = cudnnStatus_t; std::conditional_t<THRW, "
    "void, common::Status> = void] CUDNN failure 4000: CUDNN_STATUS_INTERNAL_ERROR ; GPU=0 ; "
    "hostname=vm ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_stream_handle.cc ; "
    "line=82 ; expr=cudnnCreate(&cudnn_handle_); \n\n"
)
# Recorded on the same H100: a CUDA session limited by gpu_mem_limit=8 MiB, batch 64.
ARENA_H100 = (
    "[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 "
    "void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) "
    "Available memory of 7789056 is smaller than requested bytes of 12582912\n"
)
# Recorded on the same H100: a warm session's batch of 1024 after another process took all but
# 160 MiB, and a session created under that pressure.
ARENA_H100_FULL = (
    "[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 "
    "void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Failed "
    "to allocate memory for requested buffer of size 201326592\n"
)
CUBLAS_H100 = (
    "[ONNXRuntimeError] : 1 : FAIL : Exception during initialization: /onnxruntime_src/"
    "onnxruntime/core/providers/cuda/cuda_call.cc:154 std::conditional_t<THRW, void, onnxruntime"
    "::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, const char*, SUCCTYPE, const "
    "char*, const char*, int) [with ERRTYPE = cublasStatus_t; bool THRW = true; SUCCTYPE = "
    "cublasStatus_t; std::conditional_t<THRW, void, common::Status> = void] CUBLAS failure 3: the "
    "resource allocation failed ; GPU=0 ; hostname=vm ; file=/onnxruntime_src/onnxruntime/core/"
    "providers/cuda/cuda_execution_provider.cc ; line=245 ; expr=cublasCreate(&cublas_handle_); "
    "\n\n"
)
# The TensorRT EP's logger line (microsoft/onnxruntime#10770) and TensorRT 10's allocator.
TENSORRT_EP = (
    "[E:onnxruntime:Default, tensorrt_execution_provider.h:50 log] [2022-03-04 13:39:28 ERROR] "
    "../rtSafe/safeRuntime.cpp (25) - Cuda Error in allocate: 2 (out of memory)"
)
TENSORRT_10 = (
    "[E] Error[1]: [defaultAllocator.cpp::allocate::31] Error Code 1: Cuda Runtime (out of memory)"
    "\n[W] [TRT] Requested amount of GPU memory (15485030400 bytes) could not be allocated. There "
    "may not be enough free memory for allocation to succeed."
)

# Real errors that are NOT out of memory: must not halve batches for these.
NOT_OOM = [
    # Missing cuDNN / driver mismatch (microsoft/onnxruntime#17337).
    "CUDNN failure 1: CUDNN_STATUS_NOT_INITIALIZED ; GPU=0 ; hostname=divyansh-moon ; "
    "file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_stream_handle.cc ; line=52 ; "
    "expr=cudnnCreate(&cudnn_handle_);",
    "CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR ; GPU=0 ; hostname=MSI ; "
    "expr=cudnnFindConvolutionForwardAlgorithmEx(...);",
    "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: target for the "
    "following indices index: 0 Got: 8 Expected: 1",
    "[ONNXRuntimeError] : 1 : FAIL : CUDA error executing cudaMemcpy(dst_data, src_data, bytes, "
    "cudaMemcpyDeviceToHost)",
    "[ONNXRuntimeError] : 3 : NO_SUCHFILE : Load model from inswapper_128.onnx failed",
]


class Fail(Exception):
    """Stands in for onnxruntime.capi.onnxruntime_pybind11_state.Fail (an Exception subclass)."""


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (ARENA_LINUX, "arena"),
        (ARENA_WINDOWS, "arena"),
        (CUDA_MALLOC, "cuda"),
        (CUDA_STREAM, "cuda"),
        (CUBLAS, "cublas"),
        (CUBLAS_NEW, "cublas"),
        (CUDNN, "cudnn"),
        (CUDNN_H100, "cudnn"),
        (ARENA_H100, "arena"),
        (ARENA_H100_FULL, "arena"),
        (CUBLAS_H100, "cublas"),
        (TENSORRT_EP, "tensorrt"),
        (TENSORRT_10, "tensorrt"),
        ("RuntimeError: CUDA out of memory. Tried to allocate 1.12 MiB (GPU 0)", "cuda"),
        ("cudaErrorMemoryAllocation: out of memory", "cuda"),
    ],
)
def test_each_real_oom_text_gets_its_kind(message: str, kind: str) -> None:
    assert classify_oom(Fail(message)) == kind
    assert kind in OOM_KINDS


@pytest.mark.parametrize("message", NOT_OOM)
def test_other_gpu_and_model_errors_are_not_oom(message: str) -> None:
    assert classify_oom(Fail(message)) is None


def test_an_oom_wrapped_by_our_own_error_is_still_recognised() -> None:
    try:
        try:
            raise Fail(ARENA_LINUX)
        except Fail as inner:
            raise RuntimeError("swapper batch of 8 failed") from inner
    except RuntimeError as outer:
        assert classify_oom(outer) == "arena"


def test_implicit_chaining_is_followed_too() -> None:
    try:
        try:
            raise Fail(CUDA_MALLOC)
        except Fail:
            raise ValueError("cleanup failed") from None
    except ValueError as outer:
        # `from None` suppresses display, yet __context__ still holds the OOM.
        assert classify_oom(outer) == "cuda"


def test_a_cyclic_chain_terminates() -> None:
    first = RuntimeError("a")
    second = RuntimeError("b")
    first.__cause__ = second
    second.__cause__ = first
    assert classify_oom(first) is None


def test_plain_memory_error_is_host_memory_not_gpu() -> None:
    assert classify_oom(MemoryError()) is None
    assert classify_message("") is None
