"""NVML collector: units and labels per GPU (faked at the pynvml seam: no GPU here), one failing
GPU or call drops only its own series, MIG instances by their own handles, silence without."""

from __future__ import annotations

import logging
import types
from typing import Any

import pytest

from facefusion_tasks.metrics.gpu import GpuCollector


class NVMLError(Exception):
    pass


GiB = 2**30


def fake_nvml(
    *,
    devices: int = 2,
    init_error: bool = False,
    mig_on: int | None = None,
    failing: dict[tuple[str, Any], str] | None = None,
) -> Any:
    """The slice of nvidia-ml-py's pynvml the collector calls, with the same value shapes.
    Handles are ("gpu", i) or ("mig", i, slot); `failing` maps (call, handle) to an NVML error."""
    failing = failing if failing is not None else {}
    module = types.SimpleNamespace(NVMLError=NVMLError, NVML_DEVICE_MIG_ENABLE=1, calls=[])

    def call(name: str, handle: Any, value: Any) -> Any:
        if (name, handle) in failing:
            raise NVMLError(failing[(name, handle)])
        return value

    def init() -> None:
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    def uuid(handle: Any) -> str:
        return f"GPU-{handle[1]}" if handle[0] == "gpu" else f"MIG-{handle[1]}-{handle[2]}"

    def memory(handle: Any) -> Any:
        used = (handle[1] + 1) * GiB if handle[0] == "gpu" else (handle[2] + 1) * GiB // 4
        # nvmlDeviceGetMemoryInfo returns bytes.
        total = 80 * GiB if handle[0] == "gpu" else 10 * GiB
        return call(
            "memory", handle, types.SimpleNamespace(used=used, total=total, free=total - used)
        )

    def rates(handle: Any) -> Any:
        return call("utilisation", handle, types.SimpleNamespace(gpu=37 + handle[1], memory=5))

    def processes(handle: Any) -> Any:
        # usedGpuMemory is bytes, or None when the driver cannot attribute it.
        found = [types.SimpleNamespace(pid=1000 + handle[1], usedGpuMemory=GiB // 2)]
        found.append(types.SimpleNamespace(pid=2000, usedGpuMemory=None))
        return call("processes", handle, found)

    def mig_mode(handle: Any) -> tuple[int, int]:
        if handle[1] != mig_on:
            raise NVMLError("Not Supported")
        return (1, 1)

    def mig_handle(handle: Any, slot: int) -> Any:
        if slot >= 2:
            raise NVMLError("Not Found")
        return ("mig", handle[1], slot)

    module.nvmlInit = init
    module.nvmlShutdown = lambda: module.calls.append("shutdown")
    module.nvmlDeviceGetCount = lambda: devices
    module.nvmlDeviceGetHandleByIndex = lambda index: call("handle", index, ("gpu", index))
    module.nvmlDeviceGetUUID = uuid
    module.nvmlDeviceGetName = lambda handle: b"NVIDIA H100 80GB HBM3"
    module.nvmlDeviceGetMemoryInfo = memory
    module.nvmlDeviceGetUtilizationRates = rates
    module.nvmlDeviceGetComputeRunningProcesses = processes
    module.nvmlDeviceGetMigMode = mig_mode
    module.nvmlDeviceGetMaxMigDeviceCount = lambda handle: 7
    module.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    return module


def values(collector: GpuCollector) -> dict[tuple[str, ...], float]:
    """(name, gpu, gpu_uuid[, pid]) -> value."""
    return {(s.name, *s.labels.values()): s.value for m in collector.collect() for s in m.samples}


def collector(module: Any, **environ: str) -> GpuCollector:
    return GpuCollector(load=lambda: module, environ=environ)


def test_bytes_and_a_zero_to_one_ratio_per_gpu_labelled_by_cuda_index_and_uuid() -> None:
    got = values(collector(fake_nvml()))
    assert got[("facefusion_gpu_memory_used_bytes", "0", "GPU-0")] == GiB
    assert got[("facefusion_gpu_memory_used_bytes", "1", "GPU-1")] == 2 * GiB
    assert got[("facefusion_gpu_memory_total_bytes", "1", "GPU-1")] == 80 * GiB
    assert got[("facefusion_gpu_utilization_ratio", "0", "GPU-0")] == pytest.approx(0.37)


def test_per_process_memory_by_pid_skipping_unattributed_processes() -> None:
    got = values(collector(fake_nvml()))
    per_process = {k: v for k, v in got.items() if k[0].startswith("facefusion_gpu_process")}
    assert per_process == {
        ("facefusion_gpu_process_memory_used_bytes", "0", "GPU-0", "1000"): GiB / 2,
        ("facefusion_gpu_process_memory_used_bytes", "1", "GPU-1", "1001"): GiB / 2,
    }


def test_cuda_index_follows_this_process_visibility() -> None:
    got = values(collector(fake_nvml(devices=3), CUDA_VISIBLE_DEVICES="2"))
    assert {k[1:3] for k in got} == {("0", "GPU-2")}


def test_one_gpu_failing_drops_only_that_gpu_and_nvml_stays_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="facefusion_tasks.metrics.gpu")
    module = fake_nvml(devices=3, failing={("memory", ("gpu", 1)): "Insufficient Permissions"})
    c = collector(module)
    for _ in range(3):
        got = values(c)
    assert ("facefusion_gpu_memory_used_bytes", "0", "GPU-0") in got
    assert ("facefusion_gpu_memory_used_bytes", "2", "GPU-2") in got
    assert ("facefusion_gpu_memory_used_bytes", "1", "GPU-1") not in got
    # The other readings of the failing GPU are still there.
    assert ("facefusion_gpu_utilization_ratio", "1", "GPU-1") in got
    assert "shutdown" not in module.calls
    warnings = [r for r in caplog.records if "GPU-1" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per scrape


def test_a_gpu_nvml_cannot_open_is_skipped_without_renumbering_the_rest() -> None:
    module = fake_nvml(devices=3, failing={("handle", 0): "Insufficient Permissions"})
    got = values(collector(module))
    assert {k[1:3] for k in got if k[0] == "facefusion_gpu_memory_used_bytes"} == {
        ("1", "GPU-1"),
        ("2", "GPU-2"),
    }


def test_mig_instances_by_their_own_handles_without_utilisation() -> None:
    module = fake_nvml(
        devices=2,
        mig_on=1,
        # A container that may not read the parent GPU: the instances still answer.
        failing={("utilisation", ("gpu", 1)): "Insufficient Permissions"},
    )
    got = values(collector(module))
    assert got[("facefusion_gpu_memory_used_bytes", "1", "MIG-1-0")] == GiB // 4
    assert got[("facefusion_gpu_memory_total_bytes", "2", "MIG-1-1")] == 10 * GiB
    assert got[("facefusion_gpu_process_memory_used_bytes", "1", "MIG-1-0", "1001")] == GiB / 2
    assert not [k for k in got if k[0] == "facefusion_gpu_utilization_ratio" and "MIG" in k[2]]
    assert ("facefusion_gpu_utilization_ratio", "0", "GPU-0") in got


def test_no_driver_means_no_series_one_log_line_and_a_later_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="facefusion_tasks.metrics.gpu")
    now = [0.0]
    attempts: list[int] = []

    def load() -> Any:
        attempts.append(1)
        return fake_nvml(init_error=len(attempts) < 3)

    c = GpuCollector(load=load, retry_seconds=60, clock=lambda: now[0], environ={})
    assert values(c) == {}
    assert values(c) == {}  # within the retry interval: NVML is not even tried
    assert len(attempts) == 1
    now[0] = 61
    assert values(c) == {}
    now[0] = 122
    assert values(c)  # the driver came up
    assert len([r for r in caplog.records if "NVML" in r.getMessage()]) == 1


def test_a_driver_that_disappears_drops_the_series_and_is_retried_at_the_next_scrape() -> None:
    module = fake_nvml()
    c = collector(module)
    assert values(c)

    def lost() -> int:
        raise NVMLError("GPU is lost")

    module.nvmlDeviceGetCount = lost
    assert values(c) == {}
    module.nvmlDeviceGetCount = lambda: 2
    assert values(c)  # no 300 s pause: the next scrape re-initialises
