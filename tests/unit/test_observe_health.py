"""A worker process whose metrics storage fails keeps working: one log line, no crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from facefusion_tasks.metrics import multiproc


def run(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != multiproc.PROMETHEUS_ENV}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_too_little_free_space_means_no_metric_files_at_all(tmp_path: Path) -> None:
    result = run(
        f"""
        import sys
        from pathlib import Path
        from facefusion_tasks.metrics import multiproc
        multiproc.prepare(Path({str(tmp_path)!r}), wipe=True)
        from facefusion_tasks import observe
        told = []
        observe.configure(min_free_bytes=1 << 62, on_disable=told.append)
        observe.batch({{"detect": 0.1}}, frames=8, faces=2, seconds=0.4)
        observe.chunk("succeeded", "none", seconds=1.0)
        observe.busy(True, "gpu")
        assert "bytes free" in observe.metrics_disabled() and len(told) == 1, told
        assert "facefusion_tasks.metrics.definitions" not in sys.modules
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("metrics disabled") == 1  # loud, once
    assert not list(tmp_path.glob("*.db"))


def test_deleted_metric_files_come_back_with_their_values(tmp_path: Path) -> None:
    directory = tmp_path / "mp"
    result = run(
        f"""
        import os, shutil
        from pathlib import Path
        from facefusion_tasks.metrics import multiproc
        multiproc.prepare(Path({str(directory)!r}), wipe=True)
        from facefusion_tasks import observe
        observe.configure(min_free_bytes=1)
        observe.metrics().worker_processes.set(1)
        observe.chunk("succeeded", "none", seconds=1.0)
        observe.check_storage()
        assert observe.metrics_disabled() == ""
        shutil.rmtree({str(directory)!r})
        Path({str(directory)!r}).mkdir()  # the exporter recreated it
        observe.check_storage()
        assert observe.metrics_disabled() == "", observe.metrics_disabled()
        observe.chunk("succeeded", "none", seconds=1.0)
        assert multiproc.lock_path(Path({str(directory)!r}), os.getpid()).exists()
        """
    )
    assert result.returncode == 0, result.stderr
    assert "carries on in new files" in result.stderr
    from prometheus_client.multiprocess import MultiProcessCollector

    merged = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in MultiProcessCollector.merge([str(p) for p in directory.glob("*.db")])
        for s in m.samples
    }
    # Both chunks counted (the one before the deletion too), and the live gauge kept its 1.
    assert merged[("facefusion_chunks_total", (("outcome", "succeeded"), ("reason", "none")))] == 2
    assert sum(v for (name, _), v in merged.items() if name == "facefusion_worker_processes") == 1


def test_metric_files_that_cannot_come_back_disable_metrics_and_work_goes_on(
    tmp_path: Path,
) -> None:
    result = run(
        f"""
        import shutil
        from pathlib import Path
        from facefusion_tasks.metrics import multiproc
        multiproc.prepare(Path({str(tmp_path / "mp")!r}), wipe=True)
        from facefusion_tasks import observe
        observe.configure(min_free_bytes=1)
        observe.chunk("succeeded", "none", seconds=1.0)
        multiproc.reopen_files = lambda: False  # a prometheus_client of another shape
        shutil.rmtree({str(tmp_path / "mp")!r})
        Path({str(tmp_path / "mp")!r}).mkdir()
        observe.check_storage()
        assert "deleted" in observe.metrics_disabled(), observe.metrics_disabled()
        observe.chunk("succeeded", "none", seconds=1.0)  # a no-op now, not an error
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("metrics disabled") == 1


def test_a_failing_metric_write_disables_metrics_instead_of_failing_the_caller() -> None:
    result = run(
        """
        from facefusion_tasks import observe
        class Broken:
            def __getattr__(self, name):
                raise OSError(28, "No space left on device")
        observe._definitions = Broken()
        observe.chunk("succeeded", "none", seconds=1.0)
        observe.job("failed", "stalled", created_at=1.0, finished_at=2.0)
        assert "No space left" in observe.metrics_disabled()
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("metrics disabled") == 1


def test_a_busy_process_whose_metrics_are_disabled_stops_showing_as_hung(tmp_path: Path) -> None:
    # Its progress stamp froze at its last value, and the exporter aged it for the process's
    # whole life: ChunkProgressStopped paged for a process that only stopped writing metrics.
    result = run(
        f"""
        from pathlib import Path
        from facefusion_tasks.metrics import multiproc
        multiproc.prepare(Path({str(tmp_path)!r}), wipe=True)
        from facefusion_tasks import observe
        observe.configure(min_free_bytes=1)
        observe.metrics().worker_processes.set(1)
        observe.busy(True, "gpu")
        observe.batch({{"detect": 0.1}}, frames=8, faces=2, seconds=0.4)
        observe.configure(min_free_bytes=1 << 62)
        observe.check_storage()
        assert observe.metrics_disabled(), "not disabled"
        """
    )
    assert result.returncode == 0, result.stderr
    from prometheus_client.multiprocess import MultiProcessCollector

    merged = MultiProcessCollector.merge([str(p) for p in tmp_path.glob("*.db")])
    stamps = {
        s.labels["queue"]: s.value
        for m in merged
        for s in m.samples
        if s.name == "facefusion_worker_progress_monotonic_seconds"
    }
    assert stamps == {"gpu": float("inf"), "light": float("inf")}
    # Nor busy for ever: utilisation read 100 % for the process's life (a metrics probe).
    busy = {
        s.labels["queue"]: s.value
        for m in merged
        for s in m.samples
        if s.name == "facefusion_worker_busy"
    }
    assert busy == {"gpu": 0, "light": 0}
    processes = [
        s.value for m in merged for s in m.samples if s.name == "facefusion_worker_processes"
    ]
    assert processes == [0]  # nor counted as a process with spare capacity
