"""GPU discovery numbers devices as CUDA will: containers, UUIDs, MIG, visibility variables."""

from __future__ import annotations

import subprocess
import sys
import types
from typing import Any

import pytest

from facefusion_tasks import gpus
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.gpus import Gpu, nvml_devices, pin_for, visible_gpus


class NVMLError(Exception):
    pass


def fake_nvml(
    uuids: list[str],
    *,
    mig: dict[int, list[str]] | None = None,
    unreadable: set[int] = frozenset(),  # type: ignore[assignment]
) -> Any:
    """The slice of nvidia-ml-py's pynvml that discovery calls. Handles are ("gpu", i) or
    ("mig", i, slot); `mig` maps a GPU index to its MIG instance UUIDs (MIG mode on)."""
    mig = mig or {}
    module = types.SimpleNamespace(NVMLError=NVMLError, NVML_DEVICE_MIG_ENABLE=1)

    def handle_by_index(index: int) -> tuple[Any, ...]:
        if index in unreadable:
            raise NVMLError("Insufficient Permissions")
        return ("gpu", index)

    def uuid(handle: tuple[Any, ...]) -> str:
        return uuids[handle[1]] if handle[0] == "gpu" else mig[handle[1]][handle[2]]

    def mig_mode(handle: tuple[Any, ...]) -> tuple[int, int]:
        if handle[1] not in mig:
            raise NVMLError("Not Supported")
        return (1, 1)

    def mig_handle(handle: tuple[Any, ...], slot: int) -> tuple[Any, ...]:
        if slot >= len(mig[handle[1]]):
            raise NVMLError("Not Found")
        return ("mig", handle[1], slot)

    module.nvmlDeviceGetCount = lambda: len(uuids)
    module.nvmlDeviceGetHandleByIndex = handle_by_index
    module.nvmlDeviceGetUUID = uuid
    module.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3" if h[0] == "gpu" else "1g.10gb"
    module.nvmlDeviceGetMigMode = mig_mode
    module.nvmlDeviceGetMaxMigDeviceCount = lambda h: 7
    module.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    return module


def discover(nvml: Any, **environ: str) -> list[Gpu]:
    return visible_gpus(nvml_devices(nvml), environ)


def pins(nvml: Any, **environ: str) -> list[tuple[int, str]]:
    return [(g.cuda_index, pin_for(g, environ)) for g in discover(nvml, **environ)]


HOST = ["GPU-aaaa0000", "GPU-bbbb1111", "GPU-cccc2222", "GPU-dddd3333"]


def test_a_container_given_host_gpu_3_sees_cuda_device_0() -> None:
    # Inside the container NVML (like CUDA) sees only the granted GPU, as index 0, even though
    # the device node is /dev/nvidia3: the old code pinned CUDA_VISIBLE_DEVICES=3 and got no GPU.
    in_container = fake_nvml(["GPU-dddd3333"])
    got = discover(in_container, NVIDIA_VISIBLE_DEVICES="3")
    assert [(g.cuda_index, g.uuid, g.nvml_index) for g in got] == [(0, "GPU-dddd3333", 0)]
    assert pin_for(got[0], {"NVIDIA_VISIBLE_DEVICES": "3"}) == "GPU-dddd3333"


def test_host_indexes_apply_where_the_runtime_did_not_narrow_the_view() -> None:
    # A privileged container (or a bare host with the variable set) sees every GPU.
    assert pins(fake_nvml(HOST), NVIDIA_VISIBLE_DEVICES="1,3") == [
        (0, "GPU-bbbb1111"),
        (1, "GPU-dddd3333"),
    ]


def test_nvidia_visible_devices_by_uuid() -> None:
    assert pins(fake_nvml(HOST), NVIDIA_VISIBLE_DEVICES="GPU-cccc2222") == [(0, "GPU-cccc2222")]
    # In an ordinary container the runtime already narrowed NVML's view to that GPU.
    assert pins(fake_nvml(["GPU-cccc2222"]), NVIDIA_VISIBLE_DEVICES="GPU-cccc2222") == [
        (0, "GPU-cccc2222")
    ]


@pytest.mark.parametrize("value", ["none", "void", ""])
def test_nvidia_visible_devices_that_mean_no_gpu(value: str) -> None:
    assert discover(fake_nvml(HOST), NVIDIA_VISIBLE_DEVICES=value) == []


def test_all_and_unset_mean_every_gpu_in_pci_order() -> None:
    assert [g.uuid for g in discover(fake_nvml(HOST), NVIDIA_VISIBLE_DEVICES="all")] == HOST
    assert [g.cuda_index for g in discover(fake_nvml(HOST))] == [0, 1, 2, 3]


def test_cuda_visible_devices_reorders_and_stops_at_the_first_invalid_entry() -> None:
    nvml = fake_nvml(HOST)
    assert pins(nvml, CUDA_VISIBLE_DEVICES="2,0") == [(0, "GPU-cccc2222"), (1, "GPU-aaaa0000")]
    # CUDA ignores an invalid entry and everything after it.
    assert pins(nvml, CUDA_VISIBLE_DEVICES="1,7,2") == [(0, "GPU-bbbb1111")]
    assert pins(nvml, CUDA_VISIBLE_DEVICES="-1") == []
    assert pins(nvml, CUDA_VISIBLE_DEVICES="") == []
    # A unique UUID prefix is enough, as for CUDA.
    assert pins(nvml, CUDA_VISIBLE_DEVICES="GPU-dddd") == [(0, "GPU-dddd3333")]


def test_mig_instances_replace_their_parent_and_can_be_selected_by_uuid() -> None:
    nvml = fake_nvml(HOST[:2], mig={1: ["MIG-1111aaaa", "MIG-1111bbbb"]})
    got = discover(nvml)
    assert [(g.cuda_index, g.uuid, g.mig, g.nvml_index) for g in got] == [
        (0, "GPU-aaaa0000", False, 0),
        (1, "MIG-1111aaaa", True, 1),
        (2, "MIG-1111bbbb", True, 1),
    ]
    assert pins(nvml, CUDA_VISIBLE_DEVICES="MIG-1111bbbb") == [(0, "MIG-1111bbbb")]
    assert pins(nvml, NVIDIA_VISIBLE_DEVICES="MIG-1111aaaa") == [(0, "MIG-1111aaaa")]
    # The parent GPU's UUID stands for its instances.
    assert [g.uuid for g in discover(nvml, CUDA_VISIBLE_DEVICES="GPU-bbbb1111")] == [
        "MIG-1111aaaa",
        "MIG-1111bbbb",
    ]


def test_an_unreadable_gpu_keeps_its_place_so_later_indexes_do_not_shift() -> None:
    got = discover(fake_nvml(HOST[:3], unreadable={1}))
    assert [(g.cuda_index, g.uuid) for g in got] == [
        (0, "GPU-aaaa0000"),
        (1, ""),
        (2, "GPU-cccc2222"),
    ]
    # Without a UUID the worker is pinned by index: the parent's own entry for that index,
    # since a child's CUDA_VISIBLE_DEVICES replaces the parent's.
    assert pin_for(got[1], {}) == "1"
    assert pin_for(got[1], {"CUDA_VISIBLE_DEVICES": "4,6,7"}) == "6"


def test_without_nvml_the_cuda_driver_counts_the_devices() -> None:
    class FakeCuda:
        def __init__(self, count: int, init: int = 0) -> None:
            self.count, self.init = count, init

        def cuInit(self, flags: int) -> int:  # noqa: N802 (the driver API's names)
            return self.init

        def cuDeviceGetCount(self, out: Any) -> int:  # noqa: N802
            out._obj.value = self.count
            return 0

    assert gpus.cuda_driver_count(lambda name: FakeCuda(2)) == 2
    # CUDA_ERROR_NO_DEVICE (100) from cuInit, or no libcuda at all (this host): none.
    assert gpus.cuda_driver_count(lambda name: FakeCuda(2, init=100)) == 0
    assert gpus.cuda_driver_count() == 0


def test_no_gpu_on_this_host_is_an_empty_list_with_the_reason() -> None:
    # This machine has no NVIDIA driver: the real subprocess path says so instead of failing.
    found, note = gpus.discover()
    assert found == []
    assert "NVML" in note or "no" in note.lower()
    assert gpus.detect_gpus() == []


def test_discovery_runs_nvml_in_a_subprocess_not_in_the_launcher() -> None:
    code = (
        "import sys; from facefusion_tasks import gpus; gpus.detect_gpus(); "
        "print('pynvml' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_nvidia_visible_devices_void_short_circuits_without_a_subprocess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_subprocess(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("no discovery subprocess expected")

    monkeypatch.setattr(gpus.subprocess, "run", no_subprocess)
    found, note = gpus.discover({"NVIDIA_VISIBLE_DEVICES": "void"})
    assert found == [] and "void" in note


def settings_for(**values: Any) -> Settings:
    return Settings.from_env({}, **values)


def test_a_gpu_worker_whose_cuda_cannot_start_refuses_with_one_line() -> None:
    # On this host the CUDA provider is listed but cannot start; pin to "GPU 0" as the launcher
    # would on a GPU host whose CUDA stack is broken.
    with pytest.raises(InputError) as caught:
        gpus.require_usable_gpus(settings_for(execution_provider="auto"), ["0"])
    message = str(caught.value)
    assert message.startswith("gpu worker on CUDA_VISIBLE_DEVICES=0 refuses the gpu queue: ")
    assert "CUDAExecutionProvider is listed but did not start" in message
    assert "FACEFUSION_ALLOW_CPU_FALLBACK=1" in message and "\n" not in message
    assert caught.value.reason == "config"


def test_cuda_without_any_gpu_refuses_but_auto_and_cpu_are_the_cpu_profile() -> None:
    with pytest.raises(InputError, match="no GPU for the gpu queue"):
        gpus.require_usable_gpus(settings_for(execution_provider="cuda"), [""])
    assert gpus.gpu_worker_refusal(settings_for(execution_provider="auto"), "") is None
    # The test fleet's explicit CPU: no proof is even attempted, with or without a pin.
    assert gpus.gpu_worker_refusal(settings_for(execution_provider="cpu"), "0") is None
    allowed = settings_for(execution_provider="cuda", allow_cpu_fallback=True)
    assert gpus.gpu_worker_refusal(allowed, "0") is None


def test_device_nodes_without_a_discovered_gpu_warn_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from facefusion_tasks import gpus

    monkeypatch.setattr(gpus, "discover", lambda environ=None: ([], "GPU discovery failed: boom"))
    monkeypatch.setattr(gpus, "device_nodes", lambda: True)
    with caplog.at_level("INFO", logger="facefusion_tasks.gpus"):
        assert gpus.detect_gpus() == []
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in warned] == [
        "NVIDIA device nodes exist but no GPU was found for the workers: GPU discovery failed: boom"
    ]
    monkeypatch.setattr(gpus, "device_nodes", lambda: False)
    caplog.clear()
    with caplog.at_level("INFO", logger="facefusion_tasks.gpus"):
        gpus.detect_gpus()
    assert [r.levelname for r in caplog.records] == ["INFO"]  # no GPU host: not a warning
