"""The KubeRay examples are well-formed and agree with cluster.yaml on the Ray version and security settings: every
Ray pod gets the token from one Secret, and SQLite state never sits on a ReadWriteMany (network) volume."""

from __future__ import annotations

from pathlib import Path

import ray
import yaml

KUBERAY = Path(__file__).resolve().parents[1] / "examples" / "kuberay"
SECRET = {"name": "ray-auth-token", "key": "auth_token"}


def _docs(name: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((KUBERAY / name).read_text())}


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


def test_sqlite_state_lives_on_the_heads_own_volume():
    docs = _docs("raycluster.yaml")
    claim = docs["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    spec = docs["RayCluster"]["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]
    state_dir = _env(head["containers"][0])["LOOM_STATE_DIR"]["value"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == state_dir)
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    for group in spec["workerGroupSpecs"]:  # no shared state volume on the workers, no state dir pointing at one
        pod = group["template"]["spec"]
        assert all("persistentVolumeClaim" not in v for v in pod.get("volumes", []))
        assert "LOOM_STATE_DIR" not in _env(pod["containers"][0])
    text = (KUBERAY / "raycluster.yaml").read_text()
    assert "shared state across hosts" in text and "planned" in text and "head" in text
    job = _docs("rayjob.yaml")["RayJob"]
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["LOOM_STATE_DIR"] == state_dir


def test_rayjob_runs_loom_on_the_cluster():
    job = _docs("rayjob.yaml")["RayJob"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == "loom"
    assert job["spec"]["entrypoint"].startswith("loom up ")
