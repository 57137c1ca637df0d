"""The canary judge's statistics: does a candidate version beat the current one on the same labelled rows, with a
stated confidence?

Both versions predict the same labelled rows, so the comparison is paired, which is far more sensitive than
comparing two accuracies measured on different rows:

* classification: McNemar's exact test on the rows where exactly one version is right (``b``: only the current
  one, ``c``: only the candidate). Under "the candidate is no better", a discordant row favours it with
  probability 1/2, so the one-sided p-value is P(X >= c) for X ~ Binomial(b + c, 1/2). The accuracy difference's
  confidence interval is the paired Wald interval.
* regression: a paired bootstrap of RMSE(candidate) - RMSE(current) over the rows (2,000 resamples, seeded, so a
  verdict can be reproduced); its one-sided p-value is the share of resamples where the candidate is not better.

The candidate is promoted when it is better by at least ``min_improvement`` and the test rejects "no better" at
``confidence``; otherwise it is rolled back. :class:`Verdict` carries the evidence that is recorded on the version
and handed to the ``loom_canary_judged`` hook.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Two-sided normal quantiles for the confidence levels one is likely to ask for (others are interpolated).
_Z = {0.8: 1.2816, 0.9: 1.6449, 0.95: 1.9600, 0.975: 2.2414, 0.99: 2.5758, 0.995: 2.8070, 0.999: 3.2905}
BOOTSTRAP_RESAMPLES = 2000


def _z(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (e.g. 1.96 for 0.95)."""
    levels = sorted(_Z)
    if confidence <= levels[0]:
        return _Z[levels[0]]
    if confidence >= levels[-1]:
        return _Z[levels[-1]]
    return float(np.interp(confidence, levels, [_Z[c] for c in levels]))


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return math.fsum(math.comb(n, i) for i in range(k, n + 1)) / 2.0 ** n


@dataclass(frozen=True)
class Verdict:
    """A judged canary: the decision and its evidence."""

    decision: str
    """``promote`` or ``rollback``."""
    metric: str
    """``accuracy`` (higher is better) or ``rmse`` (lower is better)."""
    candidate: float
    current: float
    n: int
    """Labelled rows both versions predicted."""
    difference: float
    """candidate - current."""
    ci: tuple[float, float]
    """Two-sided confidence interval of ``difference`` at ``confidence``."""
    p_value: float
    """One-sided p-value of "the candidate is no better"."""
    confidence: float
    min_improvement: float
    test: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision == "promote"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = list(self.ci)
        return out


def judge_classification(truth: Any, current: Any, candidate: Any, *, confidence: float = 0.95,
                         min_improvement: float = 0.0) -> Verdict:
    """Paired comparison of two classifiers' predictions of the same labelled rows (McNemar's exact test)."""
    truth, current, candidate = (np.asarray(a, dtype=object) for a in (truth, current, candidate))
    n = len(truth)
    if n == 0 or len(current) != n or len(candidate) != n:
        raise ValueError(f"need the same non-zero number of labels and predictions (got {n}, {len(current)}, "
                         f"{len(candidate)})")
    old_right, new_right = current == truth, candidate == truth
    b = int(np.sum(old_right & ~new_right))  # only the current version is right
    c = int(np.sum(~old_right & new_right))  # only the candidate is right
    acc_old, acc_new = float(old_right.mean()), float(new_right.mean())
    diff = (c - b) / n
    se = math.sqrt(max(b + c - (c - b) ** 2 / n, 0.0)) / n
    z = _z(confidence)
    p = binomial_tail(c, b + c) if b + c else 1.0
    better = diff >= min_improvement and diff > 0
    significant = p < 1 - confidence
    if better and significant:
        reason = (f"accuracy {acc_new:.4f} vs {acc_old:.4f} on the same {n} rows: {c} rows only the candidate gets "
                  f"right, {b} only the current one (McNemar p={p:.2g} < {1 - confidence:.2g})")
    elif not better:
        reason = (f"the candidate is not better by {min_improvement:g}: accuracy {acc_new:.4f} vs {acc_old:.4f} on "
                  f"{n} rows")
    else:
        reason = (f"not significant at {confidence:g}: accuracy {acc_new:.4f} vs {acc_old:.4f}, {c} vs {b} "
                  f"discordant rows (McNemar p={p:.2g})")
    return Verdict("promote" if better and significant else "rollback", "accuracy", acc_new, acc_old, n, diff,
                   (diff - z * se, diff + z * se), p, confidence, min_improvement, "mcnemar-exact", reason,
                   {"only_candidate_right": c, "only_current_right": b})


def judge_regression(truth: Any, current: Any, candidate: Any, *, confidence: float = 0.95,
                     min_improvement: float = 0.0, seed: int = 0) -> Verdict:
    """Paired comparison of two regressors' predictions of the same labelled rows (bootstrap of the RMSE gap)."""
    truth, current, candidate = (np.asarray(a, dtype=np.float64) for a in (truth, current, candidate))
    n = len(truth)
    if n == 0 or len(current) != n or len(candidate) != n:
        raise ValueError(f"need the same non-zero number of labels and predictions (got {n}, {len(current)}, "
                         f"{len(candidate)})")
    se_old, se_new = (current - truth) ** 2, (candidate - truth) ** 2
    rmse_old, rmse_new = float(np.sqrt(se_old.mean())), float(np.sqrt(se_new.mean()))
    idx = np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    gaps = np.sqrt(se_new[idx].mean(axis=1)) - np.sqrt(se_old[idx].mean(axis=1))
    alpha = 1 - confidence
    lo, hi = np.quantile(gaps, [alpha / 2, 1 - alpha / 2])
    diff = rmse_new - rmse_old
    p = float(np.mean(gaps >= -min_improvement)) if min_improvement else float(np.mean(gaps >= 0))
    better = diff <= -min_improvement and diff < 0
    significant = p < alpha
    if better and significant:
        reason = f"RMSE {rmse_new:.4g} vs {rmse_old:.4g} on the same {n} rows (bootstrap p={p:.2g} < {alpha:.2g})"
    elif not better:
        reason = f"the candidate is not better by {min_improvement:g}: RMSE {rmse_new:.4g} vs {rmse_old:.4g}"
    else:
        reason = f"not significant at {confidence:g}: RMSE {rmse_new:.4g} vs {rmse_old:.4g} (bootstrap p={p:.2g})"
    return Verdict("promote" if better and significant else "rollback", "rmse", rmse_new, rmse_old, n, diff,
                   (float(lo), float(hi)), p, confidence, min_improvement, "paired-bootstrap", reason,
                   {"resamples": BOOTSTRAP_RESAMPLES, "seed": seed})
