"""Preparing a training run: the time-ordered split, the fitted preprocessing, the label classes, the encoded arrays
the Ray Train workers read, the architecture's arguments and the run's params; and, once trained, the bundle and
the reference sample that drift checks compare served traffic with. The pipeline calls these; nothing here needs
Ray."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import ColumnSpec, Project
from .features import FeatureService
from .model import ModelBundle, Predictor, Preprocessor


@dataclass
class Prepared:
    """What a training run starts from."""

    train: pd.DataFrame
    validation: pd.DataFrame
    schema: dict[str, ColumnSpec]
    preprocessor: Preprocessor
    classes: list[Any]
    arrays: dict[str, np.ndarray]
    kwargs: dict[str, Any]
    """The architecture's constructor arguments."""
    params: dict[str, Any]
    """What the run records as its parameters."""
    label: str

    def training_config(self, project: Project) -> dict[str, Any]:
        """The per-worker loop's configuration (:func:`runtime.training.run_training`)."""
        t, m = project.config.training, project.config.model
        return {"architecture": m.architecture, "kwargs": self.kwargs, "epochs": t.epochs,
                "batch_size": t.batch_size, "learning_rate": t.learning_rate, "seed": t.seed}

    def bundle(self, project: Project, state_dict: dict[str, torch.Tensor]) -> ModelBundle:
        """The trained model as a bundle: import path, arguments, preprocessing, classes, inputs and weights."""
        return ModelBundle(architecture=project.config.model.architecture, kwargs=self.kwargs,
                           preprocessor=self.preprocessor, classes=self.classes,
                           inputs={c: s.model_dump(exclude_none=True) for c, s in self.schema.items()},
                           label=self.label, state_dict=state_dict)


def prepare(project: Project, frame: pd.DataFrame, service: FeatureService) -> Prepared:
    """Split ``frame`` (labels joined point-in-time with the service's features) by time, the latest
    ``training.validation_fraction`` held out; fit the preprocessing on the training part only; encode both."""
    cfg = project.config
    d, t, m = cfg.data, cfg.training, cfg.model
    frame = frame.sort_values(d.timestamp, kind="stable").reset_index(drop=True)
    frame = frame[frame[d.label].notna()]
    n_val = max(1, int(len(frame) * t.validation_fraction))
    train_df, val_df = frame.iloc[:-n_val], frame.iloc[-n_val:]
    schema = {c: cfg.feature_definitions.columns[c] for c in service.features}
    pre = Preprocessor.fit(train_df, schema)
    classes = sorted(frame[d.label].dropna().unique().tolist())
    if len(classes) < 2:
        raise ValueError(f"label {d.label!r} has fewer than two classes; nothing to learn")
    index = {c: i for i, c in enumerate(classes)}
    arrays = {
        "x_train": pre.transform(train_df), "y_train": train_df[d.label].map(index).to_numpy(np.int64),
        "x_val": pre.transform(val_df), "y_val": val_df[d.label].map(index).to_numpy(np.int64),
    }
    kwargs = {"n_inputs": pre.n_features, "hidden": list(m.hidden), "n_classes": len(classes), "dropout": m.dropout}
    params = {"architecture": m.architecture, **kwargs, "epochs": t.epochs, "batch_size": t.batch_size,
              "learning_rate": t.learning_rate, "workers": t.workers, "seed": t.seed}
    return Prepared(train=train_df, validation=val_df, schema=schema, preprocessor=pre, classes=classes,
                    arrays=arrays, kwargs=kwargs, params=params, label=d.label)


def reference_sample(project: Project, prepared: Prepared, bundle: ModelBundle) -> bytes:
    """Up to ``monitoring.reference_rows`` training rows with the trained model's predictions on them (the
    baseline of data and prediction drift checks), as Parquet."""
    cfg = project.config
    train_df = prepared.train
    reference = train_df[list(prepared.schema)].sample(min(len(train_df), cfg.monitoring.reference_rows),
                                                       random_state=cfg.training.seed)
    reference = reference.assign(prediction=Predictor(bundle).predict(reference)[0])
    buf = io.BytesIO()
    reference.reset_index(drop=True).to_parquet(buf, index=False)
    return buf.getvalue()
