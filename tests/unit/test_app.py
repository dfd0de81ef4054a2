"""Celery settings, priorities and the worker launcher's command lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from facefusion_tasks.app import GPU_QUEUE, LIGHT_QUEUE, TASK_CHUNK, celery_config
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.reasons import Reason
from facefusion_tasks.tasks import kombu_priority
from facefusion_tasks.worker import exporter_argv, exporter_env, plan_workers


def _settings(**kw: object) -> Settings:
    return Settings.from_env({"FACEFUSION_BROKER_URL": "redis://:secret@127.0.0.1:6379/3"}, **kw)


def test_celery_is_json_only_late_ack_and_one_prefetch() -> None:
    config = celery_config(_settings())
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["result_accept_content"] == ["json"]
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_routes"][TASK_CHUNK]["queue"] == GPU_QUEUE
    assert {q.name for q in config["task_queues"]} == {GPU_QUEUE, LIGHT_QUEUE}
    assert config["task_time_limit"] < config["broker_transport_options"]["visibility_timeout"]
    assert config["task_soft_time_limit"] < config["task_time_limit"]
    assert config["worker_send_task_events"] and config["task_send_sent_event"]
    # No results stored: a refused result write before a reject wedged a worker's prefetch.
    assert config["task_ignore_result"] and not config["task_store_errors_even_if_ignored"]


def test_a_worker_killed_while_restoring_does_not_stop_restores_for_long() -> None:
    # kombu's restore lock outlives a SIGKILLed holder until it expires: a quarter of the
    # visibility timeout (the time a lost message waits anyway), 5 s to 5 min.
    quick = celery_config(_settings(visibility_timeout=12, chunk_time_limit=10))
    assert quick["broker_transport_options"]["unacked_mutex_expire"] == 5
    default = celery_config(_settings())["broker_transport_options"]
    assert default["unacked_mutex_expire"] == 300 <= default["visibility_timeout"]


def test_rediss_gets_certificate_checks() -> None:
    config = celery_config(
        Settings.from_env({"FACEFUSION_BROKER_URL": "rediss://:pw@redis:6380/0"})
    )
    assert config["broker_use_ssl"]["ssl_cert_reqs"]
    assert "broker_use_ssl" not in celery_config(_settings())


def test_time_limit_must_stay_below_visibility_timeout() -> None:
    with pytest.raises(InputError, match="visibility timeout"):
        _settings(visibility_timeout=600, chunk_time_limit=600)
    with pytest.raises(InputError, match="redis"):
        Settings.from_env({"FACEFUSION_BROKER_URL": "amqp://guest@localhost//"})


def test_user_priority_9_is_served_first_by_kombu() -> None:
    assert kombu_priority(9) == 0 and kombu_priority(0) == 9 and kombu_priority(42) == 0


@pytest.mark.parametrize(
    ("work", "message"),
    [
        ("{tmp}/elsewhere", "work directory is outside the storage roots"),
        ("{tmp}/root/wk\nnl", "a line break in its name"),
    ],
)
def test_a_work_directory_no_job_could_use_is_refused_at_the_start(
    tmp_path: Path, work: str, message: str
) -> None:
    # Accepted, it failed every job the fleet took: at its first chunk (outside the roots)
    # or at every stitch (a line break in the concat list).
    (tmp_path / "root").mkdir()
    settings = _settings(storage_roots=str(tmp_path / "root"), work_dir=work.format(tmp=tmp_path))
    with pytest.raises(InputError, match=message) as refused:
        plan_workers(settings, gpus="none", queues=["gpu", "light"], light_concurrency=1,
                     max_tasks_per_child=0, loglevel="info")  # fmt: skip
    assert refused.value.reason is Reason.CONFIG
    assert plan_workers(
        _settings(storage_roots=str(tmp_path / "root")), gpus="none", queues=["gpu"],
        light_concurrency=1, max_tasks_per_child=0, loglevel="info",
    )  # fmt: skip  # the default, under the first root
    # No roots: the segments go to a bucket, and the work directory is never used.
    assert plan_workers(
        _settings(work_dir=str(tmp_path / "anywhere"), s3_buckets="media"), gpus="none",
        queues=["gpu"], light_concurrency=1, max_tasks_per_child=0, loglevel="info",
    )  # fmt: skip


def test_one_pinned_process_per_gpu_plus_a_light_worker() -> None:
    plans = plan_workers(
        _settings(), gpus="0,1", queues=["gpu", "light"], light_concurrency=2,
        max_tasks_per_child=50, loglevel="info",
    )  # fmt: skip
    assert [env.get("CUDA_VISIBLE_DEVICES") for _, env in plans] == ["0", "1", None]
    for argv, env in plans[:2]:
        assert argv[argv.index("-Q") + 1] == "gpu" and argv[argv.index("-c") + 1] == "1"
        assert env["FACEFUSION_PRELOAD_MODELS"] == "1"
        assert argv[argv.index("--max-tasks-per-child") + 1] == "50"
    light, env = plans[2]
    assert light[light.index("-Q") + 1] == "light" and env["FACEFUSION_PRELOAD_MODELS"] == "0"
    cpu = plan_workers(
        _settings(),
        gpus="none",
        queues=["gpu"],
        light_concurrency=1,
        max_tasks_per_child=0,
        loglevel="info",
    )
    assert len(cpu) == 1 and cpu[0][1]["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(InputError):
        plan_workers(
            _settings(),
            gpus="none",
            queues=["video"],
            light_concurrency=1,
            max_tasks_per_child=0,
            loglevel="info",
        )


def test_exporter_command_line() -> None:
    argv = exporter_argv(port=9808, metrics_dir=Path("/run/m"))
    assert argv[1:3] == ["-m", "facefusion_tasks.metrics.exporter"]
    assert argv[3:] == ["--port", "9808", "--multiproc-dir", "/run/m"]
    # The broker, password and all, goes by environment: a command line is readable by anyone.
    env = exporter_env(_settings(), {"PATH": "/bin", "PROMETHEUS_MULTIPROC_DIR": "/run/m"})
    assert env["FACEFUSION_BROKER_URL"] == "redis://:secret@127.0.0.1:6379/3"
    assert "PROMETHEUS_MULTIPROC_DIR" not in env and env["PATH"] == "/bin"
    assert "secret" not in " ".join(argv)


def test_each_queue_has_its_own_exchange_and_routing_key() -> None:
    """A task sent to one queue must land in that queue only (never duplicated into another)."""
    from facefusion_tasks.app import make_app

    app = make_app(_settings())
    queues = app.amqp.queues
    bindings = {(q.exchange.name, q.routing_key) for q in queues.values()}
    assert bindings == {("gpu", "gpu"), ("light", "light")}
    route = app.amqp.router.route({}, TASK_CHUNK, args=("job", 0), kwargs={})
    assert route["queue"].name == GPU_QUEUE and route["queue"].routing_key == GPU_QUEUE


def test_worker_names_are_unique_per_launcher_and_gpu_processes_multiply() -> None:
    import os

    launcher = os.getpid()

    def names(plans: list[tuple[list[str], dict[str, str]]]) -> list[str]:
        return [argv[argv.index("-n") + 1] for argv, _ in plans]

    options: dict[str, Any] = {
        "queues": ["gpu", "light"],
        "light_concurrency": 1,
        "max_tasks_per_child": 0,
        "loglevel": "info",
    }
    gpus = plan_workers(_settings(gpu_processes=2), gpus="0,1", **options)
    assert names(gpus) == [
        f"gpu0x0-{launcher}@%h",
        f"gpu0x1-{launcher}@%h",
        f"gpu1x0-{launcher}@%h",
        f"gpu1x1-{launcher}@%h",
        f"light-{launcher}@%h",
    ]
    assert [env.get("CUDA_VISIBLE_DEVICES") for _, env in gpus[:4]] == ["0", "0", "1", "1"]
    assert [env["FACEFUSION_WORKER_QUEUES"] for _, env in gpus] == ["gpu"] * 4 + ["light"]
    cpu = plan_workers(_settings(gpu_processes=3), gpus="none", **options)
    assert names(cpu) == [f"cpu{k}-{launcher}@%h" for k in range(3)] + [f"light-{launcher}@%h"]
    one = plan_workers(_settings(), gpus="0", **options)
    assert names(one)[0] == f"gpu0-{launcher}@%h"


def test_liveness_settings_are_checked() -> None:
    with pytest.raises(InputError, match="two heartbeat periods"):
        _settings(stall_seconds=3, heartbeat_seconds=2.0)
    with pytest.raises(InputError, match="at least 1"):
        _settings(max_deliveries=0)
    settings = Settings.from_env(
        {"FACEFUSION_STALL_SECONDS": "60", "FACEFUSION_MAX_DELIVERIES": "5"}
    )
    assert (settings.stall_seconds, settings.max_deliveries) == (60, 5)


def test_workers_never_import_the_metric_definitions_behind_observe() -> None:
    # Importing the definitions creates this process's metric files: on a full metrics
    # filesystem the first write is a SIGBUS. Only observe.metrics() may decide to.
    import subprocess
    import sys

    code = (
        "import sys, facefusion_tasks.tasks, facefusion_tasks.liveness, facefusion_tasks.runner, "
        "facefusion_tasks.metrics.keys; "
        "print(sorted(m for m in sys.modules if m.startswith('prometheus_client') "
        "or m.endswith('metrics.definitions')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_queue_and_a_file_for_the_metrics_directory_are_refused_before_any_start(
    tmp_path: Path,
) -> None:
    from facefusion_tasks.worker import run_workers

    options: dict[str, Any] = {"light_concurrency": 1, "max_tasks_per_child": 0, "loglevel": "info"}
    settings = _settings()
    # `--queues ""` started nothing and sat silent for ever.
    with pytest.raises(InputError, match="no queue to serve"):
        plan_workers(settings, gpus="none", queues=[], **options)
    # A file there was an internal FileExistsError, exit 1.
    afile = tmp_path / "metrics"
    afile.write_text("not a directory")
    with pytest.raises(InputError, match="is not a directory") as caught:
        run_workers(settings, metrics_dir=afile, gpus="none", queues=["light"], **options)
    assert caught.value.reason == Reason.CONFIG


@pytest.mark.parametrize("gpus", ["0,0", ",,", "0,,1"])
def test_a_gpu_list_names_each_gpu_once(gpus: str) -> None:
    # "0,0" started two workers under one Celery node name; ",," three CPU workers under one.
    options: dict[str, Any] = {"light_concurrency": 1, "max_tasks_per_child": 0, "loglevel": "info"}
    with pytest.raises(InputError, match="name each GPU once") as caught:
        plan_workers(_settings(), gpus=gpus, queues=["gpu", "light"], **options)
    assert caught.value.reason == Reason.CONFIG


def test_a_chunk_attempt_redis_refused_to_record_counts_as_retried() -> None:
    # Redis full while an attempt ended: nothing could record it, the sweep runs the chunk
    # again, and counting it `failed/internal` tipped the failure-ratio alert (a probe saw 14
    # such "failures" beside 105 successes, with one job failed).
    import redis
    from prometheus_client import REGISTRY

    from facefusion_tasks import tasks

    def counted(outcome: str, reason: str) -> float:
        labels = {"outcome": outcome, "reason": reason}
        return REGISTRY.get_sample_value("facefusion_chunks_total", labels) or 0.0

    def refused() -> dict[str, Any]:
        raise redis.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")

    def broken() -> dict[str, Any]:
        raise ValueError("a bug")

    before = counted("retried", "transient"), counted("failed", "internal")
    with pytest.raises(redis.OutOfMemoryError):
        tasks._timed_chunk(refused)
    with pytest.raises(ValueError):
        tasks._timed_chunk(broken)
    assert counted("retried", "transient") == before[0] + 1
    assert counted("failed", "internal") == before[1] + 1


def test_a_retried_chunk_is_stamped_when_it_goes_back_in_line(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery's retry copies the first send's headers: the queue's oldest age and the wait
    histogram took the failed attempt's run (up to chunk_time_limit) for time spent waiting
    (a metrics probe's finding). The retry carries the time it was sent."""
    import json
    import time

    import redis
    from celery.exceptions import Retry

    from facefusion_tasks import tasks
    from facefusion_tasks.app import make_app
    from facefusion_tasks.errors import TransientError
    from facefusion_tasks.metrics.queues import priority_keys

    monkeypatch.setenv("FACEFUSION_BROKER_URL", redis_url)
    tasks._store.cache_clear()
    try:
        chunk = make_app(Settings.from_env({}, broker_url=redis_url)).tasks[TASK_CHUNK]
        chunk.push_request(
            id="attempt-1", args=["job", 0], kwargs={}, retries=0, called_directly=False,
            headers={tasks.ENQUEUED_HEADER: 1000.0},
            delivery_info={"routing_key": GPU_QUEUE, "exchange": "", "priority": 4},
        )  # fmt: skip
        before = time.time()
        with pytest.raises(Retry):
            tasks._settle(chunk, "job", 0, TransientError("a GPU out of memory at batch 1"))
        chunk.pop_request()
    finally:
        tasks._store.cache_clear()
    client = redis.Redis.from_url(redis_url)
    sent = [
        json.loads(raw) for key in priority_keys(GPU_QUEUE) for raw in client.lrange(key, 0, -1)
    ]
    assert [m["headers"]["retries"] for m in sent] == [1]
    assert sent[0]["headers"][tasks.ENQUEUED_HEADER] >= before - 5  # the fleet's clock
