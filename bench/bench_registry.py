"""``get_version`` latency of the built-in ``local`` registry, side by side: SQLite (the default) and PostgreSQL
(``storage.db``).

Builds one registry on each (PostgreSQL in a fresh schema, dropped at the end), registers 20 versions of one model
with realistic metadata (params, metrics, a lineage record with a 50-epoch history, about 6 KB of JSON) and an alias,
then times ``get_version`` through the registry's public API, after 200 warm-up calls, the two stores interleaved
call by call so both see the same machine load. Two look-ups: by alias (``production``, what serving and
``loom deploy`` do) and by number. Prints p50/p99/max wall time per call and the thread CPU time (which excludes
waiting for a core on a busy machine). The goal for PostgreSQL is p99 <= 5 ms. Run:

    python bench/bench_registry.py [--pg-url postgresql://loom:loom@127.0.0.1:5432/loom_test] [--calls 2000]

The URL may also come from ``LOOM_BENCH_PG_URL``; it needs a role that may create a schema in the database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from typing import Any, Callable

import psycopg
from psycopg import sql

import runtime
from runtime.config import Storage

DEFAULT_PG_URL = "postgresql://loom:loom@127.0.0.1:5432/loom_test"
VERSIONS = 20
WARMUP = 200


def _metadata(i: int) -> dict[str, Any]:
    history = [{"epoch": e, "loss": 1 / (e + 1), "val_auc": 0.5 + e / 200, "seconds": 0.8} for e in range(50)]
    return {
        "params": {"learning_rate": 0.003, "hidden": [64, 32], "epochs": 50, "batch_size": 256, "seed": i},
        "metrics": {"val_auc": 0.8 + i / 1000, "val_loss": 0.4, "val_accuracy": 0.77},
        "lineage": {
            "data": {"source": "csv://data/churn.csv", "fingerprint": "ab" * 32, "rows": 10_000},
            "features": {"store": "local", "view": "customer_stats", "names": [f"f{k}" for k in range(12)]},
            "training": {"run_id": uuid.uuid4().hex, "history": history, "rows": 8_000, "seconds": 41.5},
            "code": {"project": "churn", "git_commit": "0" * 40},
            "packages": {"python": "3.11.7", "torch": "2.5.1", "ray": "2.60.0"},
        },
    }


def _fill(registry: Any) -> None:
    for i in range(VERSIONS):
        registry.register("churn", {"model.safetensors": os.urandom(1024), "model.json": b"{}"},
                          alias="production", **_metadata(i))


def _stats(samples_ns: list[int]) -> str:
    ms = sorted(s / 1e6 for s in samples_ns)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * len(ms))) - 1)]
    return f"p50 {statistics.median(ms):6.3f} ms   p99 {p99:6.3f} ms   max {ms[-1]:7.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", default=os.environ.get("LOOM_BENCH_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    os.environ["LOOM_PLUGINS"] = "local_registry"
    plugins = runtime.get_plugins()
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    conninfo = "postgresql" + args.pg_url[len(args.pg_url.split("://")[0]):]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            stores = {
                "sqlite": plugins.registry("local", state_dir=os.path.join(tmp, "sqlite"), options={}),
                "postgresql": plugins.registry("local", state_dir=os.path.join(tmp, "pg"), options={"schema": schema},
                                               storage=Storage(db=args.pg_url)),
            }
            for registry in stores.values():
                _fill(registry)
            lookups: dict[str, Callable[[Any], Any]] = {
                "alias": lambda r: r.get_version("churn", "production"),
                "number": lambda r: r.get_version("churn", VERSIONS // 2),
            }
            wall = {(s, k): [] for s in stores for k in lookups}
            cpu = {(s, k): [] for s in stores for k in lookups}
            names = list(stores)
            for i in range(WARMUP + args.calls):
                for kind, lookup in lookups.items():
                    for store in names if i % 2 else reversed(names):  # alternate which store goes first
                        registry = stores[store]
                        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                        version = lookup(registry)
                        t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
                        if i >= WARMUP:
                            wall[store, kind].append(t1 - t0)
                            cpu[store, kind].append(c1 - c0)
                        assert version.name == "churn"
            print(f"get_version: {args.calls} calls per store and look-up after {WARMUP} warm-up calls, "
                  f"{VERSIONS} versions with ~{len(str(_metadata(0)))} bytes of metadata each; "
                  f"load average {os.getloadavg()[0]:.1f}")
            for kind in lookups:
                for store in stores:
                    print(f"  {store:<10} by {kind:<6}  wall {_stats(wall[store, kind])}   "
                          f"cpu p50 {statistics.median(cpu[store, kind]) / 1e6:6.3f} ms")
        finally:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    main()
