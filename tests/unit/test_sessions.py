"""Provider proof with onnxruntime's real behaviour on this CPU host: the CUDA provider is listed
but cannot start, and nothing pretends otherwise."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import onnxruntime as ort
import pytest

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.faces import probe, sessions
from facefusion_tasks.faces.loader import load_models
from facefusion_tasks.faces.sessions import (
    CPU,
    CUDA,
    ProviderChoice,
    ProviderUnavailable,
    create_session,
)
from facefusion_tasks.models.standin import SWAPPER_FILE


def test_this_onnxruntime_lists_cuda_which_is_the_trap() -> None:
    # The precondition of every test below: a GPU build, so "listed" proves nothing.
    assert CUDA in ort.get_available_providers()


def test_cpu_proof_runs_the_test_model_on_the_cpu() -> None:
    proof = probe.prove("cpu")
    assert proof.ok and proof.ran_on == CPU and proof.reason == ""


def test_cuda_proof_says_listed_but_did_not_start_and_why() -> None:
    proof = probe.prove("cuda")
    assert not proof.ok
    assert proof.ran_on != CUDA
    assert proof.reason.startswith("CUDAExecutionProvider is listed but did not start: ")
    # Whichever way this host lacks CUDA (no CUDA libraries, no driver, no device), the reason
    # names it rather than onnxruntime's generic "Require cuDNN 9.* and CUDA 13.*".
    assert any(
        words in proof.reason
        for words in ("not found", "no CUDA-capable device", "driver", "failed to initialise")
    ), proof.reason
    # onnxruntime's own lines come along for the curious.
    assert any("CUDAExecutionProvider" in line for line in proof.log)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Failed to load library libonnxruntime_providers_cuda.so with error: "
            "libcudnn.so.9: cannot open shared object file: No such file or directory",
            "cuDNN library libcudnn.so.9 not found",
        ),
        (
            "Failed to load libcublasLt.so.13: libcublasLt.so.13: cannot open shared object file",
            "CUDA library libcublasLt.so.13 not found",
        ),
        (
            "CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version ; "
            "GPU=0 ; hostname=h ; file=cuda_call.cc",
            "needs driver >= 580",
        ),
        (
            # Verbatim from onnxruntime-gpu 1.31.1 on an H100 with a CUDA_VISIBLE_DEVICES that
            # names no device (printed by its Python layer before it retries on the CPU).
            "EP Error /onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:146 "
            "std::conditional_t<THRW, void, onnxruntime::common::Status> onnxruntime::CudaCall("
            "ERRTYPE, const char*, const char*, SUCCTYPE, const char*, const char*, int) [with "
            "ERRTYPE = cudaError; bool THRW = true; SUCCTYPE = cudaError; std::conditional_t<THRW,"
            " void, common::Status> = void] CUDA failure 100: no CUDA-capable device is detected ;"
            " GPU=-1 ; hostname=vm ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/"
            "cuda_execution_provider.cc ; line=355 ; expr=cudaSetDevice(info_.device_id); \n\n"
            " when using ['CUDAExecutionProvider']\nFalling back to ['CPUExecutionProvider'] and "
            "retrying.\n[E:onnxruntime:, inference_session.cc:3175 operator()] Conflicting "
            "session configuration: explicitly added the CPU EP to the session, but also disabled "
            "fallback to the CPU EP via session configuration options.",
            "no CUDA-capable device is visible",
        ),
        ("CUDA failure 700: an illegal memory access was encountered ; GPU=0", "CUDA failure 700"),
    ],
)
def test_onnxruntime_failure_texts_become_one_actionable_line(text: str, expected: str) -> None:
    assert expected in probe.explain(text)


def test_an_unknown_failure_reports_the_cause_not_the_proofs_own_refusal() -> None:
    text = (
        "[E:onnxruntime:Default, cudnn_fe.cc:80] CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR\n"
        "[E:onnxruntime:, inference_session.cc:3181] This session contains graph nodes that are "
        "assigned to the default CPU EP, but fallback to CPU EP has been explicitly disabled by "
        "the user."
    )
    assert "CUDNN_STATUS_INTERNAL_ERROR" in probe.explain(text)


def test_a_cuda_session_on_this_host_refuses_instead_of_running_on_the_cpu(
    models_dir: Path,
) -> None:
    # What the old code did: warn and quietly run on the CPU.
    choice = ProviderChoice("cuda", (CUDA, CPU))
    with pytest.raises(ProviderUnavailable) as caught:
        create_session(models_dir / SWAPPER_FILE, choice)
    message = str(caught.value)
    assert "execution provider cuda cannot run here" in message
    assert "FACEFUSION_ALLOW_CPU_FALLBACK=1" in message
    assert "\n" not in message


def test_cpu_fallback_runs_only_when_allowed_and_says_so(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="facefusion_tasks.faces.sessions")
    choice = ProviderChoice("cuda", (CUDA, CPU))
    session = create_session(models_dir / SWAPPER_FILE, choice, allow_cpu_fallback=True)
    assert session.get_providers() == [CPU]
    assert any("CPU allowed" in r.getMessage() for r in caplog.records)


def test_worker_model_loading_refuses_cuda_here_and_runs_explicit_cpu(
    settings: Settings,
) -> None:
    with pytest.raises(ProviderUnavailable, match="cannot run here"):
        load_models(settings.replace(execution_provider="cuda"))
    assert load_models(settings).active_provider == CPU
    allowed = settings.replace(execution_provider="cuda", allow_cpu_fallback=True)
    assert load_models(allowed).active_provider == CPU


def test_auto_without_a_gpu_is_the_cpu_and_not_a_refusal() -> None:
    assert sessions.choose_providers("auto").providers == (CPU,)


def test_gpu_mem_limit_reaches_the_cuda_provider_options() -> None:
    assert sessions.provider_options(CUDA, gpu_mem_limit=8 * 2**30)["gpu_mem_limit"] == 8 * 2**30
    assert "gpu_mem_limit" not in sessions.provider_options(CUDA)
    env = {"FACEFUSION_GPU_MEM_LIMIT": "4294967296", "FACEFUSION_ALLOW_CPU_FALLBACK": "1"}
    loaded = Settings.from_env(env)
    assert loaded.gpu_mem_limit == 4 * 2**30 and loaded.allow_cpu_fallback is True


def test_tensorrt_is_not_offered_and_says_why() -> None:
    with pytest.raises(InputError, match="tensorrt is not offered"):
        Settings.from_env({"FACEFUSION_EXECUTION_PROVIDER": "tensorrt"})


def test_preload_reports_what_onnxruntime_could_not_load() -> None:
    sessions.preload_cuda_libraries.cache_clear()
    lines = sessions.preload_cuda_libraries()
    failed = [line for line in lines if line.startswith("Failed to load") and "cublas" in line]
    if importlib.util.find_spec("nvidia") is None:
        # No CUDA 13 pip libraries in this environment: onnxruntime prints which it could not
        # load (it prints, it does not raise), and the text is kept for the reason.
        assert failed, lines
    else:
        assert not failed, lines


def test_the_launchers_cpu_profile_worker_is_never_sent_to_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Even on a host with device nodes, an empty CUDA_VISIBLE_DEVICES means "no GPU for me".
    monkeypatch.setattr(sessions.os.path, "exists", lambda path: path == "/dev/nvidiactl")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert sessions.choose_providers("auto").providers == (CPU,)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-13a1ad0c")
    assert sessions.choose_providers("auto").providers == (CUDA, CPU)
