"""The fleet on a lent GPU: the real launcher's Celery workers, a job through Redis, a real OOM paging.

Usage: python scripts/gpu_fleet_check.py OUTDIR [--provider cuda] [--width W --height H --seconds S].
Needs redis-server and prometheus on PATH. Like gpu_check.py, every section records what it saw
(or the exception it got) in OUTDIR/gpu_fleet_check.json, and nothing here is a test; with
`--provider cpu` it tries the script out on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gpu_check import ONLY, RESULTS, run, section

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
#: A worker whose CUDA session cannot start refuses to start, and its launcher restarts it:
#: give up on the section soon rather than spend the lease's minutes on a loop.
READY_SECONDS = 120
#: Sample names kept from each exporter scrape (the rest is noise for the notes).
KEPT = (
    "facefusion_worker_info", "facefusion_worker_processes", "facefusion_gpu_",
    "facefusion_frames_processed_total", "facefusion_faces_swapped_total",
    "facefusion_chunks_total{outcome=\"succeeded\"", "facefusion_jobs_total{outcome=\"succeeded\"",
    "facefusion_video_encodes_total", "facefusion_model_batch_limit",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], timeout: float, alive: Any = None) -> Any:
    """check()'s first truthy value; RuntimeError after `timeout` s or when `alive` exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {alive.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(0.5)


def scrape(port: int) -> list[str]:
    """The exporter's sample lines worth keeping."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [
        line for line in text.splitlines() if line.startswith(KEPT) and not line.endswith(" 0.0")
    ]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class Launcher:
    """`python -m facefusion_tasks worker`, as an operator starts it, in its own session."""

    def __init__(self, env: dict[str, str], scratch: Path, name: str, gpus: str) -> None:
        self.port = free_port()
        self.log = scratch / f"{name}.log"
        argv = [sys.executable, "-m", "facefusion_tasks", "worker", "--name", name,
                "--gpus", gpus, "--queues", "gpu,light", "--metrics-port", str(self.port),
                "--metrics-dir", str(scratch / f"{name}-metrics"), "--loglevel", "info"]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def ready(self, timeout: float) -> list[str]:
        """Wait until a model-loading process reports which provider it runs on (processes on
        one GPU share one series; the warm-up job then reaches them all)."""

        def loaded() -> list[str]:
            return [s for s in scrape(self.port) if s.startswith("facefusion_worker_info{")]

        return list(wait_until("workers loading models", loaded, timeout, self.proc))

    def stop(self) -> str:
        """SIGTERM the launcher's session; its log tail."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def recorded(launcher: Launcher, report: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A section's steps on `launcher`: an error is kept in `report` beside the launcher's log
    tail (what says why), and the launcher is always stopped."""
    try:
        yield report
    except Exception as exc:  # noqa: BLE001 - the finding, not a crash of the check
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        report["log_tail"] = launcher.stop()


def gpu_apps() -> str:
    """nvidia-smi's compute processes (pid, memory), or why not."""
    argv = ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv"]
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi"
    return str(run(argv, timeout=30).get("out", "")).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--provider", default="cuda")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", default="", help="comma-separated sections (inputs always run)")
    args = parser.parse_args()
    if args.only:
        ONLY.update([*args.only.split(","), "fleet_inputs"])
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))

    import cv2

    from facefusion_tasks.config import Settings
    from facefusion_tasks.faces.loader import load_models
    from facefusion_tasks.faces.synthetic import background, draw_face
    from facefusion_tasks.models.standin import make_test_models
    from facefusion_tasks.producer import Producer
    from facefusion_tasks.video.probe import probe
    from facefusion_tasks.video.samples import make_sample_video

    scratch = Path(tempfile.mkdtemp(prefix="gpu-fleet-"))
    root = scratch / "root"
    root.mkdir()
    models = scratch / "models"
    gpus = "auto" if args.provider == "cuda" else "none"

    @section("fleet_inputs")
    def _inputs() -> Any:
        # A detector with det_10g's compute; its batched copy is made once, before the workers
        # would race to make it.
        make_test_models(models, detector_gflops=10.0)
        load_models(
            Settings.from_env(
                {}, models_dir=models, execution_provider="cpu", allow_standin_models=True
            )
        )
        image = background(256, 256, 0)
        draw_face(image, 128, 128, 90)
        cv2.imwrite(str(root / "source.png"), image)
        make_sample_video(root / "clip.mp4", seconds=args.seconds, width=args.width,
                          height=args.height, faces=2, audio=True, keyframe_interval=50)  # fmt: skip
        info = probe(root / "clip.mp4")
        return {"clip": f"{info.width}x{info.height}", "frames": info.frame_count}

    redis_port = free_port()
    redis_server = subprocess.Popen(
        [os.environ.get("CHECK_REDIS_SERVER", "redis-server"), "--port", str(redis_port),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    broker = f"redis://127.0.0.1:{redis_port}/0"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")} | {
        "FACEFUSION_BROKER_URL": broker,
        "FACEFUSION_STORAGE_ROOTS": str(root),
        "FACEFUSION_MODELS_DIR": str(models),
        "FACEFUSION_EXECUTION_PROVIDER": args.provider,
        "FACEFUSION_PRELOAD_MODELS": "1",
        "FACEFUSION_ALLOW_STANDIN_MODELS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH", "")])]
        ),
    }

    def producer(env: dict[str, str]) -> Producer:
        return Producer(
            Settings.from_env({k: v for k, v in env.items() if k.startswith("FACEFUSION_")})
        )

    def one_job(env: dict[str, str], launcher: Launcher, name: str) -> dict[str, Any]:
        """Submit the clip in 2 s chunks, wait, and check what came out."""
        jobs = producer(env)
        output = root / f"{name}.mp4"
        started = time.perf_counter()
        job = jobs.submit(root / "source.png", root / "clip.mp4", output, chunk_seconds=2)
        seen_apps = ""
        deadline = time.monotonic() + 150
        while (status := jobs.status(job)).state not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            if not seen_apps and status.chunks_done:
                seen_apps = gpu_apps()  # while chunks run: which processes hold the GPU
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        report: dict[str, Any] = {
            "job_id": job,
            "state": status.state,
            "reason": status.reason,
            "error": status.error,
            "chunks": status.chunks_total,
            "frames": status.frames_total,
            "seconds_submit_to_end": round(seconds, 2),
            "fps": round(status.frames_total / seconds, 1) if seconds else None,
            "gpu_apps_while_running": seen_apps,
            "workers": sorted({str(c.get("worker", "")) for c in status.chunks}),
        }
        if status.state == "SUCCEEDED":
            info = probe(output)
            report["output"] = {"frames": info.frame_count, "duration": round(info.duration, 3)}
        report["metrics"] = scrape(launcher.port)
        return report

    def fleet(name: str, processes: int, **settings: str) -> dict[str, Any]:
        env = base_env | {f"FACEFUSION_{k.upper()}": v for k, v in settings.items()}
        env["FACEFUSION_GPU_PROCESSES"] = str(processes)
        launcher = Launcher(env, scratch, name, gpus)
        with recorded(launcher, {"settings": settings, "gpu_processes": processes}) as report:
            started = time.perf_counter()
            report["worker_info"] = launcher.ready(READY_SECONDS)
            report["seconds_to_ready"] = round(time.perf_counter() - started, 1)
            report["warm"] = {k: v for k, v in one_job(env, launcher, f"{name}-warm").items()
                              if k != "metrics"}  # fmt: skip
            report["job"] = one_job(env, launcher, name)
        return report

    try:
        wait_until("redis", lambda: _ping(redis_port), 20, redis_server)

        save(args.out)

        @section("fleet_one_process_per_gpu")
        def _one() -> Any:
            return fleet("one", 1)

        save(args.out)
        # A fleet that never came up (its CUDA session refused, say) would only do so again:
        # the lease's minutes are better left than spent on two more waits.
        if "error" not in RESULTS.get("fleet_one_process_per_gpu", {}):

            @section("fleet_two_processes_per_gpu")
            def _two() -> Any:
                return fleet("two", 2)

            save(args.out)

            @section("fleet_oom_pages")
            def _oom() -> Any:
                return oom_pages(scratch, base_env, gpus, one_job)

            save(args.out)

            @section("fleet_kill_pool_process")
            def _kill() -> Any:
                return kill_pool_process(scratch, base_env, gpus, producer)

            save(args.out)

            @section("fleet_oom_at_batch_one")
            def _oom_one() -> Any:
                # An arena too small for one frame: the chunk's OOM is retried, then the job
                # must end FAILED with its reason, not hang.
                env = base_env | {"FACEFUSION_GPU_MEM_LIMIT": str(48 << 20)}
                launcher = Launcher(env, scratch, "oom1", gpus)
                with recorded(launcher, {}) as report:
                    report["worker_info"] = launcher.ready(READY_SECONDS)
                    report["job"] = one_job(env, launcher, "oom1")
                    status = producer(env).status(report["job"]["job_id"])
                    report["chunk_errors"] = sorted({str(c["error"])[:300] for c in status.chunks})
                return report

    finally:
        redis_server.terminate()
        redis_server.wait(10)
    save(args.out)
    print(f"wrote {args.out / 'gpu_fleet_check.json'}")


def save(out: Path) -> None:
    """What was seen so far (a run cut short by its time limit still leaves its findings)."""
    (out / "gpu_fleet_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))


def kill_pool_process(scratch: Path, base_env: dict[str, str], gpus: str, producer: Any) -> Any:
    """SIGKILL the pool process running a chunk on the GPU: Celery starts another, which must
    come up on CUDA and redo the chunk; the dead process's GPU memory series must go."""
    from facefusion_tasks.video.probe import probe

    env = base_env | {"FACEFUSION_STALL_SECONDS": "20", "FACEFUSION_HEARTBEAT_SECONDS": "1"}
    launcher = Launcher(env, scratch, "kill", gpus)
    root = Path(env["FACEFUSION_STORAGE_ROOTS"])
    with recorded(launcher, {}) as report:
        report["worker_info"] = launcher.ready(READY_SECONDS)
        jobs = producer(env)
        job = jobs.submit(root / "source.png", root / "clip.mp4", root / "kill.mp4",
                          chunk_seconds=2)  # fmt: skip

        def running() -> Any:
            chunks = [c for c in jobs.status(job).chunks if c["state"] == "RUNNING" and c["pid"]]
            return chunks[0] if chunks else None

        victim = wait_until("a running chunk", running, 120, launcher.proc)
        report["before_kill"] = {"gpu_apps": gpu_apps(), "victim": victim}
        os.kill(int(victim["pid"]), signal.SIGKILL)
        killed = time.monotonic()
        status = jobs.wait(job, timeout=180)
        report["seconds_kill_to_end"] = round(time.monotonic() - killed, 1)
        report["job"] = {
            "state": status.state, "reason": status.reason, "error": status.error,
            "chunk": status.chunks[int(victim["index"])],
        }  # fmt: skip
        if status.state == "SUCCEEDED":
            info = probe(root / "kill.mp4")
            report["output"] = {"frames": info.frame_count, "duration": round(info.duration, 3)}
        report["after"] = {"gpu_apps": gpu_apps(), "metrics": scrape(launcher.port)}
        report["dead_pid_series_left"] = [
            line for line in report["after"]["metrics"] if f'pid="{victim["pid"]}"' in line
        ]
    return report


def _ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port).ping())
    except redis.ConnectionError:
        return False


def oom_pages(scratch: Path, base_env: dict[str, str], gpus: str, one_job: Any) -> Any:
    """A real GPU OOM in a worker (a 1 GiB arena cap, the detector asked for 32 frames a call)
    reaches a real Prometheus through the exporter and fires FaceFusionGpuOutOfMemory."""
    env = base_env | {
        "FACEFUSION_GPU_PROCESSES": "1",
        "FACEFUSION_GPU_MEM_LIMIT": str(1 << 30),
        "FACEFUSION_DETECTOR_BATCH": "32",
        "FACEFUSION_BATCH_SIZE": "32",
    }
    launcher = Launcher(env, scratch, "oom", gpus)
    config = scratch / "prometheus.yml"
    config.write_text(
        textwrap.dedent(
            f"""
            global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
            rule_files: ["{RULES}"]
            scrape_configs:
              - job_name: facefusion
                static_configs: [{{targets: ["127.0.0.1:{launcher.port}"]}}]
            """
        )
    )
    port = free_port()
    prometheus = subprocess.Popen(
        [os.environ.get("CHECK_PROMETHEUS", "prometheus"), f"--config.file={config}",
         f"--storage.tsdb.path={scratch / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with recorded(launcher, {}) as report:
            report["worker_info"] = launcher.ready(READY_SECONDS)
            # The zero samples must be scraped before the first OOM, or increase() has no start.
            wait_until("a scrape with the OOM series at 0", lambda: _scraped(url), 60, prometheus)
            report["job"] = one_job(env, launcher, "oom")

            def firing() -> list[dict[str, Any]]:
                alerts = get_json(url + "/api/v1/alerts")["data"]["alerts"]
                return [
                    a for a in alerts
                    if a["labels"]["alertname"] == "FaceFusionGpuOutOfMemory" and a["state"] == "firing"
                ]  # fmt: skip

            started = time.monotonic()
            try:
                report["firing"] = wait_until("the OOM alert", firing, 60, prometheus)
                report["seconds_job_end_to_firing"] = round(time.monotonic() - started, 1)
            except RuntimeError as exc:
                report["firing_error"] = str(exc)
            report["all_alerts"] = [
                {"name": a["labels"]["alertname"], "state": a["state"]}
                for a in get_json(url + "/api/v1/alerts")["data"]["alerts"]
            ]
    finally:
        prometheus.terminate()
        prometheus.wait(20)
    return report


def _scraped(url: str) -> bool:
    query = "facefusion_gpu_oom_total"
    result = get_json(f"{url}/api/v1/query?query={query}")["data"]["result"]
    return bool(result)


if __name__ == "__main__":
    main()
