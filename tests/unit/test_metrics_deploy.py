"""Deployment files: they parse, reference only real metrics, and say what the fleet needs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

from facefusion_tasks.metrics import definitions

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
METRIC_TOKEN = re.compile(r"\bfacefusion_[a-z0-9_]+")


def known_series() -> set[str]:
    """Every sample name the workers and the exporter can expose."""
    names: set[str] = set()
    for value in vars(definitions).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        if isinstance(value, Counter):
            names.add(value._name + "_total")
        elif isinstance(value, Histogram):
            names |= {value._name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(value._name)
    # The exporter's own counters may carry their start (`_created`: the disabled count's).
    created = {
        name.removesuffix("_total") + "_created"
        for name, (kind, _, _) in definitions.EXPORTER_METRICS.items()
        if kind == "counter"
    }
    return names | set(definitions.EXPORTER_METRICS) | created


def referenced(expr: str) -> set[str]:
    return set(METRIC_TOKEN.findall(expr))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return exprs


def test_dashboard_references_only_defined_metrics() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    unknown = set().union(*(referenced(e) for e in exprs)) - known_series()
    assert not unknown


def test_dashboard_covers_what_operators_ask() -> None:
    used = set().union(*(referenced(e) for e in dashboard_exprs()))
    for needed in (
        "facefusion_frames_processed_total",  # throughput
        "facefusion_stage_duration_seconds_bucket",  # p95 per stage
        "facefusion_queue_backlog",
        "facefusion_queue_oldest_age_seconds",
        "facefusion_gpu_memory_used_bytes",
        "facefusion_gpu_memory_total_bytes",
        "facefusion_gpu_oom_total",
        "facefusion_chunks_total",  # failures by reason
        "facefusion_workers_alive",
    ):
        assert needed in used, needed
    stage_p95 = [e for e in dashboard_exprs() if "facefusion_stage_duration_seconds_bucket" in e]
    assert any("histogram_quantile(0.95" in e and "stage" in e for e in stage_p95)


def test_rules_reference_only_defined_metrics() -> None:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())["groups"]
    unknown: set[str] = set()
    for group in groups:
        for rule in group["rules"]:
            unknown |= referenced(rule["expr"]) - known_series()
    assert not unknown


def all_yaml() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


@pytest.mark.parametrize("path", all_yaml(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents


def kubernetes() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and "kind" in document and "metadata" in document:
                objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


def test_worker_deployment_gets_a_gpu_and_a_named_metrics_port() -> None:
    pod = kubernetes()[("Deployment", "facefusion-worker")]["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True
    container = next(c for c in pod["containers"] if c["name"] == "worker")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "metrics", "containerPort": 9808} in container["ports"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "metrics")
    assert env["FACEFUSION_METRICS_DIR"] == mount["mountPath"]
    volume = next(v for v in pod["volumes"] if v["name"] == "metrics")
    assert volume["emptyDir"]["medium"] == "Memory"
    # The worker launcher starts the exporter in this container (the one that sees the GPU).
    assert container["args"][0] == "worker"
    assert "--metrics-port=9808" in container["args"]


def test_services_and_monitor_select_the_metrics_ports() -> None:
    objects = kubernetes()
    monitor = objects[("ServiceMonitor", "facefusion-tasks")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    services = [o for (kind, _), o in objects.items() if kind == "Service"]
    scraped = [
        s
        for s in services
        if wanted.items() <= s["metadata"]["labels"].items()
        and any(p["name"] == "metrics" for p in s["spec"]["ports"])
    ]
    assert {s["metadata"]["name"] for s in scraped} == {
        "facefusion-worker",
        "facefusion-queue-exporter",
    }


def test_queue_metrics_outlive_the_workers_and_duplicates_are_harmless() -> None:
    queue = kubernetes()[("Deployment", "facefusion-queue-exporter")]["spec"]
    assert queue["replicas"] == 1
    container = queue["template"]["spec"]["containers"][0]
    assert container["args"][0] == "metrics"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    # Every exporter with a broker URL reports the same Redis: rules must not add them up.
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        shared = {"facefusion_queue_backlog", "facefusion_workers_alive"} & referenced(rule["expr"])
        if shared:
            assert "max" in rule["expr"] and "sum(facefusion_queue" not in rule["expr"], rule


def test_redis_keeps_an_append_only_file() -> None:
    config = kubernetes()[("ConfigMap", "facefusion-redis")]["data"]["redis.conf"]
    assert "appendonly yes" in config
    assert "maxmemory-policy noeviction" in config
    statefulset = kubernetes()[("StatefulSet", "facefusion-redis")]
    assert statefulset["spec"]["volumeClaimTemplates"]


def test_prometheusrule_is_generated_from_rules_yaml_and_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rule = kubernetes()[("PrometheusRule", "facefusion-tasks")]
    source = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    manifests = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_grafana_provisioning_points_at_prometheus() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"
    dashboards = yaml.safe_load((provisioning / "dashboards" / "facefusion.yaml").read_text())
    assert dashboards["providers"][0]["type"] == "file"


def test_alertmanager_routes_critical_to_the_pager() -> None:
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    critical = next(r for r in config["route"]["routes"] if 'severity="critical"' in r["matchers"])
    assert critical["receiver"] in receivers
