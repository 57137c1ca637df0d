"""Drift checks of a serving replica over windows of captured traffic: data drift per input column and overall,
prediction drift, data quality against the declared schema and, once labels arrive through ``/feedback``,
performance. Every statistic comes from the drift-monitor plugin (Evidently by default); this module picks the
windows, samples large ones, keeps the history, sets the Prometheus gauges, runs the schedule and calls
``loom_drift_detected``.

It sits above :class:`~runtime.serving.server.ModelServer`: it reads the server's routes, loaded versions and
capture store, and the server knows nothing of it. :class:`~runtime.serving.app.LoomApp` builds one per replica.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import Counter, Gauge

from ..errors import LoomError, PluginError
from ..model import CATEGORICAL_TYPES
from ..monitoring import QualityMonitor
from .capture import READERS, capture_location, put, short_error
from .protocol import RequestError
from .server import LoadedVersion, ModelServer, capture_schema

log = logging.getLogger("loom.serving")

#: Feedback labels kept in memory per model, for performance on the live window.
FEEDBACK_KEPT = 100_000
#: The longest request id feedback may name (the server's own ids are 32 characters).
MAX_ID_LENGTH = 128
#: Each server's drift checks (see :meth:`DriftChecks.of`).
_CHECKS: weakref.WeakKeyDictionary[ModelServer, DriftChecks] = weakref.WeakKeyDictionary()


class DriftMetrics:
    """Prometheus families of capture and drift, in the replica's registry (served at ``/metrics``)."""

    def __init__(self, registry: Any, replica: str):
        self.replica = replica
        labels = ["replica", "model", "version"]
        self.score = Gauge("loom_drift_score", "Drift statistic of an input column in the last check (p-value or "
                           "distance, see the JSON report's method)", [*labels, "feature"], registry=registry)
        self.feature = Gauge("loom_drift_feature_drifted", "1 when the column drifted in the last check",
                             [*labels, "feature"], registry=registry)
        self.share = Gauge("loom_drift_share", "Share of input columns drifted in the last check", labels,
                           registry=registry)
        self.dataset = Gauge("loom_drift_detected", "1 when the last check found dataset drift", labels,
                             registry=registry)
        self.prediction = Gauge("loom_prediction_drift_detected", "1 when the last check found prediction drift",
                                labels, registry=registry)
        self.accuracy = Gauge("loom_window_accuracy", "Accuracy on the labelled rows of the last checked window",
                              labels, registry=registry)
        self.rmse = Gauge("loom_window_rmse", "RMSE on the labelled rows of the last checked window (regression)",
                          labels, registry=registry)
        self.checks = Counter("loom_drift_checks", "Drift checks run", [*labels, "trigger"], registry=registry)
        self.feedback = Counter("loom_feedback_rows", "Ground-truth labels received through /feedback (rows)",
                                ["replica", "model"], registry=registry)

    def record(self, model: str, version: int, out: Mapping[str, Any]) -> None:
        key = (self.replica, model, str(version))
        for column, f in out["features"].items():
            self.score.labels(*key, column).set(f["score"])
            self.feature.labels(*key, column).set(float(f["drifted"]))
        self.share.labels(*key).set(out["share_drifted"])
        self.dataset.labels(*key).set(float(out["drifted"]))
        if isinstance(out.get("prediction_drift"), dict) and "drifted" in out["prediction_drift"]:
            self.prediction.labels(*key).set(float(out["prediction_drift"]["drifted"]))
        if isinstance(out.get("performance"), dict) and "accuracy" in out["performance"]:
            self.accuracy.labels(*key).set(out["performance"]["accuracy"])
        if isinstance(out.get("performance"), dict) and "rmse" in out["performance"]:
            self.rmse.labels(*key).set(out["performance"]["rmse"])
        self.checks.labels(*key, out["trigger"]).inc()


class DriftChecks:
    """The replica's feedback labels, drift checks, their history and the check schedule, over the server's
    captured windows and capture store."""

    def __init__(self, server: ModelServer, *, schedule: bool = True, registry: Any = None):
        """``schedule``: run the scheduled checks here; ``registry``: where the drift gauges go (the server's
        metrics registry by default)."""
        self.server = server
        self.cfg = server.project.config.monitoring
        self.registry = registry if registry is not None else server.metrics.registry
        self.metrics = DriftMetrics(self.registry, server.metrics.replica)
        self.store = server.store
        self._location: Any = None
        self._monitor: Any = None
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._feedback: dict[str, OrderedDict[tuple[str, int], Any]] = {}
        self._checked: dict[tuple[str, int], int] = {}
        self._ref_predictions: dict[tuple[str, int], list[Any]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if schedule:
            self.start()

    @classmethod
    def of(cls, server: ModelServer) -> DriftChecks:
        """The drift checks of ``server``: one per server (their metrics live in the server's registry, and one
        schedule is enough), made on first use."""
        checks = _CHECKS.get(server)
        if checks is None:
            checks = _CHECKS[server] = cls(server)
        return checks

    @property
    def monitor(self) -> Any:
        if self.cfg.monitor is None:
            raise RequestError(404, "monitoring is turned off for this project (monitoring.monitor is null)")
        if self._monitor is None:
            try:
                self._monitor = self.server.plugins.drift_monitor(self.cfg.monitor, options=self.cfg.options)
            except LoomError as err:
                raise RequestError(409, str(err)) from None
        return self._monitor

    # -- feedback --------------------------------------------------------------------------------------------

    def feedback(self, model: str, payload: Any) -> dict[str, Any]:
        """Attach ground-truth labels to served request ids: ``{"labels": [{"id": ..., "label": ...}, ...]}``;
        ``label`` is one value for a one-row request or a list with one value per row. Kept here and written to
        the capture store."""
        rows = self.parse_feedback(model, payload)
        self.add_labels(model, rows)
        self.store_labels(model, rows)
        self.metrics.feedback.labels(self.metrics.replica, model).inc(len(rows))
        return {"model": model, "accepted": len(rows)}

    def store_labels(self, model: str, rows: list[tuple[str, int, Any]]) -> None:
        """Append checked labels to the capture store's ``feedback/`` partition."""
        if self.store is not None:
            frame = pd.DataFrame(rows, columns=["request_id", "row", "label"])
            frame["label"] = frame["label"].astype(str)
            self.store.add_feedback(model, frame)

    def add_labels(self, model: str, rows: list[tuple[str, int, Any]]) -> None:
        """Keep checked labels ``(request id, row, label)`` for the performance part of checks."""
        kept = self._feedback.setdefault(model, OrderedDict())
        with self._lock:
            for rid, row, value in rows:
                kept[(rid, row)] = value
            while len(kept) > FEEDBACK_KEPT:
                kept.popitem(last=False)

    def parse_feedback(self, model: str, payload: Any) -> list[tuple[str, int, Any]]:
        """The labels of a feedback body, each checked against the model's task: ``(request id, row, label)``."""
        lv = self.server.resolve(model, str(self.server.routes(model).primary))
        items = payload.get("labels") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            raise RequestError(400, 'send {"labels": [{"id": "<X-Loom-Request-ID>", "label": <class>}, ...]}')
        limits = self.server.limits
        limits.check_rows(len(items))
        rows: list[tuple[str, int, Any]] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"] or "label" not in item:
                raise RequestError(400, f"labels[{i}]: needs a non-empty string 'id' and a 'label'")
            if len(item["id"]) > MAX_ID_LENGTH:
                raise RequestError(400, f"labels[{i}]: the id is {len(item['id'])} characters long; request ids "
                                        f"have at most {MAX_ID_LENGTH}")
            values = item["label"] if isinstance(item["label"], list) else [item["label"]]
            if len(rows) + len(values) > limits.rows:
                limits.check_rows(len(rows) + len(values))
            for row, value in enumerate(values):
                try:
                    rows.append((item["id"], row, lv.task.check_label(value)))
                except ValueError as err:
                    what = "a label" if lv.regression else "a class"
                    raise RequestError(422, f"labels[{i}]: {str(err)[:200]}; not {what} of model {model!r}") from None
        return rows

    # -- checks ----------------------------------------------------------------------------------------------

    def check(self, name: str, version: str | None = None, *, trigger: str = "on demand") -> dict[str, Any]:
        """Check the captured window of a version (the primary by default) against its training reference."""
        lv, reference, current = self._window(name, version)
        monitor = self.monitor
        schema = capture_schema(lv.schema)  # a tensor input is checked through its summary statistics
        numerical = [c for c, s in schema.items() if s["type"] not in CATEGORICAL_TYPES]
        categorical = [c for c, s in schema.items() if s["type"] in CATEGORICAL_TYPES]
        started = time.perf_counter()
        sampled = current if len(current) <= self.cfg.check_rows else current.sample(self.cfg.check_rows,
                                                                                      random_state=0)
        try:
            report = monitor.check(reference[list(schema)], sampled[list(schema)], numerical=numerical,
                                   categorical=categorical)
        except LoomError as err:
            raise RequestError(409, str(err)) from None
        out = report.to_dict()
        out.update(model=name, version=lv.version, trigger=trigger, id=uuid.uuid4().hex[:12],
                   at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), window_rows=len(current))
        out["prediction_drift"] = self._prediction_drift(lv, reference, sampled)
        if isinstance(monitor, QualityMonitor):
            out["data_quality"] = _guard(lambda: monitor.data_quality(current, schema=schema))
            labelled = self._labelled(name, current)
            out["performance"] = (_guard(lambda: self._performance(monitor, lv, labelled))
                                  if len(labelled) else {"rows": 0})
        out["retrain_requested"] = False
        if report.drifted:
            try:
                asked = self.server.plugins.call("loom_drift_detected", project=self.server.project, model=name,
                                                 version=lv.version, report=report)
                out["retrain_requested"] = any(a is True for a in asked)
            except PluginError as err:
                log.error("%s", err)
                out["hook_error"] = str(err)
        out["seconds"] = round(time.perf_counter() - started, 4)
        self._checked[(name, lv.version)] = lv.capture.captured
        self._remember(name, out)
        self.metrics.record(name, lv.version, out)
        return out

    def html(self, name: str, version: str | None = None) -> str:
        """The monitor's HTML report of the same comparison as :meth:`check`."""
        lv, reference, current = self._window(name, version)
        schema = capture_schema(lv.schema)
        numerical = [c for c, s in schema.items() if s["type"] not in CATEGORICAL_TYPES]
        categorical = [c for c, s in schema.items() if s["type"] in CATEGORICAL_TYPES]
        if len(current) > self.cfg.check_rows:
            current = current.sample(self.cfg.check_rows, random_state=0)
        try:
            return self.monitor.html_report(reference[list(schema)], current[list(schema)], numerical=numerical,
                                            categorical=categorical)
        except LoomError as err:
            raise RequestError(409, str(err)) from None

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Summaries of past checks of ``name`` in this replica, oldest first."""
        self.server.routes(name)
        kept = list(self._history.get(name, ()))
        return kept[-limit:] if limit else kept

    def histograms(self, name: str, feature: str, version: str | None = None) -> dict[str, Any]:
        """One input's (or ``prediction``'s) distribution in the training reference and in the captured window, as
        shares per bin: numeric inputs over :data:`HISTOGRAM_BINS` bins of the reference's range (the ends hold
        what falls outside it), categorical ones over their most frequent values (the rest as ``(other)``)."""
        lv, reference, current = self._window(name, version)
        schema = capture_schema(lv.schema)
        if feature != "prediction" and feature not in schema:
            raise RequestError(404, f"model {name!r} has no input {feature[:80]!r}; its inputs are "
                                    f"{', '.join(schema)}")
        if feature == "prediction":
            if "prediction" not in reference:
                raise RequestError(409, f"model {name!r} version {lv.version}'s reference has no predictions")
            categorical = not lv.regression
        else:
            categorical = schema[feature]["type"] in CATEGORICAL_TYPES
        out = histogram(reference[feature], current[feature], categorical=categorical)
        return {"model": name, "version": lv.version, "feature": feature, **out,
                "reference_rows": int(len(reference)), "current_rows": int(len(current))}

    def _window(self, name: str, version: str | None) -> tuple[LoadedVersion, pd.DataFrame, pd.DataFrame]:
        routes = self.server.routes(name)
        lv = self.server.resolve(name, version if version is not None else str(routes.primary))
        if self.cfg.monitor is None:
            raise RequestError(404, "monitoring is turned off for this project (monitoring.monitor is null)")
        if lv.reference is None:
            raise RequestError(409, f"model {name!r} version {lv.version} has no reference profile")
        current = lv.capture.frame(self.cfg.window_s)
        if current.empty:
            raise RequestError(409, f"no served rows captured yet for model {name!r} version {lv.version}")
        return lv, lv.reference, current

    @staticmethod
    def _performance(monitor: Any, lv: LoadedVersion, labelled: pd.DataFrame) -> dict[str, Any]:
        if lv.regression:
            return monitor.performance(labelled, target="label", prediction="prediction", classes=[],
                                       task="regression")
        return monitor.performance(labelled, target="label", prediction="prediction", classes=lv.classes)

    def _prediction_drift(self, lv: LoadedVersion, reference: pd.DataFrame,
                          current: pd.DataFrame) -> dict[str, Any]:
        """Drift of the predictions (the class, or the value) between the model's predictions on its reference
        rows and on served rows."""
        key = (lv.name, lv.version)
        if key not in self._ref_predictions and "prediction" in reference:  # stored at training time
            self._ref_predictions[key] = reference["prediction"].tolist()
        if key not in self._ref_predictions and not lv.tensors:  # a version from before predictions were stored
            cols = {c: (reference[c].to_numpy(np.float64) if s["type"] not in CATEGORICAL_TYPES
                        else reference[c].astype(object).where(reference[c].notna(), None).tolist())
                    for c, s in lv.schema.items()}
            self._ref_predictions[key] = lv.task.predictions(lv.forward((lv.encode(cols),)))
        if key not in self._ref_predictions:
            return {"error": "the version's reference sample has no predictions"}
        if lv.regression:
            ref = pd.DataFrame({"prediction": pd.to_numeric(pd.Series(self._ref_predictions[key]))})
            cur = pd.DataFrame({"prediction": pd.to_numeric(current["prediction"]).to_numpy()})
            numerical, categorical = ["prediction"], []
        else:
            ref = pd.DataFrame({"prediction": pd.Series(self._ref_predictions[key]).astype(str)})
            cur = pd.DataFrame({"prediction": current["prediction"].astype(str).to_numpy()})
            numerical, categorical = [], ["prediction"]
        result = _guard(lambda: self.monitor.check(ref, cur, numerical=numerical, categorical=categorical))
        if isinstance(result, dict):
            return result
        feature = result.features[0] if result.features else None
        return {"drifted": bool(feature.drifted if feature else result.drifted),
                "score": feature.score if feature else None, "method": feature.method if feature else None}

    def _labelled(self, name: str, current: pd.DataFrame) -> pd.DataFrame:
        kept = self._feedback.get(name)
        if not kept:
            return current.iloc[0:0].assign(label=[])
        with self._lock:
            labels = [kept.get((rid, row)) for rid, row in zip(current["request_id"], current["row"])]
        out = current.assign(label=labels)
        return out[out["label"].notna()].reset_index(drop=True)

    def _remember(self, name: str, out: dict[str, Any]) -> None:
        summary = {k: out[k] for k in ("id", "at", "trigger", "model", "version", "drifted", "share_drifted",
                                       "n_current", "window_rows", "retrain_requested", "seconds")}
        summary["drifted_features"] = [c for c, f in out["features"].items() if f["drifted"]]
        #: each input's drift score (its method's statistic: lower is more drifted for p-values), over time
        summary["scores"] = {c: f.get("score") for c, f in out["features"].items()}
        summary["prediction_drift"] = out["prediction_drift"].get("drifted")
        summary["prediction_score"] = out["prediction_drift"].get("score")
        if "performance" in out:
            perf = out["performance"]
            summary["accuracy"] = perf.get("accuracy")
            summary["labelled_rows"] = perf.get("rows")
            if "rmse" in perf:  # regression
                summary.update(rmse=perf["rmse"], r2=perf.get("r2"))
        self._history.setdefault(name, deque(maxlen=self.cfg.history)).append(summary)
        data = json.dumps({**summary, "report": out}, default=str).encode()
        rel = check_name(name, out["id"])
        try:
            if self.store is not None:  # through the store: its status counts the failure, and while it is down
                self.store.write_object(rel, data)  # (waiting to try again) the check does not wait on it
            else:
                put(self.history_location, rel, data)
        except Exception as err:  # noqa: BLE001 - a check is answered even when its history cannot be stored
            log.warning("could not store drift check %s of %s under %s: %s", out["id"], name,
                        self.history_location.shown, short_error(err))

    @property
    def history_location(self) -> Any:
        """Where the check history goes: the capture store (:attr:`runtime.Project.capture_uri`)."""
        if self._location is None:
            self._location = (self.store.location if self.store is not None
                              else capture_location(self.server.project.capture_uri))
        return self._location

    def seed_history(self, name: str) -> int:
        """Start ``name``'s history from the checks the store holds (a restarted monitor's), before any check run
        here since; returns how many were read back."""
        stored = read_drift_history(self.history_location, name, limit=self.cfg.history)
        kept = list(self._history.get(name, ()))
        known = {h.get("id") for h in kept}
        older = [{k: v for k, v in r.items() if k != "report"} for r in stored if r.get("id") not in known]
        self._history[name] = deque([*older, *kept], maxlen=self.cfg.history)
        return len(older)

    # -- the schedule ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduled checks (once; no-op when ``interval_s`` or ``monitor`` is null). They run on a daemon
        thread of their own, so they depend on no event loop of the serving framework."""
        if self._thread is None and self.cfg.interval_s is not None and self.cfg.monitor is not None:
            self._thread = threading.Thread(target=self._schedule, args=(self.cfg.interval_s,),
                                            name="loom-drift-schedule", daemon=True)
            self._thread.start()

    def _schedule(self, interval_s: float) -> None:
        while True:
            time.sleep(interval_s)
            for name, routes in list(self.server.table.models.items()):
                try:
                    lv = self.server.resolve(name, str(routes.primary))
                    if lv.capture.captured - self._checked.get((name, lv.version), 0) < self.cfg.min_rows:
                        continue
                    self.check(name, trigger="schedule")
                except RequestError as err:
                    log.info("scheduled drift check of %s skipped: %s", name, err.message)
                except Exception:  # noqa: BLE001 - a failed check must not stop the schedule
                    log.exception("scheduled drift check of %s failed", name)


#: Bins of a numeric input's histogram (:meth:`DriftChecks.histograms`); categories shown of a categorical one.
HISTOGRAM_BINS = 20
HISTOGRAM_CATEGORIES = 20


def histogram(reference: pd.Series, current: pd.Series, *, categorical: bool) -> dict[str, Any]:
    """Two samples as shares per bin: ``{"kind": "numeric", "edges": [...], "reference": [...], "current": [...]}``
    (bins over the reference's finite range, values outside it counted in the end bins, missing values left
    out) or ``{"kind": "categorical", "categories": [...], ...}``. Shares sum to 1 over the counted values."""
    if categorical:
        ref = reference.astype(object).where(reference.notna(), "(missing)").astype(str)
        cur = current.astype(object).where(current.notna(), "(missing)").astype(str)
        counts = pd.concat([ref, cur]).value_counts()
        top = [str(c) for c in counts.index[:HISTOGRAM_CATEGORIES]]
        other = len(counts) > len(top)
        def shares(values: pd.Series) -> list[float]:
            vc = values.value_counts()
            n = max(1, len(values))
            row = [float(vc.get(c, 0)) / n for c in top]
            return row + ([1.0 - sum(row)] if other else [])
        return {"kind": "categorical", "categories": top + (["(other)"] if other else []),
                "reference": shares(ref), "current": shares(cur)}
    ref = pd.to_numeric(reference, errors="coerce").to_numpy(np.float64)
    cur = pd.to_numeric(current, errors="coerce").to_numpy(np.float64)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    base = ref if len(ref) else cur
    lo, hi = (float(base.min()), float(base.max())) if len(base) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    def shares(values: np.ndarray) -> list[float]:
        counts, _ = np.histogram(np.clip(values, lo, hi), bins=edges)
        return [float(c) / max(1, len(values)) for c in counts]
    return {"kind": "numeric", "edges": [float(e) for e in edges], "reference": shares(ref), "current": shares(cur)}


def check_name(model: str, check_id: str) -> str:
    """Where a drift check's record goes in the capture store: one small file per check (object stores have no
    append), named so that names sort in the order the checks ran."""
    return f"drift/model={model}/{time.time_ns() // 1_000_000:013d}-{check_id}.json"


def read_drift_history(root: Any, model: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The drift checks of ``model`` stored under a capture store (a directory, a URI or a Location), oldest first,
    each ``{**summary, "report": <the check's JSON>}``; the last ``limit`` only when given. Reads the one-file-per-
    check records and, first, a ``history.jsonl`` that earlier versions appended to."""
    location = capture_location(root)
    base = f"drift/model={model}"
    records: list[dict[str, Any]] = []
    try:
        legacy = location.read_bytes(f"{base}/history.jsonl")
    except FileNotFoundError:
        legacy = b""
    for line in legacy.decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash mid-append
        if isinstance(record, dict):
            records.append(record)
    names = location.files(base, ".json")
    if limit:
        names = names[-limit:]

    def one(name: str) -> Any:
        try:
            return json.loads(location.read_bytes(name))
        except (FileNotFoundError, ValueError):  # removed meanwhile, or not a record
            return None

    if location.local or len(names) < 2:
        found = [one(n) for n in names]
    else:  # one request per record on an object store: several at a time
        with ThreadPoolExecutor(min(READERS, len(names)), thread_name_prefix="loom-drift-read") as pool:
            found = list(pool.map(one, names))
    records.extend(r for r in found if isinstance(r, dict))
    return records[-limit:] if limit else records


def with_store(answer: dict[str, Any], server: ModelServer) -> dict[str, Any]:
    """A monitoring answer with the replica's capture store status under ``"store"`` (``None`` without a store), so
    that an unwritable store shows where drift is looked at."""
    store = server.store
    return {**answer, "store": store.status() if store is not None else None}


def _guard(fn: Any) -> Any:
    """Run an optional part of a check; a failure is reported in the result rather than failing the whole check."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - a plugin's failure, named in the result
        log.warning("drift check part failed: %s: %s", type(err).__name__, err)
        return {"error": f"{type(err).__name__}: {err}"}
