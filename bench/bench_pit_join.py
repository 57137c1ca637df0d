"""Point-in-time join of 1M label rows x 10 features: Loom's ``local`` store against a naive pandas join.

Both compute the same thing: for each label row, each feature's latest value stamped at or before the label's time
and within a 30-day TTL. The naive version is what one writes by hand: merge labels with every feature row of
their entity, keep rows that are not in the future and within the TTL, take the latest per label. Loom's store runs
``pandas.merge_asof`` over its Parquet offline store (reading included in its time).

Each implementation runs in a fresh process on the same seeded data; the parent prints wall time and the peak
memory the join itself added (Linux: the process's peak RSS is reset just before the join), checks that the two
results are identical, and prints the ratios. Run:

    python bench/bench_pit_join.py            # 1,000,000 labels, 50,000 entities, 10 feature rows each
    python bench/bench_pit_join.py --labels 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = [f"f{i}" for i in range(10)]
TTL = pd.Timedelta(days=30)
T0 = pd.Timestamp("2025-01-01")


def data(labels: int, entities: int, rows_per_entity: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded feature rows (unique times per entity, so there are no ties) and label rows."""
    rng = np.random.default_rng(0)
    n = entities * rows_per_entity
    feats = pd.DataFrame({"cid": np.repeat(np.arange(entities), rows_per_entity),
                          "ts": T0 + pd.to_timedelta(rng.permutation(n) * 60, "s")})
    for f in FEATURES:
        feats[f] = rng.normal(size=n)
    span = int((feats["ts"].max() - T0).total_seconds()) + 86_400 * 10
    lab = pd.DataFrame({"cid": rng.integers(0, entities, labels),
                        "ts": T0 + pd.to_timedelta(rng.integers(0, span, labels), "s"),
                        "label": rng.integers(0, 2, labels)})
    return feats, lab


def naive(feats: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Merge on the entity, drop future and stale rows, keep the latest per label row."""
    left = labels.reset_index(drop=True).rename(columns={"ts": "label_ts"})
    left["row"] = np.arange(len(left))
    merged = left.merge(feats, on="cid", how="left")
    ok = (merged["ts"] <= merged["label_ts"]) & (merged["ts"] >= merged["label_ts"] - TTL)
    merged = merged[ok]
    latest = merged.loc[merged.groupby("row")["ts"].idxmax(), ["row", *FEATURES]].set_index("row")
    return left.drop(columns=["row"]).rename(columns={"label_ts": "ts"}).join(latest.reindex(range(len(left))))


def loom(feats: pd.DataFrame, labels: pd.DataFrame, workdir: Path) -> tuple[pd.DataFrame, object]:
    """Write the features to a ``local`` store (not timed), return a join to time."""
    import runtime

    store = runtime.get_plugins().feature_store("local", state_dir=workdir, options={})
    store.apply(runtime.FeatureView(name="bench", entity="cid", timestamp="ts", features=tuple(FEATURES),
                                    ttl=TTL.to_pytimedelta(), dtypes={"cid": "int", **dict.fromkeys(FEATURES, "float")}))
    store.write("bench", feats)
    return labels, lambda: store.get_historical_features(labels, "bench", FEATURES)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(impl: str, args: argparse.Namespace, out: Path) -> None:
    feats, labels = data(args.labels, args.entities, args.rows_per_entity)
    if impl == "loom":
        _, join = loom(feats, labels, out.parent / "store")
    else:
        def join() -> pd.DataFrame:
            return naive(feats, labels)
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux)
    before = _status("VmRSS")
    started = time.perf_counter()
    result = join()
    seconds = time.perf_counter() - started
    peak = _status("VmHWM") - before
    result[FEATURES].to_parquet(out)
    print(json.dumps({"seconds": seconds, "peak_bytes": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=50_000)
    parser.add_argument("--rows-per-entity", type=int, default=10)
    parser.add_argument("--child", choices=["loom", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args, Path(args.out))
        return
    print(f"{args.labels:,} label rows x {len(FEATURES)} features; {args.entities:,} entities x "
          f"{args.rows_per_entity} feature rows; TTL {TTL.days} days")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ("loom", "naive"):
            out = Path(tmp) / impl / "result.parquet"
            out.parent.mkdir()
            cmd = [sys.executable, __file__, "--child", impl, "--out", str(out), "--labels", str(args.labels),
                   "--entities", str(args.entities), "--rows-per-entity", str(args.rows_per_entity)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[impl]["frame"] = pd.read_parquet(out)
            r = results[impl]
            print(f"{impl:>6}: {r['seconds']:7.2f} s   peak +{r['peak_bytes'] / 2**20:8.0f} MiB")
        same = results["loom"]["frame"].reset_index(drop=True).equals(results["naive"]["frame"].reset_index(drop=True))
        print(f"identical results: {same}")
        speed = results["naive"]["seconds"] / results["loom"]["seconds"]
        memory = results["naive"]["peak_bytes"] / max(results["loom"]["peak_bytes"], 1)
        print(f"loom vs naive: {speed:.1f}x faster, {memory:.1f}x less peak memory")
        if not same:
            sys.exit("results differ")


if __name__ == "__main__":
    main()
