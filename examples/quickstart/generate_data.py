"""Generate the quickstart's synthetic customer-churn data set (the columns declared in ``loom.yaml``).

Each customer has a profile (contract, internet service, payment method, paperless billing, a support-call rate)
and one to four monthly snapshots during 2025; tenure grows by one month per snapshot, charges and support calls
vary. ``churned`` says whether the customer cancelled by the end of 2025, so it is the same on all of a customer's
snapshots. It is drawn from a logistic model of contract, tenure, support calls, monthly charges, internet service
and payment method, plus unobserved per-customer noise, so a small MLP reaches about 0.75-0.8 ROC AUC on ~27%
positives. ``total_charges`` is about tenure x monthly charges and is empty in a customer's first month (~1% of
rows).

``drift > 0`` simulates changed traffic: higher monthly charges, more support calls and more month-to-month
contracts. The same arguments always give the same rows, and ``write`` the same bytes.

Usage: ``python generate_data.py [--out data/customers.csv] [--rows N] [--seed S] [--drift X]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

CONTRACTS = np.array(["month-to-month", "one-year", "two-year"])
INTERNET = np.array(["dsl", "fiber", "none"])
PAYMENTS = np.array(["card", "bank-transfer", "electronic-check", "mailed-check"])
MEAN_SNAPSHOTS = 2.5  # snapshots per customer are uniform on 1..4
YEAR_START = np.datetime64("2025-01-01T00:00:00", "s")
SECONDS_PER_MONTH = 365 * 24 * 3600 // 12
INTERCEPT = -1.15  # sets the share of churners (~27%)
NOISE = 0.8  # standard deviation of the unexplained log-odds; sets how predictable churn is
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "customers.csv"


def _contract_mix(drift: float) -> np.ndarray:
    """Contract probabilities; drift moves mass from the longer contracts to month-to-month."""
    base = np.array([0.5, 0.28, 0.22])
    shift = min(drift, 1.0) * 0.35
    return np.array([base[0] + shift, base[1] - shift * 0.55, base[2] - shift * 0.45])


def _churn_logit(
    contract: np.ndarray,
    tenure: np.ndarray,
    support_calls: np.ndarray,
    monthly: np.ndarray,
    internet: np.ndarray,
    payment: np.ndarray,
) -> np.ndarray:
    """The true churn model: log-odds that a customer cancels, from their latest tenure and average calls/charges."""
    return (
        INTERCEPT
        + np.select([contract == "month-to-month", contract == "two-year"], [1.1, -1.2], 0.0)
        - 0.55 * np.log1p(tenure)
        + 0.35 * support_calls
        + 0.012 * (monthly - 65)
        + np.select([internet == "fiber", internet == "none"], [0.45, -0.5], 0.0)
        + np.where(payment == "electronic-check", 0.6, 0.0)
    )


def generate(rows_target: int = 5000, seed: int = 0, drift: float = 0.0) -> pd.DataFrame:
    """Return about ``rows_target`` snapshot rows (``rows_target / 2.5`` customers x 1-4 months), sorted by time.

    :param rows_target: rows to aim for; the customer count is ``rows_target / 2.5``.
    :param seed: random seed; the same arguments give the same frame.
    :param drift: 0 for the training distribution; larger values shift charges, support calls and contracts.
    """
    if rows_target < 1:
        raise ValueError(f"rows_target must be at least 1, got {rows_target}")
    if drift < 0:
        raise ValueError(f"drift must be >= 0, got {drift}")
    rng = np.random.default_rng(seed)
    n = max(1, round(rows_target / MEAN_SNAPSHOTS))

    # Per-customer profile.
    contract = rng.choice(CONTRACTS, n, p=_contract_mix(drift))
    internet = rng.choice(INTERNET, n, p=[0.36, 0.44, 0.20])
    payment = rng.choice(PAYMENTS, n, p=[0.22, 0.22, 0.34, 0.22])
    paperless = rng.random(n) < np.where(payment == "electronic-check", 0.8, 0.5)
    base_charge = np.select([internet == "fiber", internet == "dsl"], [80.0, 55.0], 22.0)
    monthly = base_charge + rng.normal(0, 12, n) + 10 * (contract == "month-to-month") + 20 * drift
    mean_tenure = np.select([contract == "two-year", contract == "one-year"], [40, 24], 10)
    start_tenure = np.where(rng.random(n) < 0.025, 0, 1 + np.floor(rng.exponential(mean_tenure)))  # 0: brand new
    call_rate = (0.9 + 0.8 * (internet == "fiber") + 1.5 * drift) * rng.gamma(2.0, 0.5, n)
    snapshots = rng.integers(1, 5, n)
    first_month = rng.integers(0, 13 - snapshots)

    # One row per customer-month.
    cust = np.repeat(np.arange(n), snapshots)
    step = np.arange(len(cust)) - np.repeat(np.cumsum(snapshots) - snapshots, snapshots)
    month = first_month[cust] + step
    tenure = np.minimum(start_tenure[cust] + step, 120).astype(np.int64)
    charges = np.clip(monthly[cust] + rng.normal(0, 2, len(cust)), 18.0, 200.0).round(2)
    calls = np.minimum(rng.poisson(call_rate[cust]), 50)
    total = (tenure * charges * rng.uniform(0.92, 1.04, len(cust))).round(2)
    offset = rng.integers(0, SECONDS_PER_MONTH, len(cust))
    event_time = YEAR_START + (month * SECONDS_PER_MONTH + offset).astype("timedelta64[s]")

    per_customer = pd.DataFrame({"tenure": tenure, "calls": calls, "charges": charges}).groupby(cust)
    last_tenure = per_customer["tenure"].max().to_numpy()
    mean_calls = per_customer["calls"].mean().to_numpy()
    mean_charges = per_customer["charges"].mean().to_numpy()
    logit = _churn_logit(contract, last_tenure, mean_calls, mean_charges, internet, payment)
    logit += rng.normal(0, NOISE, n)  # what the features cannot explain
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))

    df = pd.DataFrame(
        {
            "customer_id": 10_001 + cust,
            "event_time": pd.to_datetime(event_time).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tenure_months": tenure,
            "monthly_charges": charges,
            "total_charges": np.where(tenure == 0, np.nan, total),
            "support_calls": calls,
            "paperless_billing": paperless[cust],
            "contract": contract[cust],
            "internet_service": internet[cust],
            "payment_method": payment[cust],
            "churned": churned[cust],
        }
    )
    return df.sort_values(["event_time", "customer_id"], kind="stable").reset_index(drop=True)


def write(path: str | Path = DEFAULT_OUT, rows_target: int = 5000, seed: int = 0, drift: float = 0.0) -> Path:
    """Generate the data set and write it as CSV to ``path`` (creating its folder); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generate(rows_target, seed, drift).to_csv(path, index=False, lineterminator="\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the quickstart's synthetic customer-churn CSV.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output CSV (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=5000, help="rows to aim for (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--drift", type=float, default=0.0, help="distribution shift, 0 = none (default: 0)")
    args = parser.parse_args(argv)
    path = write(args.out, args.rows, args.seed, args.drift)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
