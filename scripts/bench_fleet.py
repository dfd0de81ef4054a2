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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=24.0)
    parser.add_argument("--chunks", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ff-fleet-") as tmp:
        root = Path(tmp)
        models = root / "models"
        make_test_models(models)
        settings = Settings.from_env({}, models_dir=models, execution_provider="cpu")
        load_models(settings)  # convert to dynamic batch once, before workers race to do it
        image = background(200, 200, 0)
        draw_face(image, 100, 100, 70)
        cv2.imwrite(str(root / "source.png"), image)
        make_sample_video(
            root / "tiny.mp4", seconds=0.4, width=160, height=120, faces=1, audio=False
        )
        video = make_sample_video(
            root / "job.mp4", seconds=args.seconds, width=640, height=360, faces=4, audio=True
        )
        chunk = args.seconds / args.chunks
        fleet = Fleet(root, models)
        try:
            fleet.start(1)
            one_chunk, _ = fleet.timed_job(video, args.seconds * 2)
            one, n = fleet.timed_job(video, chunk)
            fleet.stop()
            fleet.start(2)
            two, _ = fleet.timed_job(video, chunk)
        finally:
            fleet.close()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; stand-in models on CPU; one inference thread per worker"
    )
    print(f"job: {args.seconds:g} s of 640x360 video, 4 faces per frame, {n} chunks\n")
    print("| run | seconds |\n|---|---:|")
    print(f"| 1 worker, 1 chunk | {one_chunk:.2f} |")
    print(f"| 1 worker, {n} chunks | {one:.2f} |")
    print(f"| 2 workers, {n} chunks | {two:.2f} |")
    print(f"\nspeed-up of 2 workers over 1: {one / two:.2f}x")
    print(f"fixed overhead per chunk: {(one - one_chunk) / (n - 1):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
