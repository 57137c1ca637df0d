"""The built-in ``evidently`` drift monitor, with real Evidently, built through the plugin manager."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import runtime

NUMERICAL = ["age", "income", "visits"]
CATEGORICAL = ["plan", "active"]
COLUMNS = NUMERICAL + CATEGORICAL


def frame(n: int, seed: int, *, age_mean: float = 40.0, plan_mix: tuple[float, float, float] = (0.6, 0.3, 0.1)):
    """Synthetic rows: 3 numerical + 2 categorical columns, using pandas' nullable dtypes as Loom's data does."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(age_mean, 10.0, n),
            "income": rng.lognormal(10.0, 0.5, n),
            "visits": pd.array(rng.poisson(5.0, n), dtype="Int64"),
            "plan": pd.array(rng.choice(["free", "pro", "team"], n, p=plan_mix), dtype="string"),
            "active": pd.array(rng.random(n) < 0.7, dtype="boolean"),
        }
    )


@pytest.fixture(scope="module")
def plugins() -> runtime.Plugins:
    return runtime.get_plugins()


@pytest.fixture(scope="module")
def monitor(plugins: runtime.Plugins) -> runtime.DriftMonitor:
    return plugins.drift_monitor("evidently", options={})


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return frame(1000, seed=1)


@pytest.fixture(scope="module")
def same(monitor: runtime.DriftMonitor, reference: pd.DataFrame) -> runtime.DriftReport:
    return monitor.check(reference, frame(500, seed=2), numerical=NUMERICAL, categorical=CATEGORICAL)


@pytest.fixture(scope="module")
def shifted(monitor: runtime.DriftMonitor, reference: pd.DataFrame) -> runtime.DriftReport:
    current = frame(500, seed=3, age_mean=48.0, plan_mix=(0.2, 0.3, 0.5))
    current.loc[:9, "visits"] = pd.NA  # missing values in a nullable integer column
    current.loc[:9, "plan"] = pd.NA
    return monitor.check(reference, current, numerical=NUMERICAL, categorical=CATEGORICAL)


def test_registered_through_entry_point_without_importing_evidently() -> None:
    code = (
        "import sys, runtime\n"
        "p = runtime.get_plugins()\n"
        "assert p.names('loom_register_drift_monitors')['evidently'] == 'evidently'\n"
        "p.drift_monitor('evidently', options={})\n"
        "assert 'evidently' not in sys.modules, 'evidently imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_satisfies_protocol(monitor: runtime.DriftMonitor) -> None:
    assert isinstance(monitor, runtime.DriftMonitor)


def test_same_distribution_is_not_drifted(same: runtime.DriftReport) -> None:
    assert same.monitor == "evidently"
    assert (same.n_reference, same.n_current) == (1000, 500)
    assert not same.drifted
    assert same.share_drifted == 0.0
    assert [f.column for f in same.features] == COLUMNS
    assert not any(f.drifted for f in same.features)
    for f in same.features:
        assert f.method and f.threshold > 0
        assert f.score > f.threshold  # p-value tests at this size: no drift means a large p-value
    assert same.details["evidently_version"] == "0.7.23"
    assert same.details["drift_share"] == 0.5


def test_shifted_columns_are_flagged(shifted: runtime.DriftReport) -> None:
    by_column = {f.column: f for f in shifted.features}
    assert by_column["age"].drifted and by_column["plan"].drifted
    assert not by_column["income"].drifted and not by_column["visits"].drifted and not by_column["active"].drifted
    assert shifted.share_drifted == pytest.approx(2 / 5)
    assert shifted.details["n_drifted"] == 2
    assert not shifted.drifted  # 40 % of the columns < the default drift_share of 50 %


def test_drift_share_sets_the_dataset_verdict(plugins: runtime.Plugins, reference: pd.DataFrame) -> None:
    current = frame(500, seed=3, age_mean=48.0, plan_mix=(0.2, 0.3, 0.5))
    strict = plugins.drift_monitor("evidently", options={"drift_share": 0.4})
    report = strict.check(reference, current, numerical=NUMERICAL, categorical=CATEGORICAL)
    assert report.drifted and report.share_drifted == pytest.approx(0.4)
    assert report.details["drift_share"] == 0.4


def test_method_and_threshold_options_reach_evidently(plugins: runtime.Plugins, reference: pd.DataFrame) -> None:
    psi = plugins.drift_monitor("evidently", options={"method": "psi", "threshold": 0.2})
    current = frame(500, seed=3, age_mean=48.0, plan_mix=(0.2, 0.3, 0.5))
    report = psi.check(reference, current, numerical=NUMERICAL, categorical=CATEGORICAL)
    assert {(f.method, f.threshold) for f in report.features} == {("psi", 0.2)}
    by_column = {f.column: f for f in report.features}
    assert by_column["age"].drifted and by_column["age"].score >= 0.2
    assert not by_column["income"].drifted and by_column["income"].score < 0.2


def test_report_is_json_serialisable(shifted: runtime.DriftReport) -> None:
    d = json.loads(json.dumps(shifted.to_dict(), allow_nan=False))
    assert set(d["features"]) == set(COLUMNS)
    assert d["features"]["age"]["drifted"] is True
    assert isinstance(d["features"]["age"]["score"], float)


def test_html_report(monitor: runtime.DriftMonitor, reference: pd.DataFrame) -> None:
    html = monitor.html_report(reference, frame(300, seed=4), numerical=NUMERICAL, categorical=CATEGORICAL)
    assert isinstance(html, str) and "<html" in html[:1000]
    assert "plan" in html


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"drift_shares": 0.3}, "drift_shares"),
        ({"drift_share": 0}, "drift_share must be in"),
        ({"drift_share": 1.5}, "drift_share must be in"),
        ({"drift_share": True}, "drift_share must be a number"),
        ({"threshold": "0.1"}, "threshold must be a number"),
        ({"threshold": -0.1}, "threshold must be positive"),
        ({"method": 3}, "method must be"),
        ({"method": "no-such-test"}, "unknown method 'no-such-test'"),
    ],
)
def test_invalid_options(plugins: runtime.Plugins, options: dict, match: str) -> None:
    with pytest.raises(runtime.ConfigError, match=match):
        plugins.drift_monitor("evidently", options=options)


def test_method_that_does_not_fit_the_columns(plugins: runtime.Plugins, reference: pd.DataFrame) -> None:
    ks = plugins.drift_monitor("evidently", options={"method": "ks"})  # numerical only
    with pytest.raises(runtime.ConfigError, match=r"'ks' does not apply to categorical columns \(plan, active\)"):
        ks.check(reference, reference, numerical=NUMERICAL, categorical=CATEGORICAL)


def test_empty_current_window(monitor: runtime.DriftMonitor, reference: pd.DataFrame) -> None:
    with pytest.raises(runtime.LoomError, match="no served rows captured yet"):
        monitor.check(reference, reference.iloc[:0], numerical=NUMERICAL, categorical=CATEGORICAL)


def test_missing_columns_are_named(monitor: runtime.DriftMonitor, reference: pd.DataFrame) -> None:
    current = frame(100, seed=5).drop(columns=["income", "plan"])
    with pytest.raises(runtime.DataValidationError, match="missing column.*income, plan") as err:
        monitor.check(reference, current, numerical=NUMERICAL, categorical=CATEGORICAL)
    assert "current" in str(err.value)


def test_unusable_columns(monitor: runtime.DriftMonitor, reference: pd.DataFrame) -> None:
    current = frame(100, seed=5)
    current["age"] = np.nan
    current["plan"] = pd.NA
    current["income"] = "lots"
    with pytest.raises(runtime.DataValidationError) as err:
        monitor.check(reference, current, numerical=NUMERICAL, categorical=CATEGORICAL)
    assert err.value.problems == [
        "column 'age' has no finite values",
        "column 'income' is declared numerical but holds non-numbers (dtype object)",
        "column 'plan' has no values (all missing)",
    ]


def test_column_lists(monitor: runtime.DriftMonitor, reference: pd.DataFrame) -> None:
    with pytest.raises(runtime.LoomError, match="at least one"):
        monitor.check(reference, reference, numerical=[], categorical=[])
    with pytest.raises(runtime.LoomError, match="more than once.*: age"):
        monitor.check(reference, reference, numerical=NUMERICAL, categorical=["age"])
