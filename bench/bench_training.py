"""Training throughput: Loom on Ray Train (2 workers) vs plain PyTorch DDP under torchrun, same step, same data.

Both run Loom's per-worker step (`runtime.training.train_epoch` + `evaluate`) on the same arrays with the same
model and batch size. Samples/s is measured per epoch after the first (steady state); start-up overhead is the
wall time before the first epoch finishes minus one epoch.

    .venv/bin/python bench/bench_training.py [--rows 200000] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_arrays(rows: int, dim: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    y = (x[:, :4].sum(1) + rng.normal(size=rows) > 0).astype(np.int64)
    cut = int(rows * 0.9)
    return {"x_train": x[:cut], "y_train": y[:cut], "x_val": x[cut:], "y_val": y[cut:]}


def run_torchrun(arrays, config, tmp: Path) -> dict[str, float]:
    np.savez(tmp / "data.npz", **arrays)
    (tmp / "config.json").write_text(json.dumps(config))
    started, t0 = time.perf_counter(), time.time()
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "bench" / "_ddp_worker.py"), str(tmp / "data.npz"), str(tmp / "config.json")],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    got = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("EPOCHS "))[7:])
    return {"wall": wall, "epochs": got["epochs"], "ends": [e - t0 for e in got["ends"]]}


def run_ray(arrays, config, tmp: Path, run_name: str = "bench") -> dict[str, float]:
    from runtime.cluster import connect
    from runtime.training import run_training

    connect()
    started, t0 = time.perf_counter(), time.time()
    result = run_training(config, arrays, workers=2, use_gpu=False, storage_path=tmp / "ray", run_name=run_name,
                          runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    wall = time.perf_counter() - started
    return {"wall": wall, "epochs": [h["epoch_seconds"] for h in result.history],
            "ends": [h["timestamp"] - t0 for h in result.history]}


def summarise(name: str, runs: list[dict], n_train: int) -> dict[str, float]:
    """Median over rounds. Throughput counts everything between the first and the last epoch's end (step,
    evaluation, and for Ray Train the per-epoch checkpoint and report); start-up is the time from launch to the
    first epoch's end minus one steady epoch."""
    sps_rounds, startups, steps, tails = [], [], [], []
    for r in runs:
        ends = r["ends"]
        per_epoch = (ends[-1] - ends[0]) / (len(ends) - 1)
        sps_rounds.append(n_train / per_epoch)
        steps.append(n_train / np.median(r["epochs"][1:]))
        startups.append(ends[0] - per_epoch)
        tails.append(r["wall"] - ends[-1])
    sps, startup = float(np.median(sps_rounds)), float(np.median(startups))
    walls = float(np.median([r["wall"] for r in runs]))
    rounds = " / ".join(f"{v:,.0f}" for v in sps_rounds)
    print(f"| {name} | {sps:,.0f} ({rounds}) | {np.median(steps):,.0f} | {startup:.1f} | {np.median(tails):.1f} | {walls:.1f} |")
    return {"sps": sps, "startup": startup, "rounds": sps_rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (torchrun, Ray, torchrun, ...)")
    args = ap.parse_args()
    arrays = make_arrays(args.rows)
    config = {"architecture": "runtime.model:TabularMLP",
              "kwargs": {"in_features": 32, "hidden": [256, 256], "out_features": 2, "dropout": 0.0},
              "epochs": args.epochs, "batch_size": 256, "learning_rate": 1e-3, "seed": 0}
    torchrun, ray = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i in range(args.rounds):
            torchrun.append(run_torchrun(arrays, config, tmp))
            ray.append(run_ray(arrays, config, tmp, f"bench-{i}"))
            print(f"round {i + 1}: torchrun epochs {[round(e, 2) for e in torchrun[-1]['epochs']]}, "
                  f"Ray Train epochs {[round(e, 2) for e in ray[-1]['epochs']]}", file=sys.stderr)
    n = len(arrays["x_train"])
    print(f"\n{n:,} training rows, {args.epochs} epochs, {args.rounds} interleaved rounds (median; rounds in "
          "brackets)\n")
    print("| run | samples/s, epoch ends 1 to N | samples/s, step + eval only | start-up s | after last epoch s | wall s |\n"
          "|---|---|---|---|---|---|")
    a = summarise("torchrun DDP (gloo), 2 procs", torchrun, n)
    b = summarise("Loom on Ray Train, 2 workers", ray, n)
    per_round = " / ".join(f"{rb / ra:.2f}" for ra, rb in zip(a["rounds"], b["rounds"]))
    print(f"\nratio Ray Train / torchrun samples/s: {b['sps'] / a['sps']:.2f}x (round by round {per_round}); "
          f"extra start-up: {b['startup'] - a['startup']:+.1f} s")


if __name__ == "__main__":
    main()
