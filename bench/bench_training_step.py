"""Per-epoch cost of Loom's training loop and default step vs a plain hand-written PyTorch loop, in one process.

Loom: `runtime.training.train_loop` (what `fit_local` runs) with the default `runtime.steps.TrainingStep` (no
`training.step`). Plain: randperm, slicing, zero_grad, forward, cross-entropy, backward, Adam step, then the
validation forward and accuracy. Same module (`runtime.model:TabularMLP`, the quickstart's width by default), same
data, seed, epochs and batch size; the two alternate round by round, in ABBA order.

An epoch is the time from one epoch's end to the next (training pass, validation, Loom's metrics and history), so
the first epoch of every run (warm-up) is left out. Both wall-clock and this thread's CPU time are reported: on a
shared machine the CPU time is the steadier figure, since other processes' load moves the wall clock. Both loops
start from the same weights and draw the same batches, so they end at the same validation accuracy (a check).

    .venv/bin/python bench/bench_training_step.py [--rows 110000] [--epochs 4] [--rounds 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from runtime.model import TabularMLP
from runtime.tasks import Classification
from runtime.training import train_loop

from bench_training import make_arrays  # bench/ is on sys.path when this runs as a script


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def _epochs(marks: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of epochs 2..N from the clock at each epoch's end."""
    return ([b[0] - a[0] for a, b in zip(marks, marks[1:])], [b[1] - a[1] for a, b in zip(marks, marks[1:])])


def plain_loop(config: dict, arrays: dict[str, np.ndarray]):
    """The loop a PyTorch user writes by hand."""
    torch.manual_seed(config["seed"])
    model = TabularMLP(**config["kwargs"])
    opt = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    x, y = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])
    xv, yv = torch.from_numpy(arrays["x_val"]), torch.from_numpy(arrays["y_val"])
    gen = torch.Generator().manual_seed(config["seed"])
    bs, marks, acc = config["batch_size"], [], float("nan")
    for _ in range(config["epochs"]):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(perm), bs):
            b = perm[s:s + bs]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[b]), y[b])
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(xv).argmax(1) == yv).float().mean())
        marks.append(_clock())
    return (*_epochs(marks), acc)


def loom_loop(config: dict, arrays: dict[str, np.ndarray]):
    marks: list[tuple[float, float]] = []
    out = train_loop(config, arrays, device=torch.device("cpu"), on_epoch=lambda metrics, save: marks.append(_clock()))
    return (*_epochs(marks), out["history"][-1]["val_accuracy"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=110_000, help="rows, 90%% for training, 10%% for validation")
    ap.add_argument("--features", type=int, default=15, help="encoded inputs (the quickstart has 15)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 32], help="hidden widths (quickstart: 64 32)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds (plain then Loom, Loom then plain, ...)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    arrays = make_arrays(args.rows, args.features)
    n_train = len(arrays["y_train"])
    config = {"architecture": "runtime.model:TabularMLP",
              "kwargs": {"in_features": args.features, "out_features": 2, "hidden": args.hidden, "dropout": 0.1},
              "task": Classification([0, 1]).to_dict(), "epochs": args.epochs, "batch_size": args.batch_size,
              "learning_rate": 1e-3, "seed": 0}
    wall: dict[str, list[float]] = {"plain": [], "loom": []}
    cpu: dict[str, list[float]] = {"plain": [], "loom": []}
    rounds: dict[str, list[float]] = {"plain": [], "loom": []}
    accuracy: dict[str, float] = {}
    for i in range(args.rounds):
        order = (("plain", plain_loop), ("loom", loom_loop))
        for name, loop in order if i % 2 == 0 else order[::-1]:  # ABBA: neither always runs first
            w, c, accuracy[name] = loop(config, arrays)
            wall[name] += w
            cpu[name] += c
            rounds[name].append(float(np.median(c)))
        print(f"round {i + 1}: CPU s per epoch plain {rounds['plain'][-1]:.3f}, Loom {rounds['loom'][-1]:.3f}",
              file=sys.stderr)
    steps = -(-n_train // args.batch_size)
    print(f"\n{n_train:,} training rows x {args.features} inputs, MLP {args.features}-"
          f"{'-'.join(map(str, args.hidden))}-2, batch {args.batch_size} ({steps} steps per epoch), "
          f"{len(arrays['y_val']):,} validation rows, {args.epochs} epochs, {args.rounds} interleaved rounds, "
          f"{args.threads} torch thread(s); medians over epochs 2-N of every round\n")
    print("| loop | epoch, wall s | epoch, CPU s | CPU per step | per round (median epoch CPU s) "
          "| final val accuracy |\n|---|---|---|---|---|---|")
    med_wall, med_cpu = {}, {}
    for name, label in (("plain", "plain PyTorch loop"), ("loom", "Loom `train_loop`, default `TrainingStep`")):
        med_wall[name], med_cpu[name] = float(np.median(wall[name])), float(np.median(cpu[name]))
        per_round = " / ".join(f"{r:.3f}" for r in rounds[name])
        print(f"| {label} | {med_wall[name]:.3f} | {med_cpu[name]:.3f} | {med_cpu[name] / steps * 1e6:.0f} us | "
              f"{per_round} | {accuracy[name]:.4f} |")
    by_round = " / ".join(f"{b / a:.3f}" for a, b in zip(rounds["plain"], rounds["loom"]))
    same = abs(accuracy["plain"] - accuracy["loom"]) < 1e-6
    print(f"\nratio Loom / plain epoch time: CPU {med_cpu['loom'] / med_cpu['plain']:.3f}x (round by round "
          f"{by_round}), wall {med_wall['loom'] / med_wall['plain']:.3f}x; goal <= 1.05x; same final accuracy: "
          f"{'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
