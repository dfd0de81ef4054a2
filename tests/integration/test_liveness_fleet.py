"""Nothing hangs unseen: real launcher, real Celery workers, real ffmpeg, stopped and killed."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from facefusion_tasks.metrics.keys import held_messages, messages_in_line
from facefusion_tasks.metrics.queues import METRICS_DISABLED_KEY, priority_keys
from facefusion_tasks.producer import Producer
from facefusion_tasks.store import FAILED, RUNNING, SUCCEEDED
from tests.cluster import (
    SHARED_REDIS,
    Launcher,
    children,
    cluster,
    free_port,
    launcher,
    metric_samples,
    wait_for,
)
from tests.media import TINY, storage_root, video_times

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clips = {
        "clip.mp4": {"seconds": 4, "faces": 1, "audio": True},
        "tiny.mp4": TINY,
        "long.mp4": {"seconds": 8, "faces": 1, "audio": False},
    }
    return storage_root(tmp_path_factory.mktemp("shared"), clips)


def _running_chunk(fleet: Launcher, job_id: str) -> dict | None:  # type: ignore[type-arg]
    """A chunk a pool process has started (the moment to stop or kill that process)."""
    for chunk in fleet.producer().status(job_id).chunks:
        if chunk["state"] == RUNNING and chunk["pid"]:
            return chunk
    return None


def _held_since(client: redis.Redis, before: float, job_id: str, index: int) -> bool:
    """Whether a worker holds a message of the chunk it took before `before`."""
    return (job_id, str(index)) in [args for _, _, args in held_messages(client, before)]


def _given_back(producer: Producer, job_id: str, index: int) -> bool:
    """The stall sweep has taken the chunk back from its silent process (or it already ran
    again elsewhere)."""
    chunk = producer.status(job_id).chunks[index]
    return chunk["deliveries"] >= 2 or "no progress" in chunk["error"]


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[float]:
    """SIGSTOP a process (a frozen driver call looks the same from outside); always resumed or
    gone afterwards. Yields the time it was stopped."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_stopped_pool_process_chunk_is_redone_elsewhere_within_the_stall_bound(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    stall, sweep, beat = 4, 1, 0.5
    with launcher(
        root, models_dir, SHARED_REDIS, metrics_dir=tmp_path / "mp", port=free_port(),
        stall_seconds=str(stall), sweep_seconds=str(sweep), heartbeat_seconds=str(beat),
        chunk_time_limit="60", visibility_timeout="120",
    ) as fleet:  # fmt: skip
        fleet.start(gpu_processes=2)
        producer = fleet.producer()
        output = root / "out" / "stopped.mp4"
        job_id = producer.submit(root / "source.png", root / "clip.mp4", output, chunk_seconds=2)
        victim = wait_for(lambda: _running_chunk(fleet, job_id), timeout=90, interval=0.01)
        with _stopped(victim["pid"]) as stopped_at:
            # Given back once its heartbeat is `stall` seconds old, by the next sweep: the
            # chunk is PENDING again (or already redone) while its old process stays stopped.
            wait_for(lambda: _given_back(producer, job_id, victim["index"]), timeout=60)
            detected = time.monotonic() - stopped_at
            # On-call sees it too, though the host's other gpu process goes on writing frames:
            # the exporter serves the stopped process's age since its last frame batch.
            age, age_at = _progress_age(fleet.port), time.monotonic()
            status = producer.wait(job_id, timeout=120)
        # Killed, it drops out: the age is 0 again (the other process is idle).
        wait_for(lambda: _progress_age(fleet.port) == 0, timeout=30)
    print(f"stopped pool process: chunk given back {detected:.1f} s after SIGSTOP")
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert detected <= stall + sweep + beat + 3  # + scheduling slack on a loaded machine
    redone = status.chunks[victim["index"]]
    assert redone["deliveries"] >= 2 and redone["pid"] != victim["pid"]
    assert video_times(output) == video_times(root / "clip.mp4")  # nothing lost or doubled
    # The stopped attempt never ended; the delivery after it counted it, as given back.
    assert _lost_attempts(tmp_path / "mp") == {("retried", "stalled"): 1.0}
    assert stall - 1 <= age <= age_at - stopped_at + 5, (age, age_at - stopped_at)


def test_a_stopped_holders_message_is_let_go_as_its_chunk_is_sent_again(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    """The only gpu process stops mid-chunk: the sweep sends the chunk again, and the stopped
    process's message, which it holds in kombu's unacked hash, is acknowledged then. It stayed
    beside the new one for as long as the process hung, and the backlog (and autoscaling)
    counted one unfinished chunk as two (a metrics probe's finding)."""
    with launcher(
        root, models_dir, SHARED_REDIS, metrics_dir=tmp_path / "mp", port=free_port(),
        stall_seconds="4", sweep_seconds="1", heartbeat_seconds="0.5",
        chunk_time_limit="60", visibility_timeout="120",
    ) as fleet:  # fmt: skip
        fleet.start(gpu_processes=1)
        producer = fleet.producer()
        job_id = producer.submit(
            root / "source.png", root / "tiny.mp4", root / "out" / "let-go.mp4"
        )
        victim = wait_for(lambda: _running_chunk(fleet, job_id), timeout=90, interval=0.01)
        taken_by = time.time()  # its message was taken before now (kombu's stamp, this host)
        client = redis.Redis.from_url(SHARED_REDIS)
        assert _held_since(client, taken_by, job_id, victim["index"])
        with _stopped(victim["pid"]):
            wait_for(lambda: _given_back(producer, job_id, victim["index"]), timeout=60)
            # At once, not when the hard time limit (60 s) ends the stopped process.
            wait_for(lambda: not _held_since(client, taken_by, job_id, victim["index"]), 10)
            backlog = _exported(fleet.port, "facefusion_queue_backlog", {"queue": "gpu"})
            assert backlog == 1.0  # the one message sent again, nothing the stopped one held


def _exported(port: int, name: str, labels: dict[str, str]) -> float | None:
    """One sample of the exporter's /metrics (None when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def _progress_age(port: int) -> float:
    """The exporter's facefusion_worker_progress_age_seconds{queue="gpu"} (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "facefusion_worker_progress_age_seconds" and sample.labels == {
                "queue": "gpu"
            }:
                return float(sample.value)
    return 0.0


def _lost_attempts(metrics_dir: Path) -> dict[tuple[str, str], float]:
    """chunks_total's counts of attempts that never ended: (outcome, reason) -> count."""
    return {
        (labels[0][1], labels[1][1]): value
        for (name, labels), value in metric_samples(metrics_dir).items()
        if name == "facefusion_chunks_total" and labels[1][1] in ("worker_lost", "stalled")
        and value
    }  # fmt: skip


def test_a_stalled_attempt_that_wakes_after_its_chunk_was_given_back_has_no_say(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    # A process stopped past the stall bound (SIGSTOP, a host frozen for minutes) wakes to a
    # failure (its ffmpeg gone, its time limit passed): it failed the job, whose chunk was
    # already running again elsewhere.
    stall = 4
    with _quick_sweeps(root, models_dir, tmp_path, stall) as fleet:
        fleet.start(gpu_processes=2)
        producer = fleet.producer()
        output = root / "out" / "woke.mp4"
        # One chunk of 200 frames: seconds of work, so it is stopped mid-video.
        job_id = producer.submit(root / "source.png", root / "long.mp4", output, chunk_seconds=8)

        def decoding() -> dict | None:  # type: ignore[type-arg]
            """The one chunk, stopped mid-video: its ffmpeg processes are running."""
            chunk = _running_chunk(fleet, job_id)
            midway = chunk is not None and 0 < int(chunk["frames_done"]) < int(chunk["frames"])
            if midway and any("ffmpeg" in cmd for cmd in children(chunk["pid"]).values()):
                return chunk
            return None

        victim = wait_for(decoding, timeout=90, interval=0.01)
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            wait_for(
                lambda: _given_back(producer, job_id, victim["index"]), timeout=60, interval=0.05
            )
            for child in children(victim["pid"]):  # its ffmpeg processes die while it sleeps
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            woke_while = producer.status(job_id).state
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim["pid"], signal.SIGCONT)
        status = producer.wait(job_id, timeout=120)
        log = fleet.log()
    assert woke_while == RUNNING and "a stale attempt failed" in log  # else it proves nothing
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert video_times(output) == video_times(root / "long.mp4")


def _quick_sweeps(
    root: Path, models_dir: Path, tmp_path: Path, stall: int
) -> contextlib.AbstractContextManager[Launcher]:
    """A launcher whose sweep runs every second with a `stall`-second bound."""
    return launcher(
        root, models_dir, SHARED_REDIS, metrics_dir=tmp_path / "mp", port=free_port(),
        stall_seconds=str(stall), sweep_seconds="1", heartbeat_seconds="0.5",
        chunk_time_limit="60", visibility_timeout="120",
    )  # fmt: skip


def test_chunk_messages_lost_from_the_queue_are_sent_again_and_the_job_completes(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    # Redis lost the queue's last writes, or someone purged it, while the job's records
    # stayed: the job is RUNNING with chunks no message will ever start.
    stall = 4
    with _quick_sweeps(root, models_dir, tmp_path, stall) as fleet:
        fleet.start(gpu_processes=1)
        producer = fleet.producer()
        output = root / "out" / "purged.mp4"
        job_id = producer.submit(root / "source.png", root / "clip.mp4", output, chunk_seconds=2)
        # One gpu process: while it runs the first chunk, the second waits in the queue.
        wait_for(lambda: _running_chunk(fleet, job_id), timeout=90, interval=0.01)
        broker = redis.Redis.from_url(SHARED_REDIS)
        assert broker.delete(*priority_keys("gpu")) >= 1
        purged_at = time.monotonic()
        status = producer.wait(job_id, timeout=120)
        finished_after = time.monotonic() - purged_at
        resent = [
            int(broker.hget(f"facefusion:job:{job_id}:chunk:{i}", "resent") or 0)
            for i in range(status.chunks_total)
        ]
    print(f"purged queue: job finished {finished_after:.1f} s later, chunks sent again {resent}")
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert sum(resent) == 1  # the lost message, sent once more; the running chunk never
    assert video_times(output) == video_times(root / "clip.mp4")  # nothing lost or doubled


def test_a_chunk_message_lost_while_others_wait_in_line_is_sent_again_at_once(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    # A busy fleet never sees an empty gpu queue: a lost message must be found by looking for
    # it in the line, not by waiting for the line to empty.
    stall = 4
    with _quick_sweeps(root, models_dir, tmp_path, stall) as fleet:
        fleet.start(gpu_processes=1)
        producer = fleet.producer()
        busy = producer.submit(
            root / "source.png", root / "clip.mp4", root / "out" / "busy.mp4", chunk_seconds=0.5
        )
        chunk = wait_for(lambda: _running_chunk(fleet, busy), timeout=90, interval=0.01)
        broker = redis.Redis.from_url(SHARED_REDIS)
        with _stopped(chunk["pid"]):  # the one gpu process, mid-chunk: the line stays long
            lost = producer.submit(
                root / "source.png", root / "tiny.mp4", root / "out" / "lost.mp4", priority=9
            )
            wait_for(lambda: (lost, "0") in _line(broker), timeout=30)
            assert _drop_message(broker, (lost, "0")) == 1
            record = f"facefusion:job:{lost}:chunk:0"
            wait_for(lambda: broker.hget(record, "resent"), timeout=3 * stall + 5, interval=0.1)
            # Sent again while the busy job's chunks still wait in line.
            line = _line(broker)
            assert any(args[0] == busy for args in line), line
        # The stopped process went with the context; its chunk is redone by a new one.
        for job_id in (lost, busy):
            status = producer.wait(job_id, timeout=150)
            assert status.state == SUCCEEDED, (status.reason, status.error)
    assert video_times(root / "out" / "lost.mp4") == video_times(root / "tiny.mp4")


def _line(broker: redis.Redis) -> frozenset[tuple[str, ...]]:
    return messages_in_line(broker, "gpu", held_since=time.time() - 60) or frozenset()


def _drop_message(broker: redis.Redis, args: tuple[str, ...]) -> int:
    """Remove the waiting messages with these task arguments from the gpu queue (as a failover
    that lost writes would): how many went."""
    dropped = 0
    for key in priority_keys("gpu"):
        for raw in broker.lrange(key, 0, -1):
            message = json.loads(raw)
            body = json.loads(base64.b64decode(message["body"]))
            if tuple(str(a) for a in body[0]) == args:
                dropped += int(broker.lrem(key, 1, raw))
    return dropped


def test_a_hard_time_limit_kill_or_a_dying_worker_fails_the_job_within_the_bound(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    # The hard limit comes first here (limit 6 s < stall 8 s): Celery SIGKILLs the stopped
    # process and acknowledges its message, so only the stall sweep can move the job. One lost
    # delivery is the maximum, so the job fails (reason stalled) instead of trying again.
    stall, sweep, limit = 8, 1, 6
    with launcher(
        root, models_dir, SHARED_REDIS, metrics_dir=tmp_path / "mp", port=free_port(),
        stall_seconds=str(stall), sweep_seconds=str(sweep), heartbeat_seconds="0.5",
        chunk_time_limit=str(limit), visibility_timeout="120", max_deliveries="1",
    ) as fleet:  # fmt: skip
        fleet.start(gpu_processes=1)
        producer = fleet.producer()
        job_id = producer.submit(
            root / "source.png", root / "clip.mp4", root / "out" / "limit.mp4", chunk_seconds=2
        )
        victim = wait_for(lambda: _running_chunk(fleet, job_id), timeout=90, interval=0.01)
        with _stopped(victim["pid"]) as stopped_at:
            wait_for(lambda: "Hard time limit" in fleet.log(), timeout=30)
            status = producer.wait(job_id, timeout=60)
            failed_after = time.monotonic() - stopped_at
        print(f"hard time limit: job failed {failed_after:.1f} s after SIGSTOP ({status.reason})")
        assert status.state == FAILED and status.reason == "stalled", (status.reason, status.error)
        assert failed_after <= stall + sweep + 3

        # A pool process that dies mid-chunk (the OOM killer): Celery redelivers at once, and
        # with one lost delivery allowed the next start fails the job as worker_lost.
        job_id = producer.submit(
            root / "source.png", root / "clip.mp4", root / "out" / "lost.mp4", chunk_seconds=4
        )
        victim = wait_for(lambda: _running_chunk(fleet, job_id), timeout=90, interval=0.01)
        os.kill(victim["pid"], signal.SIGKILL)
        status = producer.wait(job_id, timeout=90)
        assert status.state == FAILED and status.reason == "worker_lost", (
            status.reason,
            status.error,
        )
        assert status.chunks[victim["index"]]["deliveries"] == 2
        # The killed attempt left no trace of its own: the delivery after it counted it, as
        # failed (it used up the chunk's deliveries). The first job's attempt was given back
        # and its job failed by the sweep: no delivery came after it to count it.
        assert _lost_attempts(tmp_path / "mp") == {("failed", "worker_lost"): 1.0}


def _scrape(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


def test_the_launcher_keeps_serving_through_a_taken_port_a_dead_exporter_and_a_dead_worker(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("0.0.0.0", port))
    holder.listen()
    with launcher(
        root, models_dir, SHARED_REDIS, metrics_dir=tmp_path / "mp", port=port, stall_seconds="30"
    ) as fleet:
        try:
            fleet.start(gpu_processes=1)
            producer = fleet.producer()
            # The port is taken: the workers serve anyway, and the exporter says why it waits.
            job_id = producer.submit(root / "source.png", root / "tiny.mp4", root / "out" / "a.mp4")
            assert producer.wait(job_id, timeout=90).state == SUCCEEDED
            assert "is taken" in fleet.log()
        finally:
            holder.close()
        wait_for(lambda: _scrape(port) == 200, timeout=30, interval=0.2)

        exporter = fleet.child("metrics.exporter")
        os.kill(exporter, signal.SIGKILL)
        wait_for(lambda: fleet.children().keys() - {exporter} and _scrape(port) == 200, timeout=30)
        assert fleet.child("metrics.exporter") != exporter

        gpu_worker = fleet.child("-Q gpu")
        os.kill(gpu_worker, signal.SIGKILL)  # the Celery worker itself, not a pool process
        job_id = producer.submit(root / "source.png", root / "tiny.mp4", root / "out" / "b.mp4")
        assert producer.wait(job_id, timeout=120).state == SUCCEEDED
        assert fleet.child("-Q gpu") != gpu_worker
        assert "exited with -9" in fleet.log()
        names = {name.split("@")[0] for name in fleet.workers()} | {
            c["worker"].split("@")[0] for c in producer.status(job_id).chunks
        }
        assert fleet.proc is not None and f"cpu0-{fleet.proc.pid}" in names  # unique per launcher

        launcher_proc = fleet.proc
        assert fleet.stop(timeout=60) == 0  # SIGTERM: graceful, exit 0
        assert launcher_proc.pid and not Path(f"/proc/{launcher_proc.pid}").exists()


def test_a_worker_left_with_no_pool_is_killed_and_started_again(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    # After an unrecoverable error (a pool process's result garbled on its pipe, seen when a
    # soft time limit fired as Redis came back), Celery's main process stayed alive with no
    # pool: it took nothing from its queue and never exited, so nothing restarted it. Here:
    # the main process stopped, its one pool process killed.
    with launcher(
        root,
        models_dir,
        SHARED_REDIS,
        metrics_dir=tmp_path / "mp",
        port=free_port(),
        worker_wedged_seconds="3",
    ) as fleet:
        fleet.start(gpu_processes=1)
        wedged = fleet.child("-Q gpu")
        (pool,) = children(wedged)
        os.kill(wedged, signal.SIGSTOP)
        os.kill(pool, signal.SIGKILL)
        wait_for(
            lambda: [p for p, cmd in fleet.children().items() if "-Q gpu" in cmd and p != wedged],
            timeout=60,
            interval=0.5,
        )
        assert not _running(wedged)
        assert "has had no pool process for" in fleet.log()
        producer = fleet.producer()
        job_id = producer.submit(root / "source.png", root / "tiny.mp4", root / "out" / "w.mp4")
        assert producer.wait(job_id, timeout=120).state == SUCCEEDED


def test_a_sigkilled_launcher_takes_its_workers_and_exporter_with_it(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "mp"
    with launcher(
        root, models_dir, SHARED_REDIS, metrics_dir=metrics_dir, port=free_port()
    ) as fleet:
        fleet.start(gpu_processes=1)
        assert fleet.proc is not None
        pids = set(fleet.children())
        assert len(pids) == 3  # the exporter, a gpu-queue worker and a light one

        # A second launcher on the same metrics directory would wipe this fleet's live files:
        # refused in one line, before it starts anything, and the files stay.
        files = {p.name for p in metrics_dir.iterdir() if p.suffix == ".db"}
        assert files
        second = Launcher(root, models_dir, SHARED_REDIS, metrics_dir=metrics_dir, port=free_port())
        second.start(wait=False)
        assert second.proc is not None and second.proc.wait(60) == 2
        said = second.log().strip().splitlines()
        assert said == [
            f"facefusion-tasks: error: metrics directory {metrics_dir} belongs to the worker launcher "
            f"with pid {fleet.proc.pid}; give each launcher on a host its own --metrics-dir "
            "and --metrics-port"
        ], said
        assert files <= {p.name for p in metrics_dir.iterdir()}

        os.kill(fleet.proc.pid, signal.SIGKILL)  # no chance to pass anything on
        fleet.proc.wait(10)
        # Each child had the kernel promise it SIGTERM (Celery's warm shutdown) on that death.
        wait_for(lambda: not any(_running(pid) for pid in pids), timeout=60)
        # The dead launcher's claim went with it: a new one takes the directory over.
        fleet.start(gpu_processes=1)


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, and not a zombie nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def _full_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """A tiny tmpfs, filled to the last byte; always unmounted."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        fd = os.open(path / "filler.bin", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):  # ENOSPC: full
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        assert os.statvfs(path).f_bavail == 0
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _disabled(port: int) -> float | None:
    """The exporter's facefusion_metrics_disabled_processes_total (None when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "facefusion_metrics_disabled_processes_total":
                return float(sample.value)
    return None


def test_a_full_metrics_filesystem_costs_metrics_not_jobs(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    """Its worker processes stop writing metrics, the jobs go on, and its own exporter says
    how many stopped; another launcher on the same host, whose processes all write theirs,
    says none (every exporter of a host served the host's count, and the alert named a
    launcher that had nothing wrong: a metrics probe's finding)."""
    with (
        _full_tmpfs(tmp_path / "mp") as metrics_dir,
        launcher(
            root, models_dir, SHARED_REDIS, metrics_dir=metrics_dir, port=free_port(),
            stall_seconds="30",
        ) as fleet,
    ):  # fmt: skip
        healthy = Launcher(
            root, models_dir, SHARED_REDIS, metrics_dir=tmp_path / "healthy", port=free_port()
        )
        try:
            fleet.start(gpu_processes=1)
            healthy.start(gpu_processes=1, wait=False)
            producer = fleet.producer()
            job_id = producer.submit(
                root / "source.png", root / "tiny.mp4", root / "out" / "full.mp4"
            )
            status = producer.wait(job_id, timeout=120)
            assert status.state == SUCCEEDED, (status.reason, status.error)
            assert "SIGBUS" not in fleet.log() and "Signal 7" not in fleet.log()
            client = redis.Redis.from_url(SHARED_REDIS, decode_responses=True)
            assert sum(int(v) for v in client.hgetall(METRICS_DISABLED_KEY).values()) >= 2
            assert (wait_for(lambda: _disabled(fleet.port), timeout=30) or 0) >= 2
            # Counted from the launcher's start, which the counter's `_created` says: the
            # alert's branch for a launcher born with its processes disabled reads it.
            created = _exported(fleet.port, "facefusion_metrics_disabled_processes_created", {})
            assert created is not None and time.time() - 300 < created <= time.time()
            healthy.wait_ready(gpu=2)  # both launchers' gpu processes
            assert wait_for(lambda: _disabled(healthy.port) is not None, timeout=30)
            assert _disabled(healthy.port) == 0
        finally:
            healthy.stop()
        assert "metrics disabled" in fleet.log()
        assert _scrape(fleet.port) == 200


#: libfaketime (Debian's `faketime` package): shifts a process's wall clock, nothing else.
FAKETIME_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def test_a_gpu_host_whose_clock_runs_ten_minutes_behind_keeps_its_chunks(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    # Heartbeats are stamped and judged on one clock, Redis's: a host whose own clock ran 10
    # minutes behind the sweeping host's had every heartbeat look 600 s old, so each of its
    # running chunks was taken back as stalled at the next sweep, and again on every delivery.
    assert FAKETIME_LIBRARY.exists(), "libfaketime is required (apt-get install faketime)"
    # (Its monotonic clock moves with it: left alone, libfaketime turns Python's sleeps into
    # EINVAL.)
    behind = {"LD_PRELOAD": str(FAKETIME_LIBRARY), "FAKETIME": "-10m"}
    with cluster(
        root, models_dir, SHARED_REDIS, stall_seconds="4", sweep_seconds="1", heartbeat_seconds="0.5",
        # kombu's restore judges held messages on the restoring host's clock, so a host 600 s
        # behind needs visibility_timeout > chunk_time_limit + 600 (the README says so).
        chunk_time_limit="60", visibility_timeout="1200",
    ) as fleet:  # fmt: skip
        fleet.start_worker("sweeper", queues="light")
        fleet.start_worker("behind", queues="gpu", env=behind)
        producer = fleet.producer()
        output = root / "out" / "behind.mp4"
        job_id = producer.submit(root / "source.png", root / "long.mp4", output, chunk_seconds=8)
        status = producer.wait(job_id, timeout=180)
        log = fleet.log("sweeper")
    assert status.state == SUCCEEDED, (status.reason, status.error)
    (chunk,) = status.chunks
    assert chunk["deliveries"] == 1 and not chunk["error"], chunk
    assert "made no progress" not in log
    assert video_times(output) == video_times(root / "long.mp4")
