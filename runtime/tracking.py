"""The experiment-tracking protocol: runs with params, metrics over time, status, duration and artifacts.

Tracking is its own protocol rather than more methods on :class:`runtime.ModelRegistry`, so a registry that only
stores models (an object store, a model hub) stays a complete registry. It is implemented by the registry
*object*, not chosen separately in ``loom.yaml``: a model version links to the run that trained it, and that link
only resolves when both live in the same store (MLflow's model versions point at MLflow runs; the local registry
keeps both in one SQLite file). The pipeline tracks training whenever the configured registry is a ``Tracker``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from .errors import InvalidNameError
from .names import check_name

RunStatus = Literal["running", "finished", "failed", "killed"]
#: Statuses a run can end with (``running`` is only ever the status of a run that has not ended).
END_STATUSES: tuple[RunStatus, ...] = ("finished", "failed", "killed")
RUN_STATUSES: tuple[RunStatus, ...] = ("running", *END_STATUSES)


@dataclass(frozen=True)
class MetricPoint:
    """One logged value of a metric."""

    step: int
    value: float
    timestamp: float


@dataclass(frozen=True)
class Run:
    """A tracked run: ``metrics`` holds each metric's latest value (highest step); the history of every metric
    comes from :meth:`Tracker.metric_history`."""

    id: str
    experiment: str
    name: str
    status: RunStatus
    started_at: float
    ended_at: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: tuple[str, ...] = ()

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; ``None`` while the run is running."""
        return None if self.ended_at is None else max(0.0, self.ended_at - self.started_at)


@runtime_checkable
class Tracker(Protocol):
    """Experiment tracking, implemented by registries that can also record runs.

    Params are JSON values, written once (logging a key again with a different value raises
    :class:`runtime.LoomError`, so a run's record cannot be rewritten after the fact); metrics are finite or
    non-finite floats logged at integer steps; artifacts are bytes under safe, non-pickle names.
    """

    def start_run(
        self, experiment: str, *, name: str = "", params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> Run:
        """Create a ``running`` run in ``experiment`` (created if new) and return it."""
        ...

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Add params to a run."""
        ...

    def log_metrics(self, run_id: str, metrics: dict[str, float], *, step: int = 0) -> None:
        """Record each metric's value at ``step``."""
        ...

    def log_artifact(self, run_id: str, name: str, data: bytes) -> None:
        """Store one artifact with a run (replacing a previous artifact of the same name)."""
        ...

    def end_run(self, run_id: str, status: RunStatus = "finished") -> Run:
        """Mark a run ended with ``status`` (one of :data:`END_STATUSES`) and return it."""
        ...

    def get_run(self, run_id: str) -> Run:
        """Look a run up by id; raise :class:`runtime.NotFoundError` if absent."""
        ...

    def list_runs(self, experiment: str | None = None) -> list[Run]:
        """Runs of one experiment (or all), newest first."""
        ...

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every logged value of one metric, in step order."""
        ...

    def read_run_artifact(self, run_id: str, name: str) -> bytes:
        """Return one run artifact's bytes."""
        ...


def check_run_id(run_id: object) -> str:
    """Run ids are opaque, but end up in paths and queries: they must be safe names."""
    return check_name(run_id, "run id")


def check_run_status(status: object) -> RunStatus:
    """Return ``status`` if a run may end with it, else raise :class:`InvalidNameError`."""
    if status not in END_STATUSES:
        raise InvalidNameError(f"run status {status!r} is not one of {', '.join(END_STATUSES)}")
    return status  # type: ignore[return-value]


def check_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Validate metric names and turn the values into floats (``bool`` and non-numbers are refused)."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict of name -> number, got {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        check_name(key, "metric name")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"metric {key!r} must be a number, got {value!r}")
        out[key] = float(value)
    return out


@dataclass(frozen=True)
class Comparison:
    """Runs side by side: one row per param and per metric, each with the runs' values in order."""

    runs: tuple[Run, ...]
    params: dict[str, tuple[Any, ...]]
    metrics: dict[str, tuple[float | None, ...]]

    @property
    def differing_params(self) -> list[str]:
        """Params whose value is not the same in every run."""
        return [k for k, values in self.params.items() if len({repr(v) for v in values}) > 1]

    def best(self, metric: str, *, higher_is_better: bool = True) -> Run | None:
        """The run with the best finite value of ``metric`` (``None`` if no run has one)."""
        values = self.metrics.get(metric, (None,) * len(self.runs))
        scored = [(v, r) for v, r in zip(values, self.runs, strict=True) if v is not None and math.isfinite(v)]
        if not scored:
            return None
        pick = max if higher_is_better else min
        return pick(scored, key=lambda vr: vr[0])[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [{"id": r.id, "name": r.name, "experiment": r.experiment, "status": r.status,
                      "duration": r.duration} for r in self.runs],
            "params": {k: list(v) for k, v in self.params.items()},
            "metrics": {k: list(v) for k, v in self.metrics.items()},
            "differing_params": self.differing_params,
        }


def compare_runs(runs: Iterable[Run]) -> Comparison:
    """Line runs up param by param and metric by metric (``None`` where a run lacks one); works on any
    :class:`Tracker`'s runs."""
    runs = tuple(runs)
    param_keys = sorted({k for r in runs for k in r.params})
    metric_keys = sorted({k for r in runs for k in r.metrics})
    return Comparison(
        runs=runs,
        params={k: tuple(r.params.get(k) for r in runs) for k in param_keys},
        metrics={k: tuple(r.metrics.get(k) for r in runs) for k in metric_keys},
    )


class TrackedRun:
    """One training run's record in a tracker: started with its params, per-epoch metrics logged as they arrive
    (best effort: a failed write is retried from the final history), completed or failed at the end. With no
    tracker every method does nothing, so the pipeline reads the same either way."""

    def __init__(self, tracker: Tracker | None, experiment: str, *, name: str, params: dict[str, Any],
                 tags: dict[str, str] | None = None):
        self.tracker = tracker
        self.run = tracker.start_run(experiment, name=name, params=params, tags=tags) if tracker else None
        self._logged: set[int] = set()

    @property
    def id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def _log(self, metrics: Mapping[str, Any]) -> int:
        """Record one epoch's numeric metrics at step = epoch; return the epoch."""
        assert self.tracker is not None and self.run is not None
        epoch = int(metrics["epoch"])
        values = {k: v for k, v in metrics.items() if k not in ("epoch", "timestamp")
                  and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.tracker.log_metrics(self.run.id, values, step=epoch)
        return epoch

    def epoch(self, metrics: Mapping[str, Any]) -> None:
        """Log an epoch as it ends; a failure here is made good by :meth:`complete`."""
        if self.run is None:
            return
        try:
            self._logged.add(self._log(metrics))
        except Exception:  # noqa: BLE001 - retried from the final history
            pass

    def complete(self, history: Iterable[Mapping[str, Any]], params: dict[str, Any],
                 artifacts: Mapping[str, bytes]) -> None:
        """Log the epochs the live log missed, the run's final params and artifacts, and end it as finished."""
        if self.tracker is None or self.run is None:
            return
        for metrics in history:
            if int(metrics["epoch"]) not in self._logged:
                self._log(metrics)
        self.tracker.log_params(self.run.id, params)
        for name, data in artifacts.items():
            self.tracker.log_artifact(self.run.id, name, data)
        self.tracker.end_run(self.run.id)

    def fail(self, err: BaseException) -> None:
        """End the run as ``killed`` (Ctrl-C) or ``failed``; never raises over the original error."""
        if self.tracker is None or self.run is None:
            return
        try:
            self.tracker.end_run(self.run.id, "killed" if isinstance(err, KeyboardInterrupt) else "failed")
        except Exception:  # noqa: BLE001 - the training error is the one to report
            pass
