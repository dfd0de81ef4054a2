"""A real Prometheus scrapes the exporter, evaluates deploy/prometheus/rules.yaml, and pages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from facefusion_tasks.metrics import multiproc
from facefusion_tasks.metrics.exporter import make_server, start_in_thread
from tests.cluster import free_port

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yaml"
DEADLINE_SECONDS = 60

#: onnxruntime's real arena OOM text, raised at the model call in the worker-like child.
ARENA_OOM = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
    "FusedConv node. Name:'Conv_0' Status Message: /onnxruntime_src/onnxruntime/core/framework/"
    "bfc_arena.cc:376 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, "
    "onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for "
    "requested buffer of size 134217728"
)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for(what: str, check: Callable[[], Any], deadline: float) -> Any:
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


@pytest.fixture()
def exporter(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    directory = tmp_path / "multiproc"
    server = make_server(0, "127.0.0.1", redis_url=None, multiproc_dir=directory, gpu=False)
    start_in_thread(server)
    try:
        yield f"127.0.0.1:{server.server_address[1]}", directory
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def prometheus(tmp_path: Path, exporter: tuple[str, Path]) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is required (apt-get install prometheus)"
    target, _ = exporter
    config = tmp_path / "prometheus.yml"
    config.write_text(
        textwrap.dedent(
            f"""
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
              evaluation_interval: 1s
            rule_files:
              - {RULES}
            scrape_configs:
              - job_name: facefusion
                static_configs:
                  - targets: ["{target}"]
            """
        )
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None:
                pytest.fail(
                    f"prometheus exited: {process.stderr.read().decode() if process.stderr else ''}"
                )
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def oom_alerts(url: str) -> list[dict[str, Any]]:
    alerts = get_json(url + "/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == "FaceFusionGpuOutOfMemory"]


def oom_rule_evaluated(url: str) -> bool:
    """Whether the OOM rule has been evaluated with the zero sample in place."""
    for group in get_json(url + "/api/v1/rules")["data"]["groups"]:
        for rule in group["rules"]:
            if rule["name"] == "FaceFusionGpuOutOfMemory":
                return bool(rule.get("health") == "ok" and rule.get("evaluationTime"))
    return False


def query(url: str, expr: str) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr})
    return list(get_json(f"{url}/api/v1/query?{params}")["data"]["result"])


def scrape(target: str) -> dict[str, float]:
    """One scrape of the exporter: sample line -> value."""
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_real_job_on_two_workers_counts_every_frame_and_its_oom_pages(
    prometheus: str, exporter: tuple[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    """Two real Celery workers share a job; the swapper runs out of GPU memory (onnxruntime's
    own exception and message, injected at the model call) whenever it gets more than one face.
    The job still completes with every frame, one scrape shows the exact frame count, and the
    real Prometheus fires FaceFusionGpuOutOfMemory."""
    from facefusion_tasks.store import SUCCEEDED
    from facefusion_tasks.video.samples import make_sample_video
    from tests.cluster import cluster
    from tests.media import write_source_face

    target, directory = exporter
    deadline = time.monotonic() + DEADLINE_SECONDS + 60
    root = tmp_path / "shared"
    root.mkdir()
    write_source_face(root / "source.png")
    video = make_sample_video(root / "in.mp4", seconds=3, faces=2, audio=False)
    repo = Path(__file__).resolve().parents[2]
    from facefusion_tasks.config import Settings
    from facefusion_tasks.faces.loader import load_models

    # Convert the swapper to dynamic batch here, unpatched: the workers' injected OOM must hit
    # the pipeline's model calls, not the one-time conversion check.
    settings = Settings.from_env(
        {}, models_dir=models_dir, execution_provider="cpu", allow_standin_models=True
    )
    assert load_models(settings).swapper_batched
    with cluster(root, models_dir) as fleet:
        fleet.env |= {
            multiproc.PROMETHEUS_ENV: str(directory),
            multiproc.ENV_DIR: str(directory),
            # tests/faults/sitecustomize.py patches InferenceSession.run in the workers only.
            "PYTHONPATH": f"{repo / 'tests' / 'faults'}{os.pathsep}{repo}",
            "FF_FAULT_OOM": "swapper:1",
        }
        # One launcher, two worker processes ("GPUs" 0 and 1, on the CPU provider): a launcher
        # wipes the metrics directory it is given, so two would erase each other's series.
        fleet.start_worker("w", gpus="0,1")
        selector = 'facefusion_gpu_oom_total{kind="arena",model="swapper"}'
        # Prometheus has the workers' zero before anything goes wrong (so increase() sees it).
        scraped = wait_for("the zero OOM series", lambda: query(prometheus, selector), deadline)
        assert {r["value"][1] for r in scraped} == {"0"}
        wait_for("a rule evaluation", lambda: oom_rule_evaluated(prometheus), deadline)
        assert oom_alerts(prometheus) == []

        producer = fleet.producer()
        job_id = producer.submit(root / "source.png", video, root / "out.mp4", chunk_seconds=1)
        status = producer.wait(job_id, timeout=120)
        assert status.state == SUCCEEDED, (status.reason, status.error)
        assert len({c["worker"] for c in status.chunks}) == 2

        samples = scrape(target)
        assert samples["facefusion_frames_processed_total"] == status.frames_total == 75
        assert samples["facefusion_faces_swapped_total"] == 150
        assert samples['facefusion_jobs_total{outcome="succeeded",reason="none"}'] == 1
        assert samples[selector] > 0
        assert samples['facefusion_model_batch_limit{model="swapper"}'] == 1

        firing = wait_for(
            "FaceFusionGpuOutOfMemory to fire",
            lambda: [a for a in oom_alerts(prometheus) if a["state"] == "firing"],
            deadline,
        )
        assert firing[0]["labels"] == {
            "alertname": "FaceFusionGpuOutOfMemory",
            "instance": target,  # which host's GPU ran out
            "kind": "arena",
            "model": "swapper",
            "severity": "warning",
        }
        assert firing[0]["annotations"]["runbook_url"].endswith("#facefusiongpuoutofmemory")
    # The workers are gone; their counts live on in the exporter's archive after compaction.
    after = scrape(target)
    assert after["facefusion_frames_processed_total"] == 75
