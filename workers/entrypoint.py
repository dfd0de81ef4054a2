"""Container entrypoint: prepare the metrics directory before anything imports
prometheus_client, check the GPU stack once, then run `facefusion-tasks ARGS`."""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    # The worker launcher wipes and prepares the directory itself; for any other command
    # (metrics, doctor) the directory must still be set before the first metrics import.
    os.environ.setdefault("FACEFUSION_METRICS_DIR", "/run/facefusion-metrics")
    from facefusion_tasks.cli import main as cli_main

    if argv[:1] == ["worker"] and os.environ.get("FACEFUSION_SKIP_DOCTOR") != "1":
        # One line per problem in the logs (e.g. a CPU onnxruntime shadowing the GPU build);
        # the worker still starts, on whatever provider works, and says so.
        cli_main(["doctor"])
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
