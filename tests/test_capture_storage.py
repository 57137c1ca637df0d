"""Captured traffic, feedback and drift history on any storage (a local directory, S3 on the session's moto
server, an fsspec file system), and serving through a storage outage: a store whose bucket is deleted keeps
accepting samples, counts what it drops, reports itself not ok (its URI redacted) and recovers when the bucket is
back; an endpoint that refuses connections, or takes them and never answers, fails a flush within seconds and is
then left alone for ``retry_s``; a server behind an S3 capture store keeps answering 200 while the bucket is gone
and says so in ``/monitoring/{m}/drift``. No Ray.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from serving_models import data, records, register_version
from test_serving_protocols import ThreadedServer

from conftest import free_port, make_project
from runtime.config import MonitoringConfig
from runtime.serving.app import LoomApp
from runtime.serving.capture import Capture, CaptureStore, capture_location, put, read_captured, read_feedback
from runtime.serving.drift import DriftChecks, check_name, read_drift_history
from runtime.serving.routing import RoutingTable
from runtime.serving.server import ModelServer

SCHEMA = {"f": {"type": "float"}, "n": {"type": "int"}, "b": {"type": "bool"}, "c": {"type": "string"}}
#: The seconds within which a write to an unreachable endpoint must give up (refused: well under a second; an
#: endpoint that never answers: about 11 s with the capture store's timeouts).
FAILS_WITHIN_S = 20


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


def _bucket(s3: Any) -> str:
    """A fresh bucket of this test's own (made through the client: the fixture's cache would not remake it)."""
    name = f"cap-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


def _delete_bucket(s3: Any, name: str) -> None:
    client = s3.client()
    keys = [{"Key": o["Key"]} for o in client.list_objects_v2(Bucket=name).get("Contents", [])]
    if keys:
        client.delete_objects(Bucket=name, Delete={"Objects": keys})
    client.delete_bucket(Bucket=name)


@pytest.fixture(params=["local", "s3", "fsspec"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A capture store: a local directory, an S3 prefix, or a file system with directories and moves (fsspec's
    in-memory one: parts are written to a hidden temporary, then moved)."""
    if request.param == "local":
        return str(tmp_path / "capture")
    if request.param == "fsspec":
        return f"memory://loom-{uuid.uuid4().hex[:8]}/capture"
    s3 = request.getfixturevalue("s3_env")
    return f"s3://{_bucket(s3)}/loom/capture"


def _capture(store: CaptureStore, version: int = 1) -> Capture:
    return Capture("m", version, window=1000, sample_rate=1.0, store=store, schema=SCHEMA, numeric=("f", "n", "b"))


def _send(capture: Capture, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        rid = f"r{i:05d}"
        capture.add({"f": [i / 2], "n": [i], "b": [i % 2 == 0], "c": [f"k{i % 3}"]}, [f"p{i % 2}"], request_id=rid)
        ids.append(rid)
    return ids


def _fake_server(uri: str, store: CaptureStore | None) -> Any:
    """What DriftChecks reads of a ModelServer to keep and read back its history."""
    project = SimpleNamespace(config=SimpleNamespace(monitoring=MonitoringConfig(interval_s=None, history=5)),
                              capture_uri=uri)
    return SimpleNamespace(project=project, metrics=SimpleNamespace(registry=CollectorRegistry(), replica="r"),
                           store=store, routes=lambda name: None)


def _check(i: int) -> dict[str, Any]:
    """A drift check's answer, as much of it as the history keeps."""
    return {"id": f"check{i:03d}", "at": "2025-01-01T00:00:00Z", "trigger": "on demand", "model": "m", "version": 1,
            "drifted": i % 2 == 1, "share_drifted": 0.5, "n_current": 10, "window_rows": 10,
            "retrain_requested": False, "seconds": 0.1, "features": {"f": {"drifted": True, "score": 0.01}},
            "prediction_drift": {"drifted": False}}


def test_captured_rows_feedback_and_drift_history_round_trip(store_uri: str) -> None:
    store = CaptureStore(store_uri, max_pending=10_000, flush_s=3600)
    v1, v2 = _capture(store, 1), _capture(store, 2)
    ids = _send(v1, 30) + _send(v2, 5, start=30)
    store.flush()
    ids += _send(v1, 10, start=35)
    store.add_feedback("m", pd.DataFrame({"request_id": ids[:3], "row": [0, 0, 0],
                                                            "label": ["yes", "no", "yes"]}))
    store.flush()
    assert (store.written, store.dropped) == (45, 0)
    status = store.status()
    assert status["ok"] and status["error"] is None and status["uri"] == store_uri and status["written"] == 45

    rows = read_captured(store_uri, "m")
    assert list(rows["request_id"]) == ids  # oldest first, every version
    assert rows["n"].tolist() == list(range(45)) and rows["c"].tolist() == [f"k{i % 3}" for i in range(45)]
    assert rows["b"].tolist() == [i % 2 == 0 for i in range(45)] and str(rows["ts"].dtype).startswith("datetime64")
    assert list(read_captured(store_uri, "m", 2)["request_id"]) == ids[30:35]
    assert read_captured(store_uri, "nothere").empty
    labels = read_feedback(store_uri, "m")
    assert sorted(zip(labels["request_id"], labels["label"])) == sorted(zip(ids[:3], ["yes", "no", "yes"]))

    # only whole parts under their final names: no temporaries, nothing hidden
    location = capture_location(store_uri)
    names = location.files()
    assert len(names) == 4 and all(n.rsplit("/", 1)[1].startswith("part-") for n in names), names

    # drift history: one record per check, read back in order; a restarted monitor starts from it
    checks = DriftChecks(_fake_server(store_uri, store), schedule=False)
    for i in range(7):
        checks._remember("m", _check(i))
        time.sleep(0.002)  # distinct millisecond names
    stored = read_drift_history(store_uri, "m")
    assert [r["id"] for r in stored] == [f"check{i:03d}" for i in range(7)]
    assert stored[0]["report"]["features"]["f"]["score"] == 0.01 and stored[3]["drifted_features"] == ["f"]
    assert [r["id"] for r in read_drift_history(store_uri, "m", limit=2)] == ["check005", "check006"]
    restarted = DriftChecks(_fake_server(store_uri, None), schedule=False)  # the monitor has no store of its own
    restarted._remember("m", _check(99))
    assert restarted.seed_history("m") == 4  # history: 5 kept
    assert [h["id"] for h in restarted.history("m")] == ["check003", "check004", "check005", "check006", "check099"]
    assert "report" not in restarted.history("m")[0]


def test_an_appended_history_file_is_still_read_first(tmp_path: Path) -> None:
    base = tmp_path / "drift" / "model=m"
    base.mkdir(parents=True)
    (base / "history.jsonl").write_text(json.dumps({"id": "old1"}) + "\n" + json.dumps({"id": "old2"}) + "\n"
                                        + '{"id": "cut sh')  # a crash mid-append
    put(capture_location(tmp_path), check_name("m", "new1"), json.dumps({"id": "new1"}).encode())
    assert [r["id"] for r in read_drift_history(tmp_path, "m")] == ["old1", "old2", "new1"]
    assert [r["id"] for r in read_drift_history(str(tmp_path), "m", limit=2)] == ["old2", "new1"]


def test_a_deleted_bucket_drops_and_reports_then_recovers(s3_env: Any) -> None:
    bucket = _bucket(s3_env)
    secret = uuid.uuid4().hex
    uri = f"s3://{s3_env.access_key}:{secret}@{bucket}/capture"  # moto takes any secret: it must never show
    drops: list[int] = []
    store = CaptureStore(uri, max_pending=10_000, flush_s=3600, retry_s=0, on_drop=drops.append)
    capture = _capture(store)
    _send(capture, 20)
    store.flush()
    assert store.status()["ok"] and store.written == 20

    _delete_bucket(s3_env, bucket)
    started = time.perf_counter()
    _send(capture, 50, start=20)  # offers never wait on the store
    assert time.perf_counter() - started < 1 and store.pending_rows == 50
    store.flush()
    store.add_feedback("m", pd.DataFrame({"request_id": ["r00001"], "row": [0], "label": ["x"]}))
    store.flush()
    status = store.status()
    assert not status["ok"] and status["dropped"] == 50 and sum(drops) == 50 and status["feedback_dropped"] == 1
    assert status["written"] == 20 and status["pending_rows"] == 0
    assert bucket in status["error"] and "\n" not in status["error"]
    assert status["uri"] == f"s3://{s3_env.access_key}:***@{bucket}/capture"
    assert secret not in json.dumps(status)
    assert len(capture.frame()) == 70  # the drift window still has every row
    with pytest.raises(OSError):
        store.write_object("drift/model=m/x.json", b"{}")

    s3_env.client().create_bucket(Bucket=bucket)  # the bucket is back
    ids = _send(capture, 5, start=70)
    store.flush()
    status = store.status()
    assert status["ok"] and status["error"] is None and status["written"] == 25 and status["dropped"] == 50
    assert list(read_captured(uri, "m")["request_id"]) == ids  # what was written before the deletion went with it


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers on them."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("endpoint", ["refusing", "silent"])
def test_an_unreachable_endpoint_fails_within_seconds_and_is_then_left_alone(
        endpoint: str, s3_env: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Nothing listening (refused at once), or an endpoint that takes the connection and never answers: the store's
    short request timeout gives up in about 10 s, where the default storage timeouts would wait over a minute."""
    port = free_port() if endpoint == "refusing" else request.getfixturevalue("silent_port")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    store = CaptureStore("s3://nowhere/capture", max_pending=10_000, flush_s=3600, retry_s=60)
    capture = _capture(store)
    started = time.perf_counter()
    _send(capture, 100)
    assert time.perf_counter() - started < 1
    started = time.perf_counter()
    store.flush()
    took = time.perf_counter() - started
    status = store.status()
    assert took < FAILS_WITHIN_S and not status["ok"] and status["dropped"] == 100, (took, status)
    assert "NETWORK_CONNECTION" in status["error"], status["error"]
    # while it waits to try again, flushes and drift history drop at once instead of waiting on the endpoint
    _send(capture, 10, start=100)
    started = time.perf_counter()
    store.flush()
    with pytest.raises(OSError, match="unavailable"):
        store.write_object("drift/model=m/x.json", b"{}")
    assert time.perf_counter() - started < 0.5 and store.status()["dropped"] == 110


def test_a_server_on_s3_serves_through_an_outage_and_reports_it(tmp_path: Path, s3_env: Any) -> None:
    """The whole path without Ray: ModelServer's store on the project's capture_uri (an S3 store_path), requests
    answered 200 while the bucket is gone, and the drift answer's "store" saying so, then saying ok again."""
    bucket = _bucket(s3_env)
    root = make_project(tmp_path / "qs", port=free_port(),
                        monitoring={"store_path": f"s3://{bucket}/capture", "flush_interval_s": 3600,
                                    "interval_s": None})
    register_version(root, seed=1, steps=50)
    server = ModelServer.from_project(str(root))
    server.apply(RoutingTable().deploy("churn", 1))
    assert server.project.capture_uri == f"s3://{bucket}/capture"
    server.store.retry_s = 0.2  # not the default max(flush_interval_s, 5 s): recovery is seen at the next flush
    rows = records(data(root).head(3))
    with ThreadedServer(LoomApp(server)) as base, httpx.Client(base_url=base, timeout=60) as client:
        sent = [client.post("/predict/churn", json=rows) for _ in range(10)]
        assert {r.status_code for r in sent} == {200}
        server.store.flush()
        report = client.get("/monitoring/churn/drift").json()
        assert report["store"]["ok"] and report["store"]["written"] == 10
        assert len(read_captured(f"s3://{bucket}/capture", "churn", 1)) == 30
        assert len(read_drift_history(f"s3://{bucket}/capture", "churn")) == 1

        _delete_bucket(s3_env, bucket)
        assert {client.post("/predict/churn", json=rows).status_code for _ in range(10)} == {200}
        server.store.flush()
        assert {client.post("/predict/churn", json=rows).status_code for _ in range(5)} == {200}
        r = client.get("/monitoring/churn/drift")
        assert r.status_code == 200, r.text
        store = r.json()["store"]
        assert not store["ok"] and bucket in store["error"] and store["dropped"] >= 10 and store["written"] == 10

        s3_env.client().create_bucket(Bucket=bucket)
        time.sleep(server.store.retry_s)  # the store is tried again once retry_s passed
        assert client.post("/predict/churn", json=rows).status_code == 200
        server.store.flush()
        store = client.get("/monitoring/churn/drift").json()["store"]
        assert store["ok"] and store["written"] > 10, store
