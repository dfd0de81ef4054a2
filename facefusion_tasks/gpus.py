"""GPU discovery that numbers devices the way the CUDA runtime will, read through NVML."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facefusion_tasks.config import Settings

log = logging.getLogger(__name__)

#: Seconds the discovery subprocess may take (NVML init on a big node takes ~1 s).
DISCOVERY_TIMEOUT = 60.0

#: NVIDIA_VISIBLE_DEVICES values that mean "this container has no GPU" (nvidia-container-toolkit).
_NO_DEVICES = {"none", "void", ""}


@dataclass(frozen=True)
class NvmlDevice:
    """One device NVML enumerates: a whole GPU, or one MIG instance of a GPU in MIG mode."""

    #: NVML index of the (parent) GPU in this process's view, i.e. PCI bus order.
    nvml_index: int
    #: GPU-… for a whole GPU, MIG-… for a MIG instance; "" when NVML refused to tell.
    uuid: str
    name: str
    #: The parent GPU's UUID for a MIG instance, else "".
    parent_uuid: str = ""
    #: NVML handle (not serialised); MIG instances have their own.
    handle: Any = None

    @property
    def mig(self) -> bool:
        return bool(self.parent_uuid)


@dataclass(frozen=True)
class Gpu:
    """A device a worker can be pinned to, with the index CUDA gives it in this environment."""

    cuda_index: int
    uuid: str
    name: str
    nvml_index: int
    mig: bool = False


def pin_for(gpu: Gpu, environ: Mapping[str, str]) -> str:
    """The CUDA_VISIBLE_DEVICES value that selects exactly `gpu` in a child of a process with
    `environ`. A UUID means the same device whatever the parent's numbering or
    CUDA_DEVICE_ORDER; without one (NVML withheld it), the parent's own entry for that index,
    because a child's CUDA_VISIBLE_DEVICES replaces the parent's rather than narrowing it."""
    if gpu.uuid:
        return gpu.uuid
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    tokens = [t.strip() for t in visible.split(",")] if visible is not None else []
    return tokens[gpu.cuda_index] if gpu.cuda_index < len(tokens) else str(gpu.cuda_index)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_devices(nvml: Any) -> list[NvmlDevice]:
    """Every device an initialised NVML module sees, MIG instances in place of their parent.

    A per-device error keeps that device as a placeholder (its UUID empty), so the positions of
    the others — which are CUDA's integer indexes — do not shift."""
    devices: list[NvmlDevice] = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
        except nvml.NVMLError as exc:
            log.warning("NVML cannot read GPU %d: %s", index, exc)
            devices.append(NvmlDevice(index, "", "unreadable"))
            continue
        migs = _mig_devices(nvml, handle, index, uuid)
        if migs:
            devices.extend(migs)
        else:
            devices.append(NvmlDevice(index, uuid, name, handle=handle))
    return devices


def _mig_devices(nvml: Any, handle: Any, index: int, parent: str) -> list[NvmlDevice]:
    """The MIG instances of a GPU in MIG mode (CUDA sees those, never the parent), else []."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except (nvml.NVMLError, AttributeError):
        return []  # not MIG-capable (most GPUs answer NOT_SUPPORTED)
    if current != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
        return []
    found: list[NvmlDevice] = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError:
            continue  # an empty slot answers NOT_FOUND
        try:
            name = _text(nvml.nvmlDeviceGetName(mig))
        except nvml.NVMLError:
            name = "MIG instance"
        try:
            uuid = _text(nvml.nvmlDeviceGetUUID(mig))
        except nvml.NVMLError as exc:
            log.warning("NVML cannot read MIG instance %d of GPU %d: %s", slot, index, exc)
            continue
        found.append(NvmlDevice(index, uuid, name, parent_uuid=parent, handle=mig))
    return found


def _token_matches(token: str, device: NvmlDevice) -> bool:
    # CUDA accepts any unique prefix of a UUID ("GPU-8f3a" for "GPU-8f3a…"); a GPU's UUID also
    # names its MIG instances, which is what CUDA shows for a GPU in MIG mode.
    token = token.lower()
    return any(u and u.lower().startswith(token) for u in (device.uuid, device.parent_uuid))


def _is_uuid(token: str) -> bool:
    return token.upper().startswith(("GPU-", "MIG-"))


def _nvidia_visible(devices: list[NvmlDevice], value: str | None) -> list[NvmlDevice]:
    """Apply NVIDIA_VISIBLE_DEVICES, the container runtime's selection.

    The runtime consumes it when it builds the container: inside, NVML and CUDA see only the
    chosen devices, renumbered from 0 (host GPU 3 is index 0 here). So UUIDs filter (a no-op in
    a normal container, right in a privileged one that sees every GPU), while host indexes are
    applied only when this process evidently sees more GPUs than were selected."""
    if value is None or value.strip().lower() == "all":
        return devices
    tokens = [t.strip() for t in value.split(",") if t.strip()]
    if value.strip().lower() in _NO_DEVICES or not tokens:
        return []
    uuids = [t for t in tokens if _is_uuid(t)]
    named = [d for d in devices if any(_token_matches(t, d) for t in uuids)]
    if named:
        return named
    indexes = {int(t) for t in tokens if t.isdigit()}
    if indexes and len({d.nvml_index for d in devices}) > len(tokens):
        return [d for d in devices if d.nvml_index in indexes]
    # The runtime already narrowed the view ("0:1" MIG indexes included): what NVML sees is it.
    return devices


def _cuda_visible(devices: list[NvmlDevice], value: str | None) -> list[NvmlDevice]:
    """Apply CUDA_VISIBLE_DEVICES as the CUDA runtime does: the listed devices in the listed
    order; an integer counts whole GPUs; enumeration stops at the first invalid entry."""
    if value is None:
        return devices
    chosen: list[NvmlDevice] = []
    gpus = sorted({d.nvml_index for d in devices})
    for token in (t.strip() for t in value.split(",")):
        if token.isdigit() and int(token) < len(gpus):
            matches = [d for d in devices if d.nvml_index == gpus[int(token)]]
        elif _is_uuid(token):
            matches = [d for d in devices if _token_matches(token, d)]
        else:
            matches = []
        if not matches or any(m in chosen for m in matches):
            break  # "-1", "", an unknown UUID or a repeat: CUDA ignores it and all that follow
        chosen += matches
    return chosen


def visible_devices(
    devices: list[NvmlDevice], environ: Mapping[str, str]
) -> list[tuple[int, NvmlDevice]]:
    """(CUDA index, device) for each device CUDA will enumerate in a process with `environ`.

    Integer indexes follow NVML's PCI bus order, which is CUDA's only with
    CUDA_DEVICE_ORDER=PCI_BUS_ID (the default, FASTEST_FIRST, may reorder mixed cards); workers
    are pinned by UUID, so their device is right either way."""
    seen = _nvidia_visible(devices, environ.get("NVIDIA_VISIBLE_DEVICES"))
    return list(enumerate(_cuda_visible(seen, environ.get("CUDA_VISIBLE_DEVICES"))))


def visible_gpus(devices: list[NvmlDevice], environ: Mapping[str, str]) -> list[Gpu]:
    """The devices CUDA will enumerate in a process with `environ`, with their CUDA indexes."""
    return [
        Gpu(cuda_index=i, uuid=d.uuid, name=d.name, nvml_index=d.nvml_index, mig=d.mig)
        for i, d in visible_devices(devices, environ)
    ]


def _import_nvml() -> Any:
    import pynvml  # nvidia-ml-py

    return pynvml


def discover_in_process(environ: Mapping[str, str] | None = None) -> list[Gpu]:
    """Discovery through NVML in this process (NVML, not CUDA: safe before a fork, but the
    launcher still uses the subprocess form so nothing driver-side is ever loaded there)."""
    nvml = _import_nvml()
    nvml.nvmlInit()
    try:
        return visible_gpus(nvml_devices(nvml), os.environ if environ is None else environ)
    finally:
        nvml.nvmlShutdown()


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with this package importable in a `python -m facefusion_tasks…` child, also
    when it runs from a checkout that is not installed and the caller's cwd is elsewhere."""
    root = str(Path(__file__).resolve().parent.parent)
    path = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(environ) | {
        "PYTHONPATH": os.pathsep.join([*path, root] if root not in path else path)
    }


def discover(environ: Mapping[str, str] | None = None) -> tuple[list[Gpu], str]:
    """(GPUs CUDA will see, why none when empty), enumerated in a subprocess so the calling
    process — a launcher that forks Celery workers — never loads the driver libraries."""
    env = dict(os.environ if environ is None else environ)
    if env.get("NVIDIA_VISIBLE_DEVICES", "all").strip().lower() in _NO_DEVICES:
        return [], f"NVIDIA_VISIBLE_DEVICES={env['NVIDIA_VISIBLE_DEVICES']!r}: no GPU in here"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "facefusion_tasks.gpus"],
            env=child_environment(env),
            capture_output=True,
            text=True,
            timeout=DISCOVERY_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"GPU discovery failed: {exc}"
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return [], f"GPU discovery failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    return [Gpu(**g) for g in answer["gpus"]], answer.get("note", "")


def device_nodes() -> bool:
    """Whether the NVIDIA driver's device nodes exist (no CUDA or NVML is touched)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def detect_gpus() -> list[str]:
    """CUDA_VISIBLE_DEVICES values pinning one worker to each GPU (or MIG instance) CUDA sees."""
    gpus, note = discover()
    if not gpus and device_nodes():
        # The driver's device nodes are here, yet nothing CUDA can use was found (NVML timed out
        # or broke, or the visibility variables hide every GPU): say so loudly, since `auto`
        # will now serve the gpu queue on the CPU.
        log.warning("NVIDIA device nodes exist but no GPU was found for the workers: %s", note)
    elif not gpus:
        log.info("no GPU for workers: %s", note)
    elif note:
        log.warning("GPU discovery: %s", note)
    return [pin_for(g, os.environ) for g in gpus]


def gpu_worker_refusal(settings: Settings, pin: str) -> str | None:
    """Why a gpu-queue worker pinned to `pin` (a CUDA_VISIBLE_DEVICES value; "" = the CPU
    profile) must not start, in one line, or None. The CUDA proof runs in a subprocess with
    the worker's pin, so the launcher itself never initialises CUDA."""
    from facefusion_tasks.faces.probe import prove

    requested = settings.execution_provider
    if requested == "cpu" or settings.allow_cpu_fallback:
        return None  # the CPU was chosen explicitly
    if not pin:
        if requested == "auto":
            return None  # no GPU on this host: auto means the CPU profile
        return "execution provider cuda was requested but this host has no GPU for the gpu queue"
    proof = prove(
        "cuda",
        gpu_mem_limit=settings.gpu_mem_limit,
        environ=os.environ | {"CUDA_VISIBLE_DEVICES": pin},
    )
    if proof.ok:
        return None
    return (
        f"gpu worker on CUDA_VISIBLE_DEVICES={pin} refuses the gpu queue: {proof.reason}; set "
        "FACEFUSION_ALLOW_CPU_FALLBACK=1 (or FACEFUSION_EXECUTION_PROVIDER=cpu) to run on the CPU"
    )


def require_usable_gpus(settings: Settings, pins: list[str]) -> None:
    """Raise InputError (one line) unless every gpu-queue worker can really run on its GPU:
    the launcher calls it before starting them, so no worker serves the gpu queue on a CPU
    nobody asked for."""
    from facefusion_tasks.errors import InputError
    from facefusion_tasks.reasons import Reason

    for pin in pins:
        reason = gpu_worker_refusal(settings, pin)
        if reason:
            raise InputError(reason, reason=Reason.CONFIG)


def cuda_driver_count(load: Callable[[str], Any] = ctypes.CDLL) -> int:
    """How many devices the CUDA driver API enumerates in this process. It initialises CUDA, so
    only the discovery subprocess calls it, and only when NVML is missing: a container started
    without the `utility` driver capability has CUDA but no libnvidia-ml."""
    try:
        cuda = load("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def _main() -> int:
    try:
        gpus = discover_in_process()
        note = "" if gpus else "NVML sees no device visible to CUDA here"
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
        gpus, note = [], f"no NVIDIA driver/GPU visible ({type(exc).__name__}: {exc})"
        count = cuda_driver_count()
        if count:
            # Counted as CUDA counts them, but without UUIDs, names or MIG details.
            gpus = [Gpu(cuda_index=i, uuid="", name="?", nvml_index=-1) for i in range(count)]
            note = (
                f"NVML unavailable ({type(exc).__name__}), {count} CUDA device(s) found by the "
                "CUDA driver instead: no UUIDs or GPU metrics; add `utility` to "
                "NVIDIA_DRIVER_CAPABILITIES"
            )
    print(json.dumps({"gpus": [asdict(g) for g in gpus], "note": note}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
