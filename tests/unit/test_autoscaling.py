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
    """What `kubectl kustomize` lists, for the resources (generated Secrets aside), with the
    JSON patches (RFC 6902 test, replace and add: the ones the overlays use) applied."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    found: list[Manifest] = []
    for name in kustomization["resources"]:
        path = (directory / name).resolve()
        if path.is_dir():
            found += _render_here(path)
        else:
            found += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        (manifest,) = [
            m for m in found
            if m["kind"] == target["kind"] and m["metadata"]["name"] == target["name"]
        ]  # fmt: skip
        for operation in yaml.safe_load(patch["patch"]):
            _apply(manifest, operation)
    return found


def _apply(document: Any, operation: dict[str, Any]) -> None:
    """One JSON patch operation, in place; an AssertionError where `test` fails."""
    *parents, last = operation["path"].lstrip("/").split("/")
    for part in parents:
        document = document[int(part) if isinstance(document, list) else part]
    if operation["op"] == "test":
        assert document[int(last) if isinstance(document, list) else last] == operation["value"]
    elif operation["op"] == "add" and last == "-":
        document.append(operation["value"])
    else:
        assert operation["op"] in ("replace", "add"), operation["op"]
        document[int(last) if isinstance(document, list) else last] = operation["value"]


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
    # No answer is an error, never a backlog of 0 (KEDA's default): scaled to zero in an outage.
    assert metadata["ignoreNullValues"] == "false"


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


def _scale_from_zero_test(rules: list[dict[str, Any]]) -> dict[str, Any]:
    """A promtool test: the gpu queue gets work at minute 1, the light queue at minute 10, and
    neither has a worker; expected: light pages at 12 minutes, gpu at 16."""

    def fired(queue: str) -> dict[str, Any]:
        # The gpu queue's own rule names it; the light queue's excludes it.
        selector = 'queue="gpu"' if queue == "gpu" else 'queue!="gpu"'
        (rule,) = [r for r in rules if selector in r["expr"]]
        annotations = {
            key: text.replace("{{ $labels.queue }}", queue)
            for key, text in rule["annotations"].items()
        }
        labels = {"severity": "critical", "queue": queue} | rule.get("labels", {})
        return {"exp_labels": labels, "exp_annotations": annotations}

    series = {"backlog": "facefusion_queue_backlog", "workers": "facefusion_queue_workers"}
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'{series["backlog"]}{{queue="gpu",instance="e1"}}', "values": "0 3x30"},
                {"series": f'{series["workers"]}{{queue="gpu",instance="e1"}}', "values": "0x30"},
                {"series": f'{series["backlog"]}{{queue="light",instance="e1"}}',
                 "values": "0x10 1x20"},
                {"series": f'{series["workers"]}{{queue="light",instance="e1"}}', "values": "0x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "FaceFusionQueueUnserved", "exp_alerts": []},
                {"eval_time": "14m", "alertname": "FaceFusionQueueUnserved",
                 "exp_alerts": [fired("light")]},
                {"eval_time": "17m", "alertname": "FaceFusionQueueUnserved",
                 "exp_alerts": [fired("light"), fired("gpu")]},
            ],
        }],
    }  # fmt: skip


def test_scaling_from_zero_does_not_page_the_unserved_gpu_queue_while_a_pod_starts(
    rendered: list[Manifest], tmp_path: Path
) -> None:
    # With minReplicaCount 0 every first chunk meets a gpu queue with no worker, for as long
    # as a GPU node and pod take to start: the base rule paged critical after 2 minutes.
    (rule,) = [m for m in rendered if m["kind"] == "PrometheusRule"]
    groups = rule["spec"]["groups"]
    unserved = [
        r for g in groups for r in g["rules"] if r.get("alert") == "FaceFusionQueueUnserved"
    ]
    assert len(unserved) == 2  # the light queue's rule and the gpu queue's
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(_scale_from_zero_test(unserved)))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (apt-get install prometheus)"
    done = subprocess.run(
        [promtool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_fallback_renderer_applies_the_overlay_patches(rendered: list[Manifest]) -> None:
    # The tests render with kubectl where it is installed, else by hand: both must agree on the
    # patched rule, or the promtool test above checks a different rule on each machine.
    by_hand = [m for m in _render_here(OVERLAY) if m["kind"] == "PrometheusRule"]
    assert by_hand == [m for m in rendered if m["kind"] == "PrometheusRule"]
