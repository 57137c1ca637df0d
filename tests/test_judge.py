"""The canary judge's statistics (runtime.judge): paired tests on the same labelled rows, promoting only a
candidate that is better with the asked confidence, and no more often than the confidence allows when it is not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.judge import binomial_tail, judge_classification, judge_regression


def _preds(truth: np.ndarray, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    wrong = rng.random(len(truth)) > accuracy
    return np.where(wrong, ~truth, truth)


def test_binomial_tail_is_exact():
    assert binomial_tail(8, 10) == pytest.approx((45 + 10 + 1) / 1024)
    assert binomial_tail(0, 5) == 1.0 and binomial_tail(6, 5) == 0.0
    assert binomial_tail(3, 6) == pytest.approx(sum(math.comb(6, i) for i in range(3, 7)) / 64)


def test_a_clearly_better_classifier_is_promoted_with_its_evidence():
    rng = np.random.default_rng(1)
    truth = rng.random(400) > 0.5
    v = judge_classification(truth, _preds(truth, 0.6, rng), _preds(truth, 0.85, rng))
    assert v.promoted and v.metric == "accuracy" and v.n == 400
    assert v.p_value < 0.001 and v.ci[0] > 0 and v.difference == pytest.approx(v.candidate - v.current)
    assert v.details["only_candidate_right"] > v.details["only_current_right"]
    assert "McNemar" in v.reason and v.to_dict()["ci"] == list(v.ci)


def test_identical_or_slightly_better_on_few_rows_is_rolled_back():
    truth = np.array([True, False] * 50)
    same = judge_classification(truth, truth, truth)
    assert not same.promoted and same.p_value == 1.0
    current = truth.copy()
    current[:3] = ~current[:3]  # the candidate is right on 3 more rows, wrong on 1 more: not evidence
    candidate = truth.copy()
    candidate[10] = ~candidate[10]
    v = judge_classification(truth, current, candidate)
    assert v.difference > 0 and not v.promoted and "not significant" in v.reason


def test_min_improvement_is_required_on_top_of_significance():
    rng = np.random.default_rng(2)
    truth = rng.random(5000) > 0.5
    current = _preds(truth, 0.80, rng)
    candidate = np.where(rng.random(5000) < 0.15, truth, current)  # fixes ~3% of the rows
    assert judge_classification(truth, current, candidate).promoted
    assert not judge_classification(truth, current, candidate, min_improvement=0.10).promoted


def test_an_equally_good_candidate_is_promoted_no_more_often_than_the_confidence_allows():
    rng = np.random.default_rng(3)
    promoted = 0
    trials = 400
    for _ in range(trials):
        truth = rng.random(300) > 0.5
        promoted += judge_classification(truth, _preds(truth, 0.75, rng), _preds(truth, 0.75, rng),
                                         confidence=0.95).promoted
    assert promoted / trials <= 0.05 + 0.02  # one-sided 5% level, with room for the simulation's own noise


def test_regression_uses_a_paired_bootstrap_of_the_rmse_gap():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=500)
    current = truth + rng.normal(scale=1.0, size=500)
    better = truth + rng.normal(scale=0.5, size=500)
    v = judge_regression(truth, current, better)
    assert v.promoted and v.metric == "rmse" and v.difference < 0 and v.ci[1] < 0
    assert judge_regression(truth, current, better).to_dict() == v.to_dict()  # seeded: reproducible
    assert not judge_regression(truth, better, current).promoted
    assert not judge_regression(truth, current, current).promoted


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="same non-zero number"):
        judge_classification([1, 0], [1], [1, 0])
    with pytest.raises(ValueError, match="same non-zero number"):
        judge_regression([], [], [])


def test_the_canary_guards_hold_latency_and_server_errors_to_production():
    from runtime.retrain_loop import LATENCY_SLACK_MS, check_guards

    prod = {"requests": 500, "errors": 0, "p99_ms": 20.0}
    ok = check_guards({"requests": 600, "errors": 2, "p99_ms": 45.0}, prod, max_latency_ratio=2.0, max_error_rate=0.01)
    assert ok["passed"] and ok["candidate"]["requests"] == 600 and ok["latency_quantile"] == "p99"
    slow = check_guards({"requests": 600, "errors": 0, "p99_ms": 40.0 + LATENCY_SLACK_MS + 0.5}, prod,
                        max_latency_ratio=2.0, max_error_rate=0.01)
    assert not slow["passed"] and "p99 latency" in slow["reason"]
    failing = check_guards({"requests": 100, "errors": 2, "p99_ms": 10.0}, prod, max_latency_ratio=2.0,
                           max_error_rate=0.01)
    assert not failing["passed"] and "error rate 2.00%" in failing["reason"]
    # a canary with few requests: its p99 is its slowest one or two, so the medians are compared instead
    few = {"requests": 120, "errors": 0, "p50_ms": 4.0, "p99_ms": 40.0 + LATENCY_SLACK_MS + 5}
    assert check_guards(few, {**prod, "p50_ms": 3.0}, max_latency_ratio=2.0, max_error_rate=0.01)["passed"]
    slow_median = check_guards({**few, "p50_ms": 6.0 + LATENCY_SLACK_MS + 1}, {**prod, "p50_ms": 3.0},
                               max_latency_ratio=2.0, max_error_rate=0.01)
    assert not slow_median["passed"] and "p50 latency" in slow_median["reason"]
    assert slow_median["latency_quantile"] == "p50"
    # no production figures (nothing served by it in the window): only the error rate can be judged
    assert check_guards({"requests": 10, "errors": 0, "p99_ms": 900.0}, {}, max_latency_ratio=2.0,
                        max_error_rate=0.01)["passed"]
