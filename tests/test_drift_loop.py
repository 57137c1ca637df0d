"""The scenario of issue 6 on real Ray Train and Ray Serve: serve the quickstart model, replay undrifted traffic (no
alert from the scheduled checks), then shifted traffic (an alert within the configured window), then the driver-side
loop retrains on fresh data, deploys a canary, judges it on labelled served rows and promotes it."""

from __future__ import annotations

import importlib.util
import json
import time

import httpx
import pandas as pd
import pytest
import yaml

from conftest import make_project
from runtime import Pipeline, load_project
from runtime.retrain_loop import RetrainLoop
from runtime.serving import current_table, shutdown

pytestmark = pytest.mark.slow

FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "paperless_billing", "contract",
            "internet_service", "payment_method"]


def generator(root):
    spec = importlib.util.spec_from_file_location("generate_data", root / "generate_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate


def new_concept(frame: pd.DataFrame) -> pd.DataFrame:
    """Drifted traffic whose outcome now follows support calls alone: the served model no longer knows it."""
    return frame.assign(churned=frame["support_calls"] >= 3)


def loop_project(dest, port: int, name: str, route_prefix: str, **retrain):
    """A quickstart project named ``name`` with the retrain loop on (``retrain`` on top of the loop's test
    settings), whose fresh data follows :func:`new_concept`."""
    root = make_project(dest, port=port, training={"workers": 1, "epochs": 3},
                        serving={"route_prefix": route_prefix},
                        monitoring={"window": 300, "interval_s": 1, "min_rows": 100, "flush_interval_s": 0.2,
                                    "retrain": {"enabled": True, "source": "csv://data/fresh.csv",
                                                "canary_percent": 50, "cooldown_s": 0, "workers": 1, **retrain}})
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["name"] = name
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    new_concept(generator(root)(4000, seed=11, drift=1.0)).to_csv(root / "data" / "fresh.csv", index=False)
    return root


@pytest.fixture(scope="module")
def project(ray_cluster, serve_port, tmp_path_factory):
    root = loop_project(tmp_path_factory.mktemp("loop") / "qs", serve_port, "drift-loop", "/driftloop",
                        min_labelled=200, shadow_requests=6, controller=False)
    result = Pipeline(root).up()
    yield root, result
    shutdown(load_project(root))


def replay(client: httpx.Client, frame: pd.DataFrame, *, batch: int = 50) -> list[tuple[str, pd.DataFrame]]:
    sent = []
    for start in range(0, len(frame), batch):
        part = frame.iloc[start:start + batch]
        r = client.post("/predict/churn", content=part[FEATURES].to_json(orient="records"),
                        headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        sent.append((r.headers["x-loom-request-id"], part))
    return sent


def label(client: httpx.Client, sent: list[tuple[str, pd.DataFrame]]) -> None:
    labels = [{"id": rid, "label": part["churned"].tolist()} for rid, part in sent]
    assert client.post("/feedback/churn", json={"labels": labels}).status_code == 200


def wait_check(client: httpx.Client, after: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = client.get("/monitoring/churn/history").json()
        if len(history) > after:
            return history[-1]
        time.sleep(0.3)
    raise AssertionError("no scheduled drift check ran")


def test_undrifted_then_shifted_traffic_then_the_loop_promotes_a_retrained_version(project):
    root, result = project
    generate = generator(root)
    client = httpx.Client(base_url=result.url, timeout=120)
    calm = generate(1200, seed=21)
    replay(client, calm.iloc[:300])
    first = wait_check(client, 0)
    assert first["trigger"] == "schedule" and not first["drifted"]

    shifted = new_concept(generate(1200, seed=22, drift=1.0))
    checks = len(client.get("/monitoring/churn/history").json())
    sent = replay(client, shifted.iloc[:300])
    alert = wait_check(client, checks)
    assert alert["drifted"], alert
    label(client, sent)

    loop = RetrainLoop(load_project(root))
    outcome = loop.step()
    assert outcome and outcome.startswith("shadow v"), outcome
    new = int(outcome.split("v")[-1])
    registry = loop.pipe.registry
    candidate = registry.get_version("churn", new)
    # registered as the candidate: production has not moved, and the round learnt from the labelled traffic
    assert list(candidate.aliases) == ["candidate"]
    assert "production" in registry.get_version("churn", result.version.version).aliases
    retrain = candidate.lineage["retrain"]
    assert retrain["capture"]["rows_labelled"] == 300 and retrain["retrained_from"] == result.version.version
    assert candidate.lineage["data"]["rows"] > 4000 * 0.9 + 300 * 0.9
    routes = current_table(loop.project).models["churn"]
    assert routes.shadow == new and routes.primary == result.version.version and routes.canary is None

    assert loop.step() is None  # too few mirrored requests yet
    answered = replay(client, shifted.iloc[300:400], batch=10)  # the shadow scores these; production answers
    assert len(answered) == 10
    time.sleep(1)
    assert loop.step() == f"canary v{new}"
    routes = current_table(loop.project).models["churn"]
    assert routes.canary == new and routes.primary == result.version.version and routes.shadow is None
    assert int(registry.get_version("churn", new).tags["loom.shadow_requests"]) >= 6

    label(client, replay(client, shifted.iloc[400:800]))
    time.sleep(1)  # the capture store flushes every 0.2 s
    assert loop.step() == f"promoted v{new}"
    version = registry.get_version("churn", new)
    assert version.tags["loom.loop"] == "promoted" and version.tags["loom.retrained_from"] == str(result.version.version)
    assert float(version.tags["loom.accuracy"]) > float(version.tags["loom.accuracy_previous"])
    guards = json.loads(version.tags["loom.judge.guards"])
    assert guards["passed"] and guards["candidate"]["requests"] > 0
    assert list(version.aliases) == ["production"] and current_table(loop.project).models["churn"].primary == new
    assert loop.state()["outcome"] == "promoted" and loop.state()["verdict"]["promoted"]
    report = json.loads((loop.root / "loop" / f"churn-v{new}-drift-{version.tags['loom.drift_report']}.json").read_text())
    assert report["drifted"] and report["model"] == "churn"
    client.close()
