"""The alert rules: valid for promtool, each alert tested firing and not firing, well annotated."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yaml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yaml"
REQUIRED_ALERTS = {
    "FaceFusionGpuOutOfMemory",
    "FaceFusionGpuMemoryHigh",
    "FaceFusionBacklogHigh",
    "FaceFusionBacklogGrowing",
    "FaceFusionBacklogStalled",
    "FaceFusionWorkersGone",
    "FaceFusionChunkFailureRatio",
    "FaceFusionSlowFrames",
    "FaceFusionExporterRedisDown",
    "FaceFusionJobStalled",
    "FaceFusionQueueUnserved",
    "FaceFusionExporterDown",
    "FaceFusionChunkProgressStopped",
    "FaceFusionMetricsCollectorFailing",
    "FaceFusionMetricsDisabled",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    # No skip: CI installs Debian's prometheus package, and these checks are the point.
    assert binary, "promtool is required (apt-get install prometheus)"
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_required_alert_exists() -> None:
    assert {rule["alert"] for rule in alert_rules()} >= REQUIRED_ALERTS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_is_annotated_for_the_person_paged(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = rule["annotations"]
    assert {"summary", "description", "runbook_url"} <= set(annotations)
    anchor = annotations["runbook_url"].rsplit("#", 1)[1]
    assert anchor == rule["alert"].lower()
    runbook = (PROMETHEUS_DIR / "runbook.md").read_text()
    assert f"## {rule['alert']}\n" in runbook


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= firing, names - firing
    assert names <= silent, names - silent


def test_the_oom_alert_pages_without_waiting() -> None:
    oom = next(rule for rule in alert_rules() if rule["alert"] == "FaceFusionGpuOutOfMemory")
    assert oom["for"] == "0m"
    memory = next(rule for rule in alert_rules() if rule["alert"] == "FaceFusionGpuMemoryHigh")
    assert memory["for"] == "2m"
    assert "facefusion_gpu_memory_total_bytes" in memory["expr"]
