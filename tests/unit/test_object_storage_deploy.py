"""The no-NFS fleet (deploy/fleet-s3): no shared volume or claim left, no storage roots, each
worker with its own scratch and the S3 settings, the KEDA scaling kept."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
WORKERS = ("facefusion-worker", "facefusion-light-worker")

Manifest = dict[str, Any]


def _load(path: Path) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest] | None:
    """`kubectl kustomize deploy/fleet-s3`, or None where kubectl is missing (the static checks
    below still run)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    copy = tmp_path_factory.mktemp("kustomize") / "deploy"
    shutil.copytree(DEPLOY, copy)
    (copy / "kubernetes" / "redis-password").write_text("0123456789abcdef\n")
    done = subprocess.run(
        [kubectl, "kustomize", str(copy / "fleet-s3")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_the_component_removes_exactly_the_shared_media_volume_the_base_has() -> None:
    component = yaml.safe_load((DEPLOY / "object-storage" / "kustomization.yaml").read_text())
    base_claims = {
        d["metadata"]["name"]
        for d in _load(DEPLOY / "kubernetes" / "storage.yaml")
        if d["kind"] == "PersistentVolumeClaim"
    }
    deleted = [yaml.safe_load(p["patch"]) for p in component["patches"] if "patch" in p]
    assert [d["metadata"]["name"] for d in deleted] == ["facefusion-media"]
    assert "facefusion-media" in base_claims
    (patch,) = _load(DEPLOY / "object-storage" / "no-shared-media.yaml")
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
    assert component["configMapGenerator"][0]["name"] in refs
    settings = (DEPLOY / "object-storage" / "s3.env").read_text()
    assert "FACEFUSION_S3_BUCKETS=" in settings and "SECRET" not in settings


def test_the_rendered_fleet_shares_no_disk_and_still_scales(
    rendered: list[Manifest] | None,
) -> None:
    if rendered is None:  # kubectl missing: the static checks above are what there is
        assert shutil.which("kubectl") is None
        return
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert ("PersistentVolumeClaim", "facefusion-media") not in kinds
    assert ("PersistentVolumeClaim", "facefusion-models") in kinds
    assert any(kind == "ScaledObject" for kind, _ in kinds)
    config = next(
        d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "facefusion-s3"
    )
    assert config["data"]["FACEFUSION_S3_BUCKETS"]
    for name in WORKERS:
        deployment = next(
            d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == name
        )
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert "FACEFUSION_STORAGE_ROOTS" not in env
        assert env["FACEFUSION_SCRATCH_DIR"] == "/scratch"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "/media" not in mounts and mounts["/scratch"] == "scratch"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "media" not in volumes and "emptyDir" in volumes["scratch"]
        refs = [r.get("configMapRef") or r.get("secretRef") for r in container["envFrom"]]
        assert {"name": "facefusion-s3"} in refs
        assert {"name": "facefusion-s3-credentials", "optional": True} in refs
        # Nothing else in the pod still names the shared volume.
        assert "facefusion-media" not in yaml.safe_dump(deployment)
