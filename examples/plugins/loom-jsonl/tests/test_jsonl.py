"""The jsonl:// data source, installed and built through Loom's plugin manager (runtime.testing fixtures)."""

from __future__ import annotations

import itertools
import json

import pandas as pd
import pytest

from runtime import ConfigError, DataValidationError, NotFoundError
from runtime.testing import DataSourceContract

ROWS = [
    {"customer_id": 1, "event_time": "2025-01-01T00:00:00", "monthly_charges": 20.5, "contract": "one-year"},
    {"customer_id": 2, "event_time": "2025-02-01T00:00:00", "monthly_charges": None, "contract": None},
    {"customer_id": None, "event_time": "2025-03-01T00:00:00", "monthly_charges": 99.0, "contract": "two-year"},
]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def plugins(loom_plugins):
    return loom_plugins(installed=True)


def test_discovered_through_its_entry_point(plugins):
    info = {p.name: p for p in plugins.info()}["jsonl"]
    assert info.dist == "loom-jsonl"
    assert info.provides == {"data_sources": ["jsonl", "ndjson"]}


def test_reads_types_and_nulls(plugins, tmp_path):
    write_jsonl(tmp_path / "customers.jsonl", ROWS)
    frame = plugins.data_source("jsonl://customers.jsonl", base_dir=tmp_path).read()
    assert list(frame.columns) == ["customer_id", "event_time", "monthly_charges", "contract"]
    assert str(frame["customer_id"].dtype) == "Int64" and frame["customer_id"].isna().tolist() == [False, False, True]
    assert frame["event_time"].tolist() == list(pd.to_datetime(["2025-01-01", "2025-02-01", "2025-03-01"]))
    assert frame["monthly_charges"].isna().sum() == 1 and frame["contract"].isna().sum() == 1


def test_directory_and_glob_read_files_in_name_order(plugins, tmp_path):
    write_jsonl(tmp_path / "b.ndjson", ROWS[1:])
    write_jsonl(tmp_path / "a.jsonl", ROWS[:1])
    (tmp_path / "notes.txt").write_text("not data\n")
    by_dir = plugins.data_source(f"ndjson://{tmp_path}", base_dir=tmp_path).read()
    by_glob = plugins.data_source("jsonl://*.*json*", base_dir=tmp_path).read()
    assert by_dir["event_time"].is_monotonic_increasing and len(by_dir) == 3
    pd.testing.assert_frame_equal(by_dir, by_glob)


def test_batches_cover_the_table(plugins, tmp_path):
    write_jsonl(tmp_path / "big.jsonl", [{"id": i, "x": i / 2} for i in range(2500)])
    source = plugins.data_source("jsonl://big.jsonl", base_dir=tmp_path)
    batches = list(source.iter_batches(batch_size=1000))
    assert [len(b) for b in batches] == [1000, 1000, 500]
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), source.read())


def test_fingerprint_follows_the_bytes(plugins, tmp_path):
    path = tmp_path / "customers.jsonl"
    write_jsonl(path, ROWS)
    first = plugins.data_source("jsonl://customers.jsonl", base_dir=tmp_path).fingerprint()
    assert first == plugins.data_source("jsonl://customers.jsonl", base_dir=tmp_path).fingerprint()
    write_jsonl(path, ROWS[:2])
    assert plugins.data_source("jsonl://customers.jsonl", base_dir=tmp_path).fingerprint() != first


def test_problems_are_loom_errors_naming_the_source(plugins, tmp_path):
    with pytest.raises(NotFoundError, match="jsonl://missing.jsonl"):
        plugins.data_source("jsonl://missing.jsonl", base_dir=tmp_path)
    write_jsonl(tmp_path / "customers.jsonl", ROWS)
    with pytest.raises(ConfigError, match="unknown option.*delimiter"):
        plugins.data_source("jsonl://customers.jsonl", base_dir=tmp_path, options={"delimiter": ";"})
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{"id": "two"}\n')
    with pytest.raises(DataValidationError, match="bad.jsonl"):
        plugins.data_source("jsonl://bad.jsonl", base_dir=tmp_path).read()


class TestJsonLinesContract(DataSourceContract):
    """Loom's data-source contract, run against this plugin as installed."""

    @pytest.fixture
    def make_source(self, plugins, tmp_path):
        names = itertools.count()

        def make(frame: pd.DataFrame):
            path = tmp_path / f"table-{next(names)}.jsonl"
            frame.to_json(path, orient="records", lines=True, date_format="iso")
            return plugins.data_source(f"jsonl://{path.name}", base_dir=tmp_path)

        return make
