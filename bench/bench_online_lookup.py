"""Single-entity online lookups, side by side: Loom's ``local`` store and Feast's SQLite online store.

Builds one 10,000-entity view (int, float, bool and string features), writes and materialises it in both stores,
then times 2,000 single-entity lookups of random keys through each (after 100 warm-up calls):

* ``loom local``: ``LocalFeatureStore.get_online_features`` (what serving's entity lookup calls);
* ``feast (own API)``: ``feast.FeatureStore.get_online_features(...).to_dict()`` on the same Feast repo;
* ``loom feast``: Loom's ``feast`` plugin, i.e. Feast's call plus conversion to Loom's typed frame.

Prints p50/p99 wall time per lookup (and thread CPU time, which excludes waiting for a core on a busy machine) and
the ratios. The goal for the built-in store is p99 <= 2 ms. Feast is skipped when it is not installed. Run:

    python bench/bench_online_lookup.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

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


def _view() -> runtime.FeatureView:
    return runtime.FeatureView(
        name="customer_features", entity="customer_id", timestamp="event_time", features=tuple(FEATURES),
        dtypes={"customer_id": "int", "tenure_months": "int", "monthly_charges": "float",
                "paperless_billing": "bool", "contract": "category"},
    )


def _frame(rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, ENTITIES + 1),
            "event_time": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 86_400 * 365, ENTITIES), "s"),
            "tenure_months": rng.integers(0, 120, ENTITIES),
            "monthly_charges": rng.uniform(10, 200, ENTITIES).round(2),
            "paperless_billing": rng.random(ENTITIES) < 0.5,
            "contract": rng.choice(["month-to-month", "one-year", "two-year"], ENTITIES),
        }
    )


def _time(lookups: dict[str, Callable[[int], object]], keys: list[int]) -> dict[str, tuple[list[int], list[int]]]:
    """Time every lookup on every key, interleaved (each key goes to each store in a rotating order), so that
    a busy moment on a shared machine hits all of them alike."""
    names = list(lookups)
    for k in keys[:100]:  # warm-up: connections, cached plans, prepared statements
        for name in names:
            lookups[name](k)
    out: dict[str, tuple[list[int], list[int]]] = {name: ([], []) for name in names}
    for i, k in enumerate(keys):
        for name in names[i % len(names):] + names[: i % len(names)]:
            c, t = time.thread_time_ns(), time.perf_counter_ns()
            lookups[name](k)
            out[name][0].append(time.perf_counter_ns() - t)
            out[name][1].append(time.thread_time_ns() - c)
    return out


def _p99(samples_ns: list[int]) -> float:
    us = sorted(samples_ns)
    return us[min(len(us) - 1, int(round(0.99 * len(us))) - 1)] / 1_000


def main() -> None:
    rng = np.random.default_rng(0)
    df = _frame(rng)
    keys = rng.integers(1, ENTITIES + 1, LOOKUPS).tolist()
    plugins = runtime.get_plugins()
    lookups: dict[str, Callable[[int], object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        local = plugins.feature_store("local", state_dir=Path(tmp), options={})
        local.apply(_view())
        local.write("customer_features", df)
        t0 = time.perf_counter()
        written = local.materialize("customer_features")
        print(f"loom local: materialized {written} entities in {(time.perf_counter() - t0) * 1000:.1f} ms")
        lookups["loom local"] = lambda k: local.get_online_features("customer_features", [k], FEATURES)

        try:
            feast_store = plugins.feature_store("feast", state_dir=Path(tmp), options={})
        except runtime.ConfigError as err:
            print(f"feast: skipped ({err})")
            feast_store = None
        if feast_store is not None:
            feast_store.apply(_view())
            feast_store.write("customer_features", df)
            t0 = time.perf_counter()
            feast_store.materialize("customer_features")
            print(f"feast:      materialized {ENTITIES} entities in {(time.perf_counter() - t0) * 1000:.1f} ms")
            refs = [f"customer_features:{f}" for f in FEATURES]
            fs = feast_store.feast
            lookups["feast (own API)"] = lambda k: fs.get_online_features(
                features=refs, entity_rows=[{"customer_id": k}]).to_dict()
            lookups["loom feast"] = lambda k: feast_store.get_online_features("customer_features", [k], FEATURES)
        results = _time(lookups, keys)

        batches = []
        for _ in range(200):
            batch = rng.integers(1, ENTITIES + 1, 100).tolist()
            t = time.perf_counter_ns()
            local.get_online_features("customer_features", batch, FEATURES)
            batches.append(time.perf_counter_ns() - t)
        local.close()
        if feast_store is not None:
            feast_store.close()

    print(f"\nsingle-entity lookup x{LOOKUPS}, 4 features:")
    for name, (wall, cpu) in results.items():
        print(f"  {name:<16} {_percentiles(wall)}  (wall)   cpu p99={_p99(cpu):8.1f} us")
    print(f"  {'loom local x100':<16} {_percentiles(batches)}  (wall, 100 keys per call)")
    base = results["loom local"][0]
    for name, (wall, _) in results.items():
        if name != "loom local":
            print(f"  {name} / loom local:  p50 {statistics.median(wall) / statistics.median(base):5.1f}x   "
                  f"p99 {_p99(wall) / _p99(base):5.1f}x")
    print(f"  goal p99 <= 2 ms for loom local: {'met' if _p99(base) <= 2_000 else 'NOT met'} ({_p99(base):.0f} us)")


if __name__ == "__main__":
    main()
