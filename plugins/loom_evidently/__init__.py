"""Loom's built-in drift monitor: Evidently's ``DataDriftPreset`` behind the :class:`runtime.DriftMonitor` protocol.

Registered as ``evidently`` (``monitoring.monitor: evidently`` in ``loom.yaml``). Every statistic, per-column
verdict and the dataset-level verdict come from Evidently; this module only prepares the frames and maps
Evidently's results onto :class:`runtime.DriftReport`.

Options (``monitoring.options``):

``drift_share``
    The dataset counts as drifted when at least this share of the checked columns drifted (default 0.5).
``method``
    An Evidently stat test name (``ks``, ``psi``, ``wasserstein``, ``jensenshannon``, ...) applied to every
    column. Unset, Evidently picks one per column from its type and the data size.
``threshold``
    The per-column threshold of the stat test. Unset, the test's own default is used.

Evidently is imported only when a check runs (or a ``method`` is validated): it takes seconds to import and
``loom plugins`` must stay fast.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from typing import TYPE_CHECKING, Any

import pandas as pd

from runtime import ConfigError, DataValidationError, DriftReport, FeatureDrift, LoomError, Register, hookimpl

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

__all__ = ["EvidentlyMonitor", "loom_register_drift_monitors"]

NAME = "evidently"
_OPTIONS = ("drift_share", "method", "threshold")
# Evidently's test statuses, as drift verdicts. The drift tests report only these two; anything else
# (ERROR, SKIPPED, WARNING) means Evidently could not decide, and is reported as an error.
_VERDICTS = {"SUCCESS": False, "FAIL": True}


class EvidentlyMonitor:
    """Drift monitor running Evidently's ``DataDriftPreset`` on reference and current rows."""

    def __init__(self, *, drift_share: float = 0.5, method: str | None = None, threshold: float | None = None):
        """Build a monitor; arguments as the module's options (use :meth:`from_options` for raw config)."""
        self.drift_share = drift_share
        self.method = method
        self.threshold = threshold

    @classmethod
    def from_options(cls, *, options: dict[str, Any]) -> EvidentlyMonitor:
        """The factory registered with Loom: validate ``options`` from ``loom.yaml`` and build a monitor.

        :raises runtime.ConfigError: an unknown option, or a value of the wrong type or out of range.
        """
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown option(s) for drift monitor {NAME!r}: {', '.join(unknown)} (known: {', '.join(_OPTIONS)})"
            )
        share = _number(options, "drift_share")
        drift_share = 0.5 if share is None else share
        if not 0 < drift_share <= 1:
            raise ConfigError(f"drift monitor {NAME!r}: drift_share must be in (0, 1], got {drift_share}")
        threshold = _number(options, "threshold")
        if threshold is not None and threshold <= 0:
            raise ConfigError(f"drift monitor {NAME!r}: threshold must be positive, got {threshold}")
        method = options.get("method")
        if method is not None:
            if not isinstance(method, str) or not method:
                raise ConfigError(f"drift monitor {NAME!r}: method must be an Evidently stat test name, got {method!r}")
            _stat_test_kinds(method)  # fail now on a name Evidently does not know
        return cls(drift_share=drift_share, method=method, threshold=threshold)

    def check(
        self,
        reference: pd.DataFrame,
        current: pd.DataFrame,
        *,
        numerical: list[str],
        categorical: list[str],
    ) -> DriftReport:
        """Compare ``current`` with ``reference`` over the given columns with Evidently.

        :raises runtime.LoomError: ``current`` or ``reference`` has no rows, or the column lists are empty or overlap.
        :raises runtime.DataValidationError: a column is missing, entirely empty, or not numeric where declared so.
        :raises runtime.ConfigError: the configured ``method`` does not apply to some of the columns' types.
        """
        snapshot = self._run(reference, current, numerical=numerical, categorical=categorical)
        return self._report(snapshot, [*numerical, *categorical], n_reference=len(reference), n_current=len(current))

    def html_report(
        self, reference: pd.DataFrame, current: pd.DataFrame, *, numerical: list[str], categorical: list[str]
    ) -> str:
        """Evidently's standalone HTML report of the same comparison as :meth:`check` (same errors). The data it
        embeds (served values included) is escaped so that no value can end its <script> element.

        :raises runtime.LoomError: also when Evidently's page does not have the one data block expected."""
        snapshot = self._run(reference, current, numerical=numerical, categorical=categorical)
        return _escape_embedded_data(snapshot.get_html_str(as_iframe=False))

    def data_quality(self, current: pd.DataFrame, *, schema: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Per input column, Evidently's counts of missing values, numbers outside the declared ``min``/``max`` and
        categories outside the declared ``categories``: ``{column: {"missing": n, "out_of_range": n,
        "new_categories": n, "rows": n}}`` (a count is absent where the schema declares no bound)."""
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import MissingValueCount, OutListValueCount, OutRangeValueCount

        numerical = [c for c, s in schema.items() if s.get("type") in ("int", "float")]
        categorical = [c for c in schema if c not in numerical]
        frame = pd.DataFrame({c: current[c].astype("float64") if c in numerical else current[c] for c in schema})
        metrics: list[Any] = [MissingValueCount(column=c) for c in schema]
        for c in numerical:
            lo, hi = schema[c].get("min"), schema[c].get("max")
            if lo is not None or hi is not None:
                metrics.append(OutRangeValueCount(column=c, left=-math.inf if lo is None else lo,
                                                  right=math.inf if hi is None else hi))
        for c in categorical:
            if schema[c].get("categories"):
                metrics.append(OutListValueCount(column=c, values=list(schema[c]["categories"])))
        definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
        snapshot = Report(metrics).run(Dataset.from_pandas(frame, data_definition=definition), None)
        names = {"MissingValueCount": "missing", "OutRangeValueCount": "out_of_range",
                 "OutListValueCount": "new_categories"}
        out: dict[str, dict[str, Any]] = {c: {"rows": len(frame)} for c in schema}
        for metric in json.loads(snapshot.json())["metrics"]:
            config = metric["config"]
            out[config["column"]][names[config["type"].rsplit(":", 1)[-1]]] = int(metric["value"]["count"])
        return out

    def performance(self, labelled: pd.DataFrame, *, target: str, prediction: str,
                    classes: list[Any], task: str = "classification") -> dict[str, Any]:
        """Evidently's quality of ``prediction`` against ``target``: for classification (labels compared as text)
        ``{"accuracy": ..., "f1": ..., "rows": n}``, for regression ``{"rmse": ..., "mae": ..., "r2": ...,
        "rows": n}``.

        :raises runtime.LoomError: no labelled rows.
        """
        if len(labelled) == 0:
            raise LoomError("no labelled rows to measure performance on; send labels to /feedback/{model}")
        if task == "regression":
            return self._regression(labelled, target=target, prediction=prediction)
        from evidently import BinaryClassification, DataDefinition, Dataset, MulticlassClassification, Report
        from evidently.metrics import Accuracy, F1Score

        frame = pd.DataFrame({"target": labelled[target].astype(str), "prediction": labelled[prediction].astype(str)})
        names = [str(c) for c in classes]
        task: Any = (BinaryClassification(target="target", prediction_labels="prediction", pos_label=names[-1])
                     if len(names) == 2 else MulticlassClassification(target="target", prediction_labels="prediction"))
        definition = DataDefinition(categorical_columns=["target", "prediction"], classification=[task])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's ill-defined-precision warnings on tiny windows
            snapshot = Report([Accuracy(), F1Score()]).run(Dataset.from_pandas(frame, data_definition=definition), None)
        values = {m["config"]["type"].rsplit(":", 1)[-1]: m["value"] for m in json.loads(snapshot.json())["metrics"]}
        return {"accuracy": float(values["Accuracy"]), "f1": float(values["F1Score"]), "rows": len(frame)}

    def _regression(self, labelled: pd.DataFrame, *, target: str, prediction: str) -> dict[str, Any]:
        from evidently import DataDefinition, Dataset, Regression, Report
        from evidently.metrics import MAE, RMSE, R2Score

        frame = pd.DataFrame({"target": pd.to_numeric(labelled[target], errors="coerce"),
                              "prediction": pd.to_numeric(labelled[prediction], errors="coerce")}).dropna()
        if len(frame) == 0:
            raise LoomError("no numeric labelled rows to measure regression performance on")
        definition = DataDefinition(numerical_columns=["target", "prediction"],
                                    regression=[Regression(target="target", prediction="prediction")])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            snapshot = Report([RMSE(), MAE(), R2Score()]).run(Dataset.from_pandas(frame, data_definition=definition),
                                                              None)
        values = {m["config"]["type"].rsplit(":", 1)[-1]: m["value"] for m in json.loads(snapshot.json())["metrics"]}
        mae = values["MAE"]["mean"] if isinstance(values["MAE"], dict) else values["MAE"]
        return {"rmse": float(values["RMSE"]), "mae": float(mae), "r2": float(values["R2Score"]), "rows": len(frame)}

    # -- internals -------------------------------------------------------------------------------------------

    def _run(
        self, reference: pd.DataFrame, current: pd.DataFrame, *, numerical: list[str], categorical: list[str]
    ) -> Snapshot:
        columns = [*numerical, *categorical]
        if not columns:
            raise LoomError("drift check needs at least one numerical or categorical column")
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise LoomError(
                f"drift check columns are listed more than once (numerical and categorical must not overlap): "
                f"{', '.join(repeated)}"
            )
        if len(current) == 0:
            raise LoomError(
                "no served rows captured yet: the current window is empty, so there is nothing to compare "
                "with the reference data"
            )
        if len(reference) == 0:
            raise LoomError("the reference data has no rows, so drift cannot be checked against it")
        if self.method is not None:
            kinds = _stat_test_kinds(self.method)
            for kind, cols in (("numerical", numerical), ("categorical", categorical)):
                if cols and kind not in kinds:
                    raise ConfigError(
                        f"drift monitor {NAME!r}: stat test {self.method!r} does not apply to {kind} columns "
                        f"({', '.join(cols)}); it handles {', '.join(sorted(kinds))} data only. Choose a method "
                        f"that handles both, or leave method unset so Evidently picks one per column"
                    )
        ref = _prepare(reference, "reference data", numerical, categorical)
        cur = _prepare(current, "served rows (current window)", numerical, categorical)

        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        definition = DataDefinition(numerical_columns=list(numerical), categorical_columns=list(categorical))
        preset = DataDriftPreset(
            columns=columns, drift_share=self.drift_share, method=self.method, threshold=self.threshold
        )
        # include_tests: Evidently's drift verdicts (per column and for the dataset) are its tests' statuses.
        return Report([preset], include_tests=True).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )

    def _report(self, snapshot: Snapshot, columns: list[str], *, n_reference: int, n_current: int) -> DriftReport:
        import evidently

        results = json.loads(snapshot.json())  # plain JSON types, no numpy scalars or enums
        verdicts = {t["metric_config"]["metric_id"]: _verdict(t) for t in results["tests"]}
        features: dict[str, FeatureDrift] = {}
        dataset: tuple[bool, float, int] | None = None
        for metric in results["metrics"]:
            config = metric["config"]
            if config["type"] == "evidently:metric_v2:ValueDrift":
                features[config["column"]] = FeatureDrift(
                    column=config["column"],
                    drifted=verdicts[metric["id"]],
                    score=float(metric["value"]),
                    method=config["method"],
                    threshold=float(config["threshold"]),
                )
            elif config["type"] == "evidently:metric_v2:DriftedColumnsCount":
                value = metric["value"]
                dataset = (verdicts[metric["id"]], float(value["share"]), int(value["count"]))
        if dataset is None or set(features) != set(columns):
            raise LoomError(
                f"Evidently {evidently.__version__} returned drift results in an unexpected shape "
                f"(columns: {sorted(features)}, expected {sorted(columns)})"
            )
        drifted, share, count = dataset
        return DriftReport(
            monitor=NAME,
            drifted=drifted,
            share_drifted=share,
            n_reference=n_reference,
            n_current=n_current,
            features=tuple(features[c] for c in columns),
            details={
                "evidently_version": evidently.__version__,
                "drift_share": self.drift_share,
                "n_drifted": count,
                "n_columns": len(columns),
            },
        )


# Evidently's standalone report (evidently/legacy/utils/dashboard.py ``file_html_template``) embeds the report's data
# as two ``json.dumps`` results, one per line, in one <script> element of the <head>. json.dumps leaves ``<``, ``>``
# and ``&`` as they are, so a served string value holding ``</script>`` would close that element and the rest of
# the value would run as script. ``json.dumps`` (ensure_ascii) never writes a raw newline, so each line below is
# exactly one JSON document.
_DATA_BLOCK = re.compile(
    r"<script>\n(?P<indent>[ \t]*)var (?P<id>[A-Za-z_][A-Za-z0-9_]*) = (?P<info>[^\n]*);\n"
    r"(?P<indent2>[ \t]*)var additional_graphs_(?P=id) = (?P<graphs>[^\n]*);\n</script>")
_JS_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JS_UNSAFE_RE = re.compile("[<>&\u2028\u2029]")


def _script_safe(json_text: str) -> str:
    """``json_text`` with ``<``, ``>``, ``&``, U+2028 and U+2029 written as ``\\uXXXX`` escapes: the same JSON value
    (these characters appear only inside JSON strings, where the escapes mean the same), and nothing that can end
    a <script> element or a JavaScript line."""
    return _JS_UNSAFE_RE.sub(lambda m: _JS_UNSAFE[m.group()], json_text)


def _escape_embedded_data(html: str) -> str:
    """Evidently's standalone HTML report with its embedded data made safe to hold any served value.

    :raises runtime.LoomError: the report does not have exactly one data block of the expected shape (a changed
        Evidently template): the report is refused rather than served with its data unescaped.
    """
    blocks = list(_DATA_BLOCK.finditer(html))
    if len(blocks) != 1:
        import evidently

        raise LoomError(f"Evidently {evidently.__version__}'s HTML report has {len(blocks)} embedded data blocks of "
                        f"the expected shape, not one; refusing to serve it without escaping its data")
    m = blocks[0]
    for group in ("info", "graphs"):
        json.loads(m.group(group))  # each really is one JSON document, or the escaping below could change code
    block = (f"<script>\n{m.group('indent')}var {m.group('id')} = {_script_safe(m.group('info'))};\n"
             f"{m.group('indent2')}var additional_graphs_{m.group('id')} = {_script_safe(m.group('graphs'))};\n"
             f"</script>")
    return html[:m.start()] + block + html[m.end():]


def _number(options: dict[str, Any], key: str) -> float | None:
    """``options[key]`` as a finite float, ``None`` when absent or null."""
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"drift monitor {NAME!r}: {key} must be a number, got {value!r}")
    return float(value)


def _verdict(test: dict[str, Any]) -> bool:
    """Whether an Evidently drift test (from the snapshot's JSON) found drift."""
    status = test["status"]
    if status not in _VERDICTS:
        raise LoomError(f"Evidently could not decide {test['name']!r} (status {status}): {test['description']}")
    return _VERDICTS[status]


def _stat_test_kinds(method: str) -> set[str]:
    """The column kinds (``numerical``, ``categorical``) Evidently's stat test ``method`` applies to.

    :raises runtime.ConfigError: Evidently has no stat test of that name.
    """
    from evidently import ColumnType
    from evidently.legacy.calculations.stattests.registry import (
        StatTestInvalidFeatureTypeError,
        StatTestNotFoundError,
        get_registered_stattest,
    )

    kinds = set()
    for kind, column_type in (("numerical", ColumnType.Numerical), ("categorical", ColumnType.Categorical)):
        try:
            get_registered_stattest(method, column_type)
        except StatTestNotFoundError as err:
            raise ConfigError(f"drift monitor {NAME!r}: unknown method {method!r}: {err}") from None
        except StatTestInvalidFeatureTypeError:
            continue
        kinds.add(kind)
    if not kinds:
        raise ConfigError(f"drift monitor {NAME!r}: stat test {method!r} applies to neither numerical nor "
                          f"categorical columns")
    return kinds


def _prepare(frame: pd.DataFrame, source: str, numerical: list[str], categorical: list[str]) -> pd.DataFrame:
    """The checked columns of ``frame`` in a form Evidently accepts.

    Numerical columns become ``float64`` (Evidently fails on pandas' nullable ``Int64``/``boolean`` dtypes in
    numerical columns); categorical columns are passed as they are (``object``, ``string``, ``boolean`` and
    ``category`` all work, missing values included).

    :raises runtime.DataValidationError: columns are missing, hold no values at all (Evidently cannot compare an
        empty column), or a numerical column holds non-numbers.
    """
    missing = [c for c in [*numerical, *categorical] if c not in frame.columns]
    if missing:
        raise DataValidationError(source, [f"missing column(s): {', '.join(missing)}"])
    problems = []
    out: dict[str, pd.Series] = {}
    for col in numerical:
        try:
            values = frame[col].astype("float64")
        except (TypeError, ValueError):
            problems.append(f"column {col!r} is declared numerical but holds non-numbers (dtype {frame[col].dtype})")
            continue
        if not values.abs().lt(math.inf).any():  # Evidently drops NaN and +-inf before testing
            problems.append(f"column {col!r} has no finite values")
        out[col] = values
    for col in categorical:
        if frame[col].isna().all():
            problems.append(f"column {col!r} has no values (all missing)")
        out[col] = frame[col]
    if problems:
        raise DataValidationError(source, problems)
    return pd.DataFrame(out, index=frame.index)


@hookimpl
def loom_register_drift_monitors(register: Register) -> None:
    """Register the ``evidently`` drift monitor."""
    register(NAME, EvidentlyMonitor.from_options)
