"""A shadow version on the real thing (Ray Serve, the deployment's monitor): it scores the primary's requests off
their path and answers none of them; ``/monitoring/{model}/traffic`` shows the comparison and each version's
requests, errors, rate and latency, and after ``unshadow`` nothing is compared any more."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import make_project
from runtime import load_project
from runtime.serving import ServingClient, current_table, deploy, read_captured, shadow, shutdown, unshadow
from serving_models import data, oip_inputs, records, register_version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, serve_port) -> Path:
    root = make_project(tmp_path_factory.mktemp("shadow") / "qs", port=serve_port,
                        serving={"route_prefix": "/shadowed", "replica_cpus": 0.25},
                        monitoring={"interval_s": None, "flush_interval_s": 0.5})
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["name"] = "shadow-test"
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    register_version(root, seed=1, alias="production")
    register_version(root, seed=2, hidden=(8,), steps=50, alias=None)
    return root


@pytest.fixture(scope="module")
def served(ray_cluster, project_dir):
    project = load_project(project_dir)
    yield deploy(project, "churn", 1), project
    shutdown(project)


def _traffic(client: ServingClient, until, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = client.traffic("churn", 60)
        if until(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def _shadow_rows(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("loom_shadow_rows_total{") and 'version="2"' in line)


def test_a_shadow_scores_the_primarys_requests_and_traffic_shows_it(served, project_dir):
    url, project = served
    shadow(project, "churn", 2)
    assert current_table(project).routes("churn").shadow == 2
    frame, n = data(project_dir), 30
    client = ServingClient(url, timeout_s=60)
    with httpx.Client(base_url=url, timeout=60) as c:
        ids = []
        for i in range(n):
            r = c.post("/predict/churn", json=records(frame.iloc[2 * i:2 * i + 2]))
            assert r.status_code == 200 and r.json()["version"] == 1, r.text  # the primary answers
            ids.append(r.headers["x-loom-request-id"])
        named = c.post("/v2/models/churn/versions/1/infer", json={"inputs": oip_inputs(frame.iloc[:1])})
        assert named.status_code == 200 and named.json()["model_version"] == "1"  # named a version: no shadow
        bad = c.post("/predict/churn", json={"records": [{"nope": 1}]})
        assert 400 <= bad.status_code < 500, bad.text

        t = _traffic(client, lambda t: (t["shadow"] or {}).get("requests", 0) >= n
                     and t["versions"].get("1", {}).get("client_errors", 0) >= 1)
        s = t["shadow"]
        assert (s["version"], s["requests"], s["rows"], s["errors"], s["skipped"]) == (2, n, 2 * n, 0, 0), s
        assert 0 <= s["agreement"] <= 1 and s["agree_rows"] <= s["rows"]
        v1 = t["versions"]["1"]
        assert v1["requests"] >= n + 2 and v1["rps"] > 0 and v1["errors"] == 0 and v1["client_errors"] >= 1, v1
        assert v1["p99_ms"] >= v1["p50_ms"] > 0, v1
        assert "2" not in t["versions"]  # the shadow answers no request of its own
        assert t["window_s"] == 60 and any(point.get("1", 0) > 0 for point in t["series"]), t["series"]
        # the shadow's rows are captured under its version, with the primary's request ids
        captured = read_captured(project.capture_uri, "churn", 2)
        assert set(captured["request_id"]) == set(ids) and len(captured) == 2 * n
        assert _shadow_rows(c.get("/metrics").text) == 2 * n

        for query, status in [("?window_s=soon", 400), ("?window_s=0", 400), ("?window_s=nan", 400)]:
            r = c.get(f"/monitoring/churn/traffic{query}")
            assert r.status_code == status and "window_s" in r.json()["error"], r.text
        r = c.get("/monitoring/nope/traffic")
        assert r.status_code == 404 and "nope" in r.json()["error"]

        unshadow(project, "churn")
        assert current_table(project).routes("churn").shadow is None
        before = _shadow_rows(c.get("/metrics").text)
        for i in range(5):
            assert c.post("/predict/churn", json=records(frame.iloc[i:i + 1])).status_code == 200
        t = client.traffic("churn", 60)
        assert t["shadow"] is None and t["versions"]["1"]["requests"] >= n + 7
        time.sleep(0.5)  # a shadow task would have run by now
        assert _shadow_rows(c.get("/metrics").text) == before


def test_traffic_adds_up_replica_runs_over_the_window():
    """Pure: deltas per replica run over the window, a restarted replica (a new run from zero), a run first seen
    mid-life (a restarted monitor), latency quantiles from bucket deltas, and the shadow's totals."""
    from runtime.serving.metrics import ServingMetrics, TrafficStats, quantile

    stats, now = TrafficStats(), 10_000.0

    def send(m: ServingMetrics, at: float) -> None:
        stats.add(m.snapshot(), at=at)

    old = ServingMetrics("a")
    for _ in range(50):
        old.observe("churn", "1", "predict", 200, 0.003)
    send(old, now - 120)  # before the window: its 50 requests are not in it
    for _ in range(10):
        old.observe("churn", "1", "predict", 200, 0.003)
    old.observe("churn", "1", "predict", 503, 0.003)
    send(old, now - 30)  # then the replica died
    new = ServingMetrics("a")  # its restart counts from zero again
    new.observe("churn", "1", "predict", 200, 0.2)
    new.observe("churn", "1", "predict", 422, 0.001)
    new.shadow_counts("churn", 2, False).compare(["yes", "no"], ["yes", "yes"])
    send(new, now - 5)
    seen_late = ServingMetrics("b")
    seen_late.snapshot()  # (sent to a monitor that then restarted)
    for _ in range(7):
        seen_late.observe("churn", "1", "predict", 200, 0.003)
    send(seen_late, now - 20)
    for _ in range(3):
        seen_late.observe("churn", "1", "predict", 200, 0.003)
    send(seen_late, now - 2)

    t = stats.traffic("churn", 60, live=(1,), shadow=2, now=now)
    v1 = t["versions"]["1"]
    assert (v1["requests"], v1["errors"], v1["client_errors"]) == (11 + 2 + 3, 1, 1), v1
    assert v1["rps"] == round(16 / 60, 3) and v1["error_rate"] == round(1 / 16, 6)
    assert 2.5 <= v1["p50_ms"] <= 5 and 100 <= v1["p99_ms"] <= 250, v1
    assert t["shadow"] == {"version": 2, "requests": 1, "rows": 2, "agree_rows": 1, "errors": 0, "skipped": 0,
                           "agreement": 0.5}
    assert sum(p["1"] for p in t["series"]) * 5 == pytest.approx(16)
    assert stats.traffic("churn", 60, shadow=None, now=now)["shadow"] is None
    assert quantile(0.5, [0, 10, 10]) == pytest.approx(0.00075) and quantile(0.5, [0, 0, 0]) is None
