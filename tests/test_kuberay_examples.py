"""The KubeRay examples are well-formed and agree with cluster.yaml on the Ray version and security settings: every
Ray pod gets the token from one Secret and the same storage environment (PostgreSQL's password and the bucket's keys
from Secrets, by reference only), and no Loom state sits on a volume: no ReadWriteMany, no PersistentVolumeClaim."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import yaml

from runtime.config import StorageConfig
from runtime.secrets import interpolate

KUBERAY = Path(__file__).resolve().parents[1] / "examples" / "kuberay"
FILES = ("raycluster.yaml", "rayjob.yaml")
SECRET = {"name": "ray-auth-token", "key": "auth_token"}
DB_SECRET = {"name": "loom-db", "key": "password"}


def _docs(name: str) -> dict[str, dict]:
    docs = list(yaml.safe_load_all((KUBERAY / name).read_text()))
    assert len({d["kind"] for d in docs}) == len(docs), f"{name}: one document per kind"
    return {d["kind"]: d for d in docs}


def _walk(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) pair of a parsed document, at any depth (list items come with key None)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield None, value
            yield from _walk(value)


def _ray_pods() -> list[dict]:
    """The pod specs of every Ray node: the head and each worker group."""
    spec = _docs("raycluster.yaml")["RayCluster"]["spec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def _storage_block() -> dict:
    """The ``storage:`` lines of the project's loom.yaml that raycluster.yaml's comments show, parsed."""
    lines = (KUBERAY / "raycluster.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"#\s+storage:", line))
    block = [lines[start][1:]]
    for line in lines[start + 1:]:
        if not line.startswith("#   ") or not line[1:].strip():
            break
        block.append(line[1:])
    return yaml.safe_load("\n".join(block))["storage"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _gets_the_token(container: dict) -> bool:
    env = _env(container)
    return (env["RAY_AUTH_MODE"].get("value") == "token" and "value" not in env["RAY_AUTH_TOKEN"]
            and env["RAY_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": SECRET})


def test_raycluster_matches_installed_ray_and_keeps_dashboard_private():
    spec = _docs("raycluster.yaml")["RayCluster"]["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    gpu = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_every_ray_pod_gets_the_token_from_the_secret():
    doc = _docs("raycluster.yaml")["RayCluster"]
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]
    for c in containers:
        assert ray.__version__ in c["image"]
        assert _gets_the_token(c), c["name"]
    text = (KUBERAY / "raycluster.yaml").read_text()
    assert "kubectl create secret generic ray-auth-token --from-literal=auth_token=" in text
    submitter = _docs("rayjob.yaml")["RayJob"]["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    assert _gets_the_token(submitter)


def test_no_loom_state_on_any_volume():
    """Neither file asks for a ReadWriteMany (NFS, EFS, ...) volume, a PersistentVolumeClaim or a state directory
    on one: state shared across hosts lives in PostgreSQL and the bucket."""
    for name in FILES:
        text = (KUBERAY / name).read_text()
        docs = list(yaml.safe_load_all(text))
        assert "PersistentVolumeClaim" not in {d["kind"] for d in docs}, name
        for key, value in (pair for d in docs for pair in _walk(d)):
            assert key not in ("persistentVolumeClaim", "nfs", "accessModes", "volumeClaimTemplates"), (name, key)
            assert value != "ReadWriteMany" and value != "LOOM_STATE_DIR", (name, key, value)
        assert "ReadWriteMany" not in text and "LOOM_STATE_DIR" not in text
    for pod in _ray_pods():  # only scratch (emptyDir) and the project's files (a ConfigMap)
        assert all(set(v) - {"name"} <= {"emptyDir", "configMap"} for v in pod.get("volumes", [])), pod["volumes"]


def test_every_ray_pod_gets_the_storage_environment_from_secrets_by_reference():
    """Replicas and actors interpolate the project's ${VAR} from their own environment: every Ray pod has the
    database password and the bucket's settings, secrets only through secretKeyRef / envFrom."""
    docs = _docs("raycluster.yaml")
    settings = docs["ConfigMap"]
    assert settings["metadata"]["name"] == "loom-storage"
    assert set(settings["data"]) == {"AWS_ENDPOINT_URL", "AWS_REGION"}  # not secret: the endpoint and region
    assert settings["data"]["AWS_ENDPOINT_URL"].startswith("http")
    for pod in _ray_pods():
        container = pod["containers"][0]
        env = _env(container)
        assert env["LOOM_DB_PASSWORD"] == {"name": "LOOM_DB_PASSWORD", "valueFrom": {"secretKeyRef": DB_SECRET}}
        sources = container["envFrom"]
        assert {"configMapRef": {"name": "loom-storage"}} in sources
        assert {"secretRef": {"name": "loom-s3"}} in sources


def test_secrets_appear_only_by_reference():
    for name in FILES:
        text = (KUBERAY / name).read_text()
        for key, value in (pair for d in yaml.safe_load_all(text) for pair in _walk(d)):
            if isinstance(value, dict) and "name" in value and ("value" in value or "valueFrom" in value):
                secretish = re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", value["name"])
                assert not secretish or "secretKeyRef" in value.get("valueFrom", {}), (name, value)
        # no URL with a literal password, no AWS key: a URL's password is always a ${VAR}
        for url in re.findall(r"\w+://[^\s'\"]+", text):
            userinfo = url.split("://", 1)[1].split("@", 1)[0] if "@" in url else ""
            assert ":" not in userinfo or re.fullmatch(r"[^:]+:\$\{\w+\}", userinfo), url
        assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    text = (KUBERAY / "raycluster.yaml").read_text()
    for secret in ("ray-auth-token", "loom-db", "loom-s3"):  # each is made with kubectl, from generated values
        assert f"kubectl create secret generic {secret} " in text


def test_the_projects_storage_block_is_valid_and_uses_the_pods_environment():
    storage = _storage_block()
    assert set(storage) == {"url", "db"}
    assert storage["url"].startswith("s3://") and storage["db"].startswith("postgresql://")
    assert "${LOOM_DB_PASSWORD}" in storage["db"]
    StorageConfig(**interpolate(storage, {"LOOM_DB_PASSWORD": "x"}))
    text = (KUBERAY / "raycluster.yaml").read_text()
    assert "mc mb minio/" + storage["url"][len("s3://"):].split("/")[0] in text  # how to make the bucket
    assert "createdb " in text and "kubectl create configmap loom-project" in text
    assert "loom-mlops[sql]" in text  # psycopg, for PostgreSQL


def test_the_project_is_mounted_at_the_same_path_on_every_pod():
    job = _docs("rayjob.yaml")["RayJob"]
    root = job["spec"]["entrypoint"].split()[2]
    for pod in _ray_pods():
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts[root]["name"]]  # writable: data.generate writes its data there
        config = mounts[f"{root}/loom.yaml"]
        assert volumes[config["name"]]["configMap"] == {"name": "loom-project"} and config["subPath"] == "loom.yaml"
    assert "runtimeEnvYAML" not in job["spec"]  # nothing to pass: the head's environment has it all


def test_rayjob_runs_loom_on_the_cluster():
    job = _docs("rayjob.yaml")["RayJob"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == "loom"
    assert job["spec"]["entrypoint"].startswith("loom up ")
