"""The drift-monitor contract: what every :class:`runtime.DriftMonitor` must do, as a pytest suite.

Subclass :class:`DriftMonitorContract` in a test module and define a ``monitor`` fixture returning the monitor
under test; every ``test_*`` method then runs against it. The data is synthetic and seeded, shaped like Loom's
served traffic: pandas nullable dtypes (``Int64``, ``boolean``, ``string``) and a few missing values.
"""

from __future__ import annotations

import html.parser
import json
import math

import numpy as np
import pandas as pd
import pytest

from ..errors import LoomError
from ..monitoring import DriftMonitor, DriftReport

NUMERICAL = ["age", "income", "visits"]
CATEGORICAL = ["plan", "active"]
PLANS = ["free", "pro", "team"]


def traffic(n: int, seed: int, *, shifted: tuple[str, ...] = ()) -> pd.DataFrame:
    """``n`` rows of the contract's columns; columns named in ``shifted`` come from a clearly different
    distribution (numbers moved by several standard deviations, categories re-mixed)."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40.0, 10.0, n) + (45.0 if "age" in shifted else 0.0)
    income = rng.lognormal(10.0, 0.5, n) * (4.0 if "income" in shifted else 1.0)
    visits = rng.poisson(5.0, n) + (15 if "visits" in shifted else 0)
    plan_mix = (0.1, 0.2, 0.7) if "plan" in shifted else (0.7, 0.2, 0.1)
    active = rng.random(n) < (0.1 if "active" in shifted else 0.8)
    return pd.DataFrame({
        "age": age,
        "income": income,
        "visits": pd.array(visits, dtype="Int64"),
        "plan": pd.array(rng.choice(PLANS, n, p=plan_mix), dtype="string"),
        "active": pd.array(active, dtype="boolean"),
    })


class _TagCounter(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags += 1


class DriftMonitorContract:
    """Behaviour every drift monitor must show. Subclass it and define the ``monitor`` fixture::

        from runtime.testing import DriftMonitorContract

        class TestMyMonitor(DriftMonitorContract):
            @pytest.fixture
            def monitor(self):
                return MyMonitor(threshold=0.05)
    """

    #: Rows in the reference and the current frames; raise them if your statistic needs more to decide.
    reference_rows = 1000
    current_rows = 500

    @pytest.fixture
    def monitor(self) -> DriftMonitor:
        pytest.fail(f"{type(self).__name__} must define a `monitor` fixture returning the DriftMonitor under test")

    def check(self, monitor: DriftMonitor, current: pd.DataFrame, reference: pd.DataFrame | None = None,
              *, numerical: list[str] = NUMERICAL, categorical: list[str] = CATEGORICAL) -> DriftReport:
        reference = traffic(self.reference_rows, seed=1) if reference is None else reference
        report = monitor.check(reference, current, numerical=list(numerical), categorical=list(categorical))
        assert isinstance(report, DriftReport), f"check() returned {type(report).__name__}, not a DriftReport"
        return report

    def test_satisfies_the_protocol(self, monitor: DriftMonitor) -> None:
        assert isinstance(monitor, DriftMonitor)

    def test_same_distribution_is_not_drift(self, monitor: DriftMonitor) -> None:
        report = self.check(monitor, traffic(self.current_rows, seed=2))
        assert not report.drifted, f"drift reported between samples of one distribution: {report}"
        assert not [f.column for f in report.features if f.drifted]

    def test_every_shifted_column_is_drift(self, monitor: DriftMonitor) -> None:
        report = self.check(monitor, traffic(self.current_rows, seed=3, shifted=(*NUMERICAL, *CATEGORICAL)))
        assert report.drifted
        assert [f.column for f in report.features if not f.drifted] == []
        assert report.share_drifted == 1.0

    def test_per_column_verdicts_name_the_shifted_columns(self, monitor: DriftMonitor) -> None:
        report = self.check(monitor, traffic(self.current_rows, seed=4, shifted=("age", "plan")))
        assert {f.column for f in report.features if f.drifted} == {"age", "plan"}

    def test_report_describes_the_check(self, monitor: DriftMonitor) -> None:
        report = self.check(monitor, traffic(self.current_rows, seed=5, shifted=("income",)))
        assert isinstance(report.monitor, str) and report.monitor
        assert (report.n_reference, report.n_current) == (self.reference_rows, self.current_rows)
        columns = [f.column for f in report.features]
        assert sorted(columns) == sorted(NUMERICAL + CATEGORICAL), "one FeatureDrift per checked column"
        assert math.isclose(report.share_drifted, sum(f.drifted for f in report.features) / len(columns))
        for f in report.features:
            assert isinstance(f.drifted, bool), f"{f.column}: drifted is {type(f.drifted).__name__}, not bool"
            assert math.isfinite(f.score) and math.isfinite(f.threshold), f"{f.column}: non-finite score/threshold"
            assert isinstance(f.method, str) and f.method, f"{f.column}: no method named"
        json.dumps(report.to_dict(), allow_nan=False)  # served as JSON by /monitoring/{model}/drift

    def test_checks_only_the_columns_asked_for(self, monitor: DriftMonitor) -> None:
        report = self.check(monitor, traffic(self.current_rows, seed=6, shifted=("plan",)),
                            numerical=["age", "income"], categorical=[])
        assert sorted(f.column for f in report.features) == ["age", "income"]
        assert not report.drifted

    def test_missing_values_in_served_rows_are_accepted(self, monitor: DriftMonitor) -> None:
        current = traffic(self.current_rows, seed=7)
        current.loc[:24, "visits"] = pd.NA
        current.loc[:24, "plan"] = pd.NA
        current.loc[:24, "age"] = np.nan
        report = self.check(monitor, current)
        assert report.n_current == self.current_rows

    def test_inputs_are_not_modified(self, monitor: DriftMonitor) -> None:
        reference, current = traffic(self.reference_rows, seed=1), traffic(self.current_rows, seed=8)
        before = reference.copy(), current.copy()
        self.check(monitor, current, reference)
        pd.testing.assert_frame_equal(reference, before[0])
        pd.testing.assert_frame_equal(current, before[1])

    def test_a_missing_column_is_a_loom_error_naming_it(self, monitor: DriftMonitor) -> None:
        current = traffic(self.current_rows, seed=9).drop(columns=["income"])
        with pytest.raises(LoomError, match="income"):
            self.check(monitor, current)

    def test_html_report(self, monitor: DriftMonitor) -> None:
        reference, current = traffic(self.reference_rows, seed=1), traffic(self.current_rows, seed=10)
        page = monitor.html_report(reference, current, numerical=NUMERICAL, categorical=CATEGORICAL)
        assert isinstance(page, str)
        parser = _TagCounter()
        parser.feed(page)
        assert parser.tags > 0, "html_report() returned no HTML elements"
