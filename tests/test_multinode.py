"""A real two-node Ray cluster on one machine: `ray start --head` plus `ray start --address=...` as separate
processes. Loom's life cycle is submitted through the Ray Jobs API, training workers and serving replicas must land
on both nodes, and serving must keep answering after the second node is stopped."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import edit_config, free_port, make_project
from runtime import load_project
from serving_models import data, records, register_version
from services import fresh_database

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
def two_nodes(tmp_path_factory, s3_server, postgres_url):
    # Ray's token auth: every process talking to the cluster (nodes, CLI, this test's state/jobs clients) sends
    # the token from ~/.ray/auth_token.
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    gcs, dash = free_port(), free_port()
    # Not the embedded cluster's Serve ingress settings (this process set them for its own cluster: HAProxy's
    # stats/metrics ports are taken there); a `ray start` cluster uses what its operator exports.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_") and k != "RAY_API_SERVER_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    # As an operator gives every node its credentials: the object store's, and the database URL that loom.yaml
    # names as ${LOOM_TEST_DB} (interpolated on each node, never shipped).
    db = fresh_database(postgres_url)
    env.update(s3_server.env(), LOOM_TEST_DB=db)
    # Serve's proxy sends a request to a replica on its own node when it has one free: spread them instead, so
    # that the replica on the second node takes traffic without a load that would starve this 2-core machine.
    env["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
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
            # the second node runs from a working directory of its own
            elsewhere = tmp_path_factory.mktemp("second-node")
            nodes.append(subprocess.Popen([RAY, "start", "--address", f"127.0.0.1:{gcs}",
                                           "--dashboard-agent-listen-port", str(free_port()), *common], env=env,
                                          cwd=elsewhere, stdout=open(logs / "worker.log", "w"),
                                          stderr=subprocess.STDOUT))
            _wait(lambda: len([n for n in list_nodes(address=dashboard) if n.state == "ALIVE"]) == 2, 180,
                  "two nodes")
        # one Serve HTTP port for the cluster: Serve keeps the port it started on for every later application
        yield {"dashboard": dashboard, "gcs": f"127.0.0.1:{gcs}", "env": env, "head": nodes[0], "worker": nodes[1],
               "db": db, "port": free_port()}
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


def test_two_nodes_share_state_through_storage_and_one_monitor_sees_every_replica(two_nodes, s3_server,
                                                                                 tmp_path, monkeypatch):
    """State on PostgreSQL + S3: the version is registered, then the driver's state directory is deleted; two
    replicas on different nodes load it from storage, and the deployment's monitor counts every row served."""
    bucket = s3_server.bucket("loom-two-nodes")
    for k, v in {**s3_server.env(), "LOOM_TEST_DB": two_nodes["db"]}.items():
        monkeypatch.setenv(k, v)
    port = two_nodes["port"]
    project = make_project(tmp_path / "project", port=port,
                           serving={"replicas": 2, "replica_cpus": 0.5, "max_replicas_per_node": 1,
                                    "proxy_location": "HeadOnly", "route_prefix": "/shared"},
                           monitoring={"window": 100_000, "interval_s": None, "flush_interval_s": 0.5})
    edit_config(project, "storage", url=f"s3://{bucket}/loom", db="${LOOM_TEST_DB}")
    register_version(project, seed=1, alias="production")
    state = load_project(project).state_dir
    shutil.rmtree(state, ignore_errors=True)  # nothing of the project's state is on any node's disk now

    env = {**two_nodes["env"], "RAY_ADDRESS": two_nodes["gcs"], "RAY_API_SERVER_ADDRESS": two_nodes["dashboard"]}
    out = subprocess.run([LOOM, "deploy", str(project), "--detach"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        replicas = [a for a in _actors(two_nodes["dashboard"], "ServeReplica:", "ALIVE") if "ingress" in a.class_name]
        assert len(replicas) == 2 and len({a.node_id for a in replicas}) == 2, [(a.class_name, a.node_id)
                                                                                for a in replicas]
        url = f"http://127.0.0.1:{port}/shared"
        frame = data(project)
        sent, seen = 0, set()
        with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            deadline = time.monotonic() + 120
            while (len(seen) < 2 or sent < 400) and time.monotonic() < deadline:
                r = client.post("/predict/churn", json=records(frame.sample(10, random_state=sent)))
                assert r.status_code == 200, r.text
                sent += 10
                seen |= {line.split('replica="', 1)[1].split('"', 1)[0]
                         for line in client.get("/metrics").text.splitlines()
                         if line.startswith("loom_requests_total{")}
            assert len(seen) == 2, f"HAProxy never reached both replicas: {seen}"
            deadline, answers = time.monotonic() + 60, []
            while time.monotonic() < deadline:
                answers = [client.get("/monitoring/churn/drift").json() for _ in range(6)]
                if all(a.get("n_current") == sent for a in answers):
                    break
                time.sleep(0.5)
            assert [a.get("n_current") for a in answers] == [sent] * 6, answers[:1]
        assert not state.exists(), "something wrote the driver's state directory instead of the shared storage"
    finally:
        subprocess.run([LOOM, "scale-to-zero", str(project)], env=env, capture_output=True, text=True, timeout=120)


def test_life_cycle_on_two_nodes_survives_losing_one(two_nodes, tmp_path):
    port = two_nodes["port"]
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
