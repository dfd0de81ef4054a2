"""compose.yaml wires Redis (AOF), GPU and CPU workers, the exporter, Prometheus, Alertmanager
and Grafana together (parsed: there is no Docker engine here)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_redis_persists_with_aof() -> None:
    redis = _compose()["services"]["redis"]
    assert "--appendonly yes" in " ".join(redis["command"])
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_gpu_worker_reserves_gpus_and_cpu_profile_runs_without() -> None:
    services = _compose()["services"]
    gpu, cpu = services["worker"], services["worker-cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    assert cpu["environment"]["FACEFUSION_EXECUTION_PROVIDER"] == "cpu"
    for worker in (gpu, cpu):
        env = worker["environment"]
        assert env["FACEFUSION_BROKER_URL"].startswith("redis://redis:")
        assert env["FACEFUSION_STORAGE_ROOTS"] == "/data"
        assert "--metrics-port" in worker["command"]
        assert "exporter" in worker["networks"]["default"]["aliases"]
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_monitoring_stack_points_at_files_that_exist() -> None:
    services = _compose()["services"]
    for name in ("prometheus", "alertmanager", "grafana"):
        for volume in services[name]["volumes"]:
            local = volume.split(":")[0]
            assert (ROOT / local).exists(), f"{name} mounts missing {local}"
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    ]
    assert "exporter:9808" in targets
    for rule_file in prometheus["rule_files"]:
        assert (ROOT / "deploy/prometheus" / rule_file).is_file()
