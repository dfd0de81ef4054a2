"""The `facefusion-tasks` command: swap, demo, models, doctor, bench."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from facefusion_tasks import policy
from facefusion_tasks.cli_args import build_parser, location_arg, settings_from, split_sources
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import FaceFusionError, InputError, WaitTimeout
from facefusion_tasks.jobs import job_options

log = logging.getLogger("facefusion_tasks")

#: Exit codes (the policy's): done, internal error, the user's input.
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = policy.EXIT_OK, policy.EXIT_INTERNAL, policy.EXIT_BAD_INPUT


def _progress(args: argparse.Namespace) -> bool:
    """A progress bar only for a person watching: redrawn with carriage returns, it would sit
    in a log or a script's captured stderr before the one line an error gives."""
    return not args.no_progress and sys.stderr.isatty()


def _cmd_swap(args: argparse.Namespace) -> int:
    from facefusion_tasks.local import run_local

    settings = settings_from(args)
    # Checked in local mode too, where they mean nothing: the same command line must not exit
    # 0 here and 2 once a broker is set.
    _, chunk_seconds = job_options(args.priority, args.chunk_seconds)
    if settings.broker_url and not args.local:
        job_id = _submit(args, settings)
        try:  # from the moment the id is known: a signal may land right after it is shown
            print(f"submitted {job_id}", file=sys.stderr)
            return _follow(settings, job_id, as_json=args.json, progress=_progress(args))
        except KeyboardInterrupt:
            # Only the waiting stops: the job is the fleet's now. A closed terminal must not
            # cancel hours of work, and a person who wants it stopped is told how.
            print(
                f"facefusion-tasks: job {job_id} goes on (`facefusion-tasks cancel {job_id}` "
                "stops it)",
                file=sys.stderr,
            )
            raise
    result, loaded = run_local(
        args.sources,
        args.target,
        args.output,
        settings=settings,
        reference=args.reference_face,
        show_progress=_progress(args) and not args.json,
        chunk_seconds=chunk_seconds,
    )
    _report(result.as_dict() | loaded.facts(), as_json=args.json)
    return EXIT_OK


def _report(summary: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=True))
        return
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in summary["stage_seconds"].items())
    print(
        f"wrote {policy.one_line(str(summary['output']))}: {summary['frames']} frames, "
        f"{summary['faces_swapped']} faces swapped in {summary['frames_with_faces']} frames, "
        f"{summary['fps']:.1f} fps on {summary['provider']} ({stages})"
    )
    if summary.get("standin_models"):
        print("note: these are STAND-IN models (tests/demo only); faces were tinted, not swapped")


def _cmd_demo(args: argparse.Namespace) -> int:
    from facefusion_tasks.local import run_demo

    summary = run_demo(
        args.dir, settings=settings_from(args), seconds=args.seconds, quiet=args.json
    )
    _report(summary, as_json=args.json)
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    settings = Settings.from_env(models_dir=args.dir)
    directory = settings.models_dir
    if args.models_command == "make-test":
        from facefusion_tasks.models.standin import make_test_models

        models = make_test_models(directory, detector_gflops=args.detector_gflops)
        for path in models.values():
            print(path)
        print("note: stand-in models for tests and demos; they do not really swap faces")
        return EXIT_OK
    if args.models_command == "trust":
        from facefusion_tasks.models.trust import trust_files

        for one in trust_files(args.files, directory):
            print(one.line())
        return EXIT_OK
    from facefusion_tasks.models.digests import GOOD_STATUSES, trusted_digests, verify_models

    if args.models_command == "download":
        from facefusion_tasks.models.download import download_models

        for path in download_models(directory, progress=_progress(args), force=args.force):
            print(path)
        return EXIT_OK
    states = verify_models(directory)
    for name, state in states.items():
        print(f"{name}: {state}")
    trusted = trusted_digests(directory)
    if trusted:
        # Apart from the published files: these digests are the user's own decision.
        print("trusted on purpose (`models trust`), not the published files:")
        for name, digest in sorted(trusted.items()):
            print(f"  {name}: sha256 {digest}")
    bad = [s for s in states.values() if s not in GOOD_STATUSES]
    return EXIT_BAD_INPUT if bad else EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    from facefusion_tasks.doctor import diagnose, render

    report = diagnose(settings_from(args))
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else render(report))
    return EXIT_OK if report["ok"] else EXIT_INTERNAL


def _cmd_bench(args: argparse.Namespace) -> int:
    from facefusion_tasks.bench import run_bench, run_ceiling
    from facefusion_tasks.bench_report import render

    if args.repeats < 3:
        raise InputError("--repeats must be at least 3: one noisy round proves nothing")
    if args.ceiling:
        report = run_ceiling(settings_from(args), seconds=args.seconds or 4.0, repeats=args.repeats)
    else:
        report = run_bench(
            settings_from(args),
            seconds=args.seconds or 20.0,
            width=args.width,
            height=args.height,
            faces=args.faces,
            repeats=args.repeats,
            memory=args.memory,
            processes=args.processes,
            growth=args.growth,
        )
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else render(report))
    return EXIT_OK


def _producer(settings: Settings) -> Any:
    from facefusion_tasks.producer import Producer

    return Producer(settings)


def _submit(args: argparse.Namespace, settings: Settings) -> str:
    return str(
        _producer(settings).submit(
            args.sources,
            args.target,
            args.output,
            reference=args.reference_face,
            priority=args.priority,
            chunk_seconds=args.chunk_seconds,
        )
    )


def _cmd_submit(args: argparse.Namespace) -> int:
    print(_submit(args, settings_from(args)))
    return EXIT_OK


def _print_status(status: Any, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status.as_dict(), sort_keys=True))
        return
    print(
        f"{status.id}: {status.state}  frames {status.frames_done}/{status.frames_total}  "
        f"chunks {status.chunks_done}/{status.chunks_total}"
        + (f"  reason {status.reason}" if status.reason else "")
        + (f": {policy.one_line(status.error)}" if status.reason and status.error else "")
    )
    for chunk in status.chunks:
        worker = f" on {chunk['worker']}" if chunk["worker"] else ""
        if chunk.get("pid"):
            worker += f" pid {chunk['pid']}"
        error = f" ({policy.one_line(chunk['error'])})" if chunk["error"] else ""
        print(
            f"  chunk {chunk['index']}: {chunk['state']}{worker} "
            f"{chunk['frames_done']}/{chunk['frames']}{error}"
        )


def exit_for(status: Any) -> int:
    """A finished job's exit code: the same as `swap` gives for the same failure (the reason
    decides, through the one policy)."""
    if status.state == "SUCCEEDED":
        return EXIT_OK
    if status.state == "FAILED":
        return policy.exit_code(status.reason)
    return EXIT_INTERNAL


def _follow(
    settings: Settings, job_id: str, *, as_json: bool, progress: bool, timeout: float | None = None
) -> int:
    producer = _producer(settings)
    producer.status(job_id)  # an unknown job is one error line, with no progress bar before it
    bar = None
    if progress and not as_json:
        from tqdm import tqdm

        bar = tqdm(unit="frame", file=sys.stderr, leave=False)

    def update(status: Any) -> None:
        if bar is not None:
            bar.total = status.frames_total or None
            bar.n = status.frames_done
            bar.refresh()

    try:
        status = producer.wait(job_id, timeout=timeout, on_progress=update)
    finally:
        if bar is not None:
            bar.close()
    _print_status(status, as_json=as_json)
    if status.state == "FAILED" and not as_json:
        print(f"facefusion-tasks: error: {policy.one_line(status.error)}", file=sys.stderr)
    elif status.state == "CANCELLED" and not as_json:  # exit 1: say why, as for a failure
        print(f"facefusion-tasks: error: job {job_id} was cancelled", file=sys.stderr)
    return exit_for(status)


def _cmd_status(args: argparse.Namespace) -> int:
    _print_status(_producer(settings_from(args)).status(args.job), as_json=args.json)
    return EXIT_OK


def _cmd_wait(args: argparse.Namespace) -> int:
    return _follow(
        settings_from(args),
        args.job,
        as_json=args.json,
        progress=_progress(args),
        timeout=args.timeout,
    )


def _cmd_cancel(args: argparse.Namespace) -> int:
    from facefusion_tasks.store import COMMITTING

    producer = _producer(settings_from(args))
    if producer.cancel(args.job):
        print(f"{args.job}: cancelled")
        return EXIT_OK
    state = producer.status(args.job).state
    # A verified output is being put in place: the job is not over, but past cancelling.
    late = "committing its output, too late to cancel"
    print(f"{args.job}: {late if state == COMMITTING else f'already {state.lower()}'}")
    # Cancelled before is what was asked for; a job that ended otherwise, or is committing,
    # was not cancelled, and `cancel && ...` must not read it as if it were.
    return EXIT_OK if state == "CANCELLED" else EXIT_INTERNAL


#: What `retry` prints for each thing it can do.
_RETRIED = {
    "none": "already succeeded, nothing to retry",
    "plan": "planning again",
    "stitch": "every chunk is done, stitching again",
    "running": "every unfinished chunk is running, or waiting in line for a worker; nothing sent",
    "waiting": "its plan is waiting in line for a light worker; nothing sent",
}


def _cmd_retry(args: argparse.Namespace) -> int:
    retried = _producer(settings_from(args)).retry(args.job)
    said = _RETRIED.get(retried.action) or f"re-running chunks {retried.chunks}"
    print(
        json.dumps({"job": args.job, "action": retried.action, "chunks": retried.chunks})
        if args.json
        else f"{args.job}: {said}"
    )
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    for status in _producer(settings_from(args)).list(args.limit):
        if args.json:
            _print_status(status, as_json=True)
            continue
        progress = f"{status.frames_done}/{status.frames_total} frames"
        print(f"{status.id}  {status.state:<10} {progress}  {policy.one_line(status.output)}")
    return EXIT_OK


def _cmd_worker(args: argparse.Namespace) -> int:
    from facefusion_tasks.config import metrics_port_from_env
    from facefusion_tasks.worker import run_workers

    # The flag, else what the exporter itself reads.
    port = args.metrics_port if args.metrics_port is not None else metrics_port_from_env()
    return run_workers(
        settings_from(args),
        gpus=args.gpus,
        queues=[q for q in args.queues.split(",") if q],
        light_concurrency=args.light_concurrency,
        max_tasks_per_child=args.max_tasks_per_child,
        loglevel=args.loglevel,
        metrics_port=port,
        metrics_dir=args.metrics_dir,
        name=args.name,
    )


_COMMANDS = {
    "submit": _cmd_submit,
    "status": _cmd_status,
    "wait": _cmd_wait,
    "cancel": _cmd_cancel,
    "retry": _cmd_retry,
    "list": _cmd_list,
    "worker": _cmd_worker,
    "swap": _cmd_swap,
    "demo": _cmd_demo,
    "models": _cmd_models,
    "doctor": _cmd_doctor,
    "bench": _cmd_bench,
}


def _broker_error(exc: BaseException) -> FaceFusionError | None:
    """One line naming the server when Redis went away mid-command (a broker that is away at
    the start already raised BrokerUnavailable); None for any other error."""
    if "redis" not in sys.modules:  # only commands that talk to a broker have loaded it
        return None
    from facefusion_tasks import broker

    if not broker.lost(exc):
        return None
    return broker.explain(exc, os.environ.get("FACEFUSION_BROKER_URL", ""))


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as Ctrl-C's KeyboardInterrupt is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: The signals this run's handlers took: raised inside a C extension's initialisation (numpy's,
#: OpenCV's, imported on first use), Ctrl-C's exception comes back as an ImportError, which
#: must still end the command as the signal does, not as an internal error.
_RECEIVED: list[int] = []


def _end_like_ctrl_c() -> None:
    """SIGTERM (a `timeout`, a service manager) and SIGHUP (a closed terminal) end a command as
    Ctrl-C does: through the same unwinding, which stops ffmpeg and removes the half-written
    output. Their default, dying on the spot, left the encoder finishing a hidden partial file
    beside the destination."""

    def raise_terminated(signum: int, _frame: object) -> None:
        _RECEIVED.append(signum)
        raise Terminated(signum)

    def raise_interrupt(signum: int, _frame: object) -> None:
        _RECEIVED.append(signum)
        raise KeyboardInterrupt

    _RECEIVED.clear()
    handlers = {
        signal.SIGTERM: raise_terminated,
        signal.SIGHUP: raise_terminated,
        signal.SIGINT: raise_interrupt,
    }
    for signum, handler in handlers.items():
        # One the caller ignores stays ignored: `nohup`, and a shell's background job, whose
        # Ctrl-C is the foreground's.
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)


def _interrupted(signum: int) -> int:
    """The one line and exit code (128 + its number) of a command a signal ended."""
    print(f"facefusion-tasks: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
    return 128 + signum


def _open_closed_std_fds() -> None:
    """Put /dev/null on standard descriptors the caller closed (`2>&-`): otherwise the next
    file opened takes that number, and what C libraries print on "stderr" lands in it, and
    Python, which set sys.stderr to None, failed the first capture of a decoder's warnings."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            if getattr(sys, name) is None:
                mode = "r" if fd == 0 else "w"
                stream = open(fd, mode, errors="backslashreplace", closefd=False)  # noqa: SIM115
                setattr(sys, name, stream)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one clear line on stderr for bad input (exit 2), never a traceback."""
    _open_closed_std_fds()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["metrics"]:
        # The exporter owns its flags (and its --help); hand them over untouched.
        from facefusion_tasks.metrics.exporter import main as exporter_main

        return exporter_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in {"swap", "submit"}:
        # A path after --source (`swap a.jpg --source b.jpg clip.mp4`) ends up here: join it
        # to the others, so mixing both forms gets the clear message, not "unrecognized".
        if not any(arg.startswith("-") for arg in extra):
            args.paths += [location_arg(arg) for arg in extra]
            extra = []
        if not extra:
            split_sources(args)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    debug = args.debug or os.environ.get("FACEFUSION_DEBUG") == "1"
    if args.command != "worker":  # the worker supervisor passes signals on to its processes
        _end_like_ctrl_c()
    try:
        return _COMMANDS[args.command](args)
    except FaceFusionError as exc:
        if _RECEIVED:  # a signal's exception, wrapped on its way out
            return _interrupted(_RECEIVED[0])
        # The reason decides the exit code, as it does for a job's failure in `wait`; a wait
        # that ran out is no failure of the job's.
        code = (
            policy.EXIT_TIMED_OUT if isinstance(exc, WaitTimeout) else policy.exit_code(exc.reason)
        )
        print(f"facefusion-tasks: error: {policy.one_line(str(exc))}", file=sys.stderr)
        if debug and code != EXIT_BAD_INPUT:
            traceback.print_exc()
        return code
    except KeyboardInterrupt as exc:
        return _interrupted(exc.signum if isinstance(exc, Terminated) else signal.SIGINT)
    except BrokenPipeError:
        # stdout's reader went away (`list | head -1`): end quietly, as a shell tool does
        # (ffmpeg's pipes never get here: the video code turns theirs into MediaError).
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as exc:  # an internal error: say so plainly, details on request
        if _RECEIVED:  # a signal's exception, wrapped on its way out (an ImportError)
            return _interrupted(_RECEIVED[0])
        unavailable = _broker_error(exc)
        if unavailable is not None:
            print(f"facefusion-tasks: error: {policy.one_line(str(unavailable))}", file=sys.stderr)
            return policy.exit_code(unavailable.reason)
        if isinstance(exc, OSError) and policy.exit_code(policy.reason_of(exc)) == EXIT_BAD_INPUT:
            # A path the user named that the OS refuses (too long, a symlink loop, no
            # permission to reach it) is their input.
            print(
                f"facefusion-tasks: error: {policy.one_line(policy.describe(exc))}", file=sys.stderr
            )
            return EXIT_BAD_INPUT
        line = policy.one_line(f"{type(exc).__name__}: {exc}")
        print(f"facefusion-tasks: internal error: {line}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
