"""Fleet benchmark: speed-up of 2 workers over 1 on one inference-bound job, and the fixed cost
of a chunk. Real Redis (a private redis-server), real Celery workers, real ffmpeg; one inference
thread per worker. Usage: python scripts/bench_fleet.py [--seconds 24] [--chunks 8]"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import redis

from facefusion_tasks.config import Settings
from facefusion_tasks.faces.loader import load_models
from facefusion_tasks.faces.synthetic import background, draw_face
from facefusion_tasks.models.standin import make_test_models
from facefusion_tasks.producer import Producer
from facefusion_tasks.store import SUCCEEDED
from facefusion_tasks.video.samples import make_sample_video
from facefusion_tasks.worker import worker_argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """N worker processes on a private Redis; timed jobs."""

    def __init__(self, root: Path, models: Path) -> None:
        self.port = _free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")} | {
            "FACEFUSION_BROKER_URL": self.url,
            "FACEFUSION_STORAGE_ROOTS": str(root),
            "FACEFUSION_MODELS_DIR": str(models),
            "FACEFUSION_EXECUTION_PROVIDER": os.environ.get(
                "FACEFUSION_EXECUTION_PROVIDER", "auto"
            ),
            "FACEFUSION_INFERENCE_THREADS": "1",
            "FACEFUSION_PRELOAD_MODELS": "1",
            # The bench writes its own stand-ins (make_test_models below): asked for here.
            "FACEFUSION_ALLOW_STANDIN_MODELS": "1",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def producer(self) -> Producer:
        return Producer(
            Settings.from_env({k: v for k, v in self.env.items() if k.startswith("FACEFUSION_")})
        )

    def start(self, count: int) -> None:
        for i in range(count):
            argv = worker_argv(
                name=f"bench{i}",
                queue="gpu,light",
                concurrency=1,
                max_tasks_per_child=0,
                loglevel="warning",
            )
            self.procs.append(
                subprocess.Popen(
                    argv, env=self.env, start_new_session=True, stderr=subprocess.DEVNULL
                )
            )
        # Warm up: every worker loads its models and runs a tiny job before anything is timed.
        producer = self.producer()
        tiny = self.root / "tiny.mp4"
        jobs = [
            producer.submit(self.root / "source.png", tiny, self.root / f"warm-{i}.mp4")
            for i in range(2 * count)
        ]
        for job in jobs:
            assert producer.wait(job, timeout=300).state == SUCCEEDED

    def stop(self) -> None:
        for proc in self.procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            proc.wait(60)
        self.procs = []

    def timed_job(self, video: Path, chunk_seconds: float) -> tuple[float, int]:
        producer = self.producer()
        started = time.perf_counter()
        job = producer.submit(
            self.root / "source.png", video, self.root / "out.mp4", chunk_seconds=chunk_seconds
        )
        status = producer.wait(job, timeout=1800, poll=0.1)
        assert status.state == SUCCEEDED, (status.reason, status.error)
        return time.perf_counter() - started, status.chunks_total

    def close(self) -> None:
        self.stop()
        self.redis.terminate()
        self.redis.wait(10)


def _models(root: Path, name: str, gflops: float) -> Path:
    models = root / name
    make_test_models(models, detector_gflops=gflops)
    # Convert to dynamic batch once, before the workers race to do it.
    load_models(Settings.from_env({}, models_dir=models, execution_provider="cpu"))
    return models


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=24.0)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument(
        "--detector-gflops",
        type=float,
        default=10.0,
        help="compute of the stand-in detector for the speed-up run (det_10g: about 10)",
    )
    args = parser.parse_args()
    chunk = args.seconds / args.chunks
    with tempfile.TemporaryDirectory(prefix="ff-fleet-") as tmp:
        root = Path(tmp)
        image = background(200, 200, 0)
        draw_face(image, 100, 100, 70)
        cv2.imwrite(str(root / "source.png"), image)
        make_sample_video(
            root / "tiny.mp4", seconds=0.4, width=160, height=120, faces=1, audio=False
        )
        video = make_sample_video(
            root / "job.mp4", seconds=args.seconds, width=640, height=360, faces=4, audio=True,
            keyframe_interval=50,
        )  # fmt: skip
        times: dict[str, float] = {}
        # Fixed cost per chunk: the same job as one chunk and as N, on the light stand-ins
        # (where that cost is not drowned by inference time).
        fleet = Fleet(root, _models(root, "light", 0.0))
        try:
            fleet.start(1)
            times["light 1 worker, 1 chunk"], _ = fleet.timed_job(video, args.seconds * 2)
            times[f"light 1 worker, {args.chunks} chunks"], n = fleet.timed_job(video, chunk)
        finally:
            fleet.close()
        # Speed-up on an inference-bound job: a detector with a real model's compute.
        fleet = Fleet(root, _models(root, "heavy", args.detector_gflops))
        try:
            fleet.start(1)
            times[f"inference-bound 1 worker, {n} chunks"], _ = fleet.timed_job(video, chunk)
            fleet.stop()
            fleet.start(2)
            times[f"inference-bound 2 workers, {n} chunks"], _ = fleet.timed_job(video, chunk)
        finally:
            fleet.close()
    light_one, light_n, heavy_one, heavy_two = times.values()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, CPU only; one inference thread per worker"
    )
    print(
        f"job: {args.seconds:g} s of 640x360 video at 25 fps, 4 faces per frame, 2 s GOP; "
        f"stand-in models (inference-bound runs: detector with {args.detector_gflops:g} GFLOPs "
        "of result-neutral compute, like det_10g)\n"
    )
    print("| run | seconds |\n|---|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} |")
    print(f"\nspeed-up of 2 workers over 1 (inference-bound): {heavy_one / heavy_two:.2f}x")
    print(f"fixed overhead per chunk: {(light_n - light_one) / (n - 1):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
