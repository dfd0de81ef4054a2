"""GPU memory and utilisation per device via NVML, absent (not failing) without a driver."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from facefusion_tasks.metrics.definitions import EXPORTER_METRICS

log = logging.getLogger(__name__)


def _import_nvml() -> ModuleType:
    import pynvml  # nvidia-ml-py; imported late so a host without it still serves the rest

    return pynvml


class GpuCollector:
    """NVML readings at scrape time. Use it in the exporter process only: initialising NVML in
    a parent that later forks breaks the children (see NOTES)."""

    def __init__(
        self,
        *,
        retry_seconds: float = 300.0,
        load: Callable[[], ModuleType] = _import_nvml,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._clock = clock
        self._retry_seconds = retry_seconds
        self._nvml: Any = None
        self._next_try = 0.0
        self._logged_absence = False
        self._mutex = threading.Lock()

    def describe(self) -> list[Metric]:
        return []

    def _ensure(self) -> Any:
        """The initialised NVML module, or None (retried every `retry_seconds`)."""
        if self._nvml is not None:
            return self._nvml
        now = self._clock()
        if now < self._next_try:
            return None
        self._next_try = now + self._retry_seconds
        try:
            nvml = self._load()
            nvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
            if not self._logged_absence:
                # One line, once: no GPU is a normal state for this exporter, not an error.
                log.info("no GPU metrics: NVML unavailable (%s)", exc or type(exc).__name__)
                self._logged_absence = True
            return None
        self._nvml = nvml
        self._logged_absence = False
        return nvml

    def collect(self) -> Iterable[Metric]:
        with self._mutex:
            nvml = self._ensure()
            if nvml is None:
                return []
            used = _family("facefusion_gpu_memory_used_bytes")
            total = _family("facefusion_gpu_memory_total_bytes")
            utilisation = _family("facefusion_gpu_utilization_ratio")
            try:
                for index in range(nvml.nvmlDeviceGetCount()):
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                    used.add_metric([str(index)], float(memory.used))
                    total.add_metric([str(index)], float(memory.total))
                    try:
                        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                    except nvml.NVMLError:
                        continue  # e.g. MIG instances: memory is readable, utilisation is not
                    utilisation.add_metric([str(index)], float(rates.gpu) / 100.0)
            except nvml.NVMLError as exc:
                # The driver went away (GPU fell off the bus, driver reload): drop the series
                # and re-initialise later rather than fail every scrape.
                log.warning("NVML read failed, GPU metrics paused: %s", exc)
                with contextlib.suppress(nvml.NVMLError):
                    nvml.nvmlShutdown()
                self._nvml = None
                return []
            return [used, total, utilisation]


def _family(name: str) -> GaugeMetricFamily:
    _type, documentation, labels = EXPORTER_METRICS[name]
    return GaugeMetricFamily(name, documentation, labels=list(labels))
