"""Micro-benchmark of the serving hot path: single-entity online lookups from the ``local`` feature store.

Builds a 10,000-entity view (int, float, bool and string features) in a temporary directory, materialises it,
then times 2,000 ``get_online_features`` calls for one random entity each and prints p50/p99 (and a 100-key
batch for comparison). Wall-clock tails include time spent waiting for a CPU on a busy machine, so the thread CPU
time is printed too. Just prints; no assertions. Run:

    python bench/bench_online_lookup.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import runtime

ENTITIES = 10_000
LOOKUPS = 2_000
FEATURES = ["tenure_months", "monthly_charges", "paperless_billing", "contract"]


def _percentiles(samples_ns: list[int]) -> str:
    us = sorted(s / 1_000 for s in samples_ns)
    p50 = statistics.median(us)
    p99 = us[min(len(us) - 1, int(round(0.99 * len(us))) - 1)]
    return f"p50={p50:8.1f} us  p99={p99:8.1f} us  max={us[-1]:8.1f} us"


def main() -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = runtime.get_plugins().feature_store("local", state_dir=Path(tmp), options={})
        store.apply(
            runtime.FeatureView(
                name="customer_features",
                entity="customer_id",
                timestamp="event_time",
                features=tuple(FEATURES),
                dtypes={"tenure_months": "int", "monthly_charges": "float", "paperless_billing": "bool",
                        "contract": "category"},
            )
        )
        df = pd.DataFrame(
            {
                "customer_id": np.arange(1, ENTITIES + 1),
                "event_time": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 86_400 * 365, ENTITIES), "s"),
                "tenure_months": rng.integers(0, 120, ENTITIES),
                "monthly_charges": rng.uniform(10, 200, ENTITIES).round(2),
                "paperless_billing": rng.random(ENTITIES) < 0.5,
                "contract": rng.choice(["month-to-month", "one-year", "two-year"], ENTITIES),
            }
        )
        store.write("customer_features", df)
        t0 = time.perf_counter()
        written = store.materialize("customer_features")
        print(f"materialized {written} entities in {(time.perf_counter() - t0) * 1000:.1f} ms")

        keys = rng.integers(1, ENTITIES + 1, LOOKUPS).tolist()
        for k in keys[:100]:  # warm-up: connection, cached plan and prepared statement
            store.get_online_features("customer_features", [k], FEATURES)
        samples, cpu = [], []
        for k in keys:
            c, t = time.thread_time_ns(), time.perf_counter_ns()
            store.get_online_features("customer_features", [k], FEATURES)
            samples.append(time.perf_counter_ns() - t)
            cpu.append(time.thread_time_ns() - c)
        print(f"single-entity lookup x{LOOKUPS}:  {_percentiles(samples)}  (wall clock)")
        print(f"                              {_percentiles(cpu)}  (thread CPU time: excludes waiting for a core)")

        batches = []
        for i in range(200):
            batch = rng.integers(1, ENTITIES + 1, 100).tolist()
            t = time.perf_counter_ns()
            store.get_online_features("customer_features", batch, FEATURES)
            batches.append(time.perf_counter_ns() - t)
        print(f"100-entity lookup x200:        {_percentiles(batches)}  (wall clock)")
        store.close()


if __name__ == "__main__":
    main()
