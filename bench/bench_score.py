"""Batch scoring throughput, side by side in one run, on the same model, the same rows and the same cluster:

  (a) a hand-written Ray Data job: ``read_parquet`` (split into blocks of the batch size) -> ``map_batches`` with an actor class that loads the version's
      bundle, encodes with its preprocessor and runs the forward pass -> ``write_parquet``; the same actor count and
      batch size as (b), one torch thread per actor;
  (b) ``loom score`` (``runtime.score``): the input through its data-source plugin, serving's checks and encoding,
      quarantine of bad rows, one atomically moved Parquet file;
  (c) the same rows through the served HTTP endpoint (``/predict``, Ray Serve behind Loom's ingress), loaded by
      ``wrk`` with keep-alive connections: one row per request (online scoring, as today), and 100 rows per request.

The model is the quickstart's (its schema and data, hidden [64, 32], random weights: throughput does not depend on
them). (a) and (b) run in interleaved rounds and the median is reported, end to end (actor start-up included);
nothing else is served while they run. Ratios printed: (b)/(a), target >= 0.9, and (b)/(c, one row), target >= 20.

    .venv/bin/python bench/bench_score.py [--rows 1000000] [--rounds 3] [--duration 10] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "paperless_billing", "contract",
            "internet_service", "payment_method"]
KEYS = ["customer_id", "event_time"]


def make_project(work: Path, rows: int, port: int) -> tuple[Path, Path]:
    """The quickstart in ``work`` with ``rows`` rows written as Parquet, and one registered version of its model."""
    import pandas as pd
    import torch
    import yaml

    from runtime import get_plugins, load_project
    from runtime.model import ModelBundle, Preprocessor, TabularMLP

    root = work / "quickstart"
    shutil.copytree(ROOT / "examples" / "quickstart", root, ignore=shutil.ignore_patterns("data", ".loom"))
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["name"], cfg["serving"] = "bench-score", {"port": port, "replica_cpus": 1}
    cfg["monitoring"] = {"sample_rate": 0.0, "interval_s": None}
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    csv = work / "rows.csv"
    subprocess.run([sys.executable, str(root / "generate_data.py"), "--rows", str(rows), "--out", str(csv)],
                   check=True, capture_output=True)
    frame = pd.read_csv(csv, parse_dates=["event_time"])
    parquet = work / "rows.parquet"
    frame.to_parquet(parquet, index=False, row_group_size=65_536)
    project = load_project(root)
    schema = {c: project.config.data.columns[c] for c in FEATURES}
    pre = Preprocessor.fit(frame.head(20_000), schema)
    torch.manual_seed(0)
    kwargs = {"in_features": pre.n_features, "hidden": [64, 32], "out_features": 2, "dropout": 0.0}
    bundle = ModelBundle(architecture="runtime.model:TabularMLP", kwargs=kwargs, preprocessor=pre,
                         classes=[False, True], inputs={c: s.model_dump(exclude_none=True) for c, s in schema.items()},
                         label="churned", state_dict=TabularMLP(**kwargs).state_dict())
    registry = get_plugins().registry("local", state_dir=project.state_dir, options={})
    registry.register("churn", bundle.to_artifacts(), alias="production")
    return root, parquet


class HandWritten:
    """(a)'s actor: what one would write by hand over the same bundle."""

    def __init__(self, state_dir: str):
        import torch

        from runtime import get_plugins
        from runtime.model import ModelBundle

        torch.set_num_threads(1)
        registry = get_plugins().registry("local", state_dir=Path(state_dir), options={})
        self.bundle = ModelBundle.from_registry(registry, "churn", 1)
        self.model = self.bundle.build()

    def __call__(self, batch):
        import numpy as np
        import torch

        with torch.inference_mode():
            x = tuple(torch.from_numpy(a) for a in self.bundle.model_inputs(batch))
            proba = torch.softmax(self.model(*x), dim=-1).numpy()
        out = batch[KEYS].copy()
        out["prediction"] = np.asarray(self.bundle.classes)[proba.argmax(1)]
        out["probabilities"] = list(proba)
        return out


def hand_written(parquet: Path, out: Path, state_dir: Path, actors: int, batch_rows: int) -> float:
    import ray.data

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    # one file reads as one block: split it so that every actor gets work, as Ray Data's warning advises
    ds = ray.data.read_parquet(str(parquet)).repartition(target_num_rows_per_block=batch_rows)
    ds.context.enable_progress_bars = False
    ds.map_batches(HandWritten, fn_constructor_kwargs={"state_dir": str(state_dir)}, batch_format="pandas",
                   batch_size=batch_rows, compute=ray.data.ActorPoolStrategy(size=actors),
                   num_cpus=1).write_parquet(str(out))
    return time.perf_counter() - started


def loom_score(root: Path, parquet: Path, out: Path, actors: int, batch_rows: int) -> float:
    from rich.console import Console

    import runtime

    started = time.perf_counter()
    result = runtime.score(root, "churn", str(parquet), out, overwrite=True, actors=actors, batch_rows=batch_rows,
                           console=Console(stderr=True, quiet=True))
    assert result.quarantined == 0 and result.scored == result.rows
    return time.perf_counter() - started


def http_rows_per_s(root: Path, parquet: Path, work: Path, duration: int) -> dict[str, float]:
    """Serve the version, then load ``/predict`` with one row and with 100 rows per request."""
    import pandas as pd

    from bench_serving import run_wrk
    from runtime import Pipeline
    from runtime.serving import shutdown

    pipe = Pipeline(root)
    url = pipe.deploy("production")
    frame = pd.read_parquet(parquet, columns=FEATURES).head(100)
    out = {}
    try:
        for rows, clients in ((1, 8), (100, 4)):
            body = work / f"body-{rows}.json"
            body.write_text(frame.head(rows)[FEATURES].to_json(orient="records"))
            run_wrk(f"{url}/predict/churn", body, clients, 2)  # warm-up
            r = run_wrk(f"{url}/predict/churn", body, clients, duration)
            assert r["non_2xx"] == 0 and r["timeouts"] == 0, r
            out[f"http_{rows}_rows_per_s"] = r["rps"] * rows
    finally:
        shutdown(pipe.project)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of HTTP load per measurement")
    parser.add_argument("--batch-rows", type=int, default=65_536)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk (Debian/Ubuntu) or brew install wrk (macOS)")

    from runtime import connect, load_project
    from runtime.batch import Pool
    from runtime.cluster import free_port

    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    connect()
    root, parquet = make_project(work, args.rows, free_port())
    rows = args.rows
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(parquet).metadata.num_rows
    pool = Pool.sized()
    print(f"{rows:,} rows, {pool.actors} actors, batches of {args.batch_rows:,} rows", file=sys.stderr)
    times: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(args.rounds):
        times["a"].append(hand_written(parquet, work / "hand", load_project(root).state_dir, pool.actors,
                                       args.batch_rows))
        times["b"].append(loom_score(root, parquet, work / "scores.parquet", pool.actors, args.batch_rows))
        print(f"round {i + 1}: hand-written {times['a'][-1]:.1f}s, loom score {times['b'][-1]:.1f}s", file=sys.stderr)
    result = {"rows": rows, "actors": pool.actors, "batch_rows": args.batch_rows,
              "hand_written_rows_per_s": rows / statistics.median(times["a"]),
              "loom_score_rows_per_s": rows / statistics.median(times["b"]),
              **http_rows_per_s(root, parquet, work, args.duration)}
    result["loom_vs_hand_written"] = result["loom_score_rows_per_s"] / result["hand_written_rows_per_s"]
    result["loom_vs_http_1_row"] = result["loom_score_rows_per_s"] / result["http_1_rows_per_s"]
    result["loom_vs_http_100_rows"] = result["loom_score_rows_per_s"] / result["http_100_rows_per_s"]
    print(f"""
(a) hand-written Ray Data map_batches  {result['hand_written_rows_per_s']:>12,.0f} rows/s
(b) loom score                         {result['loom_score_rows_per_s']:>12,.0f} rows/s
(c) HTTP /predict, 1 row per request   {result['http_1_rows_per_s']:>12,.0f} rows/s
    HTTP /predict, 100 rows per request{result['http_100_rows_per_s']:>12,.0f} rows/s

(b)/(a) = {result['loom_vs_hand_written']:.2f}x  (target >= 0.9)
(b)/(c, 1 row) = {result['loom_vs_http_1_row']:.1f}x  (target >= 20);  (b)/(c, 100 rows) = {result['loom_vs_http_100_rows']:.1f}x""")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
