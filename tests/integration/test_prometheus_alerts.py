"""A real Prometheus scrapes the exporter, evaluates deploy/prometheus/rules.yaml, and pages."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from facefusion_tasks.metrics import multiproc
    multiproc.prepare(Path(sys.argv[1]), wipe=False)
    from facefusion_tasks.metrics import definitions as d
    from facefusion_tasks.metrics.oom import classify_oom

    class Fail(Exception):
        pass

    d.worker_processes.set(1)
    print("ready", flush=True)
    sys.stdin.readline()  # the test says when the model call fails
    try:
        raise Fail(sys.argv[2])
    except Fail as exc:
        d.gpu_oom_total.labels(kind=classify_oom(exc), model="swapper").inc()
    print("oom", flush=True)
    sys.stdin.readline()
    """
)


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


def test_an_oom_in_a_worker_fires_the_alert(prometheus: str, exporter: tuple[str, Path]) -> None:
    _, directory = exporter
    deadline = time.monotonic() + DEADLINE_SECONDS
    env = {k: v for k, v in os.environ.items() if k != multiproc.PROMETHEUS_ENV}
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(directory), ARENA_OOM],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert worker.stdin is not None and worker.stdout is not None
    selector = 'facefusion_gpu_oom_total{kind="arena",model="swapper"}'
    try:
        assert worker.stdout.readline().strip() == "ready"
        # Prometheus has the worker's pre-initialised zero before anything goes wrong...
        scraped = wait_for("the zero OOM series", lambda: query(prometheus, selector), deadline)
        assert scraped[0]["value"][1] == "0"
        wait_for(
            "a rule evaluation after that scrape", lambda: oom_rule_evaluated(prometheus), deadline
        )
        assert oom_alerts(prometheus) == []
        # ... then the model call runs out of GPU memory.
        worker.stdin.write("go\n")
        worker.stdin.flush()
        assert worker.stdout.readline().strip() == "oom"

        firing = wait_for(
            "FaceFusionGpuOutOfMemory to fire",
            lambda: [a for a in oom_alerts(prometheus) if a["state"] == "firing"],
            deadline,
        )
        assert firing[0]["labels"] == {
            "alertname": "FaceFusionGpuOutOfMemory",
            "kind": "arena",
            "model": "swapper",
            "severity": "warning",
        }
        assert firing[0]["annotations"]["runbook_url"].endswith("#facefusiongpuoutofmemory")
        assert firing[0]["annotations"]["summary"] == "GPU out of memory in swapper (arena)"
    finally:
        if worker.poll() is None:
            worker.stdin.close()
            worker.wait(timeout=10)
    # The worker is gone; its counter lives on in the exporter's archive.
    value = wait_for(
        "the OOM count after the worker exited",
        lambda: [r for r in query(prometheus, selector) if r["value"][1] == "1"],
        deadline + 15,
    )
    assert value
