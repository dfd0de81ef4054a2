#!/usr/bin/env python3
"""Benchmark metrics: scrape time after recycled workers, and per-frame instrumentation cost.

1. Scrape time. Really runs N short-lived worker processes (forked, one "chunk" of
   instrumentation each, then exit; half exit cleanly and call mark_dead like Celery's
   worker_process_shutdown, half vanish like a SIGKILL), leaving prometheus_client's per-pid
   files behind exactly as recycled Celery children do. Then times a plain MultiProcessCollector
   scrape against ours (first scrape, which compacts, and the scrapes after it).
2. Per-op cost of inc/observe in multiprocess vs single-process mode (a fresh interpreter for
   each mode: the mode is fixed at import), and what the calls one frame batch makes cost as a
   share of one frame's time at a given fps.

Prints Markdown tables. Usage: .venv/bin/python scripts/bench_metrics.py [--pids 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Calls one frame batch makes (see facefusion_tasks.observe and faces.backoff): 6 stage
#: histograms and the embedder's and swapper's batch-size histograms (labelled), the frames and
#: faces counters; per frame: the frame-time histogram and, since SCRFD runs at batch 1, the
#: detector's batch-size histogram (labelled).
PER_BATCH_OBSERVES = 8
PER_BATCH_INCS = 2
PER_FRAME_LABELLED_OBSERVES = 1


def one_chunk_of_work() -> None:
    """The instrumentation a worker child does for one chunk (then it is recycled)."""
    from facefusion_tasks.metrics import definitions as d

    d.worker_processes.set(1)
    d.worker_busy.labels(queue="gpu").set(1)
    d.queue_wait_seconds.labels(queue="gpu").observe(3.0)
    for _ in range(4):  # four batches
        for stage in d.STAGES:
            d.stage_duration_seconds.labels(stage=stage).observe(0.02)
        for model in d.MODELS:
            d.model_batch_size.labels(model=model).observe(8)
        d.frames_processed_total.inc(8)
        d.faces_swapped_total.inc(8)
        for _ in range(8):
            d.frame_duration_seconds.observe(0.04)
    d.chunks_total.labels(outcome="succeeded", reason="none").inc()
    d.chunk_duration_seconds.observe(2.0)
    d.face_swap_requests_total.labels(status="success").inc()
    d.face_swap_duration_seconds.observe(2.0)
    d.model_batch_limit.labels(model="swapper").set(8)
    d.worker_busy.labels(queue="gpu").set(0)


def minimal_work() -> None:
    """One counter and one histogram: the file sizes behind the issue's ~120 ms baseline."""
    from facefusion_tasks.metrics import definitions as d

    d.frames_processed_total.inc(8)
    d.frame_duration_seconds.observe(0.04)


def make_recycled_files(directory: Path, pids: int, work: str = "chunk") -> float:
    """Fork `pids` short-lived workers writing to `directory`; seconds it took."""
    from facefusion_tasks.metrics import multiproc

    multiproc.prepare(directory, wipe=True)
    from facefusion_tasks.metrics import definitions  # noqa: F401  (opens the parent's files)

    started = time.perf_counter()
    for index in range(pids):
        child = os.fork()
        if child == 0:
            try:
                (one_chunk_of_work if work == "chunk" else minimal_work)()
                if index % 2 == 0:
                    multiproc.mark_dead(os.getpid())  # clean recycle; odd ones "were killed"
            finally:
                os._exit(0)
        os.waitpid(child, 0)
    return time.perf_counter() - started


def scrape_plain(directory: Path) -> float:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    started = time.perf_counter()
    generate_latest(registry)
    return time.perf_counter() - started


def scrape_ours(collector: Any) -> float:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    started = time.perf_counter()
    generate_latest(registry)
    return time.perf_counter() - started


def bench_scrape(pids: int, repeat: int, work: str = "chunk") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        directory = Path(tmp)
        # First: this process must enter multiprocess mode before prometheus_client is imported.
        made = make_recycled_files(directory, pids, work)
        from facefusion_tasks.metrics.compaction import CompactingCollector

        files_before = len(list(directory.glob("*.db")))
        plain = statistics.median(scrape_plain(directory) for _ in range(repeat))
        collector = CompactingCollector(directory)
        first = scrape_ours(collector)
        files_after = len(list(directory.glob("*.db")))
        steady = statistics.median(scrape_ours(collector) for _ in range(repeat))
        plain_after = statistics.median(scrape_plain(directory) for _ in range(repeat))
    return {
        "pids": pids,
        "make_seconds": made,
        "files_before": files_before,
        "files_after": files_after,
        "plain_ms": plain * 1e3,
        "first_ms": first * 1e3,
        "steady_ms": steady * 1e3,
        "plain_after_ms": plain_after * 1e3,
    }


def op_costs(number: int) -> dict[str, float]:
    """Microseconds per call, in whatever mode this interpreter's prometheus_client is in."""
    from facefusion_tasks.metrics import definitions as d

    swap = d.stage_duration_seconds.labels(stage="swap")
    timings = {
        "inc": lambda: d.frames_processed_total.inc(8),
        "observe": lambda: d.frame_duration_seconds.observe(0.04),
        "labels().observe": lambda: d.stage_duration_seconds.labels(stage="swap").observe(0.02),
        "bound observe": lambda: swap.observe(0.02),
    }
    costs = {}
    for name, call in timings.items():
        best = min(timeit.repeat(call, number=number, repeat=5))
        costs[name] = best / number * 1e6
    import prometheus_client.values

    costs["multiprocess"] = float(bool(prometheus_client.values.ValueClass._multiprocess))
    return costs


def op_costs_in_fresh_interpreter(multiprocess: bool, number: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory(prefix="ff-bench-ops-") as tmp:
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[:1];"
            "from pathlib import Path;"
            + (
                f"from facefusion_tasks.metrics import multiproc; "
                f"multiproc.prepare(Path({tmp!r}), wipe=True);"
                if multiprocess
                else ""
            )
            + f"import scripts.bench_metrics as b; print(json.dumps(b.op_costs({number})))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(ROOT)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=ROOT,
        )
    costs: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    assert bool(costs.pop("multiprocess")) == multiprocess
    return costs


def per_frame_overhead(costs: dict[str, float], batch: int) -> float:
    """Microseconds of instrumentation per frame for one batch's calls (labels looked up)."""
    per_batch = PER_BATCH_OBSERVES * costs["labels().observe"] + PER_BATCH_INCS * costs["inc"]
    per_frame = costs["observe"] + PER_FRAME_LABELLED_OBSERVES * costs["labels().observe"]
    return per_batch / batch + per_frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pids", type=int, default=1000, help="recycled worker processes")
    parser.add_argument("--repeat", type=int, default=5, help="scrapes per median")
    parser.add_argument("--batch", type=int, default=8, help="frames per batch")
    parser.add_argument("--fps", default="20,60,200", help="per-process frame rates to report")
    parser.add_argument("--number", type=int, default=20000, help="calls per timing")
    parser.add_argument(
        "--work",
        choices=["chunk", "minimal"],
        default="chunk",
        help="what each recycled worker records: a realistic chunk's metrics, or 1 counter + "
        "1 histogram",
    )
    args = parser.parse_args(argv)

    single = op_costs_in_fresh_interpreter(False, args.number)
    multi = op_costs_in_fresh_interpreter(True, args.number)
    scrape = bench_scrape(args.pids, args.repeat, args.work)

    print(f"### Scrape time after {scrape['pids']} recycled worker processes\n")
    print(
        f"Files made by really running {scrape['pids']} forked worker processes ("
        + ("one chunk of instrumentation" if args.work == "chunk" else "one counter, one histogram")
        + " each; half exit cleanly with mark_dead, half vanish as if killed), "
        f"in {scrape['make_seconds']:.1f} s. Median of {args.repeat} scrapes.\n"
    )
    print("| collector | files read | scrape time |")
    print("|---|---:|---:|")
    print(
        f"| prometheus_client MultiProcessCollector | {scrape['files_before']} "
        f"| {scrape['plain_ms']:.1f} ms |"
    )
    print(
        f"| ours, first scrape (compacts {scrape['pids']} dead pids) | "
        f"{scrape['files_before']} | {scrape['first_ms']:.1f} ms |"
    )
    print(f"| ours, every later scrape | {scrape['files_after']} | {scrape['steady_ms']:.1f} ms |")
    print()
    print("### Instrumentation cost per call (µs)\n")
    print("| call | single-process | multiprocess |")
    print("|---|---:|---:|")
    for name in ("inc", "observe", "bound observe", "labels().observe"):
        print(f"| `{name}` | {single[name]:.2f} | {multi[name]:.2f} |")
    print()
    overhead = per_frame_overhead(multi, args.batch)
    print(
        f"### Per-frame overhead (multiprocess, batch {args.batch}: "
        f"{PER_BATCH_OBSERVES} labelled observes + {PER_BATCH_INCS} incs per batch, "
        f"1 + {PER_FRAME_LABELLED_OBSERVES} labelled observes per frame = "
        f"{overhead:.2f} µs/frame)\n"
    )
    print("| frames/s per process | frame time | overhead |")
    print("|---:|---:|---:|")
    for fps in (float(f) for f in args.fps.split(",")):
        frame_us = 1e6 / fps
        print(f"| {fps:g} | {frame_us / 1e3:.1f} ms | {overhead / frame_us * 100:.4f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
