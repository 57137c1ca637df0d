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
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "bench" / "_ddp_worker.py"), str(tmp / "data.npz"), str(tmp / "config.json")],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    epochs = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("EPOCHS "))[7:])
    return {"wall": wall, "epochs": epochs}


def run_ray(arrays, config, tmp: Path) -> dict[str, float]:
    from runtime.cluster import connect
    from runtime.training import run_training

    connect()
    started = time.perf_counter()
    result = run_training(config, arrays, workers=2, use_gpu=False, storage_path=tmp / "ray", run_name="bench",
                          runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    wall = time.perf_counter() - started
    return {"wall": wall, "epochs": [h["epoch_seconds"] for h in result.history]}


def summarise(name: str, r: dict, n_train: int) -> dict[str, float]:
    steady = r["epochs"][1:] or r["epochs"]
    sps = n_train / (sum(steady) / len(steady))
    startup = r["wall"] - sum(r["epochs"])
    print(f"| {name} | {sps:,.0f} | {np.median(steady):.2f} | {startup:.1f} | {r['wall']:.1f} |")
    return {"sps": sps, "startup": startup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    arrays = make_arrays(args.rows)
    config = {"architecture": "runtime.model:TabularMLP",
              "kwargs": {"n_inputs": 32, "hidden": [256, 256], "n_classes": 2, "dropout": 0.0},
              "epochs": args.epochs, "batch_size": 256, "learning_rate": 1e-3, "seed": 0}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        torchrun = run_torchrun(arrays, config, tmp)
        ray = run_ray(arrays, config, tmp)
    n = len(arrays["x_train"])
    print("| run | samples/s (steady) | epoch s (median) | start-up s | wall s |\n|---|---|---|---|---|")
    a = summarise("torchrun DDP (gloo), 2 procs", torchrun, n)
    b = summarise("Loom on Ray Train, 2 workers", ray, n)
    print(f"\nratio Ray Train / torchrun samples/s: {b['sps'] / a['sps']:.2f}x; "
          f"extra start-up: {b['startup'] - a['startup']:+.1f} s")


if __name__ == "__main__":
    main()
