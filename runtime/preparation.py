"""Preparing a training run: the task (classes, or the target's scaling), the time-ordered split, the fitted
preprocessing, the encoded arrays the Ray Train workers read, the architecture's arguments (checked against its
constructor) and the run's params; and, once trained, the bundle and the reference sample that drift checks
compare served traffic with. The pipeline calls these; nothing here needs Ray, and every check of the project's
model settings happens here, before any Ray work starts."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import ColumnSpec, Project
from .features import FeatureService
from .model import DEFAULT_ARCHITECTURE, ModelBundle, Predictor, Preprocessor, architecture_kwargs, \
    build_architecture
from .tasks import Task, check_label_type, fit_task, infer_task


@dataclass
class Prepared:
    """What a training run starts from."""

    train: pd.DataFrame
    validation: pd.DataFrame
    schema: dict[str, ColumnSpec]
    preprocessor: Preprocessor
    task: Task
    arrays: dict[str, Any]
    kwargs: dict[str, Any]
    """The architecture's constructor arguments."""
    params: dict[str, Any]
    """What the run records as its parameters."""
    label: str

    def training_config(self, project: Project) -> dict[str, Any]:
        """The per-worker loop's configuration (:func:`runtime.training.run_training`)."""
        t, m = project.config.training, project.config.model
        return {"architecture": m.architecture, "kwargs": self.kwargs, "epochs": t.epochs,
                "batch_size": t.batch_size, "learning_rate": t.learning_rate, "seed": t.seed,
                "task": self.task.to_dict(), "step": t.step, "step_options": dict(t.step_options)}

    def bundle(self, project: Project, state_dict: dict[str, torch.Tensor]) -> ModelBundle:
        """The trained model as a bundle: import path, arguments, preprocessing, classes, inputs and weights."""
        return ModelBundle(architecture=project.config.model.architecture, kwargs=self.kwargs,
                           preprocessor=self.preprocessor, task=self.task,
                           inputs={c: s.model_dump(exclude_none=True) for c, s in self.schema.items()},
                           label=self.label, state_dict=state_dict)


def task_of(project: Project) -> str:
    """``model.task``, else the task the label's declared type implies (said on the console by the caller)."""
    cfg = project.config
    label_type = cfg.data.columns[cfg.data.label].type
    task = cfg.model.task or infer_task(cfg.data.label, label_type)[0]
    check_label_type(task, cfg.data.label, label_type)
    return task


def architecture_options(project: Project) -> dict[str, Any]:
    """``model.options``; for the built-in MLP, ``model.hidden`` and ``model.dropout`` are its defaults."""
    m = project.config.model
    if m.architecture == DEFAULT_ARCHITECTURE:
        return {"hidden": list(m.hidden), "dropout": m.dropout, **m.options}
    return dict(m.options)


def prepare(project: Project, frame: pd.DataFrame, service: FeatureService) -> Prepared:
    """Split ``frame`` (labels joined point-in-time with the service's features, and any tensor inputs) by time,
    the latest ``training.validation_fraction`` held out; fit the task and the preprocessing on the training part
    only; encode both; check that the architecture builds from its options."""
    cfg = project.config
    d, t, m = cfg.data, cfg.training, cfg.model
    task_name = task_of(project)
    frame = frame.sort_values(d.timestamp, kind="stable").reset_index(drop=True)
    frame = frame[frame[d.label].notna()]
    n_val = max(1, int(len(frame) * t.validation_fraction))
    train_df, val_df = frame.iloc[:-n_val], frame.iloc[-n_val:]
    names = [*service.features, *d.tensor_columns]
    schema = {c: d.columns[c] if c in d.columns else cfg.feature_definitions.columns[c] for c in names}
    tabular = {c: s for c, s in schema.items() if s.type != "tensor"}
    pre = Preprocessor.fit(train_df, tabular)
    task = fit_task(task_name, train_df[d.label])
    shapes = {c: list(s.shape or []) for c, s in schema.items() if s.type == "tensor"}
    kwargs = architecture_kwargs(m.architecture, architecture_options(project),
                                 in_features=pre.n_features if tabular else None, out_features=task.out_features,
                                 input_shapes=shapes or None)
    build_architecture(m.architecture, kwargs)  # fails here, with the field named, rather than on a Ray worker
    bundle_inputs = {c: s.model_dump(exclude_none=True) for c, s in schema.items()}

    def encode(part: pd.DataFrame) -> list[np.ndarray]:
        probe = ModelBundle(architecture=m.architecture, kwargs=kwargs, preprocessor=pre, inputs=bundle_inputs,
                            label=d.label, state_dict={}, task=task)
        return list(probe.model_inputs(part))

    x_train, x_val = encode(train_df), encode(val_df)
    arrays = {"x_train": x_train[0] if len(x_train) == 1 else x_train, "y_train": task.targets(train_df[d.label]),
              "x_val": x_val[0] if len(x_val) == 1 else x_val, "y_val": task.targets(val_df[d.label])}
    params = {"architecture": m.architecture, "task": task.name, **kwargs, "epochs": t.epochs,
              "batch_size": t.batch_size, "learning_rate": t.learning_rate, "workers": t.workers, "seed": t.seed}
    if t.step:
        params["step"] = t.step
    return Prepared(train=train_df, validation=val_df, schema=schema, preprocessor=pre, task=task,
                    arrays=arrays, kwargs=kwargs, params=params, label=d.label)


def reference_sample(project: Project, prepared: Prepared, bundle: ModelBundle) -> bytes:
    """Up to ``monitoring.reference_rows`` training rows with the trained model's predictions on them (the
    baseline of data and prediction drift checks), as Parquet."""
    cfg = project.config
    train_df = prepared.train
    reference = train_df[list(prepared.schema)].sample(min(len(train_df), cfg.monitoring.reference_rows),
                                                       random_state=cfg.training.seed)
    reference = reference.assign(prediction=Predictor(bundle).predict(reference)[0])
    reference = summarize_tensors(reference, bundle.tensors)
    buf = io.BytesIO()
    reference.reset_index(drop=True).to_parquet(buf, index=False)
    return buf.getvalue()


def summarize_tensors(frame: pd.DataFrame, tensors: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Tensor input columns replaced by their per-row summary statistics (``<input>.mean``, ``.std``, ``.min``,
    ``.max``): what drift checks compare for a tensor input."""
    if not tensors:
        return frame
    from .model import tensor_array
    from .monitoring import tensor_summary

    out = frame.drop(columns=list(tensors))
    for name, spec in tensors.items():
        for stat, values in tensor_summary(name, tensor_array(frame[name], spec)).items():
            out[stat] = values
    return out
