"""The CLI against brokers that are away or refuse us, and ids that are not job ids (real Redis)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facefusion_tasks.faces.synthetic import write_source
from facefusion_tasks.jobs import Chunk
from facefusion_tasks.policy import EXIT_BAD_INPUT, EXIT_UNAVAILABLE
from facefusion_tasks.store import JobStore, connect
from facefusion_tasks.video.samples import make_sample_video
from tests.cluster import PROTECTED_CONFIGS, private_redis, unable_to_save

PASSWORD = "s3cret pass"


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private redis-server that requires a password."""
    with private_redis(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD) as server:
        yield server.port


def _cli(broker: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
    environ |= {"FACEFUSION_BROKER_URL": broker} | (env or {})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr.strip(), time.monotonic() - started


JOB = "0123456789abcdef"


def test_a_broker_url_without_the_password_fails_in_seconds(protected: int) -> None:
    code, err, seconds = _cli(f"redis://127.0.0.1:{protected}/0", "status", JOB)
    assert code == EXIT_UNAVAILABLE
    assert err == (
        f"facefusion-tasks: error: Redis at 127.0.0.1:{protected} requires a password "
        "(put it in FACEFUSION_BROKER_PASSWORD_FILE)"
    )
    assert seconds < 15


def test_a_wrong_password_fails_in_seconds_without_showing_it(protected: int) -> None:
    code, err, seconds = _cli(f"redis://:wrong@127.0.0.1:{protected}/0", "wait", JOB)
    assert code == EXIT_UNAVAILABLE
    assert err == f"facefusion-tasks: error: Redis at 127.0.0.1:{protected} refused the password"
    assert "wrong" not in err
    assert seconds < 15


def test_the_password_file_is_used(protected: int, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    code, err, _ = _cli(
        f"redis://127.0.0.1:{protected}/0",
        "status",
        JOB,
        env={"FACEFUSION_BROKER_PASSWORD_FILE": str(secret)},
    )
    assert (code, err) == (EXIT_BAD_INPUT, f"facefusion-tasks: error: no such job: {JOB}")


def test_a_closed_port_fails_in_seconds() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        code, err, seconds = _cli(f"redis://127.0.0.1:{port}/0", "cancel", JOB)
    assert code == EXIT_UNAVAILABLE
    assert err == f"facefusion-tasks: error: cannot connect to Redis at 127.0.0.1:{port}"
    assert seconds < 20


@pytest.mark.parametrize("command", ["status", "wait", "cancel", "retry"])
@pytest.mark.parametrize("suffix", [":chunk:0", ":done", ":chunk:2"])
def test_keys_beside_a_job_are_not_jobs(protected: int, command: str, suffix: str) -> None:
    broker = f"redis://:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{protected}/0"
    store = JobStore(connect(broker))
    job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
    try:
        code, err, _ = _cli(broker, command, job_id + suffix)
        assert code == EXIT_BAD_INPUT
        assert err == f"facefusion-tasks: error: no such job: {job_id + suffix!r}"
        assert store.state(job_id) == "QUEUED"  # a cancel of `<id>:chunk:2` touched nothing
    finally:
        store.r.flushdb()


def test_wait_timeout_says_so(protected: int) -> None:
    broker = f"redis://:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{protected}/0"
    store = JobStore(connect(broker))
    job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
    try:
        code, err, _ = _cli(broker, "wait", job_id, "--timeout", "0.5", "--no-progress")
        assert code == 124  # not 1, as a failed job: the job goes on
        assert err == (
            f"facefusion-tasks: error: timed out waiting for job {job_id}: still QUEUED after 0.5 s"
        )
    finally:
        store.r.flushdb()


def _waiting(broker: str, job_id: str, *flags: str) -> subprocess.Popen[str]:
    """`wait JOB` running in the background, its output captured."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
    return subprocess.Popen(
        [sys.executable, "-m", "facefusion_tasks", "wait", job_id, *flags, "--no-progress"],
        env=environ | {"FACEFUSION_BROKER_URL": broker},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_wait_rides_out_a_broker_restart_and_reports_the_job_as_it_ends(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:
        store = JobStore(connect(server.url))
        job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
        waiting = _waiting(server.url, job_id)
        try:
            time.sleep(2)  # it has seen the job
            server.stop()  # a restart (AOF on: the job survives it), as an operator's would
            time.sleep(3)
            server.start()
            store = JobStore(connect(server.url))
            assert store.set_state(job_id, "RUNNING") and store.set_state(job_id, "STITCHING")
            assert store.set_state(job_id, "COMMITTING") and store.set_state(job_id, "SUCCEEDED")
            out, err = waiting.communicate(timeout=30)
        finally:
            waiting.kill()
        assert waiting.returncode == 0, err
        assert f"{job_id}: SUCCEEDED" in out


def test_cancel_and_status_say_what_the_job_is(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:
        store = JobStore(connect(server.url))

        def stdout(*args: str) -> str:
            done = subprocess.run(
                [sys.executable, "-m", "facefusion_tasks", *args],
                env=os.environ | {"FACEFUSION_BROKER_URL": server.url,
                                  "FACEFUSION_STORAGE_ROOTS": str(tmp_path)},
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            return done.stdout.strip()

        queued = store.create({"source": "s.png", "target": "t.mp4", "output": "a.mp4"})
        assert stdout("cancel", queued) == f"{queued}: cancelled"
        # No empty text after the reason.
        assert stdout("status", queued).splitlines()[0].endswith("reason cancelled")
        assert stdout("cancel", queued) == f"{queued}: already cancelled"
        # Putting its verified output in place: not over, but past cancelling.
        committing = store.create({"source": "s.png", "target": "t.mp4", "output": "b.mp4"})
        for state in ("RUNNING", "STITCHING", "COMMITTING"):
            assert store.set_state(committing, state)
        late = stdout("cancel", committing)
        assert late == f"{committing}: committing its output, too late to cancel"


def test_the_worker_launcher_reads_its_metrics_port_from_the_environment_too() -> None:
    code, err, _ = _cli("redis://127.0.0.1:1/0", "worker", env={"FACEFUSION_METRICS_PORT": "nine"})
    assert code == EXIT_BAD_INPUT
    assert (
        err == "facefusion-tasks: error: FACEFUSION_METRICS_PORT must be a port number, not 'nine'"
    )


def test_a_full_broker_is_one_line_and_exit_69(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:
        store = JobStore(connect(server.url))
        job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "a.mp4"})
        # maxmemory reached, nothing to evict: Redis refuses every write.
        store.r.config_set("maxmemory-policy", "noeviction")
        store.r.config_set("maxmemory", "1")
        try:
            code, err, _ = _cli(
                server.url, "cancel", job_id, env={"FACEFUSION_STORAGE_ROOTS": str(tmp_path)}
            )
        finally:
            store.r.config_set("maxmemory", "0")
        assert code == EXIT_UNAVAILABLE
        assert err == (
            f"facefusion-tasks: error: Redis at 127.0.0.1:{server.port} is full (maxmemory "
            "reached) and refuses writes"
        )
        assert store.state(job_id) == "QUEUED"


def test_status_reads_a_full_broker(tmp_path: Path) -> None:
    """Only reads: a Redis past maxmemory refuses a MULTI even of reads, and `status` exited
    69 "refuses writes" (a fault probe's finding)."""
    with private_redis(tmp_path) as server:
        store = JobStore(connect(server.url))
        job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
        assert store.set_state(job_id, "PLANNING")  # planned, as the planner does
        store.set_plan(job_id, [Chunk(0, 0, 10, 10, None), Chunk(1, 10, 20, 10, None)], 20, {})
        store.r.config_set("maxmemory-policy", "noeviction")
        store.r.config_set("maxmemory", "1")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "facefusion_tasks", "status", job_id, "--json"],
                capture_output=True, text=True, timeout=60, check=False,
                env=environ | {"FACEFUSION_BROKER_URL": server.url},
            )  # fmt: skip
        finally:
            store.r.config_set("maxmemory", "0")
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert shown["state"] == "PLANNING" and len(shown["chunks"]) == 2


def test_wait_rides_out_a_broker_that_refuses_for_a_while(tmp_path: Path) -> None:
    # Full (maxmemory, nothing to evict): Redis 7 refuses even the reads in a MULTI, so `wait`
    # saw an error on its first poll and exited 69 while the job went on and succeeded.
    with private_redis(tmp_path) as server:
        store = JobStore(connect(server.url))
        job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
        assert store.set_state(job_id, "PLANNING")  # planned, as the planner does
        store.set_plan(job_id, [Chunk(0, 0, 10, 10, None), Chunk(1, 10, 20, 10, None)], 20, {})
        waiting = _waiting(server.url, job_id)
        try:
            time.sleep(2)  # it has seen the job
            store.r.config_set("maxmemory-policy", "noeviction")
            store.r.config_set("maxmemory", "1")
            time.sleep(3)
            assert waiting.poll() is None, waiting.communicate()
            store.r.config_set("maxmemory", "0")
            for state in ("STITCHING", "COMMITTING", "SUCCEEDED"):
                assert store.set_state(job_id, state)
            out, err = waiting.communicate(timeout=30)
        finally:
            waiting.kill()
        assert waiting.returncode == 0, err
        assert f"{job_id}: SUCCEEDED" in out


def test_a_broker_that_cannot_save_says_so(tmp_path: Path) -> None:
    # Its snapshot fails (here: into /proc) with stop-writes-on-bgsave-error on: Redis refuses
    # writes and PING with MISCONF, which read as "cannot connect".
    with private_redis(tmp_path, extra=PROTECTED_CONFIGS) as server:
        store = JobStore(connect(server.url))
        job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
        with unable_to_save(store.r, tmp_path):
            code, err, _ = _cli(server.url, "status", job_id)
    assert code == EXIT_UNAVAILABLE
    assert err == (
        f"facefusion-tasks: error: Redis at 127.0.0.1:{server.port} cannot save to its disk "
        "(MISCONF) and refuses writes; see its log"
    )


def test_wait_keeps_its_timeout_while_the_broker_is_away(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:
        store = JobStore(connect(server.url))
        job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
        waiting = _waiting(server.url, job_id, "--timeout", "4")
        try:
            time.sleep(2)
            server.stop()  # and it never comes back within the timeout
            _, err = waiting.communicate(timeout=30)
        finally:
            waiting.kill()
    assert waiting.returncode == 124, err
    assert err.strip() == (
        f"facefusion-tasks: error: timed out waiting for job {job_id} after 4 s (the broker is "
        "unreachable)"
    )


def test_an_interrupted_swap_says_its_job_goes_on_and_how_to_stop_it(tmp_path: Path) -> None:
    # `swap` with a broker submits, then waits: a SIGTERM ended the waiting with
    # "interrupted", and the job, untouched, later wrote its output with no word of it.
    source = write_source(tmp_path)
    target = make_sample_video(tmp_path / "in.mp4", seconds=1, width=160, height=120, faces=1)
    with private_redis(tmp_path) as server:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
        environ |= {"FACEFUSION_BROKER_URL": server.url, "FACEFUSION_STORAGE_ROOTS": str(tmp_path)}
        swap = subprocess.Popen(
            [sys.executable, "-m", "facefusion_tasks", "swap", str(source), str(target),
             "-o", str(tmp_path / "out.mp4"), "--no-progress"],
            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert swap.stderr is not None
            submitted = swap.stderr.readline()  # no worker runs: it waits from here on
            assert submitted.startswith("submitted ")
            job_id = submitted.split()[1]
            swap.send_signal(signal.SIGTERM)
            _, err = swap.communicate(timeout=30)
        finally:
            swap.kill()
        assert swap.returncode == 128 + signal.SIGTERM
        assert err.splitlines() == [
            f"facefusion-tasks: job {job_id} goes on (`facefusion-tasks cancel {job_id}` stops it)",
            "facefusion-tasks: interrupted (SIGTERM)",
        ]
        assert JobStore(connect(server.url)).get(job_id)["state"] == "QUEUED"
