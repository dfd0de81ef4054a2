"""NVML collector: units and labels with a driver present (faked: no GPU here), silence without."""

from __future__ import annotations

import logging
import types
from typing import Any

import pytest

from facefusion_tasks.metrics.gpu import GpuCollector


class NVMLError(Exception):
    pass


def fake_nvml(*, devices: int = 2, utilisation_ok: bool = True, init_error: bool = False) -> Any:
    """The slice of nvidia-ml-py's pynvml the collector calls, with the same value shapes."""
    module = types.SimpleNamespace(NVMLError=NVMLError, calls=[])

    def init() -> None:
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    def memory(handle: int) -> Any:
        # nvmlDeviceGetMemoryInfo returns bytes.
        return types.SimpleNamespace(used=(handle + 1) * 2**30, total=80 * 2**30, free=0)

    def rates(handle: int) -> Any:
        if not utilisation_ok:
            raise NVMLError("Not Supported")
        return types.SimpleNamespace(gpu=37 + handle, memory=5)  # percent

    module.nvmlInit = init
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: devices
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetMemoryInfo = memory
    module.nvmlDeviceGetUtilizationRates = rates
    return module


def values(collector: GpuCollector) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels["gpu"]): s.value for m in collector.collect() for s in m.samples}


def test_bytes_and_a_zero_to_one_ratio_per_gpu() -> None:
    collector = GpuCollector(load=lambda: fake_nvml())
    got = values(collector)
    assert got[("facefusion_gpu_memory_used_bytes", "0")] == 2**30
    assert got[("facefusion_gpu_memory_used_bytes", "1")] == 2 * 2**30
    assert got[("facefusion_gpu_memory_total_bytes", "1")] == 80 * 2**30
    assert got[("facefusion_gpu_utilization_ratio", "0")] == pytest.approx(0.37)


def test_memory_without_utilisation_on_mig_like_devices() -> None:
    got = values(GpuCollector(load=lambda: fake_nvml(utilisation_ok=False)))
    assert ("facefusion_gpu_memory_used_bytes", "0") in got
    assert not [k for k in got if k[0] == "facefusion_gpu_utilization_ratio"]


def test_no_driver_means_no_series_one_log_line_and_a_later_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="facefusion_tasks.metrics.gpu")
    now = [0.0]
    attempts: list[int] = []

    def load() -> Any:
        attempts.append(1)
        return fake_nvml(init_error=len(attempts) < 3)

    collector = GpuCollector(load=load, retry_seconds=60, clock=lambda: now[0])
    assert values(collector) == {}
    assert values(collector) == {}  # within the retry interval: NVML is not even tried
    assert len(attempts) == 1
    now[0] = 61
    assert values(collector) == {}
    now[0] = 122
    assert values(collector)  # the driver came up
    assert len([r for r in caplog.records if "NVML" in r.getMessage()]) == 1


def test_a_driver_that_disappears_drops_the_series(caplog: pytest.LogCaptureFixture) -> None:
    module = fake_nvml()
    collector = GpuCollector(load=lambda: module)
    assert values(collector)

    def lost() -> int:
        raise NVMLError("GPU is lost")

    module.nvmlDeviceGetCount = lost
    assert values(collector) == {}
