"""Model bundles: the architecture's import path, its constructor arguments, the input preprocessing and the
weights as safetensors. Nothing is ever pickled: loading a bundle imports a class by name and fills its tensors.
"""

from __future__ import annotations

import importlib
import io
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .artifacts import MODEL_ARTIFACTS, REFERENCE, SPEC, WEIGHTS
from .config import ColumnSpec
from .errors import LoomError

if TYPE_CHECKING:
    from .registry import ModelRegistry, ModelVersion

NUMERIC_TYPES = ("int", "float", "bool")
CATEGORICAL_TYPES = ("category", "string")
#: Open Inference Protocol datatype of each declared column type.
OIP_DATATYPES = {"int": "INT64", "float": "FP64", "bool": "BOOL", "category": "BYTES", "string": "BYTES",
                 "timestamp": "BYTES"}


class TabularMLP(nn.Module):
    """A plain multi-layer perceptron over encoded tabular features, returning class logits."""

    def __init__(self, n_inputs: int, hidden: list[int], n_classes: int = 2, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def import_architecture(path: str) -> type[nn.Module]:
    """Import ``module:Class`` and check that it is a ``torch.nn.Module`` subclass."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise LoomError(f"architecture {path!r} must be an import path 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise LoomError(f"cannot import architecture {path!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise LoomError(f"architecture {path!r} is not a torch.nn.Module subclass")
    return cls


@dataclass
class Preprocessor:
    """Turns declared feature columns into a float32 matrix: numeric columns are imputed with the training median
    and standardised; categorical columns are one-hot encoded over the categories seen in training (unknown
    categories encode as all zeros). JSON-serialisable, so it travels with the model version."""

    numeric: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    medians: list[float] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, df: pd.DataFrame, columns: Mapping[str, ColumnSpec]) -> Preprocessor:
        numeric = [c for c, s in columns.items() if s.type in NUMERIC_TYPES]
        categorical = {}
        for c, s in columns.items():
            if s.type in CATEGORICAL_TYPES:
                seen = sorted(str(v) for v in df[c].dropna().unique())
                categorical[c] = list(s.categories) if s.categories else seen
        num = df[numeric].astype("float64") if numeric else pd.DataFrame(index=df.index)
        medians = num.median().fillna(0.0)
        filled = num.fillna(medians)
        stds = filled.std(ddof=0).replace(0, 1.0).fillna(1.0)
        return cls(numeric=numeric, categorical=categorical, medians=medians.tolist(),
                   means=filled.mean().fillna(0.0).tolist(), stds=stds.tolist())

    @property
    def n_features(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.categorical.values())

    @property
    def input_columns(self) -> list[str]:
        return self.numeric + list(self.categorical)

    def transform(self, cols: Mapping[str, Any]) -> np.ndarray:
        """Encode a mapping of column -> array-like (a DataFrame works) into a float32 matrix."""
        n = len(cols[self.input_columns[0]]) if self.input_columns else 0
        out = np.empty((n, self.n_features), dtype=np.float32)
        for j, c in enumerate(self.numeric):
            col = pd.Series(cols[c]).astype("Float64").to_numpy(dtype="float64", na_value=np.nan)
            col = np.where(np.isnan(col), self.medians[j], col)
            out[:, j] = (col - self.means[j]) / self.stds[j]
        j = len(self.numeric)
        for c, cats in self.categorical.items():
            values = np.asarray(pd.Series(cols[c]).astype(object).where(pd.notna(cols[c]), None), dtype=object)
            out[:, j:j + len(cats)] = values[:, None] == np.asarray(cats, dtype=object)[None, :]
            j += len(cats)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "categorical": self.categorical, "medians": self.medians,
                "means": self.means, "stds": self.stds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessor:
        return cls(**d)


@dataclass
class ModelBundle:
    """Everything needed to rebuild a trained model without pickle."""

    architecture: str
    kwargs: dict[str, Any]
    preprocessor: Preprocessor
    classes: list[Any]  # label values, index = output position
    inputs: dict[str, dict[str, Any]]  # feature column -> its declared ColumnSpec, as a dict
    label: str
    state_dict: dict[str, torch.Tensor]

    def to_artifacts(self) -> dict[str, bytes]:
        spec = {"format": "loom-model/1", "architecture": self.architecture, "kwargs": self.kwargs,
                "preprocessor": self.preprocessor.to_dict(), "classes": self.classes, "inputs": self.inputs,
                "label": self.label}
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()}
        return {WEIGHTS: st_save(weights), SPEC: json.dumps(spec, indent=2).encode()}

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, bytes]) -> ModelBundle:
        try:
            spec = json.loads(artifacts[SPEC])
            weights = st_load(artifacts[WEIGHTS])
        except KeyError as err:
            raise LoomError(f"model version is missing artifact {err.args[0]!r}") from None
        return cls(architecture=spec["architecture"], kwargs=spec["kwargs"],
                   preprocessor=Preprocessor.from_dict(spec["preprocessor"]), classes=spec["classes"],
                   inputs=spec["inputs"], label=spec["label"], state_dict=weights)

    @classmethod
    def from_registry(cls, registry: ModelRegistry, name: str, version: int) -> ModelBundle:
        """Read version ``version`` of model ``name`` from a registry plugin (its spec and weights)."""
        return cls.from_artifacts({a: registry.read_artifact(name, version, a) for a in MODEL_ARTIFACTS})

    def build(self) -> nn.Module:
        """Instantiate the architecture and load the weights (strictly: every tensor must match)."""
        model = import_architecture(self.architecture)(**self.kwargs)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()


def read_reference(registry: ModelRegistry, version: ModelVersion) -> pd.DataFrame | None:
    """A version's reference sample (training rows with the model's predictions), ``None`` when it has none."""
    if REFERENCE not in version.artifacts:
        return None
    return pd.read_parquet(io.BytesIO(registry.read_artifact(version.name, version.version, REFERENCE)))


class Predictor:
    """A loaded model ready to answer: encode, forward, softmax. Thread-safe for inference."""

    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.model = bundle.build()
        self.inputs = bundle.inputs
        self.classes = bundle.classes

    @torch.inference_mode()
    def predict_proba(self, cols: Mapping[str, Any]) -> np.ndarray:
        x = torch.from_numpy(self.bundle.preprocessor.transform(cols))
        return torch.softmax(self.model(x), dim=-1).numpy()

    def predict(self, cols: Mapping[str, Any]) -> tuple[list[Any], np.ndarray]:
        proba = self.predict_proba(cols)
        return [self.classes[i] for i in proba.argmax(axis=1)], proba
