"""Pool threads: a number as set, or "auto" from the usable cores, shared out by the launcher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from facefusion_tasks import cores
from facefusion_tasks.cli_args import build_parser
from facefusion_tasks.config import AUTO_CPU_THREADS, Settings
from facefusion_tasks.cores import auto_threads, pool_threads, usable_cores
from facefusion_tasks.errors import InputError
from facefusion_tasks.worker import plan_workers


@pytest.mark.parametrize(
    ("host_cores", "pipelines", "threads"),
    [(1, 1, 2), (2, 1, 2), (4, 1, 2), (8, 1, 4), (16, 1, 6), (16, 2, 4), (64, 8, 4), (128, 1, 6)],
)
def test_auto_gives_half_the_cores_split_among_pipelines_within_2_to_6(
    host_cores: int, pipelines: int, threads: int
) -> None:
    assert auto_threads(host_cores, pipelines) == threads


def test_a_cpu_quota_on_the_cgroup_path_caps_the_cores(tmp_path: Path) -> None:
    affinity = usable_cores(tmp_path / "absent")
    # The root's limit applies whatever cgroup below it this process is in.
    limited = tmp_path / "cpu.max"
    limited.write_text("150000 100000\n")  # 1.5 CPUs: two threads may run at a time
    assert usable_cores(tmp_path) == min(affinity, 2)
    limited.write_text("max 100000\n")
    assert usable_cores(tmp_path) == affinity
    limited.write_text("garbage\n")
    assert usable_cores(tmp_path) == affinity


@pytest.mark.parametrize("mount", ["cpu,cpuacct", "cpu"])
def test_a_cgroup_v1_cfs_quota_on_the_path_caps_the_cores(tmp_path: Path, mount: str) -> None:
    membership = tmp_path / "cgroup"
    membership.write_text("9:memory:/kubepods/pod1/c1\n4:cpu,cpuacct:/kubepods/pod1/c1\n0::/\n")
    affinity = usable_cores(tmp_path / "none", membership)
    container = tmp_path / "root" / mount / "kubepods" / "pod1" / "c1"
    container.mkdir(parents=True)
    (container / "cpu.cfs_quota_us").write_text("-1\n")  # none on the container itself
    (container / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(tmp_path / "root", membership) == affinity
    pod = container.parent
    (pod / "cpu.cfs_quota_us").write_text("250000\n")  # the pod's: 2.5 CPUs
    (pod / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(tmp_path / "root", membership) == min(affinity, 3)
    (pod / "cpu.cfs_period_us").write_text("garbage\n")
    assert usable_cores(tmp_path / "root", membership) == affinity


def test_a_number_is_kept_and_auto_is_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores, "usable_cores", lambda: 16)
    assert (pool_threads(0), pool_threads(3), pool_threads(AUTO_CPU_THREADS)) == (0, 3, 6)
    assert pool_threads(AUTO_CPU_THREADS, pipelines=4) == 2


def test_auto_is_the_default_and_reads_from_the_environment_and_the_flag() -> None:
    assert Settings().cpu_threads == AUTO_CPU_THREADS
    env = {"FACEFUSION_CPU_THREADS": "Auto", "FACEFUSION_DETECTOR_BATCH": "auto"}
    settings = Settings.from_env(env)
    assert (settings.cpu_threads, settings.detector_batch) == (AUTO_CPU_THREADS, 0)
    args = build_parser().parse_args(
        ["swap", "a.png", "t.mp4", "-o", "o.mp4", "--cpu-threads", "auto"]
    )
    assert args.cpu_threads == AUTO_CPU_THREADS
    with pytest.raises(InputError, match="cpu threads must be auto, 0 or more"):
        Settings.from_env({"FACEFUSION_CPU_THREADS": "-2"})
    with pytest.raises(InputError, match="FACEFUSION_BATCH_SIZE='auto' is not a valid int"):
        Settings.from_env({"FACEFUSION_BATCH_SIZE": "auto"})  # only where auto means something


def test_the_launcher_shares_auto_threads_among_the_hosts_pipelines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cores, "usable_cores", lambda: 16)
    options: dict[str, Any] = {
        "queues": ["gpu", "light"], "light_concurrency": 1, "max_tasks_per_child": 0,
        "loglevel": "info",
    }  # fmt: skip
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", gpu_processes=2)
    plans = plan_workers(settings, gpus="0", **options)
    # The light worker runs no pipeline: it keeps the setting as it was.
    assert [env.get("FACEFUSION_CPU_THREADS") for _, env in plans] == ["4", "4", "-1"]
    plans = plan_workers(settings.replace(cpu_threads=3), gpus="0,1", **options)
    assert [env.get("FACEFUSION_CPU_THREADS") for _, env in plans[:4]] == ["3"] * 4


def test_the_launchers_flags_reach_every_worker_it_starts(tmp_path: Path) -> None:
    options: dict[str, Any] = {
        "queues": ["gpu", "light"], "light_concurrency": 1, "max_tasks_per_child": 0,
        "loglevel": "info",
    }  # fmt: skip
    flags = {"models_dir": tmp_path / "models", "video_quality": 51, "io_binding": True,
             "execution_provider": "cpu", "batch_size": 3}  # fmt: skip
    settings = Settings.from_env({"FACEFUSION_BROKER_URL": "redis://127.0.0.1:6379/0"}, **flags)
    for _, env in plan_workers(settings, gpus="none", **options):
        # A worker reads only its environment (worker_app): it must come out with the flags.
        seen = Settings.from_env(env | {"FACEFUSION_BROKER_URL": "redis://127.0.0.1:6379/0"})
        assert {name: getattr(seen, name) for name in flags} == flags
