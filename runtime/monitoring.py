"""The drift-monitor protocol and its report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one column between reference and current data."""

    column: str
    drifted: bool
    score: float  # the statistic's value (p-value or distance, see ``method``)
    method: str
    threshold: float


@dataclass(frozen=True)
class DriftReport:
    """What a drift check found."""

    monitor: str
    drifted: bool  # dataset-level verdict
    share_drifted: float
    n_reference: int
    n_current: int
    features: tuple[FeatureDrift, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = {f["column"]: {k: v for k, v in f.items() if k != "column"} for f in d["features"]}
        return d


@runtime_checkable
class DriftMonitor(Protocol):
    """Built by ``factory(*, options)`` registered with ``loom_register_drift_monitors``."""

    def check(
        self,
        reference: pd.DataFrame,
        current: pd.DataFrame,
        *,
        numerical: list[str],
        categorical: list[str],
    ) -> DriftReport:
        """Compare ``current`` with ``reference`` over the given columns."""
        ...

    def html_report(
        self, reference: pd.DataFrame, current: pd.DataFrame, *, numerical: list[str], categorical: list[str]
    ) -> str:
        """A human-readable HTML report of the same comparison."""
        ...


DriftMonitorFactory = Any


@runtime_checkable
class QualityMonitor(Protocol):
    """Optional capabilities of a drift monitor (the built-in Evidently one has them); Loom's window checks add
    their results when the configured monitor provides them."""

    def data_quality(self, current: pd.DataFrame, *, schema: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Per column: ``missing``, ``out_of_range`` (declared ``min``/``max``), ``new_categories`` (declared
        ``categories``) counts and ``rows``."""
        ...

    def performance(self, labelled: pd.DataFrame, *, target: str, prediction: str,
                    classes: list[Any], task: str = "classification") -> dict[str, Any]:
        """Quality of ``prediction`` against ``target``: for ``classification`` at least ``accuracy`` and ``rows``;
        for ``regression`` (Loom passes ``task`` only then) ``rmse``, ``mae``, ``r2`` and ``rows``."""
        ...


#: The per-row statistics that stand for a tensor input in captured traffic, reference samples and drift checks.
TENSOR_STATS = ("mean", "std", "min", "max")


def tensor_summary(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row summary statistics of a tensor input ``[N, ...]``: ``{"<name>.mean": [N], ...}`` (float64)."""
    flat = np.asarray(values).reshape(len(values), -1)
    if flat.shape[1] == 0:
        return {f"{name}.{stat}": np.full(len(flat), np.nan) for stat in TENSOR_STATS}
    if flat.dtype.kind != "f":
        flat = flat.astype(np.float64)
    # Sums as matrix-vector products (BLAS): for one small row they cost a few microseconds where numpy's
    # reductions along an axis cost tens; the variance is E[x²] - E[x]².
    ones = np.ones(flat.shape[1], dtype=flat.dtype)
    mean = (flat @ ones).astype(np.float64) / flat.shape[1]
    var = np.maximum((np.square(flat) @ ones).astype(np.float64) / flat.shape[1] - mean * mean, 0.0)
    return {f"{name}.mean": mean, f"{name}.std": np.sqrt(var), f"{name}.min": flat.min(axis=1).astype(np.float64),
            f"{name}.max": flat.max(axis=1).astype(np.float64)}
