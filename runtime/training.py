"""Distributed training with Ray Train.

The per-worker step (:func:`train_epoch`, :func:`evaluate`, :func:`fit_local`) is plain PyTorch and runs without
Ray, so it can be checked on a GPU machine on its own. :func:`train_loop_per_worker` wraps it for Ray Train's
``TorchTrainer`` (DDP, checkpoints every epoch, resume from the last checkpoint after a worker failure).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .artifacts import WEIGHTS
from .model import import_architecture

log = logging.getLogger("loom.training")

CKPT_HISTORY = "history.json"


# -- the per-worker step, no Ray needed ----------------------------------------------------------------------------


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged; NaN when one class is absent."""
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(score).rank().to_numpy()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _autocast(device: torch.device):
    # bf16 autocast on GPU; on CPU full precision is faster for small MLPs.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> float:
    """One pass over this worker's shard (every ``world_size``-th row of a shared shuffle); returns mean loss.

    Every worker draws the same permutation from ``generator`` and takes its own slice, so shards are disjoint
    and equal-sized (the tail is dropped to keep DDP's all-reduce in lock-step)."""
    device = x.device
    model.train()
    perm = torch.randperm(len(x), generator=generator).to(device)
    per_worker = len(perm) // world_size
    idx = perm[rank * per_worker:(rank + 1) * per_worker]
    loss_fn = nn.CrossEntropyLoss()
    total, count = 0.0, 0
    for start in range(0, len(idx), batch_size):
        b = idx[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device):
            loss = loss_fn(model(x[b]), y[b])
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(b)
        count += len(b)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Validation loss, accuracy and (binary) ROC AUC."""
    model.eval()
    with _autocast(x.device):
        logits = model(x).float()
    loss = float(nn.functional.cross_entropy(logits, y))
    proba = torch.softmax(logits, dim=-1).cpu().numpy()
    yy = y.cpu().numpy()
    out = {"val_loss": loss, "val_accuracy": float((proba.argmax(1) == yy).mean())}
    if proba.shape[1] == 2:
        out["val_auc"] = roc_auc(yy, proba[:, 1])
    return out


def build_model(config: dict[str, Any]) -> nn.Module:
    torch.manual_seed(config["seed"])
    return import_architecture(config["architecture"])(**config["kwargs"])


def fit_local(config: dict[str, Any], arrays: dict[str, np.ndarray], device: str | None = None) -> dict[str, Any]:
    """Train in this process without Ray (one worker): the same step the Ray workers run. For GPU checks."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(config).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    t = {k: torch.from_numpy(v).to(dev) for k, v in arrays.items()}
    gen = torch.Generator().manual_seed(config["seed"])
    history = []
    for epoch in range(config["epochs"]):
        loss = train_epoch(model, opt, t["x_train"], t["y_train"], batch_size=config["batch_size"], generator=gen)
        history.append({"epoch": epoch + 1, "train_loss": loss, **evaluate(model, t["x_val"], t["y_val"])})
    return {"model": model, "history": history}


# -- Ray Train ----------------------------------------------------------------------------------------------------


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: DDP over ``config['workers']`` processes, a checkpoint and a metrics report per epoch."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    arrays = ray.get(config["data"])
    t = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}

    model = build_model(config)
    history: list[dict[str, Any]] = []
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as d:
            model.load_state_dict(load_file(os.path.join(d, WEIGHTS)))
            history = json.loads(Path(d, CKPT_HISTORY).read_text())
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    gen = torch.Generator().manual_seed(config["seed"])
    for _ in range(len(history)):  # keep the shuffle sequence identical after a resume
        torch.randperm(len(t["x_train"]), generator=gen)

    progress = config.get("progress")
    for epoch in range(len(history), config["epochs"]):
        started = time.perf_counter()
        loss = train_epoch(model, opt, t["x_train"], t["y_train"], batch_size=config["batch_size"],
                           generator=gen, rank=rank, world_size=world)
        metrics = {"epoch": epoch + 1, "train_loss": loss, **evaluate(model, t["x_val"], t["y_val"]),
                   "epoch_seconds": time.perf_counter() - started,
                   "samples_per_second": len(t["x_train"]) / max(time.perf_counter() - started, 1e-9),
                   "timestamp": time.time()}
        history.append(metrics)
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                inner = model.module if hasattr(model, "module") else model
                save_file({k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()},
                          os.path.join(d, WEIGHTS))
                Path(d, CKPT_HISTORY).write_text(json.dumps(history))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            if progress is not None:
                try:
                    progress.put_nowait(metrics)
                except Exception:  # noqa: BLE001 - progress display is best effort
                    pass
        else:
            ray.train.report(metrics)


@dataclass
class TrainingResult:
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    use_gpu: bool
    seconds: float
    checkpoint_path: str


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def run_training(
    config: dict[str, Any],
    arrays: dict[str, np.ndarray],
    *,
    workers: int,
    use_gpu: bool | str,
    storage_path: Path,
    run_name: str,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    max_failures: int = 2,
    runtime_env: dict[str, Any] | None = None,
) -> TrainingResult:
    """Run :func:`train_loop_per_worker` on the connected Ray cluster and return the final weights."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    gpu = cluster_has_gpus() if use_gpu == "auto" else bool(use_gpu)
    queue = Queue(actor_options={"num_cpus": 0}) if on_epoch else None
    done = threading.Event()

    def pump() -> None:
        while not done.is_set() or (queue is not None and not queue.empty()):
            try:
                metrics = queue.get(timeout=0.2)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue actor goes away at shutdown
                return
            try:
                on_epoch(metrics)
            except Exception:  # noqa: BLE001 - a display callback must not stop training
                log.exception("progress callback failed")

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**config, "data": ray.put(arrays), "progress": queue},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpu,
                                               resources_per_worker={"GPU": 1} if gpu else {"CPU": 1}),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=str(storage_path),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            worker_runtime_env=runtime_env or {},
        ),
    )
    started = time.perf_counter()
    thread = threading.Thread(target=pump, daemon=True) if on_epoch else None
    if thread:
        thread.start()
    # Ray Train's fit() installs a SIGINT handler (Ctrl-C aborts the run gracefully) and never restores it: the
    # process would then ignore Ctrl-C for good, e.g. `loom up` while it serves. Put the previous one back.
    previous_sigint = (signal.getsignal(signal.SIGINT)
                       if threading.current_thread() is threading.main_thread() else None)
    try:
        result = trainer.fit()
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
        done.set()
        if thread:
            thread.join(timeout=5)
        if queue is not None:
            queue.shutdown()
    seconds = time.perf_counter() - started
    with result.checkpoint.as_directory() as d:
        state = load_file(os.path.join(d, WEIGHTS))
        history = json.loads(Path(d, CKPT_HISTORY).read_text())
    return TrainingResult(state_dict=state, history=history, metrics=history[-1], use_gpu=gpu, seconds=seconds,
                          checkpoint_path=result.checkpoint.path)
