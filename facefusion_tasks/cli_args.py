"""The `facefusion-tasks` command line's grammar: subcommands, their arguments, settings flags."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from facefusion_tasks import __version__
from facefusion_tasks.config import AUTO_CPU_THREADS, FLAG_SETTINGS, PASTES, Settings
from facefusion_tasks.metrics import multiproc
from facefusion_tasks.policy import one_line

#: What `--help` says the command is.
DESCRIPTION = "The `facefusion-tasks` command: swap, demo, models, doctor, bench."


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, as every other refusal is (the
    usage it would print first is one `--help` away), with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _int_or_auto(auto: int) -> Callable[[str], int]:
    """An int flag that also takes "auto" (meaning `auto`), as its environment variable does."""

    def parse(raw: str) -> int:
        if raw.strip().lower() == "auto":
            return auto
        try:
            return int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number or auto: {raw!r}") from None

    return parse


def _seconds(raw: str) -> float:
    """A positive, finite number of seconds (nan waited for ever; a negative one gave up at once)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {raw!r}")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An int flag from `low` to `high`: Celery and the exporter refused others only once the
    launcher had started them, and it restarted them for ever."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}: {raw!r}")
        return value

    return parse


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
    g.add_argument(
        "--cpu-threads", type=_int_or_auto(AUTO_CPU_THREADS), default=None,
        help="threads for per-frame CPU work (auto: from the usable cores)",
    )  # fmt: skip
    g.add_argument(
        "--detector-batch", type=_int_or_auto(0), default=None,
        help="frames per detector call (auto or 0: 1 on CPU, the batch on a GPU)",
    )  # fmt: skip
    g.add_argument("--precision", choices=["fp32", "fp16"])
    g.add_argument(
        "--io-binding", action="store_const", const=True, default=None, help="bind model outputs"
    )
    g.add_argument(
        "--paste", choices=PASTES,
        help="paste-back in OpenCV (cpu) or as a graph on the models' provider (onnx); auto, "
        "the default: onnx where the models run on CUDA, else cpu",
    )  # fmt: skip


def _job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", type=int, default=5, help="0..9, 9 = most urgent")
    parser.add_argument("--chunk-seconds", type=float, default=None)


def location_arg(text: str) -> str:
    """A path or s3://bucket/key, kept as typed (a Path would fold s3's `//` and drop a
    trailing `/`): the commands make it a location (objects.location), which checks it (a
    malformed or refused one is one error line and exit 2, as for a bad path)."""
    return text


#: The two forms of swap and submit (argparse cannot say "either a positional or --source").
_SOURCES_USAGE = (
    "%(prog)s [options] SOURCE TARGET -o OUTPUT\n"
    "       %(prog)s [options] --source IMAGE [--source IMAGE ...] TARGET -o OUTPUT"
)


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    """SOURCE TARGET, or --source IMAGE (repeatable) TARGET: the paths are sorted out after
    parsing (_split_sources), where both forms, or neither, are refused."""
    parser.add_argument(
        "paths", nargs="+", type=location_arg, metavar="SOURCE TARGET",
        help="the image with the face to put in (or use --source), then the video to change",
    )  # fmt: skip
    parser.add_argument(
        "--source", dest="sources", action="append", type=location_arg, default=None, metavar="IMAGE",
        help="a source image; repeat for several photos of the same person (their identities "
        "are averaged)",
    )  # fmt: skip
    parser.set_defaults(command_parser=parser)  # its usage goes with a usage error


def split_sources(args: argparse.Namespace) -> None:
    """Set args.sources and args.target from the two forms, or exit 2 with the usage."""
    parser: argparse.ArgumentParser = args.command_parser
    paths: list[str] = args.paths
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


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the flags given overriding them (CLI > env > default)."""
    return Settings.from_env(**{n: getattr(args, n, None) for n in FLAG_SETTINGS})


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = _Parser(prog="facefusion-tasks", description=DESCRIPTION)
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
    swap.add_argument("-o", "--output", type=location_arg, required=True)
    swap.add_argument("--reference-face", type=location_arg, default=None)
    swap.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    swap.add_argument("--no-progress", action="store_true")
    swap.add_argument("--local", action="store_true", help="run here even if a broker is set")
    _job_flags(swap)
    _settings_flags(swap)

    submit = sub.add_parser(
        "submit", help="enqueue a job for the workers; prints its id", usage=_SOURCES_USAGE
    )
    _source_arguments(submit)
    submit.add_argument("-o", "--output", type=location_arg, required=True)
    submit.add_argument("--reference-face", type=location_arg, default=None)
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
            cmd.add_argument(
                "--timeout", type=_seconds, default=None, metavar="SECONDS",
                help="stop waiting after this long: exit 124 (the job goes on)",
            )  # fmt: skip
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
    worker.add_argument("--light-concurrency", type=_int_in(1, 64), default=2)
    worker.add_argument("--max-tasks-per-child", type=_int_in(0, 1_000_000), default=0)
    worker.add_argument(
        "--loglevel", default="info", type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
    )  # fmt: skip
    worker.add_argument(
        "--metrics-port", type=_int_in(0, 65535), default=None,
        help="0 = no exporter (default: FACEFUSION_METRICS_PORT, else 9808)",
    )  # fmt: skip
    worker.add_argument("--metrics-dir", type=multiproc.directory_name, default=None)
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
