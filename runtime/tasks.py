"""What a model learns to predict, and everything that follows from it: the loss, the validation metrics, how labels
become training targets and how the network's outputs become predictions again.

- :class:`Classification`: labels are classes (sorted, index = output position); cross-entropy; accuracy,
  log-loss, ROC AUC (binary) and macro-F1; served as the predicted class plus class probabilities.
- :class:`Regression`: targets are standardized for training (the mean and standard deviation travel with the
  bundle) and restored when serving; mean squared error on the standardized target; RMSE, MAE and R² in the
  label's own units; served as values.

``model.task`` picks one; by default it follows the label's declared type (``float`` -> regression, anything
else -> classification). A task is JSON-serialisable (:meth:`to_dict`), so it travels in the bundle and to the
Ray Train workers. Torch-free at import time except for the tensor-facing methods.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

TaskName = Literal["classification", "regression"]
TASKS: tuple[str, ...] = ("classification", "regression")
#: Declared label types each task accepts.
LABEL_TYPES = {"classification": ("bool", "int", "category", "string"), "regression": ("float", "int")}


def infer_task(label: str, label_type: str) -> tuple[str, str]:
    """The task for a label of this declared type, and the message saying why."""
    task = "regression" if label_type == "float" else "classification"
    return task, (f"model.task is not set: label {label!r} is declared {label_type}, so the task is {task} "
                  "(set model.task to choose)")


def check_label_type(task: str, label: str, label_type: str) -> None:
    """Raise :class:`ConfigError` when a label of this declared type cannot be learnt by ``task``."""
    if task not in TASKS:
        raise ConfigError(f"model.task {task!r} is not a task (use {' or '.join(TASKS)})")
    if label_type not in LABEL_TYPES[task]:
        raise ConfigError(f"model.task is {task} but label {label!r} is declared {label_type}; {task} needs a "
                          f"label of type {' or '.join(LABEL_TYPES[task])}")


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged; NaN when one class is absent."""
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(score).rank().to_numpy()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_f1(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """The unweighted mean of each class's F1 (a class absent from both ``y`` and ``predicted`` is left out)."""
    scores = []
    for c in range(n_classes):
        tp = int(((predicted == c) & (y == c)).sum())
        fp = int(((predicted == c) & (y != c)).sum())
        fn = int(((predicted != c) & (y == c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def regression_metrics(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² (NaN when the target does not vary) of ``predicted`` against ``y``."""
    y = np.asarray(y, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    err = predicted - y
    ss_tot = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
    return {"rmse": float(np.sqrt((err ** 2).mean())) if len(y) else float("nan"),
            "mae": float(np.abs(err).mean()) if len(y) else float("nan"),
            "r2": 1.0 - float((err ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")}


@dataclass
class Classification:
    """Learn one of ``classes`` (label values; index = output position)."""

    classes: list[Any]
    name: str = field(default="classification", init=False)

    @classmethod
    def fit(cls, labels: pd.Series) -> Classification:
        classes = sorted(labels.dropna().unique().tolist())
        if len(classes) < 2:
            raise ValueError(f"label {labels.name!r} has fewer than two classes; nothing to learn")
        return cls(classes)

    @property
    def out_features(self) -> int:
        return len(self.classes)

    @property
    def metric(self) -> str:
        """The validation metric shown while training and compared across versions."""
        return "val_auc" if len(self.classes) == 2 else "val_accuracy"

    def targets(self, labels: pd.Series) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return labels.map(index).to_numpy(np.int64)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(output.float(), target)

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Validation loss (= log-loss), accuracy, log-loss, macro-F1 and, for two classes, ROC AUC."""
        import torch

        logits = output.float()
        loss = float(torch.nn.functional.cross_entropy(logits, target))
        proba = torch.softmax(logits, dim=-1).cpu().numpy()
        y = target.cpu().numpy()
        predicted = proba.argmax(1)
        out = {"val_loss": loss, "val_accuracy": float((predicted == y).mean()), "val_log_loss": loss,
               "val_f1_macro": macro_f1(y, predicted, len(self.classes))}
        if proba.shape[1] == 2:
            out["val_auc"] = roc_auc(y, proba[:, 1])
        return out

    def postprocess(self, output: torch.Tensor) -> np.ndarray:
        """Class probabilities, ``[N, classes]`` float32."""
        import torch

        return torch.softmax(output.float(), dim=-1).numpy()

    def predictions(self, postprocessed: np.ndarray) -> list[Any]:
        """The predicted class of each row."""
        classes = self.classes
        return [classes[i] for i in postprocessed.argmax(axis=1).tolist()]

    def check_label(self, value: Any) -> Any:
        """A feedback label as the class it names, or ``ValueError``."""
        if isinstance(value, (dict, list)):
            raise ValueError(f"{value!r} is not a class")
        for c in self.classes:
            if str(c) == str(value):
                return c
        raise ValueError(f"{value!r} is not a class (classes: {', '.join(map(str, self.classes))})")

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.name, "classes": self.classes}


@dataclass
class Regression:
    """Learn a number: the target is standardized with the training rows' ``mean`` and ``std`` and restored."""

    mean: float
    std: float
    name: str = field(default="regression", init=False)

    @classmethod
    def fit(cls, labels: pd.Series) -> Regression:
        y = labels.dropna().astype("float64")
        if len(y) < 2:
            raise ValueError(f"label {labels.name!r} has fewer than two values; nothing to learn")
        std = float(y.std(ddof=0))
        return cls(mean=float(y.mean()), std=std if std > 0 and math.isfinite(std) else 1.0)

    @property
    def out_features(self) -> int:
        return 1

    @property
    def classes(self) -> list[Any]:
        return []

    @property
    def metric(self) -> str:
        return "val_rmse"

    def targets(self, labels: pd.Series) -> np.ndarray:
        return ((labels.astype("float64").to_numpy() - self.mean) / self.std).astype(np.float32)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.mse_loss(output.float().reshape(-1), target.float().reshape(-1))

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Validation loss (MSE on the standardized target), and RMSE, MAE and R² in the label's units."""
        loss = float(self.loss(output, target))
        values = output.float().reshape(-1).cpu().numpy() * self.std + self.mean
        y = target.float().reshape(-1).cpu().numpy() * self.std + self.mean
        return {"val_loss": loss, **{f"val_{k}": v for k, v in regression_metrics(y, values).items()}}

    def postprocess(self, output: torch.Tensor) -> np.ndarray:
        """The predicted values in the label's units, ``[N]`` float64."""
        return output.float().reshape(len(output), -1)[:, 0].numpy().astype(np.float64) * self.std + self.mean

    def predictions(self, postprocessed: np.ndarray) -> list[Any]:
        return postprocessed.tolist()

    def check_label(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return float(value)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.name, "mean": self.mean, "std": self.std}


Task = Classification | Regression


def fit_task(name: str, labels: pd.Series) -> Task:
    """The task ``name`` fitted to the training labels (its classes, or the target's scaling)."""
    return Classification.fit(labels) if name == "classification" else Regression.fit(labels)


def task_from_dict(d: Mapping[str, Any] | None, classes: Sequence[Any] | None = None) -> Task:
    """Rebuild a task from :meth:`to_dict` (a bundle written before tasks existed has only ``classes``)."""
    if not d or d.get("task", "classification") == "classification":
        return Classification(list(d["classes"] if d and "classes" in d else classes or []))
    if d["task"] == "regression":
        return Regression(mean=float(d["mean"]), std=float(d["std"]))
    raise ValueError(f"unknown task {d.get('task')!r}")
