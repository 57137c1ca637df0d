"""runtime.validation: coercion rules, every problem kind, and the quickstart data against its own schema."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from runtime import (
    ColumnSpec,
    DataValidationError,
    ValidationReport,
    coerce_frame,
    get_plugins,
    load_project,
    validate_batches,
    validate_frame,
)

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"
SRC = "csv://data/x.csv"


def spec(type_: str, **kw: object) -> ColumnSpec:
    return ColumnSpec(type=type_, **kw)


def problems_of_frame(df: pd.DataFrame, columns: dict[str, ColumnSpec]) -> list[str]:
    return validate_frame(df, columns, source=SRC, raise_on_error=False).problems


def problems_of(values: list[object], column: ColumnSpec) -> list[str]:
    return problems_of_frame(pd.DataFrame({"c": values}), {"c": column})


def coerced(values: list[object], type_: str) -> pd.Series:
    report = validate_frame(pd.DataFrame({"c": values}), {"c": spec(type_)}, source=SRC)
    return report.frame["c"]


# -- valid data ------------------------------------------------------------------------------------------------


def test_valid_frame_passes_with_declared_dtypes_and_order() -> None:
    df = pd.DataFrame(
        {
            "extra": [1, 2],
            "when": ["2025-01-01T00:00:00Z", "2025-06-01T12:30:00Z"],
            "id": [1, 2],
            "x": [0.5, 1.5],
            "flag": [True, False],
            "name": ["a", "b"],
            "kind": ["dsl", "fiber"],
        }
    )
    columns = {
        "id": spec("int", nullable=False, min=1),
        "when": spec("timestamp"),
        "x": spec("float", min=0, max=2),
        "flag": spec("bool"),
        "name": spec("string"),
        "kind": spec("category", categories=["dsl", "fiber", "none"]),
    }
    report = validate_frame(df, columns, source=SRC)
    assert isinstance(report, ValidationReport)
    assert report.ok and report.problems == [] and report.bad_rows == 0 and report.rows == 2
    assert list(report.frame.columns) == list(columns)  # extra column dropped, declared order
    assert {c: str(t) for c, t in report.frame.dtypes.items()} == {
        "id": "Int64",
        "when": "datetime64[ns]",
        "x": "float64",
        "flag": "boolean",
        "name": "string",
        "kind": "string",
    }
    assert report.frame["when"].tolist() == [pd.Timestamp("2025-01-01"), pd.Timestamp("2025-06-01 12:30")]


def test_index_is_reset_and_rows_are_positions() -> None:
    df = pd.DataFrame({"c": [1, "x"]}, index=[10, 20])
    frame, problems, bad = coerce_frame(df, {"c": spec("int")}, source=SRC)
    assert list(frame.index) == [0, 1] and bad.tolist() == [False, True]
    assert "row 1: 'x'" in problems[0]


# -- coercion rules --------------------------------------------------------------------------------------------


def test_int_accepts_ints_integral_floats_and_digit_strings() -> None:
    assert coerced([1, 2.0, "3", " -4 ", None, ""], "int").tolist() == [1, 2, 3, -4, pd.NA, pd.NA]


def test_int_keeps_large_ids_exact() -> None:
    big = 2**53 + 1
    assert coerced([str(big), None], "int").tolist() == [big, pd.NA]
    assert coerced(pd.array([big, None], dtype="Int64").tolist(), "int").tolist() == [big, pd.NA]


@pytest.mark.parametrize("bad", [3.5, "abc", "1.5", True, float("inf")])
def test_int_rejects_non_integers_instead_of_nan(bad: object) -> None:
    problems = problems_of([1, bad], spec("int"))
    assert len(problems) == 1
    assert problems[0].startswith(f"{SRC}: column 'c': 1 value cannot be coerced to int")
    assert "row 1" in problems[0]


def test_float_accepts_numbers_and_numeric_strings() -> None:
    assert coerced([1, "2.5", " 3e2 ", None], "float").tolist()[:3] == [1.0, 2.5, 300.0]
    assert "cannot be coerced to float" in problems_of([1.0, "two"], spec("float"))[0]


@pytest.mark.parametrize(
    "raw, expected",
    [(True, True), (0, False), (1, True), ("TRUE", True), ("f", False), ("Yes", True), ("n", False), (" no ", False)],
)
def test_bool_words(raw: object, expected: bool) -> None:
    assert coerced([raw], "bool").tolist() == [expected]


def test_bool_rejects_other_values() -> None:
    problem = problems_of(["yes", "maybe", 2], spec("bool"))[0]
    assert "2 values cannot be coerced to bool" in problem and "row 1: 'maybe'" in problem and "row 2: 2" in problem


def test_timestamp_rules_give_naive_utc() -> None:
    aware = pd.Series(pd.to_datetime(["2025-01-01 02:00"]).tz_localize("Europe/Berlin"))
    assert coerced(aware.tolist(), "timestamp").tolist() == [pd.Timestamp("2025-01-01 01:00")]
    text = ["2025-03-01T10:00:00+02:00", "2025-03-01T10:00:00Z", "2025-03-01 10:00:00"]
    ten = pd.Timestamp("2025-03-01 10:00")
    assert coerced(text, "timestamp").tolist() == [pd.Timestamp("2025-03-01 08:00"), ten, ten]
    assert coerced([1735689600, None], "timestamp").tolist()[0] == pd.Timestamp("2025-01-01")
    assert "cannot be coerced to timestamp" in problems_of(["2025-01-01", "next tuesday"], spec("timestamp"))[0]


def test_datetimes_are_not_numbers() -> None:
    when = pd.Timestamp("2025-01-01")
    assert "cannot be coerced to int" in problems_of([when], spec("int"))[0]
    assert "cannot be coerced to float" in problems_of([when], spec("float"))[0]


def test_string_and_category_become_pandas_strings() -> None:
    assert coerced([1, "a", None], "string").tolist() == ["1", "a", pd.NA]
    assert str(coerced(["a"], "category").dtype) == "string"


# -- problem kinds ---------------------------------------------------------------------------------------------


def test_missing_column_is_reported_and_left_null() -> None:
    report = validate_frame(pd.DataFrame({"a": [1]}), {"a": spec("int"), "b": spec("float")}, source=SRC,
                            raise_on_error=False)
    assert report.problems == [f"{SRC}: column 'b' is missing"] and report.bad_rows == 0
    assert report.frame["b"].isna().all() and str(report.frame["b"].dtype) == "float64"


def test_duplicate_column_is_reported() -> None:
    df = pd.DataFrame([[1, 2]], columns=["c", "c"])
    assert problems_of_frame(df, {"c": spec("int")}) == [f"{SRC}: column 'c' appears 2 times"]


def test_entirely_null_column() -> None:
    assert problems_of([None, "", "  "], spec("string")) == [f"{SRC}: column 'c' is entirely null"]


def test_nulls_in_non_nullable_column_count_blank_strings() -> None:
    report = validate_frame(pd.DataFrame({"c": ["a", None, " ", "b"]}), {"c": spec("string", nullable=False)},
                            source=SRC, raise_on_error=False)
    assert report.problems == [f"{SRC}: column 'c': 2 null values in a non-nullable column (e.g. row 1, row 2)"]
    assert report.bad_rows == 2


def test_nullable_column_allows_nulls() -> None:
    assert problems_of([1.0, None], spec("float")) == []


def test_min_and_max() -> None:
    problems = problems_of([-1, 5, 11, 12], spec("int", min=0, max=10))
    assert problems == [
        f"{SRC}: column 'c': 1 value below min 0 (e.g. row 0: -1)",
        f"{SRC}: column 'c': 2 values above max 10 (e.g. row 2: 11, row 3: 12)",
    ]


def test_values_not_in_categories() -> None:
    problem = problems_of(["dsl", "cable", None, "DSL"], spec("category", categories=["dsl", "fiber"]))[0]
    assert problem == (
        f"{SRC}: column 'c': 2 values not in categories ['dsl', 'fiber'] (e.g. row 1: 'cable', row 3: 'DSL')"
    )


def test_examples_are_limited_to_three() -> None:
    problem = problems_of(["x"] * 10, spec("int"))[0]
    assert "10 values cannot be coerced" in problem and problem.count("row ") == 3


def test_raises_with_every_problem_and_counts_bad_rows() -> None:
    df = pd.DataFrame({"id": [1, None, 3], "x": [0.5, 2.0, "oops"]})
    columns = {"id": spec("int", nullable=False), "x": spec("float", max=1)}
    with pytest.raises(DataValidationError) as err:
        validate_frame(df, columns, source=SRC)
    assert err.value.source == SRC and len(err.value.problems) == 3
    assert "column 'id'" in str(err.value) and "column 'x'" in str(err.value)
    report = validate_frame(df, columns, source=SRC, raise_on_error=False)
    assert report.bad_rows == 2 and report.frame["x"].isna().tolist() == [False, False, True]


def test_vectorised_on_many_rows() -> None:
    n = 300_000
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "id": pd.array(np.arange(1, n + 1), dtype="Int64"),
            "t": pd.date_range("2025-01-01", periods=n, freq="s", tz="UTC"),
            "x": rng.random(n),
            "b": rng.random(n) < 0.5,
            "k": rng.choice(["a", "b"], n).astype(object),
        }
    )
    columns = {"id": spec("int", min=1), "t": spec("timestamp"), "x": spec("float", min=0, max=1),
               "b": spec("bool"), "k": spec("category", categories=["a", "b"])}
    start = time.perf_counter()
    report = validate_frame(df, columns, source=SRC)
    assert report.rows == n and time.perf_counter() - start < 5


# -- column declarations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [({"type": "string", "min": 1}, "min/max apply to int and float"),
     ({"type": "timestamp", "max": 3}, "min/max apply to int and float"),
     ({"type": "int", "min": 5, "max": 1}, "greater than max"),
     ({"type": "string", "categories": ["a"]}, "categories apply to category columns"),
     ({"type": "category", "categories": []}, "non-empty"),
     ({"type": "category", "categories": ["a", "a"]}, "distinct")],
)
def test_checks_that_do_not_fit_the_type_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ColumnSpec(**kwargs)


def test_column_declarations_are_checked_when_the_project_loads(tmp_path: Path) -> None:
    import yaml

    from runtime import ConfigError

    cfg = yaml.safe_load((QUICKSTART / "loom.yaml").read_text())
    cfg["data"]["columns"]["contract"] = {"type": "string", "categories": ["a", "b"]}
    (tmp_path / "loom.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"data\.columns\.contract.*categories apply to category columns"):
        load_project(tmp_path)


# -- validating in batches, with a bad-row policy --------------------------------------------------------------


COLUMNS = {"id": spec("int", nullable=False), "x": spec("float", min=0), "k": spec("category", categories=["a", "b"])}


def batches() -> list[pd.DataFrame]:
    return [pd.DataFrame({"id": ["1", "2", "3"], "x": [0.5, -1.0, 2.0], "k": ["a", "b", "a"], "extra": [1, 2, 3]}),
            pd.DataFrame({"id": ["4", "oops", "6", "7"], "x": [1.0, 1.0, 1.0, 3.0], "k": ["a", "a", "z", "b"],
                          "extra": [4, 5, 6, 7]})]


def test_reject_reports_every_problem_with_rows_numbered_across_batches() -> None:
    with pytest.raises(DataValidationError) as err:
        validate_batches(batches(), COLUMNS, source=SRC)
    assert err.value.problems == [
        f"{SRC}: column 'id': 1 value cannot be coerced to int (e.g. row 4: 'oops')",
        f"{SRC}: column 'x': 1 value below min 0 (e.g. row 1: -1.0)",
        f"{SRC}: column 'k': 1 value not in categories ['a', 'b'] (e.g. row 5: 'z')",
        f"{SRC}: 3 of 7 rows have problems",
    ]


def test_valid_batches_give_one_coerced_frame() -> None:
    good = [pd.DataFrame({"id": [1, 2], "x": [0.0, 1.0], "k": ["a", "b"]}),
            pd.DataFrame({"id": [3], "x": [None], "k": [None]})]
    report = validate_batches(good, COLUMNS, source=SRC)
    assert report.ok and report.rows == 3 and report.quarantined == 0 and report.quarantine_file is None
    assert report.frame["id"].tolist() == [1, 2, 3] and list(report.frame.index) == [0, 1, 2]


def test_quarantine_keeps_good_rows_and_writes_bad_ones_with_reasons(tmp_path: Path) -> None:
    report = validate_batches(batches(), COLUMNS, source=SRC, policy="quarantine", quarantine_dir=tmp_path / "q",
                              max_fraction=0.5)
    assert report.rows == 7 and report.bad_rows == 3 and report.quarantined == 3
    assert report.frame["id"].tolist() == [1, 3, 4, 7]  # never silently dropped: the others are in the file
    assert len(report.problems) == 3
    bad = pd.read_csv(report.quarantine_file)
    assert list(bad.columns) == ["_loom_row", "id", "x", "k", "_loom_problems"]
    assert bad["_loom_row"].tolist() == [1, 4, 5]
    assert bad["id"].astype(str).tolist() == ["2", "oops", "6"]  # the values as they were read
    assert bad["_loom_problems"].tolist() == ["x: value below min 0", "id: value cannot be coerced to int",
                                              "k: value not in categories ['a', 'b']"]


def test_quarantine_still_fails_on_too_many_bad_rows_or_a_broken_column(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"3 of 7 rows have problems, more than max_fraction 0.1 "
                                                  r"\(bad rows kept in .*quarantine-"):
        validate_batches(batches(), COLUMNS, source=SRC, policy="quarantine", quarantine_dir=tmp_path,
                         max_fraction=0.1)
    no_k = [b.drop(columns=["k"]) for b in batches()]
    with pytest.raises(DataValidationError, match="column 'k' is missing"):
        validate_batches(no_k, COLUMNS, source=SRC, policy="quarantine", quarantine_dir=tmp_path)
    empty = [pd.DataFrame({"id": [1], "x": [None], "k": ["a"]}), pd.DataFrame({"id": [2], "x": [None], "k": ["b"]})]
    with pytest.raises(DataValidationError, match="column 'x' is entirely null"):
        validate_batches(empty, COLUMNS, source=SRC, policy="quarantine", quarantine_dir=tmp_path)


def test_empty_columns_can_be_accepted_for_small_pushes() -> None:
    report = validate_frame(pd.DataFrame({"id": [1], "x": [None], "k": ["a"]}), COLUMNS, source=SRC,
                            empty_columns=True)
    assert report.ok


# -- the quickstart data set -----------------------------------------------------------------------------------


def _load_generator():  # noqa: ANN202 - a module loaded from a file path
    spec_ = importlib.util.spec_from_file_location("quickstart_generate_data", QUICKSTART / "generate_data.py")
    assert spec_ and spec_.loader
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module


@pytest.mark.parametrize("reader", ["data source", "text"])
def test_generated_quickstart_data_matches_quickstart_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             reader: str) -> None:
    data = load_project(QUICKSTART).config.data
    path = _load_generator().write(tmp_path / "data" / "customers.csv")
    if reader == "data source":  # the way the pipeline reads it: csv://data/customers.csv under the project
        monkeypatch.setenv("LOOM_PLUGINS", "files")
        raw = get_plugins().data_source(data.source, base_dir=tmp_path, options=data.options).read()
    else:  # every value as text: exercises every coercion rule
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    report = validate_frame(raw, data.columns, source=data.source)
    frame = report.frame
    assert list(frame.columns) == list(data.columns)
    assert 4500 <= report.rows <= 5500 and 1900 <= frame["customer_id"].nunique() <= 2100
    assert frame["event_time"].dt.year.eq(2025).all()
    assert 0.2 <= frame["churned"].mean() <= 0.35
    assert 0.002 <= frame["total_charges"].isna().mean() <= 0.03
