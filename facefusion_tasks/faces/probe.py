"""Proof that a provider really runs: a tiny model, one real run, onnxruntime's own reason."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Seconds the proof subprocess may take (importing onnxruntime-gpu and loading cuDNN is slow).
PROOF_TIMEOUT = 180.0

#: onnxruntime's name for each --execution-provider choice the proof can test.
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: onnxruntime / CUDA failure texts -> the one-line reason an operator can act on, first match
#: wins. The texts are onnxruntime's own (provider_bridge_ort.cc, cuda_call.cc, preload_dlls).
_REASONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"(libcudnn[\w.]*\.so[\d.]*)[^\n]*cannot open shared object file"),
        "cuDNN library {0} not found: install onnxruntime-gpu[cuda,cudnn] (CUDA 13 / cuDNN 9 "
        "pip libraries) or use a CUDA 13 + cuDNN 9 runtime image",
    ),
    (
        re.compile(r"(lib[\w.+-]*\.so[\d.]*)[^\n]*cannot open shared object file"),
        "CUDA library {0} not found: install onnxruntime-gpu[cuda,cudnn] (CUDA 13 / cuDNN 9 "
        "pip libraries) or use a CUDA 13 + cuDNN 9 runtime image",
    ),
    (
        re.compile(r"CUDA failure 35|driver version is insufficient", re.IGNORECASE),
        "the NVIDIA driver is too old for this CUDA 13 build of onnxruntime (needs driver >= 580)",
    ),
    (
        re.compile(r"CUDA failure 100|no CUDA-capable device", re.IGNORECASE),
        "no CUDA-capable device is visible (no GPU here, or CUDA_VISIBLE_DEVICES / "
        "NVIDIA_VISIBLE_DEVICES hide it)",
    ),
    (
        re.compile(r"CUDA failure 999|CUDA failure 3:|initialization error", re.IGNORECASE),
        "the CUDA driver failed to initialise (driver not loaded, /dev/nvidia* missing, or a "
        "GPU in a bad state)",
    ),
    (re.compile(r"(CUDA failure \d+: [^;\n]+)"), "{0}"),
    (
        re.compile(r"Require cuDNN \S+ and CUDA \S+"),
        "onnxruntime could not start the CUDA provider: {0} (see its log lines)",
    ),
)


@dataclass(frozen=True)
class ProviderProof:
    """What a real session on the test model ran on, and why not when it was not the ask."""

    requested: str
    #: onnxruntime's provider that ran the test model; "" when no session started at all.
    ran_on: str
    ok: bool
    #: One line: why the requested provider did not run it ("" when ok).
    reason: str = ""
    #: onnxruntime's own error and warning lines, for the curious.
    log: tuple[str, ...] = ()
    #: Where the CUDA and cuDNN libraries that ran it were loaded from (the nvidia-* wheels'
    #: directories, or a system path), read from the child's memory map.
    libraries: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"log": list(self.log), "libraries": list(self.libraries)}


def explain(text: str) -> str:
    """The one-line reason in onnxruntime's output, or its last error line."""
    for pattern, template in _REASONS:
        match = pattern.search(text)
        if match:
            return template.format(*match.groups(), match.group(0))
    errors = [
        line
        for line in text.splitlines()
        if ("[E:" in line or "rror" in line)
        # The proof's own refusal to fall back names the symptom, not the cause.
        and "disabled fallback to the CPU EP" not in line
        and "fallback to CPU EP has been explicitly disabled" not in line
    ]
    return errors[-1].strip()[:300] if errors else ""


def prove(
    requested: str,
    *,
    gpu_mem_limit: int = 0,
    environ: Mapping[str, str] | None = None,
    timeout: float = PROOF_TIMEOUT,
) -> ProviderProof:
    """Run the test model on `requested` (cpu | cuda) in a fresh process and report the truth.

    A subprocess because onnxruntime prints why CUDA failed on the C++ side of stderr, which a
    subprocess captures whole, and because the caller (a worker launcher) must not load CUDA."""
    from facefusion_tasks.gpus import child_environment

    wanted = PROVIDER_NAMES[requested]
    argv = [sys.executable, "-m", "facefusion_tasks.faces.probe", requested]
    argv += ["--gpu-mem-limit", str(gpu_mem_limit)]
    try:
        done = subprocess.run(
            argv,
            env=child_environment(os.environ if environ is None else environ),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ProviderProof(requested, "", False, f"the provider test did not finish: {exc}")
    stderr = _ANSI.sub("", done.stderr)
    lines = tuple(
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and not re.search(r"\[[IV]:onnxruntime", line)
    )
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        reason = explain(stderr) or f"the provider test exited with status {done.returncode}"
        return ProviderProof(requested, "", False, reason, lines[-20:])
    ran_on = str(answer.get("ran_on", ""))
    if ran_on == wanted and answer.get("output_ok"):
        libraries = tuple(str(d) for d in answer.get("libraries", []))
        return ProviderProof(requested, ran_on, True, "", lines[-20:], libraries)
    reason = explain(stderr + "\n" + str(answer.get("error", "")))
    if not reason:
        reason = (
            "the test model gave a wrong result"
            if ran_on == wanted
            else f"onnxruntime dropped {wanted} without saying why"
        )
    if answer.get("listed", True) and ran_on != wanted:
        ran = f"the test model ran on {ran_on}" if ran_on else "no session started"
        reason = f"{wanted} is listed but did not start: {reason} ({ran})"
    return ProviderProof(requested, ran_on, False, reason, lines[-20:])


def tiny_model() -> bytes:
    """A one-node model (Relu over a float tensor) every provider implements."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    return bytes(model.SerializeToString())


def _run(requested: str, gpu_mem_limit: int) -> dict[str, Any]:
    """The child's half: create the session exactly as the workers do, run it once."""
    import numpy as np
    import onnxruntime as ort

    from facefusion_tasks.faces import sessions

    wanted = PROVIDER_NAMES[requested]
    if wanted not in ort.get_available_providers():
        build = f"{ort.__version__}, {ort.get_device()}"
        return {"ran_on": "", "listed": False, "error": f"{wanted} is not in this build ({build})"}
    if requested == "cuda":
        for line in sessions.preload_cuda_libraries():
            print(line, file=sys.stderr)
    options = ort.SessionOptions()
    if requested != "cpu":
        # Fail rather than quietly place the node on the CPU: the node must run on `wanted`.
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    providers = [(wanted, sessions.provider_options(wanted, gpu_mem_limit=gpu_mem_limit))]
    try:
        # When the CUDA provider fails to start, onnxruntime's Python layer *prints* the cause
        # ("EP Error … CUDA failure 100: no CUDA-capable device is detected", seen on an H100
        # with a wrong CUDA_VISIBLE_DEVICES) to stdout, then retries on the CPU; stdout carries
        # this child's answer, so the print goes to stderr with the rest of the diagnostics.
        with contextlib.redirect_stdout(sys.stderr):
            session = ort.InferenceSession(tiny_model(), sess_options=options, providers=providers)
        x = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(2, 8)
        (y,) = session.run(None, {"x": x})
    except Exception as exc:  # onnxruntime raises plain Exception subclasses
        return {"ran_on": "", "error": str(exc).splitlines()[0] if str(exc) else repr(exc)}
    active = session.get_providers()
    return {
        "ran_on": active[0] if active else "",
        "providers": active,
        "output_ok": bool(np.array_equal(y, np.maximum(x, 0.0))),
        "libraries": _cuda_library_dirs(),
    }


def _cuda_library_dirs() -> list[str]:
    """Directories of the cuBLAS / cuDNN / CUDA runtime libraries this process has mapped."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return []
    found = set()
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        if re.search(r"/lib(cublas|cudnn|cudart)[^/]*\.so", path):
            found.add(str(Path(path).parent))
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facefusion_tasks.faces.probe")
    parser.add_argument("provider", choices=sorted(PROVIDER_NAMES))
    parser.add_argument("--gpu-mem-limit", type=int, default=0)
    args = parser.parse_args(argv)
    answer = _run(args.provider, args.gpu_mem_limit)
    print(json.dumps(answer))
    # 0 only when the requested provider really ran the model: usable as a one-line check.
    ran = answer.get("ran_on") == PROVIDER_NAMES[args.provider] and answer.get("output_ok")
    return 0 if ran else 1


if __name__ == "__main__":
    sys.exit(main())
