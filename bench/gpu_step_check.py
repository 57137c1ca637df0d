"""Check Loom's per-worker training loop on a GPU, without Ray: `runtime.training.fit_local` on CUDA when there is one
(else the CPU, to try the script anywhere). Prints per-epoch seconds and the final metrics of three runs and exits
non-zero when a check fails:

1. the default step (Adam, bf16 autocast on CUDA) on a tabular classification task: it learns, and the forward
   pass under the step's autocast really is bf16 on CUDA;
2. a custom step (SGD + StepLR + gradient clipping, `training.step`) on a model with two inputs (a tabular matrix
   and a `[N, 1, 28, 28]` image tensor);
3. a checkpoint on the device and a resume from it (CUDA RNG state included) against an uninterrupted run: the
   same epochs and optimizer steps, and the weights' largest difference (GPU kernels need not be bit-exact).

    .venv/bin/python bench/gpu_step_check.py [--rows 200000] [--epochs 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch

from runtime.steps import TrainingStep
from runtime.tasks import Classification
from runtime.training import fit_local, load_checkpoint

from bench_training import make_arrays  # bench/ is on sys.path when this runs as a script


class ClipSGD(TrainingStep):
    def configure_optimizers(self, model):
        opt = torch.optim.SGD(model.parameters(), lr=self.ctx.learning_rate, momentum=0.9)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)


class TwoInputs(torch.nn.Module):
    def __init__(self, in_features: int, out_features: int = 2):
        super().__init__()
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, stride=2), torch.nn.ReLU(),
                                        torch.nn.Conv2d(16, 32, 3, stride=2), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Sequential(torch.nn.Linear(32 + in_features, 64), torch.nn.ReLU(),
                                        torch.nn.Dropout(0.1), torch.nn.Linear(64, out_features))

    def forward(self, tabular, image):
        return self.head(torch.cat([self.conv(image), tabular], dim=1))


def images(rows: int) -> dict[str, object]:
    rng = np.random.default_rng(1)
    tab = rng.normal(size=(rows, 4)).astype(np.float32)
    img = rng.normal(size=(rows, 1, 28, 28)).astype(np.float32)
    y = ((tab[:, 0] > 0) ^ (rng.random(rows) < 0.1)).astype(np.int64)
    img[:, :, 7:21, 7:21] += np.where(y == 1, 0.7, -0.7)[:, None, None, None].astype(np.float32)
    cut = int(rows * 0.9)
    return {"x_train": [tab[:cut], img[:cut]], "y_train": y[:cut], "x_val": [tab[cut:], img[cut:]],
            "y_val": y[cut:]}


def show(name: str, out: dict) -> dict:
    history = out["history"]
    print(f"\n{name}")
    for h in history:
        print(f"  epoch {h['epoch']}: {h['epoch_seconds']:.3f} s ({h['samples_per_second']:,.0f} samples/s), "
              f"train_loss {h['train_loss']:.4f}, val_loss {h['val_loss']:.4f}")
    final = {k: v for k, v in history[-1].items() if k.startswith("val_")}
    print("  final:", json.dumps({**final, "optimizer_steps": out["optimizer_steps"]}))
    return final


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--image-rows", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"device {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
          + f", torch {torch.__version__}")
    failures: list[str] = []
    task = Classification([0, 1]).to_dict()
    config = {"architecture": "runtime.model:TabularMLP",
              "kwargs": {"in_features": 32, "out_features": 2, "hidden": [256, 256], "dropout": 0.1},
              "task": task, "epochs": args.epochs, "batch_size": 1024, "learning_rate": 1e-3, "seed": 0}

    started = time.perf_counter()
    out = fit_local(config, make_arrays(args.rows), device=str(dev))
    final = show(f"1. default step, MLP 32-256-256-2, {args.rows:,} rows, batch 1024", out)
    if not final["val_auc"] > 0.85:
        failures.append(f"default step did not learn (val_auc {final['val_auc']:.3f})")
    probe = torch.zeros(8, 32, device=dev)
    with out["step"].autocast():
        dtype = out["model"](probe).dtype
    print(f"  forward dtype under the step's autocast: {dtype}")
    if dev.type == "cuda" and dtype != torch.bfloat16:
        failures.append(f"no bf16 autocast on CUDA (got {dtype})")

    image_config = {**config, "architecture": "__main__:TwoInputs", "kwargs": {"in_features": 4},
                    "step": "__main__:ClipSGD", "step_options": {"clip_grad_norm": 1.0}, "batch_size": 256,
                    "learning_rate": 0.05}
    out = fit_local(image_config, images(args.image_rows), device=str(dev))
    final = show(f"2. custom step (SGD + StepLR + clipping), tabular + image inputs, {args.image_rows:,} rows", out)
    if not final["val_accuracy"] > 0.8:
        failures.append(f"two-input model did not learn (val_accuracy {final['val_accuracy']:.3f})")
    if type(out["optimizer"]) is not torch.optim.SGD:
        failures.append("the custom step's optimizer was not used")

    resume_config = {**image_config, "epochs": 4}
    straight = fit_local(resume_config, images(args.image_rows), device=str(dev))
    with tempfile.TemporaryDirectory() as d:
        fit_local({**resume_config, "epochs": 2}, images(args.image_rows), device=str(dev), checkpoint_dir=d)
        has_cuda_rng = "cuda" in load_checkpoint(d)["rng"]
        resumed = fit_local(resume_config, images(args.image_rows), device=str(dev), resume_from=d)
    diff = max(float((resumed["model"].state_dict()[k] - v).abs().max())
               for k, v in straight["model"].state_dict().items())
    print(f"\n3. resume after epoch 2 of 4: optimizer steps {resumed['optimizer_steps']} (uninterrupted "
          f"{straight['optimizer_steps']}), epochs {len(resumed['history'])}, CUDA RNG in checkpoint: "
          f"{has_cuda_rng}, largest weight difference {diff:.2e}, val_loss {resumed['history'][-1]['val_loss']:.5f} "
          f"vs {straight['history'][-1]['val_loss']:.5f}")
    if resumed["optimizer_steps"] != straight["optimizer_steps"] or len(resumed["history"]) != 4:
        failures.append("the resumed run's epochs or optimizer steps differ from the uninterrupted run's")
    if dev.type == "cuda" and not has_cuda_rng:
        failures.append("the checkpoint holds no CUDA RNG state")
    if diff > 1e-2:
        failures.append(f"resumed weights differ from the uninterrupted run's by {diff:.2e}")

    if "ray" in sys.modules:
        failures.append("Ray was imported")
    verdict = "OK" if not failures else "FAILED: " + "; ".join(failures)
    print(f"\n{time.perf_counter() - started:.1f} s in all; {verdict}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
