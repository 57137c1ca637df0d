"""docs/monitoring.md stays true: its settings block is the monitoring section with its defaults, every Prometheus
family and route it names exists, and its way of reading the capture store works."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from runtime.config import MonitoringConfig
from runtime.serving.capture import Capture, CaptureStore
from runtime.serving.drift import DriftMetrics
from runtime.serving.metrics import ServingMetrics

DOC = (Path(__file__).resolve().parents[1] / "docs" / "monitoring.md").read_text()


def test_settings_block_is_every_setting_with_its_default():
    block = re.search(r"## Settings\n\n```yaml\n(.*?)```", DOC, re.S).group(1)
    documented = yaml.safe_load(block)["monitoring"]
    defaults = MonitoringConfig().model_dump()
    assert documented == defaults
    assert MonitoringConfig.model_validate(documented) == MonitoringConfig()


def test_named_metrics_exist():
    serving = ServingMetrics("r")  # the replica's registry: capture counters live with the server
    registry = serving.registry
    metrics = DriftMetrics(registry, "r")
    metrics.record("m", 1, {"features": {"x": {"score": 0.5, "drifted": False}}, "share_drifted": 0.0,
                            "drifted": False, "prediction_drift": {"drifted": False},
                            "performance": {"accuracy": 1.0}, "trigger": "schedule"})
    metrics.record("reg", 1, {"features": {"x": {"score": 0.5, "drifted": False}}, "share_drifted": 0.0,
                              "drifted": False, "prediction_drift": {"drifted": False},
                              "performance": {"rmse": 2.5, "mae": 2.0, "r2": 0.9}, "trigger": "schedule"})
    serving.capture_dropped.inc()
    serving.capture_stored.inc()
    exported = {s.name for family in registry.collect() for s in family.samples}
    named = set(re.findall(r"`(loom_[a-z_]+)", DOC))
    assert named and named <= exported, named - exported


def test_named_routes_exist():
    import runtime.serving.app as app

    assert "localhost:8000/feedback/churn" in DOC
    named = set(re.findall(r"`(?:GET|POST) (/[\w/{}]+)", DOC)) | {"/feedback/{m}"}
    assert {"/monitoring/{m}/drift", "/monitoring/{m}/report", "/monitoring/{m}/history", "/feedback/{m}"} <= named
    source = Path(app.__file__).read_text()
    for route in named:
        assert f'"{route.replace("{m}", "{name}")}"' in source, route


def test_reading_the_store_as_documented(tmp_path: Path):
    store = CaptureStore(tmp_path, max_pending=100, flush_s=3600)
    for version in (1, 2):
        capture = Capture("churn", version, window=10, sample_rate=1.0, store=store)
        capture.add({"x": np.array([float(version)]), "c": ["a"]}, ["yes"], request_id=f"r{version}")
    store.flush()
    call = re.search(r'pd\.read_parquet\("\.loom/capture/model=churn"(.*?)\)', DOC).group(1)
    assert call == ", partitioning=None"
    rows = pd.read_parquet(tmp_path / "model=churn", partitioning=None).sort_values("version")
    assert rows["version"].tolist() == [1, 2] and rows["x"].tolist() == [1.0, 2.0]
    assert rows["request_id"].tolist() == ["r1", "r2"] and rows["prediction"].tolist() == ["yes", "yes"]
