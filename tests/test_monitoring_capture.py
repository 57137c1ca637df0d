"""Capture, feedback and drift checks of a model server over real HTTP (uvicorn), without Ray: request ids, the
Parquet capture store, drops under overload, ``/feedback``, the drift JSON with prediction drift, data quality and
performance, the HTML report, history and the Prometheus gauges."""

from __future__ import annotations

import gc
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from serving_models import data, oip_inputs, records, register_version
from test_serving_protocols import ThreadedServer, _free_port

from conftest import make_project
from runtime import hookimpl
from runtime.model import Preprocessor
from runtime.serving.app import LoomApp
from runtime.serving.capture import Capture, CaptureStore, read_captured, read_feedback
from runtime.serving.encoding import FeatureEncoder
from runtime.serving.routing import RoutingTable
from runtime.serving.server import ModelServer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("monitoring") / "qs", port=_free_port(),
                        monitoring={"window": 400, "flush_interval_s": 0.2, "interval_s": 0.5,
                                                             "min_rows": 1000})
    register_version(root, seed=1)
    server = ModelServer.from_project(str(root))
    server.apply(RoutingTable().deploy("churn", 1))
    with ThreadedServer(LoomApp(server)) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield root, server, client


def test_request_ids_are_the_servers_and_the_clients_is_kept(served):
    """The server names every request itself (X-Loom-Request-ID, what feedback names): a client cannot choose the
    ids the loop judges by. The client's own id is echoed and kept beside it."""
    _, _, client = served
    rows = records(data(served[0]).head(2))
    r = client.post("/predict/churn", json=rows, headers={"X-Request-ID": "abc-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-1"
    ours = r.headers["x-loom-request-id"]
    assert len(ours) == 32 and ours != "abc-1"
    again = client.post("/predict/churn", json=rows, headers={"X-Request-ID": "abc-1"}).headers["x-loom-request-id"]
    assert again != ours  # the same client id twice is still two requests
    generated = client.post("/predict/churn", json=rows)
    assert generated.headers["x-request-id"] == generated.headers["x-loom-request-id"]
    r = client.post("/v2/models/churn/infer", json={"id": "oip-7", "inputs": oip_inputs(data(served[0]).head(1))})
    assert r.status_code == 200 and r.headers["x-request-id"] == "oip-7" and r.json()["id"] == "oip-7"
    assert r.headers["x-loom-request-id"] != "oip-7"


def test_capture_store_partitions_by_model_version_date(served):
    root, server, client = served
    rows = data(root).iloc[:50]
    client_id = uuid.uuid4().hex
    r = client.post("/predict/churn", json=records(rows), headers={"X-Request-ID": client_id})
    assert r.status_code == 200
    rid = r.headers["x-loom-request-id"]
    store = server.project.capture_dir
    deadline = time.monotonic() + 10
    while rid not in set(read_captured(store, "churn", 1)["request_id"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    captured = read_captured(store, "churn", 1)
    mine = captured[captured["request_id"] == rid]
    assert list(mine["row"]) == list(range(50)) and (mine["version"] == 1).all()
    assert (mine["client_request_id"] == client_id).all()
    assert mine["latency_ms"].iloc[0] > 0 and set(mine["monthly_charges"]) == set(rows["monthly_charges"])
    assert {p.name.split("=")[0] for p in (store / "model=churn" / "version=1").iterdir()} == {"date"}


def test_capture_drops_and_counts_when_the_store_is_full(tmp_path: Path):
    store = CaptureStore(tmp_path, max_pending=3, flush_s=3600)
    capture = Capture("m", 1, window=100, sample_rate=1.0, store=store)
    for _ in range(5):
        capture.add({"x": [1.0]}, ["a"])
    assert (store.dropped, len(capture.frame())) == (2, 5)
    store.flush()
    assert len(read_captured(tmp_path, "m")) == 3


def test_window_and_store_buffer_are_sized_in_rows(tmp_path: Path):
    """A 40-row request weighs 40 rows, not one request: the buffer refuses what would take it past max_pending
    rows, and the window keeps the newest `window` rows."""
    store = CaptureStore(tmp_path, max_pending=100, flush_s=3600)
    capture = Capture("m", 1, window=50, sample_rate=1.0, store=store)
    for i in range(3):
        capture.add({"x": [float(i)] * 40}, ["a"] * 40)
    assert (store.dropped, store.pending_rows) == (1, 80)
    window = capture.frame()
    assert len(window) == 50 and window["x"].tolist() == [1.0] * 10 + [2.0] * 40
    assert sum(s[6] for s in capture._chunks) < 50 + 40  # older requests are let go, not just trimmed
    store.flush()
    assert store.pending_rows == 0 and len(read_captured(tmp_path, "m")) == 80
    capture.add({"x": [9.0] * 120}, ["b"] * 120)  # one request larger than the window is kept whole
    assert len(capture.frame()) == 50 and store.dropped == 2


def _typed_capture(tmp_path: Path) -> tuple[Capture, CaptureStore, FeatureEncoder]:
    schema = {"f": {"type": "float"}, "n": {"type": "int"}, "b": {"type": "bool"}, "c": {"type": "string"}}
    pre = Preprocessor(numeric=["f", "n", "b"], categorical={"c": ["a", "b"]}, medians=[0.0] * 3, means=[0.0] * 3,
                       stds=[1.0] * 3)
    store = CaptureStore(tmp_path, max_pending=100, flush_s=3600)
    capture = Capture("m", 1, window=100, sample_rate=1.0, store=store, schema=schema, numeric=tuple(pre.numeric))
    return capture, store, FeatureEncoder(pre)


def test_capture_keeps_every_input_exactly_as_sent(tmp_path: Path):
    """Numbers the encoder already holds are kept from its matrix; integers, booleans, text and missing values
    must come back from the store and the window exactly as the requests sent them, whatever their shape."""
    capture, store, encode = _typed_capture(tmp_path)
    big = 2 ** 60 + 1  # not representable in float64: integers must not go through the matrix
    requests = [  # JSON one-row, JSON several rows with nulls, binary tensors (numpy arrays)
        {"f": [1.5], "n": [big], "b": [None], "c": ["a"]},
        {"f": [None, 2.0], "n": [3, None], "b": [True, False], "c": ["b", None]},
        {"f": np.array([7.25]), "n": np.array([5], dtype=np.int64), "b": np.array([True]), "c": ["zz"]},
    ]
    for i, cols in enumerate(requests):
        rows = len(cols["f"])
        matrix = encode.numeric_matrix(cols) if i != 1 else None  # without it, capture builds it the same way
        capture.add(cols, [f"p{i}"] * rows, matrix=matrix, request_id=f"r{i}", latency_s=0.002)
    expected = {"request_id": ["r0", "r1", "r1", "r2"], "row": [0, 0, 1, 0], "version": [1] * 4,
                "latency_ms": [2.0] * 4, "f": [1.5, None, 2.0, 7.25], "n": [big, 3, None, 5],
                "b": [None, True, False, True], "c": ["a", "b", None, "zz"],
                "prediction": ["p0", "p1", "p1", "p2"]}
    store.flush()
    stored = pq.read_table(next(tmp_path.glob("model=m/version=1/date=*/part-*.parquet")))
    assert stored.column_names == ["request_id", "client_request_id", "row", "ts", "version", "latency_ms", "f",
                                   "n", "b", "c", "prediction"]
    assert {c: stored[c].to_pylist() for c in expected} == expected
    assert (stored.schema.field("f").type, stored.schema.field("n").type, stored.schema.field("b").type) == (
        pa.float64(), pa.int64(), pa.bool_())
    window = capture.frame()
    assert window["f"].tolist()[::2] == [1.5, 2.0] and np.isnan(window["f"][1])
    assert window["b"].tolist() == [None, True, False, True] and window["c"].tolist() == ["a", "b", None, "zz"]
    assert [None if pd.isna(v) else int(v) for v in window["n"]][1:] == [3, None, 5]


def test_captured_samples_cost_the_garbage_collector_nothing(tmp_path: Path):
    """Samples live for seconds in the window and the store's buffer: the collector must stop tracking them, or
    every full collection walks them all (measured: 15% of serving throughput with 30 inputs)."""
    capture, store, encode = _typed_capture(tmp_path)
    for i in range(50):
        cols = {"f": [float(i)], "n": [i], "b": [i % 2 == 0], "c": ["a"]}
        capture.add(cols, ["p"], matrix=encode.numeric_matrix(cols), request_id=f"r{i}")
    gc.collect()  # one-row samples (the common case) are flat: the first collection that sees them untracks them
    assert not any(gc.is_tracked(s) for s in list(store._pending) + list(capture._chunks))
    cols = {"f": [1.0, 2.0], "n": [1, 2], "b": [True, None], "c": ["a", "b"]}
    capture.add(cols, ["p", "q"], matrix=encode.numeric_matrix(cols))
    gc.collect()
    gc.collect()  # a several-row sample holds tuples: untracked once they are
    assert not any(gc.is_tracked(s) for s in list(store._pending) + list(capture._chunks))


def test_feedback_validates_and_feeds_performance(served):
    root, server, client = served
    df = data(root).iloc[100:400]
    ids = []
    for start in range(0, 300, 30):
        r = client.post("/predict/churn", json=records(df.iloc[start:start + 30]))
        ids.append(r.headers["x-loom-request-id"])
    labels = [{"id": rid, "label": df["churned"].iloc[i * 30:(i + 1) * 30].tolist()} for i, rid in enumerate(ids)]
    assert client.post("/feedback/churn", json={"labels": labels}).json() == {"model": "churn", "accepted": 300}
    assert client.post("/feedback/churn", json={"labels": [{"id": ids[0], "label": "maybe"}]}).status_code == 422
    assert client.post("/feedback/churn", json={"nope": 1}).status_code == 400
    assert client.post("/feedback/churn", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/feedback/nothere", json={"labels": labels}).status_code == 404
    report = client.get("/monitoring/churn/drift").json()
    assert report["performance"]["rows"] >= 300 and 0.5 < report["performance"]["accuracy"] <= 1
    assert report["prediction_drift"]["method"] and report["data_quality"]["contract"]["new_categories"] == 0
    deadline = time.monotonic() + 10
    while len(read_feedback(server.project.capture_dir, "churn")) < 300 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(read_feedback(server.project.capture_dir, "churn")) == 300


def test_drift_quality_history_report_and_gauges(served):
    root, _, client = served
    shifted = data(root).iloc[:800].assign(monthly_charges=lambda f: (f["monthly_charges"] * 1.5 + 40).clip(0, 500),
                                           support_calls=lambda f: (f["support_calls"] + 6).clip(0, 50),
                                           tenure_months=lambda f: f["tenure_months"] // 4, contract="month-to-month",
                                           internet_service="fiber", payment_method="electronic-check")
    for start in range(0, 800, 100):
        assert client.post("/predict/churn", json=records(shifted.iloc[start:start + 100])).status_code == 200
    report = client.get("/monitoring/churn/drift").json()
    assert report["drifted"] and report["features"]["monthly_charges"]["drifted"], report["features"]
    assert report["n_current"] == 400 and report["prediction_drift"]["drifted"]
    assert report["data_quality"]["total_charges"]["missing"] >= 0
    assert report["data_quality"]["monthly_charges"]["out_of_range"] == 0  # requests are validated on the way in
    history = client.get("/monitoring/churn/history").json()
    mine = next(h for h in history if h["id"] == report["id"])
    assert "monthly_charges" in mine["drifted_features"]
    html = client.get("/monitoring/churn/report")
    assert html.status_code == 200 and "<html" in html.text.lower()
    metrics = client.get("/metrics").text
    assert 'loom_drift_score{' in metrics and 'feature="monthly_charges"' in metrics
    assert "loom_capture_dropped_total" in metrics and "loom_drift_detected{" in metrics
    assert client.get("/monitoring/nothere/history").status_code == 404


def test_a_failing_drift_hook_is_named_not_a_500(served):
    root, server, client = served

    class Failing:
        @hookimpl
        def loom_drift_detected(self, project, model, version, report):
            raise RuntimeError("pager is down")

    failing = Failing()
    server.plugins.pm.register(failing, name="FailingPager")
    try:
        r = client.get("/monitoring/churn/drift")
        assert r.status_code == 200, r.text
        assert "FailingPager" in r.json()["hook_error"] and "pager is down" in r.json()["hook_error"]
    finally:
        server.plugins.pm.unregister(failing)


def test_scheduled_checks_run_once_enough_new_rows_arrive(served):
    root, _, client = served
    before = len(client.get("/monitoring/churn/history").json())
    for start in range(0, 1000, 200):
        assert client.post("/predict/churn", json=records(data(root).iloc[start:start + 200])).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        history = client.get("/monitoring/churn/history").json()
        if any(h["trigger"] == "schedule" for h in history[before:]):
            break
        time.sleep(0.2)
    assert any(h["trigger"] == "schedule" for h in history[before:]), history[before:]
