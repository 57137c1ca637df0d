"""The training step: what Loom's per-worker loop (:mod:`runtime.training`) calls to train a model.

The loop owns the data (shuffling, this worker's shard, batching), DDP, validation, checkpoints and resumes. The
step owns the optimisation: which optimizer and scheduler, how a batch goes through the model, the loss, mixed
precision, gradient clipping. :class:`TrainingStep` is Loom's default; ``training.step: 'module:callable'`` names
your own. Loom calls it with a :class:`StepContext` and uses what it returns::

    from runtime.steps import TrainingStep
    import torch

    class MyStep(TrainingStep):
        def configure_optimizers(self, model):
            opt = torch.optim.SGD(model.parameters(), lr=self.ctx.learning_rate, momentum=0.9)
            return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

Subclass :class:`TrainingStep` and override any part, or write any class with the same methods. Required:
``configure_optimizers(model)`` and ``step(model, inputs, target, optimizer)``; ``forward``, ``autocast`` and
``end_epoch`` fall back to the defaults below when the object has none.

Per epoch the loop calls ``step`` once per batch of this worker's shard, then ``end_epoch(scheduler)``, then
validates: ``ctx.task.metrics(step.forward(model, x_val), y_val)`` under ``torch.no_grad()``, in eval mode, inside
``step.autocast()``. ``inputs`` is always a tuple of tensors (one per model input, rows of this batch); ``target``
holds int64 class indices (classification) or float32 standardized values (regression). Optimizer and scheduler
state are checkpointed every epoch and restored on resume (tensors and JSON, never pickle: a scheduler whose state
holds functions cannot be checkpointed).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .errors import ConfigError
from .tasks import Task

FIELD = "training.step"


@dataclass
class StepContext:
    """What a training step knows about the run it is part of."""

    task: Task
    """The task (:mod:`runtime.tasks`): its ``loss`` and ``metrics``."""
    learning_rate: float
    epochs: int
    batch_size: int
    steps_per_epoch: int
    """Batches (calls of ``step``) per epoch on this worker."""
    device: torch.device
    world_size: int = 1
    rank: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    """``training.step_options`` from the project file."""


def default_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on CPU, where full precision is faster for small MLPs."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TrainingStep:
    """Loom's default step: Adam at ``ctx.learning_rate``, no scheduler, the task's loss, bf16 autocast on CUDA and,
    with ``training.step_options: {clip_grad_norm: X}``, gradients clipped to norm X."""

    def __init__(self, ctx: StepContext):
        self.ctx = ctx
        clip = ctx.options.get("clip_grad_norm")
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
            raise ConfigError(f"training.step_options.clip_grad_norm must be a positive number, not {clip!r}")
        self.clip_grad_norm: float | None = None if clip is None else float(clip)

    def configure_optimizers(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer and the learning-rate scheduler (or ``None``) of ``model``'s parameters. Called once per
        run (again after a resume, then their state is restored from the checkpoint)."""
        return torch.optim.Adam(model.parameters(), lr=self.ctx.learning_rate), None

    def forward(self, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The model's output for a batch (also used for validation)."""
        return model(*inputs)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ctx.task.loss(output, target)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context forward and loss run in."""
        return default_autocast(self.ctx.device)

    def step(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], target: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """One optimisation step on one batch; returns the batch's loss, detached."""
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss(self.forward(model, inputs), target)
        loss.backward()
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), self.clip_grad_norm)
        optimizer.step()
        return loss.detach()

    def end_epoch(self, scheduler: Any) -> None:
        """After each epoch's last batch: advance the scheduler, when there is one."""
        if scheduler is not None:
            scheduler.step()


def _parameters(fn: Callable) -> str:
    try:
        return ", ".join(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return "?"


def _takes(fn: Callable, n: int) -> bool:
    """Whether ``fn`` can be called with exactly ``n`` positional arguments (True when it cannot be inspected)."""
    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): let the call decide
        return True
    return True


def load_step(path: str | None) -> Callable[[StepContext], Any]:
    """The step factory ``training.step`` names: :class:`TrainingStep` for ``None``, else the callable at
    ``'module:callable'`` (a class or a function taking the :class:`StepContext`). Raises :class:`ConfigError`."""
    if path is None:
        return TrainingStep
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ConfigError(f"{FIELD} {path!r} must be an import path 'module:callable'")
    try:
        obj: Any = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any error while importing user code is the user's to see
        raise ConfigError(f"{FIELD} {path!r}: cannot import module {module!r}: {type(err).__name__}: {err}") from err
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{FIELD} {path!r}: module {module!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"{FIELD} {path!r} is not callable (it is a {type(obj).__name__}); name a class or a "
                          "function that takes the StepContext")
    if not _takes(obj, 1):
        raise ConfigError(f"{FIELD} {path!r} must take one argument (the StepContext); its parameters are "
                          f"({_parameters(obj)})")
    return obj


def check_step(step: Any, path: str | None = None) -> Any:
    """Raise :class:`ConfigError` unless ``step`` has a callable ``configure_optimizers(model)`` and
    ``step(model, inputs, target, optimizer)``; return it."""
    what = f"{FIELD} {path!r}" if path else FIELD
    for name, params in (("configure_optimizers", "model"), ("step", "model, inputs, target, optimizer")):
        method = getattr(step, name, None)
        if not callable(method):
            raise ConfigError(f"{what} returned a {type(step).__name__} without a {name}({params}) method")
        if not _takes(method, params.count(",") + 1):
            raise ConfigError(f"{what}: {type(step).__name__}.{name} must take ({params}); its parameters are "
                              f"({_parameters(method)})")
    return step


def make_step(path: str | None, ctx: StepContext) -> Any:
    """Load the step ``training.step`` names, call it with ``ctx`` and check what it returns."""
    return check_step(load_step(path)(ctx), path)


def configure(step: Any, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """``step.configure_optimizers(model)`` as ``(optimizer, scheduler or None)`` (an optimizer alone is fine)."""
    out = step.configure_optimizers(model)
    if isinstance(out, torch.optim.Optimizer):
        return out, None
    try:
        optimizer, scheduler = out
    except (TypeError, ValueError):
        optimizer, scheduler = out, None
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"{FIELD}: configure_optimizers returned {type(out).__name__}; expected a "
                          "torch.optim.Optimizer, or (optimizer, scheduler or None)")
    return optimizer, scheduler


def end_epoch(step: Any, scheduler: Any) -> None:
    """``step.end_epoch(scheduler)``, or the default's (advance the scheduler) when the step has none."""
    fn = getattr(step, "end_epoch", None)
    if fn is not None:
        fn(scheduler)
    elif scheduler is not None:
        scheduler.step()


def forward(step: Any, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``step.forward(model, inputs)``, or ``model(*inputs)`` when the step has none."""
    fn = getattr(step, "forward", None)
    return fn(model, inputs) if fn is not None else model(*inputs)


def autocast(step: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """``step.autocast()``, or :func:`default_autocast` when the step has none."""
    fn = getattr(step, "autocast", None)
    return fn() if fn is not None else default_autocast(device)
