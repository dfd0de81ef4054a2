"""Kubernetes and compose run a job and are safe by default: rendered and checked (no cluster).

The manifests are rendered the way `kubectl apply -k` would, with a throwaway password file:
by `kubectl kustomize` where kubectl is installed, else by reading kustomization.yaml here
(resources plus the generated Secret's name). Either way every check below runs.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from facefusion_tasks.app import GPU_QUEUE, LIGHT_QUEUE

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
BROKER_CLIENT = {"facefusion.io/broker-client": "true"}

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    copy = tmp_path_factory.mktemp("kustomize") / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    (copy / "redis-password").write_text("0123456789abcdef\n")
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        done = subprocess.run(
            [kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]
    return _render_here(copy)


def _render_here(directory: Path) -> list[Manifest]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects = [
        d
        for name in kustomization["resources"]
        for d in yaml.safe_load_all((directory / name).read_text())
        if d
    ]
    for kind, key in (("Secret", "secretGenerator"), ("ConfigMap", "configMapGenerator")):
        for generator in kustomization.get(key, []):
            for entry in generator.get("files", []):
                assert (directory / entry.partition("=")[2]).is_file(), entry
            objects.append({"kind": kind, "metadata": {"name": generator["name"]}})
    return objects


def _named(objects: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pods(objects: list[Manifest]) -> Iterator[tuple[str, Manifest, dict[str, str]]]:
    """(workload name, pod spec, pod labels) for every workload."""
    for o in objects:
        if o["kind"] in WORKLOADS:
            template = o["spec"]["template"]
            yield o["metadata"]["name"], template["spec"], template["metadata"].get("labels", {})


def _containers(pod: Manifest) -> list[Manifest]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _env(container: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in container.get("env", [])}


def test_every_queue_has_a_consumer(rendered: list[Manifest]) -> None:
    consumed: set[str] = set()
    for _, pod, _ in _pods(rendered):
        for container in pod["containers"]:
            args = container.get("args", [])
            if args[:1] != ["worker"]:
                continue
            queues = next(
                (a.split("=", 1)[1] for a in args if a.startswith("--queues=")), "gpu,light"
            )
            consumed |= set(queues.split(","))
    assert {GPU_QUEUE, LIGHT_QUEUE} <= consumed


def test_every_referenced_secret_config_map_and_claim_exists(rendered: list[Manifest]) -> None:
    secrets, maps = _named(rendered, "Secret"), _named(rendered, "ConfigMap")
    claims = _named(rendered, "PersistentVolumeClaim")
    for name, pod, _ in _pods(rendered):
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, name
            if "configMap" in volume:
                assert volume["configMap"]["name"] in maps, name
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
        for container in _containers(pod):
            for entry in container.get("env", []):
                source = entry.get("valueFrom", {})
                if "secretKeyRef" in source:
                    assert source["secretKeyRef"]["name"] in secrets, (name, entry["name"])
                if "configMapKeyRef" in source:
                    assert source["configMapKeyRef"]["name"] in maps, (name, entry["name"])
            for entry in container.get("envFrom", []):
                if "secretRef" in entry:
                    assert entry["secretRef"]["name"] in secrets, name
                if "configMapRef" in entry:
                    assert entry["configMapRef"]["name"] in maps, name


def test_every_pod_runs_as_non_root_read_only_without_capabilities(
    rendered: list[Manifest],
) -> None:
    for name, pod, _ in _pods(rendered):
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, name
        assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for container in _containers(pod):
            own = container.get("securityContext", {})
            assert own.get("runAsUser", context.get("runAsUser", 0)) != 0, name
            assert own.get("allowPrivilegeEscalation") is False, name
            assert own.get("readOnlyRootFilesystem") is True, name
            assert own.get("capabilities", {}).get("drop") == ["ALL"], name


def test_workers_share_a_storage_root_on_a_shared_volume(rendered: list[Manifest]) -> None:
    claims = _named(rendered, "PersistentVolumeClaim")
    workers = 0
    for name, pod, _ in _pods(rendered):
        for container in pod["containers"]:
            if container.get("args", [])[:1] != ["worker"]:
                continue
            workers += 1
            roots = _env(container)["FACEFUSION_STORAGE_ROOTS"]["value"].split(":")
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            for root in roots:
                claim = volumes[mounts[root]]["persistentVolumeClaim"]["claimName"]
                assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"], (name, root)
    assert workers >= 2


def test_the_redis_password_comes_from_a_secret_and_never_a_command_line(
    rendered: list[Manifest],
) -> None:
    redis = _named(rendered, "StatefulSet")["facefusion-redis"]["spec"]["template"]["spec"]
    server = redis["containers"][0]
    assert "secretKeyRef" in _env(server)["REDIS_PASSWORD"]["valueFrom"]
    config = _named(rendered, "ConfigMap")["facefusion-redis"]["data"]["redis.conf"]
    assert "include /run/redis/auth.conf" in config
    assert "requirepass" in " ".join(server["args"])
    for name, pod, _ in _pods(rendered):
        for container in _containers(pod):
            words = [*container.get("command", []), *container.get("args", [])]
            assert not any("redis://" in w or "--redis-url" in w for w in words), name
            broker = _env(container).get("FACEFUSION_BROKER_URL")
            if broker is None:
                continue
            # The URL names the host only; the password is a mounted Secret file.
            assert "@" not in broker["value"], name
            password_file = _env(container)["FACEFUSION_BROKER_PASSWORD_FILE"]["value"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "secret" in volumes[mounts[str(Path(password_file).parent)]], name


def test_network_policies_let_only_clients_reach_redis_and_prometheus_the_metrics(
    rendered: list[Manifest],
) -> None:
    policies = list(_named(rendered, "NetworkPolicy").values())
    assert any(
        p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"]
        and "ingress" not in p["spec"]
        for p in policies
    ), "no default deny"  # fmt: skip

    def selecting(labels: dict[str, str]) -> list[Manifest]:
        return [
            p
            for p in policies
            if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
            and p["spec"].get("ingress")
        ]

    for name, pod, labels in _pods(rendered):
        for policy in selecting(labels):
            for rule in policy["spec"]["ingress"]:
                ports = {p["port"] for p in rule["ports"]}
                for peer in rule["from"]:
                    assert "ipBlock" not in peer, (name, policy["metadata"]["name"])
                    if ports == {6379}:
                        assert peer == {"podSelector": {"matchLabels": BROKER_CLIENT}}
                    else:
                        assert ports == {9808}, (name, ports)
                        prometheus = peer["podSelector"]["matchLabels"]
                        assert prometheus == {"app.kubernetes.io/name": "prometheus"}
                        assert "namespaceSelector" in peer
        uses_redis = any("FACEFUSION_BROKER_URL" in _env(c) for c in _containers(pod))
        assert uses_redis == (BROKER_CLIENT.items() <= labels.items()), name
        if labels.get("app.kubernetes.io/name") == "facefusion-redis":
            assert [p["metadata"]["name"] for p in selecting(labels)] == [
                "facefusion-redis-clients"
            ]
        if any(
            p.get("containerPort") == 9808 for c in pod["containers"] for p in c.get("ports", [])
        ):
            assert selecting(labels), f"{name}: metrics port open to everyone"


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_redis_asks_for_a_password_from_a_secret_file() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    script = redis["command"][-1]
    assert "requirepass" in script and "/run/secrets/redis_password" in script
    assert "redis_password" in redis["secrets"]
    assert compose["secrets"]["redis_password"]["file"].startswith("./secrets/")
    assert compose["networks"]["broker"]["internal"] is True
    assert redis["networks"] == ["broker"] and "ports" not in redis
    assert "REDISCLI_AUTH" in redis["healthcheck"]["test"][-1]
    for name in ("worker", "worker-cpu"):
        worker = compose["services"][name]
        env = worker["environment"]
        assert "@" not in env["FACEFUSION_BROKER_URL"]
        assert env["FACEFUSION_BROKER_PASSWORD_FILE"] == "/run/secrets/redis_password"
        assert "redis_password" in worker["secrets"]
        assert "broker" in worker["networks"]


def test_compose_containers_run_unprivileged_and_grafana_needs_a_login() -> None:
    services = _compose()["services"]
    for name in ("redis", "worker", "worker-cpu"):
        service = services[name]
        assert not str(service["user"]).startswith("0"), name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")
