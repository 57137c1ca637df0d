"""runtime.testing, the pytest helpers Loom ships for plugin authors: its fixtures, its re-exported contract suites,
and the drift-monitor contract run against Evidently, against a minimal third-party monitor, and against a broken
one that it must fail."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import runtime
import runtime.testing
from runtime import DriftReport, FeatureDrift, get_plugins, hookimpl
from runtime.testing import DriftMonitorContract, plugin_manager


class Deployed:
    def __init__(self) -> None:
        self.urls: list[str] = []

    @hookimpl
    def loom_model_deployed(self, url):
        self.urls.append(url)


def test_plugin_manager_registers_only_what_it_is_given():
    plugin = Deployed()
    plugins = plugin_manager(plugin)
    assert [i.name for i in plugins.info()] == ["Deployed"]
    plugins.call("loom_model_deployed", project=None, model="m", version=1, url="http://127.0.0.1:8000")
    assert plugin.urls == ["http://127.0.0.1:8000"]


@pytest.fixture
def only_nothing(monkeypatch):
    monkeypatch.setenv("LOOM_PLUGINS", "nothing-at-all")
    monkeypatch.setenv("LOOM_DISABLE_PLUGINS", "files")


def test_loom_plugins_ignores_the_shells_discovery_variables(only_nothing, loom_plugins):
    plugins = loom_plugins(Deployed(), installed=True)
    names = {i.name for i in plugins.info()}
    assert {"Deployed", "files", "evidently"} <= names
    assert plugins.names("loom_register_data_sources")["csv"] == "files"


def test_loom_plugins_reports_a_bad_plugin(loom_plugins):
    class Bad:
        @hookimpl
        def loom_model_deployed(self, adress):
            pass

    with pytest.raises(runtime.PluginError, match="'Bad' failed in hook loom_model_deployed"):
        loom_plugins(Bad())


def test_loom_ray_is_a_local_cluster(loom_ray):
    import os

    import ray

    def worker_pid() -> int:  # nested, so Ray ships it by value: workers cannot import test modules
        return os.getpid()

    assert loom_ray["CPU"] >= 1
    assert ray.get(ray.remote(worker_pid).remote()) != os.getpid()


def test_contract_suites_are_reexported():
    from runtime.testing import DataSourceContract, FeatureStoreContract, RegistryContract, TrackerContract

    for suite in (DataSourceContract, FeatureStoreContract, RegistryContract, TrackerContract, DriftMonitorContract):
        assert suite.__name__ in runtime.testing.__all__
        assert [name for name in vars(suite) if name.startswith("test_")], suite
    with pytest.raises(AttributeError, match="no attribute 'NoSuchContract'"):
        runtime.testing.NoSuchContract  # noqa: B018


class TestEvidentlyMonitor(DriftMonitorContract):
    """Loom's built-in monitor meets the contract it ships."""

    @pytest.fixture(scope="class")
    def monitor(self) -> runtime.DriftMonitor:
        return get_plugins().drift_monitor("evidently", options={})


class TwoSampleMonitor:
    """A minimal third-party monitor: Kolmogorov-Smirnov for numbers, chi-squared for categories, p < 0.01."""

    def __init__(self, alpha: float = 0.01) -> None:
        self.alpha = alpha

    def check(self, reference, current, *, numerical, categorical) -> DriftReport:
        from scipy import stats

        missing = [c for c in [*numerical, *categorical] if c not in reference or c not in current]
        if missing:
            raise runtime.DataValidationError("served rows", [f"missing column(s): {', '.join(missing)}"])
        features = []
        for col in numerical:
            ref, cur = (np.asarray(f[col].dropna(), dtype="float64") for f in (reference, current))
            features.append(FeatureDrift(col, False, float(stats.ks_2samp(ref, cur).pvalue), "ks", self.alpha))
        for col in categorical:
            counts = pd.crosstab(pd.concat([reference[col], current[col]]).astype(str).to_numpy(),
                                 np.r_[np.zeros(len(reference)), np.ones(len(current))])
            p = float(stats.chi2_contingency(counts).pvalue) if len(counts) > 1 else 1.0
            features.append(FeatureDrift(col, False, p, "chi2", self.alpha))
        features = [FeatureDrift(f.column, f.score < f.threshold, f.score, f.method, f.threshold) for f in features]
        share = sum(f.drifted for f in features) / len(features)
        return DriftReport(monitor="two-sample", drifted=share >= 0.5, share_drifted=share,
                           n_reference=len(reference), n_current=len(current), features=tuple(features))

    def html_report(self, reference, current, *, numerical, categorical) -> str:
        report = self.check(reference, current, numerical=numerical, categorical=categorical)
        rows = "".join(f"<tr><td>{f.column}</td><td>{f.score:.3g}</td></tr>" for f in report.features)
        return f"<table>{rows}</table>"


class TestMinimalThirdPartyMonitor(DriftMonitorContract):
    """The contract is not Evidently's behaviour: a 40-line monitor, registered through a hook, meets it too."""

    @pytest.fixture
    def monitor(self, loom_plugins) -> runtime.DriftMonitor:
        class TwoSample:
            @hookimpl
            def loom_register_drift_monitors(self, register):
                register("two-sample", lambda *, options: TwoSampleMonitor(**options))

        return loom_plugins(TwoSample()).drift_monitor("two-sample", options={"alpha": 0.01})


def test_the_contract_fails_a_broken_monitor(tmp_path: Path):
    """A monitor that never sees drift and scribbles on its input fails the suite, by name, in a plain pytest run
    that imports only runtime.testing."""
    (tmp_path / "test_broken.py").write_text(textwrap.dedent("""
        import pytest
        from runtime import DriftReport, FeatureDrift
        from runtime.testing import DriftMonitorContract


        class Blind:
            def check(self, reference, current, *, numerical, categorical):
                current["age"] = 0.0
                cols = [*numerical, *categorical]
                return DriftReport("blind", False, 0.0, len(reference), len(current),
                                   tuple(FeatureDrift(c, False, 1.0, "none", 0.05) for c in cols))

            def html_report(self, reference, current, *, numerical, categorical):
                return ""


        class TestBlind(DriftMonitorContract):
            @pytest.fixture
            def monitor(self):
                return Blind()
    """))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1, out.stdout
    failed = {line.split("::")[-1].split(" ")[0] for line in out.stdout.splitlines() if line.startswith("FAILED")}
    assert failed == {"test_every_shifted_column_is_drift", "test_per_column_verdicts_name_the_shifted_columns",
                      "test_inputs_are_not_modified", "test_a_missing_column_is_a_loom_error_naming_it",
                      "test_html_report"}, out.stdout
    assert "assert False" in out.stdout  # assertion rewriting shows the compared values
