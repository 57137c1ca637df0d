"""The KubeRay examples are well-formed and agree with cluster.yaml on the Ray version and security settings."""

from __future__ import annotations

from pathlib import Path

import ray
import yaml

KUBERAY = Path(__file__).resolve().parents[1] / "examples" / "kuberay"


def test_raycluster_matches_installed_ray_and_keeps_dashboard_private():
    doc = yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    spec = doc["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]
    for c in containers:
        assert ray.__version__ in c["image"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in env and "LOOM_STATE_DIR" in env
    gpu = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_rayjob_runs_loom_on_the_cluster():
    job = yaml.safe_load((KUBERAY / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["clusterSelector"]["ray.io/cluster"] == "loom"
    assert job["spec"]["entrypoint"].startswith("loom up ")
