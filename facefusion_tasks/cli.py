"""The `facefusion-tasks` command: swap, demo, models, doctor, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facefusion_tasks import __version__, policy
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import FaceFusionError

log = logging.getLogger("facefusion_tasks")

#: Exit codes (the policy's): done, internal error, the user's input.
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = policy.EXIT_OK, policy.EXIT_INTERNAL, policy.EXIT_BAD_INPUT


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override FACEFUSION_* settings (None = keep the environment's value)."""
    g = parser.add_argument_group("settings (override FACEFUSION_* variables)")
    g.add_argument("--models-dir", type=Path, default=None)
    g.add_argument("--execution-provider", choices=["auto", "cuda", "cpu"])
    g.add_argument("--inference-threads", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--face-selector", choices=["many", "one", "reference"])
    g.add_argument("--reference-distance", type=float, default=None)
    g.add_argument(
        "--video-encoder",
        default=None,
        help="unset: fits the output (libx264; libvpx-vp9 for .webm); auto; or an encoder name",
    )
    g.add_argument("--video-quality", type=int, default=None)
    g.add_argument("--hwaccel", choices=["none", "auto", "cuda"])
    g.add_argument("--ffmpeg", default=None, help="ffmpeg executable")
    g.add_argument("--cpu-threads", type=int, default=None, help="threads for per-frame CPU work")
    g.add_argument("--detector-batch", type=int, default=None, help="0 = 1 on CPU, batch on GPU")
    g.add_argument("--precision", choices=["fp32", "fp16"])
    g.add_argument(
        "--io-binding", action="store_const", const=True, default=None, help="bind model outputs"
    )


def _job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", type=int, default=5, help="0..9, 9 = most urgent")
    parser.add_argument("--chunk-seconds", type=float, default=None)


def _where(text: str) -> str | Path:
    """A path, or s3://bucket/key kept as text (a Path would fold its `//`); the commands
    check it (a malformed or refused one is one error line and exit 2, as for a bad path)."""
    return text if text.startswith("s3://") else Path(text)


#: The two forms of swap and submit (argparse cannot say "either a positional or --source").
_SOURCES_USAGE = (
    "%(prog)s [options] SOURCE TARGET -o OUTPUT\n"
    "       %(prog)s [options] --source IMAGE [--source IMAGE ...] TARGET -o OUTPUT"
)


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    """SOURCE TARGET, or --source IMAGE (repeatable) TARGET: the paths are sorted out after
    parsing (_split_sources), where both forms, or neither, are refused."""
    parser.add_argument(
        "paths", nargs="+", type=_where, metavar="SOURCE TARGET",
        help="the image with the face to put in (or use --source), then the video to change",
    )  # fmt: skip
    parser.add_argument(
        "--source", dest="sources", action="append", type=_where, default=None, metavar="IMAGE",
        help="a source image; repeat for several photos of the same person (their identities "
        "are averaged)",
    )  # fmt: skip
    parser.set_defaults(command_parser=parser)  # its usage goes with a usage error


def _split_sources(args: argparse.Namespace) -> None:
    """Set args.sources and args.target from the two forms, or exit 2 with the usage."""
    parser: argparse.ArgumentParser = args.command_parser
    paths: list[str | Path] = args.paths
    if args.sources:
        if len(paths) != 1:
            parser.error(
                "give the source images either with --source or as the first argument, not both"
            )
        args.target = paths[0]
        return
    if len(paths) == 1:
        parser.error("no source image: give SOURCE TARGET, or --source IMAGE [--source …] TARGET")
    if len(paths) > 2:
        parser.error("too many arguments: for several source images, repeat --source IMAGE")
    args.sources, args.target = [paths[0]], paths[1]


def _settings(args: argparse.Namespace) -> Settings:
    names = [
        "models_dir", "execution_provider", "inference_threads", "batch_size", "face_selector",
        "reference_distance", "video_encoder", "video_quality", "hwaccel", "ffmpeg",
        "cpu_threads", "detector_batch", "precision", "io_binding",
    ]  # fmt: skip
    return Settings.from_env(**{n: getattr(args, n, None) for n in names})


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="facefusion-tasks", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    sub = parser.add_subparsers(dest="command", required=True)

    swap = sub.add_parser(
        "swap",
        help="swap the source face into every face of a video or still image",
        usage=_SOURCES_USAGE,
    )
    _source_arguments(swap)
    swap.add_argument("-o", "--output", type=_where, required=True)
    swap.add_argument("--reference-face", type=_where, default=None)
    swap.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    swap.add_argument("--no-progress", action="store_true")
    swap.add_argument("--local", action="store_true", help="run here even if a broker is set")
    _job_flags(swap)
    _settings_flags(swap)

    submit = sub.add_parser(
        "submit", help="enqueue a job for the workers; prints its id", usage=_SOURCES_USAGE
    )
    _source_arguments(submit)
    submit.add_argument("-o", "--output", type=_where, required=True)
    submit.add_argument("--reference-face", type=_where, default=None)
    _job_flags(submit)
    _settings_flags(submit)

    for name, text in (
        ("status", "a job's state, progress and workers"),
        ("wait", "follow a job until it ends (exit code as for swap)"),
        ("cancel", "stop a job and remove its temporaries"),
        ("retry", "re-run only a job's failed or unfinished chunks"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job")
        cmd.add_argument("--json", action="store_true")
        if name == "wait":
            cmd.add_argument("--timeout", type=float, default=None)
            cmd.add_argument("--no-progress", action="store_true")
        _settings_flags(cmd)
    jobs = sub.add_parser("list", help="recent jobs")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--json", action="store_true")
    _settings_flags(jobs)

    worker = sub.add_parser(
        "worker", help="start Celery workers: one process per GPU + a light one"
    )
    worker.add_argument("--gpus", default="auto", help="auto | none | comma-separated indexes")
    worker.add_argument("--queues", default="gpu,light", help="which of gpu,light to serve")
    worker.add_argument("--light-concurrency", type=int, default=2)
    worker.add_argument("--max-tasks-per-child", type=int, default=0)
    worker.add_argument("--loglevel", default="info")
    worker.add_argument("--metrics-port", type=int, default=9808, help="0 = no exporter")
    worker.add_argument("--metrics-dir", type=Path, default=None)
    worker.add_argument("--name", default="", help="prefix for the Celery node names")
    _settings_flags(worker)

    demo = sub.add_parser("demo", help="make a sample clip and run a swap on it end to end")
    demo.add_argument("--dir", type=Path, default=Path("demo-output"))
    demo.add_argument("--seconds", type=float, default=6.0)
    demo.add_argument("--json", action="store_true")
    _settings_flags(demo)

    models = sub.add_parser("models", help="download, verify or fake the model files")
    msub = models.add_subparsers(dest="models_command", required=True)
    dl = msub.add_parser("download", help="fetch the real models and verify their digests")
    dl.add_argument("--dir", type=Path, default=None)
    dl.add_argument("--force", action="store_true")
    dl.add_argument("--no-progress", action="store_true")
    mt = msub.add_parser("make-test", help="write stand-in models with the real I/O contracts")
    mt.add_argument("--dir", type=Path, default=None)
    mt.add_argument(
        "--detector-gflops",
        type=float,
        default=0.0,
        help="add result-neutral compute to the detector (det_10g: ~10) for realistic benchmarks",
    )
    vf = msub.add_parser("verify", help="check the model files against their digests")
    vf.add_argument("--dir", type=Path, default=None)
    tr = msub.add_parser(
        "trust",
        help="check your own model files' inputs and outputs, then trust their sha256",
        description="Each FILE's name says its role (det_10g.onnx, w600k_r50.onnx, "
        "inswapper_128.onnx). Its inputs, outputs (and the swapper's emap) are checked against "
        "that role; then it is copied into the models dir under that name (unless it is "
        "there already) and its sha256 is recorded as trusted in digests.json.",
    )
    tr.add_argument("files", nargs="+", type=Path, metavar="FILE")
    tr.add_argument("--dir", type=Path, default=None)

    metrics = sub.add_parser(
        "metrics",
        help="serve /metrics for this host's workers (see `metrics --help`)",
        add_help=False,
    )
    metrics.add_argument("exporter_args", nargs=argparse.REMAINDER)

    doctor = sub.add_parser("doctor", help="report ffmpeg, onnxruntime, GPUs and models")
    doctor.add_argument("--json", action="store_true")
    _settings_flags(doctor)

    bench = sub.add_parser("bench", help="measure end-to-end vs transcode-only vs inference-only")
    bench.add_argument("--seconds", type=float, default=None, help="clip length (20; ceiling 4)")
    bench.add_argument("--width", type=int, default=640)
    bench.add_argument("--height", type=int, default=360)
    bench.add_argument("--faces", type=int, default=2, help="faces per frame")
    bench.add_argument("--repeats", type=int, default=3, help="interleaved rounds (at least 3)")
    bench.add_argument(
        "--ceiling", action="store_true", help="free models vs transcode-only at 720p and 1080p"
    )
    bench.add_argument("--processes", type=int, default=0, help="also N pipelines vs 1")
    bench.add_argument(
        "--memory", action="store_true", help="also peak RSS, light vs heavy detector"
    )
    bench.add_argument("--growth", action="store_true", help="also peak RSS, 1 vs 6 min clip")
    bench.add_argument("--json", action="store_true")
    _settings_flags(bench)
    return parser


def _cmd_swap(args: argparse.Namespace) -> int:
    from facefusion_tasks.local import run_local

    settings = _settings(args)
    if settings.broker_url and not args.local:
        job_id = _submit(args, settings)
        print(f"submitted {job_id}", file=sys.stderr)
        return _follow(settings, job_id, as_json=args.json, progress=not args.no_progress)
    result, loaded = run_local(
        args.sources,
        args.target,
        args.output,
        settings=settings,
        reference=args.reference_face,
        show_progress=not args.no_progress and not args.json,
    )
    _report(result.as_dict() | loaded.facts(), as_json=args.json)
    return EXIT_OK


def _report(summary: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=True))
        return
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in summary["stage_seconds"].items())
    print(
        f"wrote {summary['output']}: {summary['frames']} frames, "
        f"{summary['faces_swapped']} faces swapped in {summary['frames_with_faces']} frames, "
        f"{summary['fps']:.1f} fps on {summary['provider']} ({stages})"
    )
    if summary.get("standin_models"):
        print("note: these are STAND-IN models (tests/demo only); faces were tinted, not swapped")


def _cmd_demo(args: argparse.Namespace) -> int:
    from facefusion_tasks.local import run_demo

    summary = run_demo(args.dir, settings=_settings(args), seconds=args.seconds, quiet=args.json)
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
        from facefusion_tasks.models.trust import roles_of, trust_file

        for path, role in roles_of(args.files):
            print(trust_file(path, role, directory).line())
        return EXIT_OK
    from facefusion_tasks.models.digests import GOOD_STATUSES, trusted_digests, verify_models

    if args.models_command == "download":
        from facefusion_tasks.models.download import download_models

        for path in download_models(directory, progress=not args.no_progress, force=args.force):
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

    report = diagnose(_settings(args))
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else render(report))
    return EXIT_OK if report["ok"] else EXIT_INTERNAL


def _cmd_bench(args: argparse.Namespace) -> int:
    from facefusion_tasks.bench import render, run_bench, run_ceiling
    from facefusion_tasks.errors import InputError

    if args.repeats < 3:
        raise InputError("--repeats must be at least 3: one noisy round proves nothing")
    if args.ceiling:
        report = run_ceiling(_settings(args), seconds=args.seconds or 4.0, repeats=args.repeats)
    else:
        report = run_bench(
            _settings(args),
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
    print(_submit(args, _settings(args)))
    return EXIT_OK


def _print_status(status: Any, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status.as_dict(), sort_keys=True))
        return
    print(
        f"{status.id}: {status.state}  frames {status.frames_done}/{status.frames_total}  "
        f"chunks {status.chunks_done}/{status.chunks_total}"
        + (f"  reason {status.reason}: {status.error}" if status.reason else "")
    )
    for chunk in status.chunks:
        worker = f" on {chunk['worker']}" if chunk["worker"] else ""
        if chunk.get("pid"):
            worker += f" pid {chunk['pid']}"
        error = f" ({chunk['error']})" if chunk["error"] else ""
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
        print(f"facefusion-tasks: error: {status.error}", file=sys.stderr)
    return exit_for(status)


def _cmd_status(args: argparse.Namespace) -> int:
    _print_status(_producer(_settings(args)).status(args.job), as_json=args.json)
    return EXIT_OK


def _cmd_wait(args: argparse.Namespace) -> int:
    return _follow(
        _settings(args),
        args.job,
        as_json=args.json,
        progress=not args.no_progress,
        timeout=args.timeout,
    )


def _cmd_cancel(args: argparse.Namespace) -> int:
    changed = _producer(_settings(args)).cancel(args.job)
    print(f"{args.job}: {'cancelled' if changed else 'already finished'}")
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace) -> int:
    chunks = _producer(_settings(args)).retry(args.job)
    print(
        json.dumps({"job": args.job, "chunks": chunks})
        if args.json
        else f"{args.job}: re-running chunks {chunks}"
    )
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    for status in _producer(_settings(args)).list(args.limit):
        if args.json:
            _print_status(status, as_json=True)
            continue
        progress = f"{status.frames_done}/{status.frames_total} frames"
        print(f"{status.id}  {status.state:<10} {progress}  {status.output}")
    return EXIT_OK


def _cmd_worker(args: argparse.Namespace) -> int:
    from facefusion_tasks.worker import run_workers

    return run_workers(
        _settings(args),
        gpus=args.gpus,
        queues=[q for q in args.queues.split(",") if q],
        light_concurrency=args.light_concurrency,
        max_tasks_per_child=args.max_tasks_per_child,
        loglevel=args.loglevel,
        metrics_port=args.metrics_port,
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one clear line on stderr for bad input (exit 2), never a traceback."""
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
            args.paths += [_where(arg) for arg in extra]
            extra = []
        if not extra:
            _split_sources(args)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    debug = args.debug or os.environ.get("FACEFUSION_DEBUG") == "1"
    try:
        return _COMMANDS[args.command](args)
    except FaceFusionError as exc:
        # The reason decides the exit code, as it does for a job's failure in `wait`.
        code = policy.exit_code(exc.reason)
        print(f"facefusion-tasks: error: {exc}", file=sys.stderr)
        if debug and code != EXIT_BAD_INPUT:
            traceback.print_exc()
        return code
    except KeyboardInterrupt:
        print("facefusion-tasks: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: say so plainly, details on request
        unavailable = _broker_error(exc)
        if unavailable is not None:
            print(f"facefusion-tasks: error: {unavailable}", file=sys.stderr)
            return policy.exit_code(unavailable.reason)
        print(f"facefusion-tasks: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
