"""Distributed training with Ray Train.

The per-worker loop (:func:`train_loop`; :func:`fit_local` runs it in this process) is plain PyTorch and runs
without Ray, so it can be checked on a GPU machine on its own. It owns the data (a seeded shuffle shared by every
worker, equal-sized disjoint shards, batches), validation, checkpoints and resumes, and drives a training step
(:mod:`runtime.steps`: Loom's :class:`~runtime.steps.TrainingStep` or the project's ``training.step``) for the
optimisation. :func:`train_loop_per_worker` wraps it for Ray Train's ``TorchTrainer`` (DDP, a checkpoint per epoch,
resume from the last checkpoint after a worker failure).

A checkpoint is a directory of safetensors and JSON files, never a pickle: the weights (``model.safetensors``), the
history, and the training state (optimizer, scheduler, the torch/CUDA/numpy/Python RNGs and the shuffle
generator: tensors in ``training_state.safetensors`` under flattened keys, the rest in ``training_state.json``).
A resumed run continues exactly where the checkpoint left off: same optimizer state, same shuffle.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .artifacts import WEIGHTS
from .errors import LoomError
from .model import build_architecture
from .steps import StepContext, TrainingStep, autocast, configure, default_autocast, end_epoch, forward, make_step
from .tasks import Classification, Regression, Task, roc_auc, task_from_dict

__all__ = ["TrainingResult", "build_model", "evaluate", "fit_local", "load_checkpoint", "roc_auc", "run_training",
           "save_checkpoint", "train_epoch", "train_loop", "train_loop_per_worker"]

log = logging.getLogger("loom.training")

CKPT_HISTORY = "history.json"
#: The training state's tensors (optimizer moments, RNG states), flattened keys.
CKPT_TENSORS = "training_state.safetensors"
#: The rest of the training state (hyper-parameters, step counts, scheduler, which tensor is which), as JSON.
CKPT_STATE = "training_state.json"
CKPT_FORMAT = "loom-training-state/1"


# -- the per-worker loop, no Ray needed ----------------------------------------------------------------------------


def as_inputs(x: Any) -> tuple[Any, ...]:
    """The model's inputs as a tuple: one array (or tensor), or a list/tuple of them (one per model input)."""
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def task_of(config: dict[str, Any], y: np.ndarray) -> Task:
    """The run's task: ``config['task']`` (:meth:`runtime.tasks.Classification.to_dict`); a config without one
    (written before tasks existed) is classification over the label indices, or regression on float targets."""
    if config.get("task") is not None:
        return task_from_dict(config["task"])
    if np.issubdtype(np.asarray(y).dtype, np.floating):
        return Regression(mean=0.0, std=1.0)
    return Classification(list(range(int(np.max(y)) + 1 if len(y) else 0)))


def step_context(config: dict[str, Any], task: Task, n_train: int, *, device: torch.device, rank: int = 0,
                 world_size: int = 1) -> StepContext:
    per_worker = n_train // world_size
    return StepContext(task=task, learning_rate=config["learning_rate"], epochs=config["epochs"],
                       batch_size=config["batch_size"], steps_per_epoch=-(-per_worker // config["batch_size"]),
                       device=device, world_size=world_size, rank=rank, options=dict(config.get("step_options") or {}))


def _tensors(arrays: dict[str, Any], task: Task, device: torch.device):
    """``x_train``, ``y_train``, ``x_val``, ``y_val`` on ``device``: inputs as tuples, targets as int64 class indices
    (classification) or float32 values (regression)."""
    target = torch.int64 if isinstance(task, Classification) else torch.float32
    out = []
    for split in ("train", "val"):
        xs = tuple(torch.as_tensor(a).to(device) for a in as_inputs(arrays[f"x_{split}"]))
        y = torch.as_tensor(arrays[f"y_{split}"]).to(device, target)
        if any(len(x) != len(y) for x in xs):
            raise ValueError(f"x_{split} and y_{split} differ in length: {[len(x) for x in xs]} rows of inputs, "
                             f"{len(y)} targets")
        out += [xs, y]
    return out


def _epoch(step: Any, model: nn.Module, optimizer: torch.optim.Optimizer, xs: tuple[torch.Tensor, ...],
           y: torch.Tensor, *, batch_size: int, generator: torch.Generator, rank: int,
           world_size: int) -> tuple[float, int]:
    """One pass over this worker's shard; the mean loss and the number of steps.

    Every worker draws the same permutation from ``generator`` and takes its own slice, so shards are disjoint
    and equal-sized (the tail is dropped to keep DDP's all-reduce in lock-step)."""
    device = y.device
    model.train()
    perm = torch.randperm(len(y), generator=generator).to(device)
    per_worker = len(perm) // world_size
    idx = perm[rank * per_worker:(rank + 1) * per_worker]
    run = step.step
    losses = []
    for start in range(0, len(idx), batch_size):
        b = idx[start:start + batch_size]
        loss = run(model, tuple(x[b] for x in xs), y[b], optimizer)
        # Kept on the device: no host sync per batch. Detached again in case a step returns the graph.
        losses.append(loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss), device=device))
    if not losses:
        return float("nan"), 0
    weights = torch.full((len(losses),), float(batch_size), device=device)
    weights[-1] = len(idx) - (len(losses) - 1) * batch_size
    per_batch = torch.stack(losses).to(device, torch.float32).reshape(len(losses), -1).mean(1)
    return float((per_batch * weights).sum()) / len(idx), len(losses)


def _default_step(task: Task, device: torch.device, lr: float, batch_size: int, steps: int) -> TrainingStep:
    return TrainingStep(StepContext(task=task, learning_rate=lr, epochs=1, batch_size=batch_size,
                                    steps_per_epoch=steps, device=device))


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor | Sequence[torch.Tensor],
    y: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
    step: Any = None,
) -> float:
    """One pass over this worker's shard (every worker's slice of a shared shuffle) with ``step`` (default: Loom's
    :class:`~runtime.steps.TrainingStep` on a classification task); returns the mean loss."""
    if step is None:
        step = _default_step(Classification([]), y.device, optimizer.param_groups[0]["lr"], batch_size,
                             -(-(len(y) // world_size) // batch_size))
    return _epoch(step, model, optimizer, as_inputs(x), y, batch_size=batch_size, generator=generator, rank=rank,
                  world_size=world_size)[0]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor | Sequence[torch.Tensor], y: torch.Tensor, task: Task | None = None,
             *, step: Any = None) -> dict[str, float]:
    """The task's validation metrics (``val_loss`` and the task's own) of the whole validation set, in eval mode.
    Without a task: classification over the model's outputs (loss, accuracy, log-loss, macro-F1, binary ROC AUC)."""
    xs = as_inputs(x)
    model.eval()
    with autocast(step, y.device) if step is not None else default_autocast(y.device):
        output = forward(step, model, xs) if step is not None else model(*xs)
    if task is None:
        task = Classification(list(range(output.shape[-1])))
    return task.metrics(output, y)


def build_model(config: dict[str, Any]) -> nn.Module:
    """The architecture built from ``config['kwargs']``, its weights drawn with ``config['seed']``."""
    torch.manual_seed(config["seed"])
    return build_architecture(config["architecture"], config["kwargs"])


def train_loop(
    config: dict[str, Any],
    arrays: dict[str, Any],
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    resume: dict[str, Any] | None = None,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    on_epoch: Callable[[dict[str, Any], Callable[[str | Path], None]], None] | None = None,
) -> dict[str, Any]:
    """Train one worker's share: seed torch, numpy and ``random`` with ``config['seed']``, build the model and the
    step (``config['step']``, :func:`runtime.steps.load_step`) and its optimizer, then per epoch one pass over this
    worker's shard (``step.step`` per batch), ``step.end_epoch(scheduler)`` and validation.

    ``arrays`` holds ``x_train``/``x_val`` (an array, or a list of arrays: one per model input) and
    ``y_train``/``y_val``. ``resume`` is a checkpoint (:func:`load_checkpoint`) to continue from; ``wrap_model``
    wraps the model for distributed training (DDP); ``on_epoch(metrics, save)`` is called after each epoch, where
    ``save(directory)`` writes a checkpoint of the state at that point. Returns the trained (unwrapped) model, the
    history, the step, its optimizer and scheduler, and the number of optimizer steps taken (resumes included)."""
    task = task_of(config, arrays["y_train"])
    seed = config["seed"]
    random.seed(seed)
    np.random.seed(seed)
    model = build_model(config)
    step = make_step(config.get("step"), step_context(config, task, len(arrays["y_train"]), device=device,
                                                      rank=rank, world_size=world_size))
    xs_train, y_train, xs_val, y_val = _tensors(arrays, task, device)
    if resume is not None:
        model.load_state_dict(resume["weights"])
    model = model.to(device)
    inner = model
    if wrap_model is not None:
        model = wrap_model(model)
    optimizer, scheduler = configure(step, model)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    steps_done = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume["scheduler"] is not None:
            scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"], generator, device)
        history, steps_done = list(resume["history"]), resume["optimizer_steps"]

    def save(directory: str | Path) -> None:
        save_checkpoint(directory, model=inner, optimizer=optimizer, scheduler=scheduler, generator=generator,
                        history=history, optimizer_steps=steps_done, device=device)

    n_train = len(y_train)
    for epoch in range(len(history), config["epochs"]):
        started = time.perf_counter()
        loss, steps = _epoch(step, model, optimizer, xs_train, y_train, batch_size=config["batch_size"],
                             generator=generator, rank=rank, world_size=world_size)
        steps_done += steps
        end_epoch(step, scheduler)
        metrics = {"epoch": epoch + 1, "train_loss": loss, **evaluate(model, xs_val, y_val, task, step=step)}
        seconds = time.perf_counter() - started
        metrics.update(epoch_seconds=seconds, samples_per_second=n_train / max(seconds, 1e-9), timestamp=time.time())
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, save)
    return {"model": inner, "history": history, "step": step, "optimizer": optimizer, "scheduler": scheduler,
            "optimizer_steps": steps_done}


def fit_local(config: dict[str, Any], arrays: dict[str, Any], device: str | None = None, *,
              checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None) -> dict[str, Any]:
    """Train in this process without Ray (one worker): the same loop the Ray workers run. For GPU checks.

    With ``checkpoint_dir`` a checkpoint is written there after every epoch (replacing the previous one); with
    ``resume_from`` training continues from that checkpoint up to ``config['epochs']``. Returns what
    :func:`train_loop` returns."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resume = load_checkpoint(resume_from) if resume_from is not None else None

    def checkpoint(metrics: dict[str, Any], save: Callable[[str | Path], None]) -> None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        save(checkpoint_dir)

    return train_loop(config, arrays, device=dev, resume=resume, on_epoch=checkpoint if checkpoint_dir else None)


# -- checkpoints: safetensors + JSON, never pickle ------------------------------------------------------------------


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """This process's random number generators: torch (CPU, and ``device``'s when CUDA), numpy, Python's ``random``
    and the shuffle ``generator``."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(legacy=False), "python": random.getstate(),
             "shuffle": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    generator.set_state(state["shuffle"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, its tensors moved to ``tensors`` under flattened keys (``optimizer.state.0.exp_avg``)."""
    if isinstance(value, torch.Tensor):
        name = key if key not in tensors else f"{key}#{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}
        bad = [k for k in value if not (k is None or isinstance(k, (str, int, float, bool)))]
        if bad:
            raise LoomError(f"cannot checkpoint {key}: its key {bad[0]!r} is not a string or a number")
        return {"__items__": [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise LoomError(f"cannot checkpoint {key}: it is a {type(value).__name__}, and a checkpoint holds only tensors "
                    "(safetensors) and JSON values (Loom never pickles); keep such objects out of the optimizer's "
                    "and scheduler's state_dict()")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        if value.keys() == {"__ndarray__", "dtype"}:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        if value.keys() == {"__items__"}:
            return {k: _decode(v, tensors) for k, v in value["__items__"]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def save_checkpoint(directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    generator: torch.Generator, history: list[dict[str, Any]], optimizer_steps: int,
                    device: torch.device) -> None:
    """Write a checkpoint into ``directory``: weights, history and training state (see the module's docstring)."""
    d = Path(directory)
    inner = model.module if hasattr(model, "module") else model
    tensors: dict[str, torch.Tensor] = {}
    state = {"optimizer": _encode(optimizer.state_dict(), "optimizer", tensors),
             "scheduler": None if scheduler is None else _encode(scheduler.state_dict(), "scheduler", tensors),
             "rng": _encode(rng_state(generator, device), "rng", tensors)}
    save_file({k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}, d / WEIGHTS)
    save_file(tensors, d / CKPT_TENSORS)
    (d / CKPT_STATE).write_text(json.dumps({"format": CKPT_FORMAT, "optimizer_steps": optimizer_steps, **state}))
    (d / CKPT_HISTORY).write_text(json.dumps(history))


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`: ``weights``, ``history``, ``optimizer``, ``scheduler``,
    ``rng`` and ``optimizer_steps``."""
    d = Path(directory)
    state = json.loads((d / CKPT_STATE).read_text())
    if state.get("format") != CKPT_FORMAT:
        raise LoomError(f"{d / CKPT_STATE} is not a Loom training state ({CKPT_FORMAT})")
    tensors = load_file(d / CKPT_TENSORS)
    return {"weights": load_file(d / WEIGHTS), "history": json.loads((d / CKPT_HISTORY).read_text()),
            "optimizer_steps": int(state["optimizer_steps"]),
            **{k: _decode(state[k], tensors) for k in ("optimizer", "scheduler", "rng")}}


# -- Ray Train ----------------------------------------------------------------------------------------------------


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: :func:`train_loop` under DDP over ``config['workers']`` processes, resumed from Ray Train's
    latest checkpoint when there is one; rank 0 reports a checkpoint and the metrics every epoch."""
    import ray
    import ray.train
    import ray.train.torch

    if config.get("nice"):  # a retrain round beside serving: the replicas keep the CPU they need
        try:
            os.nice(int(config["nice"]))
        except OSError:
            pass
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_checkpoint(d)
    progress = config.get("progress")

    def report(metrics: dict[str, Any], save: Callable[[str | Path], None]) -> None:
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            save(d)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        if progress is not None:
            try:
                progress.put_nowait(metrics)
            except Exception:  # noqa: BLE001 - progress display is best effort
                pass

    train_loop(config, ray.get(config["data"]), device=ray.train.torch.get_device(), rank=rank, world_size=world,
               resume=resume, wrap_model=ray.train.torch.prepare_model, on_epoch=report)


@dataclass
class TrainingResult:
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    use_gpu: bool
    seconds: float
    checkpoint_path: str
    optimizer_steps: int = 0
    """Optimizer steps over the whole run (resumes included), from the final checkpoint."""


def check_step_config(config: dict[str, Any], arrays: dict[str, Any], workers: int = 1) -> None:
    """Load ``config['step']`` and build the step object as rank 0 of ``workers`` would (on the CPU), so that a bad
    ``training.step`` raises :class:`~runtime.errors.ConfigError` here rather than in every worker."""
    task = task_of(config, arrays["y_train"])
    make_step(config.get("step"), step_context(config, task, len(arrays["y_train"]), device=torch.device("cpu"),
                                               world_size=workers))


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def run_training(
    config: dict[str, Any],
    arrays: dict[str, np.ndarray],
    *,
    workers: int,
    use_gpu: bool | str,
    storage_path: Path | str,
    run_name: str,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    max_failures: int = 2,
    runtime_env: dict[str, Any] | None = None,
) -> TrainingResult:
    """Run :func:`train_loop_per_worker` on the connected Ray cluster and return the final weights.

    ``storage_path`` is where Ray Train keeps the run's checkpoints: a local directory, or a file system URI
    (``s3://...``) that every worker reaches, for a cluster whose nodes share no disk.

    The training step (``config['step']``) is loaded and checked here first, before any Ray work, so a bad
    ``training.step`` fails at once with a :class:`~runtime.errors.ConfigError`."""
    check_step_config(config, arrays, workers)
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    from .filesystems import open_location

    runs = open_location(storage_path, what="the training runs' storage")
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
            name=run_name, storage_path=runs.path, storage_filesystem=None if runs.local else runs.fs,
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
        final = load_checkpoint(d)
    history = final["history"]
    return TrainingResult(state_dict=final["weights"], history=history, metrics=history[-1], use_gpu=gpu,
                          seconds=seconds, checkpoint_path=result.checkpoint.path,
                          optimizer_steps=final["optimizer_steps"])
