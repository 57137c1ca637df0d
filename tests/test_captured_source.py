"""The loom_captured plugin: served traffic and its feedback labels as training data, read from a capture store
the real writer filled (:class:`CaptureStore` and :class:`Capture`, labels as ``POST /feedback`` stores them), for
a quickstart-shaped project. Opened the way the pipeline opens it: through the installed entry point. No Ray.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import runtime
import runtime.serving.capture as capture_module
from conftest import free_port, make_project
from loom_captured import ENTITY_MAX, ENTITY_MIN, CapturedSource, synthetic_entity
from runtime import ConfigError, DataSource, DataValidationError, Pipeline, get_plugins, load_project, validate_frame
from runtime._contracts.data import COLUMNS as CONTRACT_COLUMNS
from runtime._contracts.data import DataSourceContract
from runtime.serving.capture import Capture, CaptureStore

MODEL = "churn"
FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "paperless_billing", "contract",
            "internet_service", "payment_method"]
HOUR = 3600.0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickstart project (entity customer_id, timestamp event_time, label churned)."""
    return make_project(tmp_path_factory.mktemp("captured") / "qs", port=free_port())


@pytest.fixture(scope="module")
def columns(root: Path) -> dict[str, runtime.ColumnSpec]:
    return load_project(root).config.data.columns


@pytest.fixture(scope="module")
def plugins() -> runtime.Plugins:
    return get_plugins()


class _Clock:
    """The ``time`` module, except that ``time()`` answers a fixed instant (what :meth:`Capture.add` stamps)."""

    def __init__(self, at: float) -> None:
        self.at = at

    def time(self) -> float:
        return self.at

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class Traffic:
    """Served requests and feedback written to a capture store by the real writer, at chosen capture times."""

    def __init__(self, store: Path | str, monkeypatch: pytest.MonkeyPatch, columns: dict[str, Any]) -> None:
        self.store = CaptureStore(store, max_pending=100_000, flush_s=3600)
        self.monkeypatch = monkeypatch
        self.columns = columns
        self.captures: dict[tuple[int, tuple[str, ...]], Capture] = {}

    def serve(self, rows: list[dict[str, Any]], *, version: int = 1, ago_s: float = 60.0,
              request_id: str | None = None, inputs: list[str] = FEATURES) -> str:
        """One request of ``rows`` (each a mapping of inputs), served ``ago_s`` seconds ago; its request id."""
        key = (version, tuple(inputs))
        if key not in self.captures:
            schema = {c: {"type": self.columns[c].type} for c in inputs}
            self.captures[key] = Capture(MODEL, version, window=10_000, sample_rate=1.0, store=self.store,
                                         schema=schema)
        rid = request_id or uuid.uuid4().hex
        with self.monkeypatch.context() as m:
            m.setattr(capture_module, "time", _Clock(time.time() - ago_s))
            self.captures[key].add({c: [r.get(c) for r in rows] for c in inputs}, [False] * len(rows),
                                   request_id=rid)
        return rid

    def label(self, labels: list[tuple[str, int, Any]]) -> None:
        """Feedback as the server stores it: ``(request id, row, label)``, the label as text."""
        frame = pd.DataFrame(labels, columns=["request_id", "row", "label"])
        frame["label"] = frame["label"].astype(str)
        self.store.add_feedback(MODEL, frame)

    def flush(self) -> None:
        self.store.flush()


def customer(i: int, **changes: Any) -> dict[str, Any]:
    row = {"tenure_months": i % 100, "monthly_charges": 20.0 + i, "total_charges": 100.0 * i, "support_calls": i % 5,
           "paperless_billing": i % 2 == 0, "contract": "one-year", "internet_service": "dsl",
           "payment_method": "card"}
    return {**row, **changes}


@pytest.fixture
def traffic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, columns: dict[str, Any]) -> Traffic:
    return Traffic(tmp_path / "capture", monkeypatch, columns)


def open_source(plugins: runtime.Plugins, root: Path, uri: str = f"captured://{MODEL}",
                **options: Any) -> CapturedSource:
    source = plugins.data_source(uri, base_dir=root, options=options)
    assert isinstance(source, DataSource) and isinstance(source, CapturedSource)
    return source


def test_registered_by_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_PLUGINS", "captured")
    plugins = get_plugins()
    assert plugins.names("loom_register_data_sources") == {"captured": "captured"}
    [info] = plugins.info()
    assert info.dist == "loom-mlops" and info.module == "loom_captured"


def test_labelled_rows_come_back_shaped_as_the_project_data(plugins: runtime.Plugins, root: Path, traffic: Traffic,
                                                            columns: dict[str, Any]) -> None:
    ids = [traffic.serve([customer(i)], ago_s=600 - i) for i in range(6)]
    batch = traffic.serve([customer(10), customer(11), customer(12)], ago_s=30)
    traffic.flush()
    traffic.label([(ids[0], 0, True), (ids[1], 0, "false"), (ids[2], 0, 1), (ids[3], 0, 0),
                   (batch, 0, "TRUE"), (batch, 2, False)])
    traffic.flush()

    source = open_source(plugins, root, store=str(traffic.store.location.path))
    assert source.window is None  # filled by the first read
    df = source.read()
    assert list(df.columns) == list(columns)  # declared columns only, in declared order: no provenance columns
    assert len(df) == 6  # ids[4] and ids[5], and row 1 of the batch, have no label
    assert df["churned"].dtype == "boolean" and df["churned"].tolist() == [True, False, True, False, True, False]
    assert df["tenure_months"].tolist() == [0, 1, 2, 3, 10, 12]
    assert df["contract"].tolist() == ["one-year"] * 6

    # the capture time stands in for the event time, tz-aware UTC as the CSV source yields it
    captured = runtime.read_captured(traffic.store.location.path, MODEL).set_index(["request_id", "row"])["ts"]
    keys = list(zip(ids[:4] + [batch, batch], [0, 0, 0, 0, 0, 2]))
    assert str(df["event_time"].dtype) == "datetime64[ns, UTC]"
    assert df["event_time"].tolist() == [captured[k] for k in keys]

    # synthetic entities: derived from (request id, row), far above real ids, int64-safe
    assert df["customer_id"].dtype == "Int64"
    assert df["customer_id"].tolist() == [synthetic_entity(r, n) for r, n in keys]
    assert all(ENTITY_MIN <= e < ENTITY_MAX for e in df["customer_id"]) and df["customer_id"].is_unique
    assert synthetic_entity(ids[0], 0) == synthetic_entity(ids[0], 0) != synthetic_entity(ids[0], 1)

    report = validate_frame(df, columns, source=source.uri)
    assert report.ok and report.rows == 6
    assert source.window is not None and source.window["rows_captured"] == 9
    assert (source.window["rows_labelled"], source.window["feedback_rows"], source.window["versions"]) == (6, 6, [1])
    assert pd.Timestamp(source.window["start"]) == captured[(ids[0], 0)]
    assert pd.Timestamp(source.window["end"]) >= pd.Timestamp(source.window["start"])

    again = open_source(plugins, root, store=str(traffic.store.location.path))
    pd.testing.assert_frame_equal(again.read(), df)  # deterministic, synthetic ids included
    assert again.fingerprint() == source.fingerprint() == runtime.hash_frame(df)


def test_window_since_until_and_version_filter_by_capture_time(plugins: runtime.Plugins, root: Path,
                                                               traffic: Traffic) -> None:
    old = traffic.serve([customer(1)], ago_s=10 * 24 * HOUR)
    day = traffic.serve([customer(2)], ago_s=20 * HOUR, version=2)
    hour = traffic.serve([customer(3)], ago_s=2 * HOUR)
    recent = traffic.serve([customer(4)], ago_s=10 * 60, version=2)
    traffic.flush()
    traffic.label([(rid, 0, True) for rid in (old, day, hour, recent)])
    traffic.flush()
    store = str(traffic.store.location.path)

    def tenure(uri: str = f"captured://{MODEL}", **options: Any) -> list[int]:
        return open_source(plugins, root, uri, store=store, **options).read()["tenure_months"].tolist()

    assert tenure() == [1, 2, 3, 4]
    assert tenure(window="30m") == [4]
    assert tenure(window="3h") == [3, 4]
    assert tenure(window="7d") == [2, 3, 4]
    assert tenure(window=3 * HOUR) == [3, 4] and tenure(window=str(int(3 * HOUR))) == [3, 4]  # seconds
    assert tenure(f"captured://{MODEL}?window=24h") == [2, 3, 4]
    assert tenure(f"captured://{MODEL}?window=30m", window="7d") == [2, 3, 4]  # options win over the query
    assert tenure(version=2) == [2, 4] and tenure(f"captured://{MODEL}?version=2&window=1h") == [4]
    now = time.time()
    assert tenure(since=now - 3 * HOUR) == [3, 4]
    assert tenure(until=pd.Timestamp(now - HOUR, unit="s", tz="UTC").isoformat()) == [1, 2, 3]
    naive = pd.Timestamp(now - 3 * HOUR, unit="s").strftime("%Y-%m-%dT%H:%M:%S")  # naive: UTC
    assert tenure(since=naive, until=str(now - HOUR)) == [3]
    assert tenure(window="7d", since=now - 3 * HOUR) == [3, 4]  # the later start wins

    source = open_source(plugins, root, store=store, window="3h")
    source.read()
    assert source.window["versions"] == [1, 2] and source.window["rows_captured"] == 2
    start = pd.Timestamp(source.window["start"])
    assert abs((pd.Timestamp(source.window["end"]) - start).total_seconds() - 3 * HOUR) < 1


def test_a_row_captured_by_two_versions_comes_back_once(plugins: runtime.Plugins, root: Path,
                                                         traffic: Traffic) -> None:
    rid = traffic.serve([customer(5)], version=1, ago_s=120)
    traffic.serve([customer(5)], version=2, ago_s=119, request_id=rid)  # the same request, mirrored to a canary
    other = traffic.serve([customer(6)], version=2, ago_s=100)
    traffic.flush()
    traffic.label([(rid, 0, True), (other, 0, False)])
    traffic.flush()
    source = open_source(plugins, root, store=str(traffic.store.location.path))
    df = source.read()
    assert len(df) == 2 and df["tenure_months"].tolist() == [5, 6]
    assert df["customer_id"].tolist() == [synthetic_entity(rid, 0), synthetic_entity(other, 0)]
    assert source.window["rows_captured"] == 2 and source.window["versions"] == [1, 2]
    assert len(open_source(plugins, root, store=str(traffic.store.location.path), version=2).read()) == 2


def test_inputs_the_request_carried_are_kept(plugins: runtime.Plugins, root: Path, traffic: Traffic,
                                             columns: dict[str, Any]) -> None:
    inputs = ["customer_id", "event_time", *FEATURES]
    sent = traffic.serve([customer(1, customer_id=42, event_time="2025-03-01T12:00:00Z"),
                          customer(2, customer_id=None, event_time=None)], inputs=inputs, ago_s=60)
    traffic.flush()
    traffic.label([(sent, 0, True), (sent, 1, False)])
    traffic.flush()
    df = open_source(plugins, root, store=str(traffic.store.location.path)).read()
    assert df["customer_id"].tolist() == [42, synthetic_entity(sent, 1)]
    captured = runtime.read_captured(traffic.store.location.path, MODEL)["ts"].iloc[1]
    assert df["event_time"].tolist() == [pd.Timestamp("2025-03-01T12:00:00Z"), captured]
    assert validate_frame(df, columns, source="captured").ok


def test_columns_the_traffic_lacks(plugins: runtime.Plugins, root: Path, traffic: Traffic) -> None:
    nullable = [c for c in FEATURES if c != "total_charges"]  # total_charges is the one nullable feature
    rid = traffic.serve([customer(1)], inputs=nullable)
    traffic.flush()
    traffic.label([(rid, 0, True)])
    traffic.flush()
    df = open_source(plugins, root, store=str(traffic.store.location.path)).read()
    assert "total_charges" not in df.columns and len(df) == 1  # left out: nullable

    rid = traffic.serve([customer(2)], version=2, inputs=[c for c in nullable if c != "contract"])
    traffic.flush()
    traffic.label([(rid, 0, False)])
    traffic.flush()
    with pytest.raises(DataValidationError, match="no column 'contract'"):
        open_source(plugins, root, store=str(traffic.store.location.path), version=2).read()


def test_an_empty_store_reads_as_an_empty_frame_of_the_schema(plugins: runtime.Plugins, root: Path, tmp_path: Path,
                                                              traffic: Traffic, columns: dict[str, Any]) -> None:
    source = open_source(plugins, root, store=str(tmp_path / "nothing-here"))
    df = source.read()
    assert list(df.columns) == list(columns) and len(df) == 0
    assert list(source.iter_batches(10)) == [] and source.fingerprint() == runtime.hash_frame(df)
    assert validate_frame(df, columns, source=source.uri).ok
    assert source.window["rows_captured"] == 0 and source.window["versions"] == []

    traffic.serve([customer(1)])  # captured, never labelled
    traffic.flush()
    store = str(traffic.store.location.path)
    assert len(open_source(plugins, root, store=store).read()) == 0
    unlabelled = open_source(plugins, root, store=store, labelled="false").read()
    assert len(unlabelled) == 1 and unlabelled["churned"].isna().all() and unlabelled["tenure_months"].tolist() == [1]
    assert len(open_source(plugins, root, f"captured://{MODEL}?labelled=false", store=store, labelled=True).read()) == 0


def test_batches_and_fingerprint(plugins: runtime.Plugins, root: Path, traffic: Traffic) -> None:
    ids = [traffic.serve([customer(i)], ago_s=100 - i) for i in range(5)]
    traffic.flush()
    traffic.label([(rid, 0, i % 2 == 0) for i, rid in enumerate(ids)])
    traffic.flush()
    store = str(traffic.store.location.path)
    source = open_source(plugins, root, store=store)
    batches = list(source.iter_batches(2))
    assert [len(b) for b in batches] == [2, 2, 1]
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), source.read())
    with pytest.raises(ValueError):
        next(iter(source.iter_batches(0)))
    fingerprint = source.fingerprint()
    assert fingerprint.startswith("sha256:") and source.fingerprint() == fingerprint

    traffic.label([(ids[0], 0, False)])  # a corrected label: the latest wins, and the data changed
    traffic.flush()
    assert source.fingerprint() == fingerprint  # a source describes the rows it read first
    changed = open_source(plugins, root, store=store)
    assert not changed.read()["churned"].iloc[0]
    assert changed.fingerprint() != fingerprint


@pytest.mark.parametrize("uri, options, match", [
    (f"captured://{MODEL}", {"windw": "1h"}, r"unknown option\(s\) windw \(accepted: window"),
    (f"captured://{MODEL}?colour=red", {}, r"unknown option\(s\) colour"),
    (f"captured://{MODEL}", {"window": "soon"}, r"'window' 'soon' is not a duration.*24h"),
    (f"captured://{MODEL}?window=1y", {}, "is not a duration"),
    (f"captured://{MODEL}", {"window": "0h"}, "positive duration"),
    (f"captured://{MODEL}", {"window": True}, "must be a duration"),
    (f"captured://{MODEL}", {"version": "latest"}, "'version' must be a model version number"),
    (f"captured://{MODEL}", {"version": 0}, "'version' must be a model version number"),
    (f"captured://{MODEL}", {"since": "yesterday"}, "'since' must be an ISO 8601 time"),
    (f"captured://{MODEL}", {"since": "2025-02-01", "until": "2025-01-01"}, "'since'.*must be before 'until'"),
    (f"captured://{MODEL}", {"labelled": "maybe"}, "'labelled' must be true or false"),
    (f"captured://{MODEL}", {"store": ""}, "'store' must be a directory"),
    (f"captured://{MODEL}?window=1h&window=2h", {}, "given twice"),
    ("captured://", {}, r"names no model; write captured://MODEL"),
    ("captured://?window=1h", {}, "names no model"),
    ("captured://../etc", {}, "model name"),
    ("captured://a/b", {}, "model name"),
])
def test_bad_uris_and_options_are_config_errors(plugins: runtime.Plugins, root: Path, uri: str,
                                                options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        plugins.data_source(uri, base_dir=root, options=options)


def test_no_project_is_a_config_error(plugins: runtime.Plugins, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"captured://churn shapes its rows by the project's data schema.*loom.yaml"):
        plugins.data_source("captured://churn", base_dir=tmp_path, options={})


def test_a_store_that_cannot_be_read_is_a_config_error_naming_it(plugins: runtime.Plugins, root: Path,
                                                                  tmp_path: Path) -> None:
    part = tmp_path / "broken" / f"model={MODEL}" / "version=1" / "date=2025-01-01" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"not parquet")
    source = open_source(plugins, root, store="broken", window="1h")  # relative: to the project directory
    assert source.store == str((root / "broken").resolve())
    source = open_source(plugins, root, store=str(tmp_path / "broken"))
    with pytest.raises(ConfigError, match=rf"cannot read the capture store at {tmp_path / 'broken'}"):
        source.read()


def test_the_uri_is_shown_redacted(plugins: runtime.Plugins, root: Path) -> None:
    source = open_source(plugins, root, f"captured://{MODEL}?window=1h&store=s3://key:secret@bucket/capture")
    assert "secret" not in source.uri and source.uri == runtime.redact(source.uri)


def test_the_pipeline_ingests_captured_traffic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A project whose data.source is captured://churn reads the project's own capture store."""
    root = make_project(tmp_path / "qs", port=free_port(),
                        data={"source": f"captured://{MODEL}", "options": {"window": "7d"}})
    project = load_project(root)
    traffic = Traffic(project.capture_uri, monkeypatch, project.config.data.columns)
    old = traffic.serve([customer(99)], ago_s=30 * 24 * HOUR)
    ids = [traffic.serve([customer(i)], ago_s=3600 - i) for i in range(8)]
    traffic.flush()
    traffic.label([(old, 0, True)] + [(rid, 0, i % 3 == 0) for i, rid in enumerate(ids)])
    traffic.flush()

    pipe = Pipeline(root)
    source = pipe.open_source(project.config.data.source, project.config.data.options)
    assert isinstance(source, CapturedSource) and source.store == project.capture_uri
    data = pipe.ingest()
    assert len(data.frame) == 8 and data.uri == f"captured://{MODEL}"
    assert data.frame["churned"].tolist() == [i % 3 == 0 for i in range(8)]
    assert str(data.frame["event_time"].dtype) == "datetime64[ns]"  # validation's form: naive UTC
    assert data.fingerprint == source.fingerprint()
    assert yaml.safe_load((root / "loom.yaml").read_text())["data"]["source"] == f"captured://{MODEL}"


class TestCapturedSourceContract(DataSourceContract):
    """The data-source contract, on a project whose schema is the contract's: ``id`` and ``at`` sent as inputs
    (so they are kept), ``active`` posted as feedback."""

    @pytest.fixture
    def make_source(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
        spec = {"name": "contract", "model": {"name": MODEL},
                "data": {"source": f"captured://{MODEL}", "entity": "id", "timestamp": "at", "label": "active",
                         "columns": {c: s.model_dump(exclude_none=True) for c, s in CONTRACT_COLUMNS.items()}}}
        (tmp_path / "loom.yaml").write_text(yaml.safe_dump(spec))
        plugins = get_plugins()
        inputs = ["id", "name", "score", "at"]

        def make(df: pd.DataFrame) -> DataSource:
            store = tmp_path / uuid.uuid4().hex
            traffic = Traffic(store, monkeypatch, CONTRACT_COLUMNS)
            rows = [{"id": int(r.id), "name": r.name, "score": None if pd.isna(r.score) else float(r.score),
                     "at": pd.Timestamp(r.at).isoformat()} for r in df.itertuples()]
            labels = []
            for i, (row, active) in enumerate(zip(rows, df["active"])):
                rid = traffic.serve([row], inputs=inputs, ago_s=1000 - i)
                labels.append((rid, 0, bool(active)))
            traffic.flush()
            if labels:
                traffic.label(labels)
                traffic.flush()
            return plugins.data_source(f"captured://{MODEL}", base_dir=tmp_path, options={"store": str(store)})

        yield make
