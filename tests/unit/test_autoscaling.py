"""KEDA scales the GPU workers on the exact backlog: the overlay renders, aims at the GPU worker
Deployment, scales to and from zero, gives a stopping pod time to finish its chunk, and queries
exactly the expression promtool checks as a recording rule."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from facefusion_tasks.app import GPU_QUEUE
from facefusion_tasks.config import Settings

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "autoscaling"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"

Manifest = dict[str, Any]


def _render_here(directory: Path) -> list[Manifest]:
    """What `kubectl kustomize` lists, for the resources (generated Secrets aside)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    found: list[Manifest] = []
    for name in kustomization["resources"]:
        path = (directory / name).resolve()
        if path.is_dir():
            found += _render_here(path)
        else:
            found += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return _render_here(OVERLAY)
    copy = tmp_path_factory.mktemp("kustomize")
    shutil.copytree(OVERLAY.parent / "kubernetes", copy / "kubernetes")
    shutil.copytree(OVERLAY, copy / "autoscaling")
    (copy / "kubernetes" / "redis-password").write_text("0123456789abcdef\n")
    done = subprocess.run(
        [kubectl, "kustomize", str(copy / "autoscaling")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _one(rendered: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [m for m in rendered if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name)
    return matches[0]


def _scaled(rendered: list[Manifest]) -> Manifest:
    scaled = [m for m in rendered if m["kind"] == "ScaledObject"]
    assert len(scaled) == 1
    return scaled[0]


def test_the_scaled_object_drives_the_gpu_worker_deployment(rendered: list[Manifest]) -> None:
    scaled = _scaled(rendered)
    target = scaled["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment"
    deployment = _one(rendered, "Deployment", target["name"])
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--queues={GPU_QUEUE}" in args  # the pods that take chunks, and only those
    assert scaled["metadata"]["namespace"] == deployment["metadata"]["namespace"]


def test_it_scales_to_zero_and_wakes_on_one_waiting_chunk(rendered: list[Manifest]) -> None:
    spec = _scaled(rendered)["spec"]
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert float(metadata["activationThreshold"]) == 0  # any backlog > 0 activates
    assert float(metadata["threshold"]) > 0
    assert metadata["serverAddress"].startswith("http")


def test_the_query_is_the_recorded_gpu_backlog_checked_by_promtool() -> None:
    metadata = _scaled(_render_here(OVERLAY))["spec"]["triggers"][0]["metadata"]
    groups = yaml.safe_load(RULES.read_text())["groups"]
    recorded = {r["record"]: r["expr"].strip() for g in groups for r in g["rules"] if "record" in r}
    assert metadata["query"].strip() == recorded["facefusion:gpu_backlog:max"]
    assert f'facefusion_queue_backlog{{queue="{GPU_QUEUE}"}}' in metadata["query"]
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (apt-get install prometheus)"
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_stopping_pod_has_time_to_finish_its_chunk(rendered: list[Manifest]) -> None:
    deployment = _one(rendered, "Deployment", _scaled(rendered)["spec"]["scaleTargetRef"]["name"])
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
    limit = int(env.get("FACEFUSION_CHUNK_TIME_LIMIT") or Settings().chunk_time_limit)
    assert pod["terminationGracePeriodSeconds"] >= limit + 30
