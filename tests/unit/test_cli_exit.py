"""The CLI's exit codes come from the reason, for `swap` and `wait` alike; settings precedence."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import pytest

from facefusion_tasks import cli, policy
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.reasons import Reason
from facefusion_tasks.store import CANCELLED, FAILED, PLANNING, SUCCEEDED, JobStore


@pytest.fixture()
def broker(redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    for name in ("FACEFUSION_MODELS_DIR", "FACEFUSION_CHUNK_SECONDS", "FACEFUSION_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FACEFUSION_BROKER_URL", redis_url)
    monkeypatch.setenv("FACEFUSION_STORAGE_ROOTS", str(tmp_path))
    return redis_url


def _ended(store: JobStore, state: str, reason: Reason | None) -> str:
    job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
    store.set_state(job_id, state, reason=reason, error="what went wrong")
    return job_id


@pytest.mark.parametrize("reason", list(Reason))
def test_wait_exits_as_the_reason_says(
    reason: Reason, broker: str, store: JobStore, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = _ended(store, FAILED, reason)
    assert cli.main(["wait", job_id, "--no-progress"]) == policy.exit_code(reason)
    assert "what went wrong" in capsys.readouterr().err


def test_wait_exit_codes_for_success_and_cancel(
    broker: str, store: JobStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["wait", _ended(store, SUCCEEDED, None), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    cancelled = _ended(store, CANCELLED, Reason.CANCELLED)
    assert cli.main(["wait", cancelled, "--no-progress"]) == 1
    # Exit 1 with nothing on stderr left a script's log silent about why.
    assert capsys.readouterr().err == f"facefusion-tasks: error: job {cancelled} was cancelled\n"


def test_a_wait_that_runs_out_exits_124_and_takes_only_a_positive_timeout(
    broker: str, store: JobStore, capsys: pytest.CaptureFixture[str]
) -> None:
    # Exit 1, as for a failed job, left a script unable to tell "still running" from "failed".
    running = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
    assert cli.main(["wait", running, "--no-progress", "--timeout", "0.2"]) == 124
    assert "still QUEUED after 0.2 s" in capsys.readouterr().err
    # nan waited for ever; -1 gave up at once.
    for bad in ("nan", "-1", "0", "inf", "soon"):
        with pytest.raises(SystemExit) as caught:
            cli.main(["wait", running, "--timeout", bad])
        assert caught.value.code == 2
        assert "--timeout" in capsys.readouterr().err


def test_cancel_exits_0_only_when_the_job_is_cancelled(
    broker: str, store: JobStore, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said "already succeeded" or "too late to cancel" and exited 0: `cancel && ...` scripts
    # went on as if it had been cancelled.
    queued = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
    assert cli.main(["cancel", queued]) == 0
    assert cli.main(["cancel", queued]) == 0  # already cancelled: what was asked for
    assert cli.main(["cancel", _ended(store, SUCCEEDED, None)]) == 1
    assert cli.main(["cancel", _ended(store, FAILED, Reason.MEDIA)]) == 1
    said = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[1] for line in said] == [
        "cancelled", "already cancelled", "already succeeded", "already failed",
    ]  # fmt: skip


def test_a_jobs_stored_error_and_names_are_shown_escaped(
    broker: str, store: JobStore, capsys: pytest.CaptureFixture[str]
) -> None:
    # A failure's text holds the names it is about; a name may hold escape sequences that
    # would rewrite the terminal of whoever runs `status`, `wait` or `list`.
    job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o\x1b]0;x\x07.mp4"})
    store.set_state(job_id, FAILED, reason=Reason.MEDIA, error="t\x1b[2J.mp4: broke\nthere")
    assert cli.main(["wait", job_id, "--no-progress"]) == policy.exit_code(Reason.MEDIA)
    assert cli.main(["list"]) == 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err
    assert "t\\x1b[2J.mp4: broke\\nthere" in captured.err
    assert "o\\x1b]0;x\\x07.mp4" in captured.out


@pytest.mark.parametrize("command", ["wait", "status", "cancel", "retry"])
def test_an_unknown_job_is_one_line_and_exit_2_with_no_progress_bar(
    command: str, broker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([command, "0123456789abcdef"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "facefusion-tasks: error: no such job: 0123456789abcdef\n"
    assert captured.out == ""


@pytest.mark.parametrize("reason", list(Reason))
def test_swap_exits_as_wait_does_for_the_same_reason(
    reason: Reason, broker: str, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same failure, raised in the CLI's process (local swap) or stored with a job (wait),
    gives the same exit code. The raise is injected at the command table: what is under test
    is the mapping, not how an input fails (the integration tests do that with real files)."""

    def failing(_: object) -> int:
        raise InputError("bad", reason=reason) if reason.user_input else _internal(reason)

    monkeypatch.setitem(cli._COMMANDS, "swap", failing)
    swapped = cli.main(["swap", "s.png", "t.mp4", "-o", "o.mp4"])
    waited = cli.main(["wait", _ended(store, FAILED, reason), "--no-progress"])
    assert swapped == waited == policy.exit_code(reason)


def _internal(reason: Reason) -> Exception:
    from facefusion_tasks.errors import MediaError

    return MediaError("broke", reason=reason)


@pytest.mark.parametrize("value", ["nan", "inf", "-3", "0"])
def test_submit_refuses_bad_chunk_seconds_with_exit_2(
    value: str, broker: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = cli.main(["submit", str(tmp_path / "s.png"), str(tmp_path / "t.mp4"), "-o",
                     str(tmp_path / "o.mp4"), "--chunk-seconds", value])  # fmt: skip
    assert code == 2
    assert "chunk seconds" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--chunk-seconds", "nan"], ["--priority", "10"]])
def test_local_swap_refuses_what_submit_refuses(
    flags: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # No broker: the flags mean nothing here, but the same command line exited 0 here and 2
    # with a broker set.
    monkeypatch.delenv("FACEFUSION_BROKER_URL", raising=False)
    code = cli.main(["swap", str(tmp_path / "s.png"), str(tmp_path / "t.mp4"), "-o",
                     str(tmp_path / "o.mp4"), *flags])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("chunk seconds" in err or "priority" in err)


def test_settings_precedence_flag_over_environment_over_default() -> None:
    assert Settings.from_env({}).stall_seconds == 300.0
    env = {"FACEFUSION_STALL_SECONDS": "42", "FACEFUSION_CHUNK_SECONDS": "2.5"}
    assert Settings.from_env(env).stall_seconds == 42.0
    assert Settings.from_env(env).chunk_seconds == 2.5
    assert Settings.from_env(env, chunk_seconds=7.0).chunk_seconds == 7.0
    assert Settings.from_env(env, chunk_seconds=None).chunk_seconds == 2.5


@pytest.mark.parametrize(
    "env",
    [
        {"FACEFUSION_CHUNK_SECONDS": "nan"},
        {"FACEFUSION_CHUNK_SECONDS": "inf"},
        {"FACEFUSION_STALL_SECONDS": "0"},
        {"FACEFUSION_BATCH_SIZE": "eight"},
        {"FACEFUSION_BATCH_SIZE": "99999999999"},  # a MemoryError, exit 1, a temp left
        {"FACEFUSION_DETECTOR_BATCH": "257"},
        {"FACEFUSION_DETECTOR_SIZE": "16384"},  # 768 GiB asked for at once: exit 1
        {"FACEFUSION_CHUNK_TIME_LIMIT": "4000"},
        {"FACEFUSION_VIDEO_PRESET": "bogus"},
        {"FACEFUSION_VIDEO_QUALITY": "-5"},
        {"FACEFUSION_VIDEO_QUALITY": "64"},
        {"FACEFUSION_REFERENCE_DISTANCE": "nan"},
        {"FACEFUSION_REFERENCE_DISTANCE": "0"},
        # Accepted until a probe of every setting (each broke later, or silently):
        {"FACEFUSION_RECORD_TTL_SECONDS": str(10**30)},  # EXPIRE failed mid-submit: half a job
        {"FACEFUSION_HEARTBEAT_SECONDS": "nan"},  # never beat; its wait returned at once
        {"FACEFUSION_SWEEP_SECONDS": str(10**30)},  # the sweep thread died of an OverflowError
        {"FACEFUSION_GPU_PROCESSES": str(10**30)},  # the launcher's MemoryError
        {"FACEFUSION_INFERENCE_THREADS": "-1"},
        {"FACEFUSION_CHUNK_TIME_LIMIT": "0"},  # the stitch's ffmpeg timed out at once
        {"FACEFUSION_MIN_CHUNK_SECONDS": "inf"},
        {"FACEFUSION_DETECTOR_SCORE": "nan"},
        {"FACEFUSION_ALLOW_STANDIN_MODELS": "2"},  # read as off: "sha256 mismatch", exit 1
        {"FACEFUSION_IO_BINDING": "enabled"},
        {"FACEFUSION_BROKER_URL": "redis://127.0.0.1:99999/13"},  # an internal ValueError
        {"FACEFUSION_BROKER_URL": "redis://127.0.0.1:abc/13"},
        {"FACEFUSION_BROKER_URL": "redis://127.0.0.1:6379/abc"},  # redis-py took database 0
        # redis-py took database 3 for the job store, Celery's transport a TypeError (exit 1)
        {"FACEFUSION_BROKER_URL": "redis://127.0.0.1:6379/14?db=3"},
        # Options redis-py or kombu refused only on connecting (an internal error, exit 1):
        # the first passed the job store, failed the queues, and left a FAILED job behind.
        {"FACEFUSION_BROKER_URL": "redis://127.0.0.1:6379/14?socket_timeout=5"},
        {"FACEFUSION_BROKER_URL": "redis://127.0.0.1:6379/14?socket_timeout=abc"},
        {"FACEFUSION_BROKER_URL": "redis://127.0.0.1:6379/14?foo=bar"},
        {"FACEFUSION_BROKER_URL": "redis://127.0.0.1:6379/14?ssl_cert_reqs=required"},
        {"FACEFUSION_BROKER_URL": "rediss://127.0.0.1:6379/14?ssl_cert_reqs=bogus"},
        # redis-py took the first, kombu the last: certificates checked by one reader only.
        {"FACEFUSION_BROKER_URL": "rediss://h:6379/14?ssl_cert_reqs=none&ssl_cert_reqs=required"},
    ],
)
def test_settings_refuse_nonsense_as_the_users_input(env: dict[str, str]) -> None:
    with pytest.raises(InputError) as caught:
        Settings.from_env(env)
    assert policy.exit_code(caught.value.reason) == 2
    assert not math.isnan(Settings.from_env({}).chunk_seconds)


def test_booleans_read_as_written_and_a_password_never_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for word, value in (("Yes", True), ("on", True), ("0", False), ("OFF", False)):
        assert Settings.from_env({"FACEFUSION_IO_BINDING": word}).io_binding is value
    with pytest.raises(InputError) as caught:
        Settings.from_env({"FACEFUSION_BROKER_URL": "redis://:s3cret@127.0.0.1:99999/0"})
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "flags",
    [
        ["--light-concurrency", "-1"],
        ["--max-tasks-per-child", "-1"],
        ["--loglevel", "bogus"],
        ["--metrics-port", "99999"],
        ["--metrics-port", "-5"],
        ["--metrics-dir", ""],  # the current directory, whose *.db files the launcher wiped
    ],
)
def test_bad_worker_flags_are_a_usage_error_before_anything_starts(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Each started a child that refused it, which the launcher restarted for ever.
    with pytest.raises(SystemExit) as caught:
        cli.main(["worker", *flags])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--help" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a.png", "--source", "b.png", "t.mp4"], "either with --source or as the first"),
        (["--source", "b.png", "a.png", "t.mp4"], "either with --source or as the first"),
        (["t.mp4"], "no source image"),
        (["a.png", "b.png", "t.mp4"], "repeat --source"),
    ],
)
@pytest.mark.parametrize("command", ["swap", "submit"])
def test_both_source_forms_or_neither_is_a_usage_error(
    command: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main([command, *argv, "-o", "o.mp4"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    # One line, as every refusal is; the usage with both source forms is one --help away.
    assert err.count("\n") == 1 and message in err
    assert err.endswith(f"(see facefusion-tasks {command} --help)\n")


def test_the_positional_and_the_repeated_source_forms_name_the_same_paths() -> None:
    # Kept as typed: objects.location checks them as the user wrote them.
    parser = cli.build_parser()
    for argv, sources in (
        (["swap", "a.png", "t.mp4", "-o", "o.mp4"], ["a.png"]),
        (["swap", "--source", "a.png", "t.mp4", "--source", "b.png", "-o", "o.mp4"],
         ["a.png", "b.png"]),
    ):  # fmt: skip
        args = parser.parse_args(argv)
        cli.split_sources(args)
        assert (args.sources, args.target) == (sources, "t.mp4")


def test_every_encoders_speed_table_maps_every_preset_name() -> None:
    from facefusion_tasks.video import argv, codecs

    for table in (argv.NVENC_PRESETS, argv.VP9_SPEEDS, argv.SVTAV1_PRESETS, argv.AOM_SPEEDS):
        assert set(table) == set(codecs.PRESET_NAMES)


def test_a_quality_the_encoder_refuses_is_config_before_anything_runs() -> None:
    from facefusion_tasks.video import codecs

    codecs.check_quality("libvpx-vp9", 63)
    with pytest.raises(InputError, match="out of range for libx264") as caught:
        codecs.check_quality("libx264", 52)
    assert caught.value.reason is Reason.CONFIG


def test_a_closed_stdout_ends_a_command_quietly_as_a_shell_tool_does(tmp_path: Path) -> None:
    import subprocess
    import sys

    # `facefusion-tasks doctor --json | head -c 1`: the reader is gone before the output.
    code = (
        "import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); "
        "from facefusion_tasks import cli; sys.exit(cli.main(['doctor', '--json']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "FACEFUSION_MODELS_DIR": str(tmp_path)},
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (141, "")


def test_a_source_image_gone_since_submit_is_the_users_missing_file(tmp_path: Path) -> None:
    from facefusion_tasks.model_cache import _modified

    with pytest.raises(InputError, match="gone.png: no such file") as caught:
        _modified(tmp_path / "gone.png")
    assert caught.value.reason is Reason.MISSING_FILE


def test_a_target_that_became_a_pipe_is_refused_before_ffmpeg_would_block_on_it(
    tmp_path: Path,
) -> None:
    from facefusion_tasks.filekind import require_file

    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="clip.mp4: is a pipe") as caught:
        require_file(fifo)
    assert caught.value.reason is Reason.NOT_PLAIN_FILE
    with pytest.raises(InputError, match="no such file"):
        require_file(tmp_path / "gone.mp4")
    require_file("s3://bucket/key.mp4")  # objects are not local files: nothing to check


def test_damage_in_the_sources_audio_is_the_sources_fault_wherever_ffmpeg_meets_it() -> None:
    from facefusion_tasks.video.damage import extras_damage

    errors = ["[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55] [error] stream 1, offset 0x8acbb: partial file"]
    damage = extras_damage(errors, Path("/data/in.mp4"))
    assert damage is not None and damage.reason is Reason.CORRUPT_VIDEO
    assert str(damage) == (
        "in.mp4: truncated or corrupt audio or subtitles (stream 1, offset 0x8acbb: partial file)"
    )
    assert extras_damage(["No space left on device"], Path("/data/in.mp4")) is None
    assert extras_damage(errors, None) is None  # nothing muxed in from a source


def test_retry_says_what_it_did_when_no_chunk_runs_again(
    broker: str, store: JobStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from fractions import Fraction

    from facefusion_tasks.jobs import Chunk
    from facefusion_tasks.workspace import segment

    done = _ended(store, SUCCEEDED, None)
    assert cli.main(["retry", done]) == 0
    assert capsys.readouterr().out == f"{done}: already succeeded, nothing to retry\n"
    unplanned = _ended(store, FAILED, Reason.MEDIA)
    assert cli.main(["retry", unplanned]) == 0
    assert capsys.readouterr().out == f"{unplanned}: planning again\n"
    stitched = store.create({"output": "s.mp4"})
    store.set_state(stitched, PLANNING)  # as the planner does
    store.set_plan(stitched, [Chunk(0, 0, 10, 10, Fraction(1, 2))], 10, {})
    where = segment(Settings.from_env(), stitched, 0, output="s.mp4")  # its segment is there
    assert isinstance(where, Path)
    where.parent.mkdir(parents=True)
    where.write_bytes(b"a verified segment")
    store.chunk_done(stitched, 0, 10)
    store.set_state(stitched, FAILED, reason=Reason.MEDIA)
    assert cli.main(["retry", stitched, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "job": stitched, "action": "stitch", "chunks": []
    }  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [[], ["swap"], ["wait"], ["swap", "a.png", "t.mp4", "-o", "o.mp4", "--bogus"],
     ["swap", "a.png", "t.mp4", "-o", "o.mp4", "--cpu-threads", "many"]],
)  # fmt: skip
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err and "--help)" in err


#: Each path `swap` and `submit` take, named by role, with its extension.
_ROLES = {"source": "png", "target": "mp4", "reference": "png", "output": "mp4"}


def _swap_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, local: bool) -> dict[str, str]:
    """A path for each role of a swap under `tmp_path`; with no broker when `local`."""
    if local:
        monkeypatch.delenv("FACEFUSION_BROKER_URL", raising=False)
    return {name: str(tmp_path / f"{name}.{ext}") for name, ext in _ROLES.items()}


def _swap_argv(paths: dict[str, str]) -> list[str]:
    return ["swap", paths["source"], paths["target"], "-o", paths["output"],
            "--reference-face", paths["reference"], "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("role", list(_ROLES))
@pytest.mark.parametrize("local", [True, False], ids=["local", "submitted"])
def test_a_name_that_is_not_utf8_is_one_line_and_exit_2_for_every_path(
    role: str,
    local: bool,
    broker: str,
    store: JobStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It segfaulted in OpenCV (images) or was an internal UnicodeEncodeError (videos, outputs).
    paths = _swap_paths(tmp_path, monkeypatch, local=local)
    paths[role] = str(tmp_path / os.fsdecode(f"{role}\xff.{_ROLES[role]}".encode("latin-1")))
    assert cli.main(_swap_argv(paths)) == 2
    shown = f"{tmp_path}/{role}\\xff.{_ROLES[role]}"
    assert capsys.readouterr().err == (
        f"facefusion-tasks: error: {shown}: name is not valid UTF-8; rename it\n"
    )
    assert store.r.dbsize() == 0


@pytest.mark.parametrize("local", [True, False], ids=["local", "submitted"])
def test_an_output_ending_in_a_slash_names_a_directory_and_nothing_is_written(
    local: bool,
    broker: str,
    store: JobStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths = _swap_paths(tmp_path, monkeypatch, local=local)
    paths["output"] = f"{tmp_path}/new.mp4/"
    assert cli.main(_swap_argv(paths)) == 2
    assert capsys.readouterr().err == (
        f"facefusion-tasks: error: {tmp_path}/new.mp4/: names a directory, not a file\n"
    )
    assert list(tmp_path.iterdir()) == [] and store.r.dbsize() == 0


def test_a_local_swap_writes_nothing_into_the_fleets_work_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEFUSION_STORAGE_ROOTS", str(tmp_path))
    monkeypatch.delenv("FACEFUSION_WORK_DIR", raising=False)
    paths = _swap_paths(tmp_path, monkeypatch, local=True)
    paths["output"] = str(tmp_path / ".facefusion-work" / "x.mp4")
    assert cli.main(_swap_argv(paths)) == 2
    assert capsys.readouterr().err == (
        f"facefusion-tasks: error: {paths['output']}: output is inside the work directory "
        f"{tmp_path}/.facefusion-work, whose files go when jobs end\n"
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_a_c_extension_wraps_on_its_way_out_still_ends_as_that_signal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], signum: int
) -> None:
    # A signal landing while numpy's or OpenCV's C initialisation runs (the first swap
    # imports them) comes back as an ImportError: the command ended "internal error", exit 1.
    def importing(_args: object) -> int:
        try:
            os.kill(os.getpid(), signum)  # the handler raises here
            time.sleep(5)
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc  # as numpy's _core does
        return 0

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    monkeypatch.setitem(cli._COMMANDS, "doctor", importing)
    signal.signal(signum, signal.SIG_DFL)  # not ignored, as a background job's SIGINT is
    try:
        assert cli.main(["doctor"]) == 128 + signum
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    assert capsys.readouterr().err == (
        f"facefusion-tasks: interrupted ({signal.Signals(signum).name})\n"
    )
