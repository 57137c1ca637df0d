"""Helpers for the serving tests: a quickstart project whose registry holds real model versions, registered
without Ray (a few hundred in-process training steps each), and request builders for its schema."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from runtime import get_plugins, load_project
from runtime.artifacts import REFERENCE
from runtime.model import ModelBundle, Preprocessor, TabularMLP

FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "paperless_billing", "contract",
            "internet_service", "payment_method"]
OIP_TYPES = {"tenure_months": "INT64", "support_calls": "INT64", "monthly_charges": "FP64",
             "total_charges": "FP64", "paperless_billing": "BOOL"}


def registry(root: Path):
    project = load_project(root)
    r = project.config.registry
    return get_plugins(modules=project.config.plugins).registry(r.kind, state_dir=project.state_dir,
                                                                options=r.options, storage=project.storage)


def data(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "data" / "customers.csv")


def register_version(root: Path, *, seed: int, hidden: tuple[int, ...] = (16,), steps: int = 200,
                     alias: str | None = "production", name: str | None = None) -> int:
    """Train a small MLP on the project's data in-process and register it (as ``name``, default the project's
    model); return the version number."""
    project = load_project(root)
    cfg = project.config
    df = data(root).dropna(subset=[cfg.data.label])
    schema = {c: cfg.data.columns[c] for c in FEATURES}
    pre = Preprocessor.fit(df, schema)
    classes = sorted(df[cfg.data.label].unique().tolist())
    x = torch.from_numpy(pre.transform(df))
    y = torch.from_numpy(df[cfg.data.label].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64))
    torch.manual_seed(seed)
    kwargs = {"in_features": pre.n_features, "hidden": list(hidden), "out_features": len(classes), "dropout": 0.0}
    model = TabularMLP(**kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    bundle = ModelBundle(architecture="runtime.model:TabularMLP", kwargs=kwargs, preprocessor=pre, classes=classes,
                         inputs={c: s.model_dump(exclude_none=True) for c, s in schema.items()},
                         label=cfg.data.label, state_dict=model.state_dict())
    artifacts = bundle.to_artifacts()
    buf = io.BytesIO()
    df[FEATURES].sample(500, random_state=seed).reset_index(drop=True).to_parquet(buf, index=False)
    artifacts[REFERENCE] = buf.getvalue()
    mv = registry(root).register(name or cfg.model.name, artifacts, params={"seed": seed}, alias=alias)
    return mv.version


def records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df[FEATURES].to_json(orient="records"))


def oip_inputs(df: pd.DataFrame) -> list[dict]:
    out = []
    for c in FEATURES:
        values = json.loads(df[c].to_json(orient="values"))
        out.append({"name": c, "datatype": OIP_TYPES.get(c, "BYTES"), "shape": [len(df)], "data": values})
    return out
