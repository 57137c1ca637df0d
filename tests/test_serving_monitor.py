"""One view of every replica: with two serving replicas, the deployment's monitor (a Ray actor) sees all the
traffic, every replica answers the monitoring routes with that view, and a killed monitor is restarted with its
window rebuilt from the capture store while no request fails."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from click.testing import CliRunner

from conftest import make_project
from runtime import load_project
from runtime.cli import cli
from runtime.serving import shutdown
from runtime.serving.monitor import NAMESPACE, monitor_name
from serving_models import data, records, register_version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, serve_port) -> Path:
    root = make_project(tmp_path_factory.mktemp("monitor") / "qs", port=serve_port,
                        serving={"route_prefix": "/monitored", "replicas": 2, "replica_cpus": 0.25},
                        monitoring={"window": 20000, "interval_s": None, "flush_interval_s": 0.5})
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["name"] = "monitor-test"
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    register_version(root, seed=1, alias="production")
    return root


@pytest.fixture(scope="module")
def served(ray_cluster, project_dir):
    result = CliRunner().invoke(cli, ["deploy", str(project_dir), "--detach"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    url = result.output.strip().splitlines()[-1]
    yield url, load_project(project_dir)
    shutdown(load_project(project_dir))


#: A new connection per request, so HAProxy spreads them over the replicas.
FRESH = httpx.Limits(max_keepalive_connections=0)


def _replicas(client: httpx.Client) -> set[str]:
    """The replicas that served requests (each answers /metrics with its own counts)."""
    seen = set()
    for _ in range(10):
        seen |= {line.split('replica="', 1)[1].split('"', 1)[0] for line in client.get("/metrics").text.splitlines()
                 if line.startswith("loom_requests_total{")}
    return seen


def _drift(client: httpx.Client, rows: int, timeout: float = 30) -> list[dict]:
    """Drift reports from several requests (so from both replicas), once the monitor has all ``rows``."""
    deadline = time.monotonic() + timeout
    reports: list[dict] = []
    while time.monotonic() < deadline:
        reports = [client.get("/monitoring/churn/drift").json() for _ in range(6)]
        if all(r.get("window_rows") == rows for r in reports):
            return reports
        time.sleep(0.5)
    raise AssertionError(f"the monitor never saw all {rows} rows: {[r.get('window_rows') for r in reports]}")


def test_every_replica_answers_with_the_whole_deployments_traffic(served, project_dir):
    url, project = served
    frame = data(project_dir)
    sent = 0
    with httpx.Client(base_url=url, timeout=60, limits=FRESH) as client:
        # requests of 20 rows on fresh connections, until both replicas have served some (HAProxy adds a new
        # replica to its backends within a reload) and at least 30 were sent
        deadline = time.monotonic() + 120
        while True:
            for _ in range(10):
                start = sent % 2000
                r = client.post("/predict/churn", json=records(frame.iloc[start:start + 20]))
                assert r.status_code == 200, r.text
                sent += 20
            if sent >= 600 and len(_replicas(client)) == 2 or time.monotonic() > deadline or sent >= 10_000:
                break
        assert len(_replicas(client)) == 2  # both replicas took requests
        reports = _drift(client, sent)
        assert {r["n_current"] for r in reports} == {min(sent, 5000)}  # the same, whichever replica answered
        labels = [{"id": client.post("/predict/churn", json=records(frame.iloc[i:i + 1]))
                   .headers["x-loom-request-id"], "label": bool(frame["churned"].iloc[i])} for i in range(40)]
        sent += 40
        assert client.post("/feedback/churn", json={"labels": labels}).json()["accepted"] == 40
        reports = _drift(client, sent)
        assert {r["performance"]["rows"] for r in reports} == {40}  # labels handed over by either replica
        history = client.get("/monitoring/churn/history").json()
        assert len(history) >= 12 and len({h["id"] for h in history}) == len(history)  # one history
        metrics = client.get("/metrics").text
        assert 'loom_drift_share{model="churn",replica="monitor",version="1"}' in metrics


def test_a_killed_monitor_is_restarted_with_its_window_and_no_request_fails(served, project_dir):
    url, project = served
    frame = data(project_dir)
    with httpx.Client(base_url=url, timeout=60, limits=FRESH) as client:
        before = _drift(client, client.get("/monitoring/churn/drift").json()["window_rows"])[0]["window_rows"]
        codes: Counter[int] = Counter()
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                i = 0
                while not stop.is_set():
                    codes[c.post("/predict/churn", json=records(frame.iloc[i % 500:i % 500 + 1])).status_code] += 1
                    i += 1

        thread = threading.Thread(target=traffic)
        thread.start()
        time.sleep(1)
        ray.kill(ray.get_actor(monitor_name(project), namespace=NAMESPACE), no_restart=False)
        time.sleep(3)
        stop.set()
        thread.join(30)
        assert codes and set(codes) == {200}, codes  # serving never depended on the monitor
        # the restarted monitor rebuilt its window from the store, and kept receiving
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = client.get("/monitoring/churn/drift")
            if r.status_code == 200 and r.json()["window_rows"] >= before:
                break
            time.sleep(1)
        assert r.status_code == 200 and r.json()["window_rows"] >= before, (before, r.text[:300])
