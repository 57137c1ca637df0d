"""A real two-node Ray cluster on one machine: `ray start --head` plus `ray start --address=...` as separate
processes. Loom's life cycle is submitted through the Ray Jobs API, training workers and serving replicas must land
on both nodes, and serving must keep answering after the second node is stopped."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port, make_project

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
LOOM = str(Path(sys.executable).parent / "loom")
RECORD = [{"tenure_months": 3, "monthly_charges": 89.5, "total_charges": 268.5, "support_calls": 4,
           "paperless_billing": True, "contract": "month-to-month", "internet_service": "fiber",
           "payment_method": "electronic-check"}]


@contextlib.contextmanager
def _talking_to(dashboard: str):
    """Ray's state and jobs clients prefer RAY_API_SERVER_ADDRESS over the address they are given, and this process
    has it set for the test session's embedded cluster (runtime.connect): point it at the two-node cluster."""
    previous = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = dashboard
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = previous


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    # Ray's token auth: every process talking to the cluster (nodes, CLI, this test's state/jobs clients) sends
    # the token from ~/.ray/auth_token.
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    gcs, dash = free_port(), free_port()
    # Not the embedded cluster's Serve ingress settings (this process set them for its own cluster: HAProxy's
    # stats/metrics ports are taken there); a `ray start` cluster uses what its operator exports.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_") and k != "RAY_API_SERVER_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    # As an operator starts nodes: from the environment Loom is installed in (an activated venv puts `loom` on
    # PATH; a job's entrypoint runs with the node's PATH). pytest itself may run as `.venv/bin/python -m pytest`.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("RAY_ADDRESS", None)
    common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    logs = tmp_path_factory.mktemp("ray-logs")
    # Each node's dashboard agent listens on a fixed default port (52365): give every node on this host its own,
    # or the head's job agent cannot start beside the test session's embedded cluster.
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(subprocess.Popen([RAY, "start", "--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
                                       "--dashboard-port", str(dash), "--include-dashboard", "true",
                                       "--dashboard-agent-listen-port", str(free_port()), *common],
                                      env=env, stdout=open(logs / "head.log", "w"), stderr=subprocess.STDOUT))
        dashboard = f"http://127.0.0.1:{dash}"
        from ray.job_submission import JobSubmissionClient
        from ray.util.state import list_nodes

        with _talking_to(dashboard):
            try:
                _wait(lambda: JobSubmissionClient(dashboard).get_version(), 180, "the head node")
            except TimeoutError:
                raise TimeoutError("head node did not come up:\n" + (logs / "head.log").read_text()[-3000:]) from None
            nodes.append(subprocess.Popen([RAY, "start", "--address", f"127.0.0.1:{gcs}",
                                           "--dashboard-agent-listen-port", str(free_port()), *common], env=env,
                                          stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT))
            _wait(lambda: len([n for n in list_nodes(address=dashboard) if n.state == "ALIVE"]) == 2, 180,
                  "two nodes")
        yield {"dashboard": dashboard, "gcs": f"127.0.0.1:{gcs}", "env": env, "head": nodes[0], "worker": nodes[1]}
    finally:  # also when setup fails: never leave a cluster running behind the test session
        for proc in reversed(nodes):
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous


def _actors(dashboard: str, class_prefix: str, state: str) -> list:
    from ray.util.state import list_actors

    with _talking_to(dashboard):
        found = list_actors(address=dashboard, detail=True, limit=10_000)
    return [a for a in found
            if a.class_name.startswith(class_prefix) and a.state == state]


def test_life_cycle_on_two_nodes_survives_losing_one(two_nodes, tmp_path):
    port = free_port()
    project = make_project(tmp_path / "project", port=port, training={"epochs": 3},
                           serving={"replicas": 2, "replica_cpus": 1, "proxy_location": "HeadOnly"})
    state = tmp_path / "state"
    env = {**two_nodes["env"], "RAY_API_SERVER_ADDRESS": two_nodes["dashboard"]}

    # 1. The whole life cycle as a Ray job: the project ships as the job's working directory.
    out = subprocess.run([LOOM, "submit", str(project), "--state-dir", str(state)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "✓ deploy" in out.stderr

    # 2. Placement: training workers and serving replicas used both nodes.
    train_nodes = {a.node_id for a in _actors(two_nodes["dashboard"], "RayTrainWorker", "DEAD")}
    replicas = _actors(two_nodes["dashboard"], "ServeReplica:", "ALIVE")
    assert len(train_nodes) == 2, train_nodes
    assert len({a.node_id for a in replicas}) == 2, [(a.class_name, a.node_id) for a in replicas]

    url = f"http://127.0.0.1:{port}"
    r = httpx.post(f"{url}/predict/churn", json=RECORD, timeout=10)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1

    # 3. A driver outside the cluster joins it through RAY_ADDRESS and redeploys the registered version.
    env_addr = {**two_nodes["env"], "RAY_ADDRESS": two_nodes["gcs"], "LOOM_STATE_DIR": str(state)}
    out = subprocess.run([LOOM, "deploy", str(project), "--version", "1", "--detach"], env=env_addr,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

    # 4. Stop the second node: serving keeps answering from the head node's replica.
    two_nodes["worker"].terminate()
    two_nodes["worker"].wait(timeout=60)
    started, results = time.monotonic(), []
    while time.monotonic() - started < 30:
        try:
            results.append(httpx.post(f"{url}/predict/churn", json=RECORD, timeout=5).status_code)
        except httpx.HTTPError:
            results.append(0)
        time.sleep(0.05)
    assert results[-20:] == [200] * 20, results[-40:]
    assert results.count(200) / len(results) >= 0.9, json.dumps(results)
