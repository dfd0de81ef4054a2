"""Metric definitions and multiprocess wiring: names, bounded labels, mode selection, pid locks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

from facefusion_tasks import errors
from facefusion_tasks.metrics import definitions, multiproc
from facefusion_tasks.metrics.definitions import EXPORTER_METRICS, REASONS, bounded_reason

#: Labels allowed anywhere: each has a small, fixed set of values.
LOW_CARDINALITY_LABELS = {
    "outcome",
    "reason",
    "status",
    "stage",
    "model",
    "queue",
    "kind",
    "version",
    "provider",
    "requested",
    "encoder",
    "action",
    "collector",
    "policy",  # Redis's maxmemory-policy: one of eight names
}
#: Labels with one value per GPU (or per GPU process) of the host: bounded by the hardware.
PER_GPU_LABELS = {"gpu", "gpu_uuid", "cuda_index", "pid"}
#: Names that carry no unit suffix on purpose (counts, 0/1 states, sizes in items).
UNITLESS = {
    "facefusion_build_info",
    "facefusion_worker_busy",
    "facefusion_worker_processes",
    "facefusion_model_batch_size",
    "facefusion_model_batch_limit",
    "facefusion_worker_info",
}


def worker_metrics() -> list[MetricWrapperBase]:
    return [v for v in vars(definitions).values() if isinstance(v, MetricWrapperBase)]


def exposed_name(metric: MetricWrapperBase) -> str:
    # prometheus_client strips `_total` from a Counter's name and adds it back on exposition.
    return metric._name + "_total" if isinstance(metric, Counter) else metric._name


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter, without the caller's metrics environment."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in {multiproc.PROMETHEUS_ENV, multiproc.ENV_DIR, "prometheus_multiproc_dir"}
    }
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


class TestBoundedReason:
    def test_known_reasons_pass_through_normalised(self) -> None:
        assert bounded_reason("gpu_oom") == "gpu_oom"
        assert bounded_reason(" Corrupt_Video ") == "corrupt_video"

    def test_anything_unknown_becomes_other(self) -> None:
        assert bounded_reason("job 5f3a failed at /tmp/x.mp4") == "other"
        assert bounded_reason("KeyError") == "other"

    def test_empty_means_no_failure(self) -> None:
        assert bounded_reason("") == "none"
        assert bounded_reason(None) == "none"

    def test_every_error_class_reason_is_a_known_label_value(self) -> None:
        pending: list[type[errors.FaceFusionError]] = [errors.FaceFusionError]
        seen = []
        while pending:
            cls = pending.pop()
            seen.append(cls)
            assert bounded_reason(cls.reason) == cls.reason, cls
            pending.extend(cls.__subclasses__())
        assert len(seen) > 5

    def test_the_set_is_small(self) -> None:
        assert len(REASONS) < 40


class TestNames:
    def test_every_name_is_namespaced_and_unique(self) -> None:
        names = [exposed_name(m) for m in worker_metrics()] + list(EXPORTER_METRICS)
        assert all(n.startswith("facefusion_") for n in names)
        assert len(names) == len(set(names))

    def test_counters_end_in_total_and_others_do_not(self) -> None:
        for metric in worker_metrics():
            assert exposed_name(metric).endswith("_total") == isinstance(metric, Counter), metric
        for name, (kind, _, _) in EXPORTER_METRICS.items():
            assert name.endswith("_total") == (kind == "counter"), name

    def test_base_units(self) -> None:
        names = [exposed_name(m) for m in worker_metrics() if not isinstance(m, Counter)]
        names += [n for n, (kind, _, _) in EXPORTER_METRICS.items() if kind == "gauge"]
        for name in names:
            if name in UNITLESS or name.endswith(("_alive", "_up", "_files", "_length")):
                continue
            if name.endswith(("_unacked", "_backlog", "_workers", "_running", "_stalled")):
                continue  # message, process, chunk and job counts
            assert name.endswith(("_seconds", "_bytes", "_ratio")), name
        assert "milliseconds" not in " ".join(names)

    def test_labels_are_low_cardinality(self) -> None:
        for metric in worker_metrics():
            assert set(metric._labelnames) <= LOW_CARDINALITY_LABELS | PER_GPU_LABELS, metric
        for name, (_, _, labels) in EXPORTER_METRICS.items():
            assert set(labels) <= LOW_CARDINALITY_LABELS | PER_GPU_LABELS, name

    def test_seed_names_are_kept(self) -> None:
        names = {exposed_name(m) for m in worker_metrics()} | set(EXPORTER_METRICS)
        for seed in (
            "facefusion_face_swap_requests_total",
            "facefusion_face_swap_duration_seconds",
            "facefusion_gpu_memory_used_bytes",
            "facefusion_gpu_memory_total_bytes",
        ):
            assert seed in names
        assert definitions.face_swap_requests_total._labelnames == ("status",)

    def test_gauges_declare_a_mode_compaction_can_handle(self) -> None:
        for metric in worker_metrics():
            if isinstance(metric, Gauge):
                # "all"/"liveall" would add a pid label that churns with every recycled worker.
                assert metric._multiprocess_mode in {
                    "livesum",
                    "livemax",
                    "livemin",
                    "max",
                    "min",
                    "sum",
                }, metric

    def test_stage_histogram_spans_a_millisecond_to_tens_of_seconds(self) -> None:
        buckets = definitions.STAGE_BUCKETS
        assert buckets[0] <= 0.001 and buckets[-1] >= 30
        assert 0.5 in definitions.FRAME_BUCKETS  # the slow-frames alert threshold
        assert definitions.BATCH_BUCKETS[0] == 1 and definitions.BATCH_BUCKETS[-1] == 64
        assert set(definitions.STAGES) == {"decode", "detect", "embed", "swap", "paste", "encode"}


def test_definitions_work_in_multiprocess_mode(tmp_path: Path) -> None:
    """A worker process that prepares first writes every metric to the shared directory."""
    result = run_python(
        f"""
        from pathlib import Path
        from facefusion_tasks.metrics import multiproc
        multiproc.prepare(Path({str(tmp_path)!r}), wipe=True)
        import prometheus_client.values
        assert prometheus_client.values.ValueClass._multiprocess
        from facefusion_tasks.metrics import definitions as d
        d.jobs_total.labels(outcome="failed", reason=d.bounded_reason("weird")).inc()
        d.chunks_total.labels(outcome="succeeded", reason="none").inc()
        d.face_swap_requests_total.labels(status="success").inc()
        d.face_swap_duration_seconds.observe(12.0)
        d.job_duration_seconds.observe(300.0)
        d.chunk_duration_seconds.observe(30.0)
        d.frames_processed_total.inc(48)
        d.faces_swapped_total.inc(40)
        for stage in d.STAGES:
            d.stage_duration_seconds.labels(stage=stage).observe(0.004)
        d.frame_duration_seconds.observe(0.05)
        d.model_batch_size.labels(model="swapper").observe(8)
        d.queue_wait_seconds.labels(queue="gpu").observe(2.0)
        d.worker_busy.labels(queue="gpu").set(1)
        d.worker_progress_monotonic.labels(queue="gpu").set(12.5)
        d.worker_processes.set(1)
        d.gpu_oom_total.labels(kind="arena", model="swapper").inc()
        d.model_batch_limit.labels(model="swapper").set(4)
        d.worker_info.labels(
            provider="CUDAExecutionProvider", requested="auto", gpu_uuid="GPU-1", cuda_index=""
        ).set(1)
        d.video_encodes_total.labels(encoder=d.bounded_encoder("libx264")).inc()
        d.stall_recoveries_total.labels(kind="chunk", action="requeued").inc()
        """
    )
    assert result.returncode == 0, result.stderr
    files = [str(p) for p in tmp_path.glob("*.db")]
    merged = {m.name: m for m in MultiProcessCollector.merge(files)}
    expected = {m._name for m in worker_metrics()}
    assert expected <= set(merged)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in merged.values()
        for s in m.samples
    }
    assert samples[("facefusion_frames_processed_total", ())] == 48
    assert samples[("facefusion_jobs_total", (("outcome", "failed"), ("reason", "other")))] == 1
    assert samples[("facefusion_build_info", (("version", "0.1.0"),))] == 1
    assert samples[("facefusion_worker_progress_monotonic_seconds", (("queue", "gpu"),))] == 12.5
    # Pre-initialised at zero so that increase() sees the first OOM of every kind and model.
    assert samples[("facefusion_gpu_oom_total", (("kind", "cuda"), ("model", "detector")))] == 0
    assert samples[("facefusion_gpu_oom_total", (("kind", "arena"), ("model", "swapper")))] == 1
    # Every failure too: the first one of a reason after a start was invisible to rate(),
    # so the chunk failure-ratio alert never went pending.
    for reason in REASONS - {"none"}:
        for outcome in ("retried", "failed"):
            assert (
                samples[("facefusion_chunks_total", (("outcome", outcome), ("reason", reason)))]
                == 0
            )
    assert samples[("facefusion_jobs_total", (("outcome", "failed"), ("reason", "timeout")))] == 0
    assert (
        samples[("facefusion_jobs_total", (("outcome", "cancelled"), ("reason", "cancelled")))] == 0
    )
    recovery = (("action", "failed"), ("kind", "job"))
    assert samples[("facefusion_stall_recoveries_total", recovery)] == 0


def test_prepare_refuses_when_prometheus_client_came_first(tmp_path: Path) -> None:
    result = run_python(
        f"""
        import prometheus_client
        from pathlib import Path
        from facefusion_tasks.metrics import multiproc
        try:
            multiproc.prepare(Path({str(tmp_path)!r}), wipe=False)
        except multiproc.MetricsModeError as exc:
            print("refused:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "refused: prometheus_client was already imported in single-process mode" in result.stdout


def test_prepare_refuses_a_second_directory_and_a_late_wipe(tmp_path: Path) -> None:
    result = run_python(
        f"""
        from pathlib import Path
        from facefusion_tasks.metrics import multiproc
        root = Path({str(tmp_path)!r})
        multiproc.prepare(root / "a", wipe=True)
        import prometheus_client
        multiproc.prepare(root / "a", wipe=False)  # same directory again: fine
        for args in ((root / "b", False), (root / "a", True)):
            try:
                multiproc.prepare(args[0], wipe=args[1])
            except multiproc.MetricsModeError:
                print("refused", args[0].name, args[1])
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["refused b False", "refused a True"]


def test_wipe_removes_metric_files_and_nothing_else(tmp_path: Path) -> None:
    ours = (
        "counter_1.db", "histogram_archive.db", "pid_1.lock", "counter_2.db.stage",
        "gauge_livemin_7.db", "gauge_all_archive.db.new", "counter_archive.db.journal.tmp",
        "histogram_3.db.stage.corrupt",
    )  # fmt: skip
    for name in ours:
        (tmp_path / name).write_bytes(b"x")
    # Anything else stays: any *.db, *.lock or *.tmp went (a directory named by mistake, the
    # current one with `--metrics-dir ""`, lost its own databases).
    theirs = ("notes.txt", "app.db", "cache.sqlite.db", "run.lock", "upload.tmp", "pid_x.lock")
    for name in theirs:
        (tmp_path / name).write_text("keep me")
    result = run_python(
        f"""
        from pathlib import Path
        from facefusion_tasks.metrics import multiproc
        multiproc.prepare(Path({str(tmp_path)!r}), wipe=True)
        """
    )
    assert result.returncode == 0, result.stderr
    remaining = {p.name for p in tmp_path.iterdir()} - set(theirs)
    # Only the new process's own lock comes back.
    assert all((tmp_path / name).read_text() == "keep me" for name in theirs)
    (lock,) = remaining
    assert lock.startswith("pid_") and lock.endswith(".lock")


def test_default_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(multiproc.ENV_DIR, "/var/run/ff-metrics")
    assert multiproc.default_dir() == Path("/var/run/ff-metrics")
    monkeypatch.delenv(multiproc.ENV_DIR)
    assert multiproc.default_dir().name == "facefusion-metrics"


def test_each_process_holds_its_pid_lock_for_its_lifetime_forks_included(tmp_path: Path) -> None:
    result = run_python(
        f"""
        import json, os
        from pathlib import Path
        from facefusion_tasks.metrics import multiproc
        root = Path({str(tmp_path)!r})
        multiproc.prepare(root, wipe=True)
        from facefusion_tasks.metrics import definitions as d

        def held(pid):
            fd = multiproc.acquire_lock(multiproc.lock_path(root, pid), blocking=False)
            if fd is None:
                return True
            os.close(fd)
            return False

        release_r, release_w = os.pipe()
        ready_r, ready_w = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(release_w)
            d.frames_processed_total.inc()
            os.write(ready_w, b"x")
            os.read(release_r, 1)
            os._exit(0)
        os.read(ready_r, 1)
        during = {{"parent": held(os.getpid()), "child": held(child)}}
        os.close(release_w)
        os.waitpid(child, 0)
        after = {{"parent": held(os.getpid()), "child": held(child)}}
        print(json.dumps({{"during": during, "after": after}}))
        """
    )
    assert result.returncode == 0, result.stderr
    states = json.loads(result.stdout)
    assert states["during"] == {"parent": True, "child": True}
    # The child's exit released its own lock only; the parent's lock survives it.
    assert states["after"] == {"parent": True, "child": False}


def test_mark_dead_drops_only_that_pids_live_gauges(tmp_path: Path) -> None:
    names = [
        "gauge_livesum_41.db",
        "gauge_livemax_41.db",
        "gauge_livesum_42.db",
        "gauge_max_41.db",
        "counter_41.db",
        "histogram_41.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    multiproc.mark_dead(41, tmp_path)
    multiproc.mark_dead(41, tmp_path)  # twice is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["gauge_livesum_42.db", "gauge_max_41.db", "counter_41.db", "histogram_41.db"]
    )


def test_worker_side_types_only() -> None:
    # No Info/Enum/Summary-with-quantiles or set_function in the worker-side module.
    for metric in worker_metrics():
        assert isinstance(metric, Counter | Gauge | Histogram), metric


def test_a_lock_held_by_a_stray_process_cannot_hang_a_starting_worker(tmp_path: Path) -> None:
    # E.g. a grandchild forked by C code inherited a dead worker's lock fd; a new worker with
    # the same pid number must still start (Celery kills children that take 4 s to init).
    result = run_python(
        f"""
        import logging, os
        from pathlib import Path
        logging.basicConfig(level=logging.WARNING)
        from facefusion_tasks.metrics import multiproc
        root = Path({str(tmp_path)!r})
        stray = multiproc.acquire_lock(multiproc.lock_path(root, os.getpid()), blocking=False)
        multiproc.LOCK_WAIT_SECONDS = 0.2
        multiproc.prepare(root, wipe=False)
        from facefusion_tasks.metrics import definitions as d
        d.frames_processed_total.inc()
        print("started")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"
    assert "stays held by another process" in result.stderr
