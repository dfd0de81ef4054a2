"""GPU memory, utilisation and per-process memory via NVML; a failing GPU or call drops only its
own series, and a host without a driver simply has none."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from facefusion_tasks.gpus import nvml_devices, visible_devices
from facefusion_tasks.metrics.definitions import EXPORTER_METRICS

log = logging.getLogger(__name__)

USED = "facefusion_gpu_memory_used_bytes"
TOTAL = "facefusion_gpu_memory_total_bytes"
UTILISATION = "facefusion_gpu_utilization_ratio"
PROCESS_USED = "facefusion_gpu_process_memory_used_bytes"


def _import_nvml() -> ModuleType:
    import pynvml  # nvidia-ml-py; imported late so a host without it still serves the rest

    return pynvml


class GpuCollector:
    """NVML readings at scrape time, labelled by CUDA index (in this process's environment, the
    launcher's) and UUID. Use it in the exporter process only: initialising NVML in a parent
    that later forks breaks the children (see NOTES)."""

    def __init__(
        self,
        *,
        retry_seconds: float = 300.0,
        load: Callable[[], ModuleType] = _import_nvml,
        clock: Callable[[], float] = time.monotonic,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._load = load
        self._clock = clock
        self._retry_seconds = retry_seconds
        self._environ = os.environ if environ is None else environ
        self._nvml: Any = None
        self._next_try = 0.0
        self._logged_absence = False
        #: (uuid, call) pairs already reported failing: one warning each, not one per scrape.
        self._failing: set[tuple[str, str]] = set()
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

    def _read(self, nvml: Any, uuid: str, call: str, *args: Any) -> Any:
        """One NVML call for one device; None (and one warning) when it fails, so only the
        series that needs it goes missing: MIG instances and containers without access to the
        parent GPU answer NO_PERMISSION or NOT_SUPPORTED to some calls and not to others."""
        try:
            value = getattr(nvml, call)(*args)
        except nvml.NVMLError as exc:
            if (uuid, call) not in self._failing:
                self._failing.add((uuid, call))
                log.warning("NVML %s failed for %s: %s; that series is left out", call, uuid, exc)
            return None
        self._failing.discard((uuid, call))
        return value

    def collect(self) -> Iterable[Metric]:
        with self._mutex:
            nvml = self._ensure()
            if nvml is None:
                return []
            try:
                devices = visible_devices(nvml_devices(nvml), self._environ)
            except nvml.NVMLError as exc:
                # Even the device count failed: the driver went away (GPU off the bus, driver
                # reload). Drop every series and re-initialise at the next scrape.
                log.warning("NVML read failed, GPU metrics dropped until it answers: %s", exc)
                with contextlib.suppress(nvml.NVMLError):
                    nvml.nvmlShutdown()
                self._nvml = None
                self._next_try = self._clock()
                return []
            families = {name: _family(name) for name in (USED, TOTAL, UTILISATION, PROCESS_USED)}
            for cuda_index, device in devices:
                if device.handle is None:
                    continue  # NVML could not even open it; nothing to read
                self._device(nvml, families, [str(cuda_index), device.uuid], device)
            return list(families.values())

    def _device(
        self, nvml: Any, families: dict[str, GaugeMetricFamily], labels: list[str], device: Any
    ) -> None:
        uuid, handle = device.uuid, device.handle
        memory = self._read(nvml, uuid, "nvmlDeviceGetMemoryInfo", handle)
        if memory is not None:
            families[USED].add_metric(labels, float(memory.used))
            families[TOTAL].add_metric(labels, float(memory.total))
        if not device.mig:  # MIG instances have no utilisation counter of their own
            rates = self._read(nvml, uuid, "nvmlDeviceGetUtilizationRates", handle)
            if rates is not None:
                families[UTILISATION].add_metric(labels, float(rates.gpu) / 100.0)
        processes = self._read(nvml, uuid, "nvmlDeviceGetComputeRunningProcesses", handle)
        for process in processes or ():
            used = getattr(process, "usedGpuMemory", None)
            # NVML reports "not available" (None, or the 2**64-1 sentinel) under some drivers
            # and in containers without the host's PID namespace.
            if used is None or used >= 2**63:
                continue
            families[PROCESS_USED].add_metric([*labels, str(process.pid)], float(used))


def _family(name: str) -> GaugeMetricFamily:
    _type, documentation, labels = EXPORTER_METRICS[name]
    return GaugeMetricFamily(name, documentation, labels=list(labels))
