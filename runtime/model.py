"""Model bundles: the architecture's import path, its constructor arguments, the task (classes, or the target's
scaling), the input preprocessing, the declared inputs (tabular columns and tensors) and the weights as
safetensors. Nothing is ever pickled: loading a bundle imports a class by name and fills its tensors.

A model's ``forward`` takes one positional argument per input group, in order: the encoded tabular matrix
(``[N, in_features]`` float32, when the model has tabular columns), then each tensor input in declared order
(``[N, *shape]``). It returns ``[N, out_features]``: class logits, or one standardized value per row.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import math
import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .artifacts import REFERENCE, SPEC, WEIGHTS
from .config import ColumnSpec
from .errors import ConfigError, LoomError
from .tasks import Classification, Task, task_from_dict

if TYPE_CHECKING:
    from .registry import ModelRegistry, ModelVersion

NUMERIC_TYPES = ("int", "float", "bool")
CATEGORICAL_TYPES = ("category", "string")
#: Open Inference Protocol datatype of each declared column type.
OIP_DATATYPES = {"int": "INT64", "float": "FP64", "bool": "BOOL", "category": "BYTES", "string": "BYTES",
                 "timestamp": "BYTES"}


class TabularMLP(nn.Module):
    """A plain multi-layer perceptron over encoded tabular features, returning ``out_features`` outputs (class
    logits, or one value for regression)."""

    def __init__(self, in_features: int, out_features: int = 2, hidden: list[int] = (64, 32),  # type: ignore[assignment]
                 dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


DEFAULT_ARCHITECTURE = "runtime.model:TabularMLP"
#: Constructor arguments of TabularMLP before it took in_features/out_features (bundles of format loom-model/1).
_LEGACY_KWARGS = {"n_inputs": "in_features", "n_classes": "out_features"}


def legacy_kwargs(architecture: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the built-in MLP's old argument names renamed (a version trained before the rename)."""
    if architecture != DEFAULT_ARCHITECTURE:
        return dict(kwargs)
    return {_LEGACY_KWARGS.get(k, k): v for k, v in kwargs.items()}


def architecture_kwargs(path: str, options: Mapping[str, Any], *, in_features: int | None = None,
                        out_features: int | None = None,
                        input_shapes: Mapping[str, list[int]] | None = None) -> dict[str, Any]:
    """The keyword arguments to build ``path`` with: ``options`` plus whichever of ``in_features``,
    ``out_features`` and ``input_shapes`` its constructor takes (and the options do not set).

    :raises ConfigError: the architecture cannot be imported, or its signature does not fit: the message names
        the missing or unexpected parameter.
    """
    cls = import_architecture(path, field="model.architecture")
    try:
        params = dict(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return dict(options)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs = dict(options)
    given = {"in_features": in_features, "out_features": out_features,
             "input_shapes": dict(input_shapes) if input_shapes else None}
    for name, value in given.items():
        if value is not None and name not in kwargs and (name in named or takes_any):
            kwargs[name] = value
    unexpected = [k for k in kwargs if k not in named and not takes_any]
    if unexpected:
        raise ConfigError(f"model.options: {path} takes no parameter {unexpected[0]!r} "
                          f"(its parameters: {', '.join(named) or 'none'})")
    missing = [n for n, p in named.items() if p.default is p.empty and n not in kwargs]
    if missing:
        hint = ("; Loom passes it only for tabular inputs" if missing[0] == "in_features" and in_features is None
                else "; Loom passes it only for tensor inputs" if missing[0] == "input_shapes" else "")
        raise ConfigError(f"model.options: {path} needs parameter {missing[0]!r}, which model.options does not "
                          f"give{hint}")
    return kwargs


def build_architecture(path: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Instantiate ``path`` with ``kwargs``; a failing constructor is a :class:`ConfigError` naming it."""
    cls = import_architecture(path, field="model.architecture")
    try:
        return cls(**legacy_kwargs(path, kwargs))
    except Exception as err:  # noqa: BLE001 - the user's constructor, named
        raise ConfigError(f"model.architecture {path} cannot be built from model.options "
                          f"{dict(kwargs)!r}: {type(err).__name__}: {err}") from None


def import_architecture(path: str, *, field: str = "architecture") -> type[nn.Module]:
    """Import ``module:Class`` and check that it is a ``torch.nn.Module`` subclass."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ConfigError(f"{field} {path!r} must be an import path 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import {field} {path!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"{field} {path!r} is not a torch.nn.Module subclass")
    return cls


# -- what a served version may be --------------------------------------------------------------------------------

#: Longest safetensors header read (the format's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000


def check_architecture(path: str, allowed: Collection[str] | None) -> None:
    """Refuse an architecture import path that is not on the allow-list, before anything is imported.

    :raises ConfigError: naming the architecture and ``serving.allowed_architectures``.
    """
    if not isinstance(path, str):
        raise ConfigError(f"architecture must be an import path 'module:Class', got {path!r:.80}")
    if allowed is not None and path not in allowed:
        raise ConfigError(f"architecture {path!r} is not allowed to be served: add it to "
                          f"serving.allowed_architectures (allowed: {', '.join(sorted(allowed)) or 'none'})")


def parameter_count(weights: bytes) -> int:
    """Elements of all tensors in a safetensors file, read from its header only (8 bytes little-endian length,
    then JSON): no tensor is decoded.

    :raises LoomError: the bytes are not a safetensors file.
    """
    if len(weights) < 8:
        raise LoomError("model weights are not a safetensors file (shorter than its header)")
    (size,) = struct.unpack("<Q", weights[:8])
    if size > min(MAX_HEADER_BYTES, len(weights) - 8):
        raise LoomError(f"model weights are not a safetensors file (header of {size} bytes)")
    try:
        header = json.loads(weights[8:8 + size])
        return sum(math.prod(int(d) for d in t["shape"]) for k, t in header.items() if k != "__metadata__")
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise LoomError(f"model weights have an unreadable safetensors header: {err}") from None


def check_parameters(count: int, max_parameters: int | None) -> None:
    """Refuse a version with more parameters than ``max_parameters``, before its module is constructed.

    :raises ConfigError: naming the count, the limit and ``serving.max_parameters``.
    """
    if max_parameters is not None and count > max_parameters:
        raise ConfigError(f"model has {count:,} parameters, more than serving.max_parameters ({max_parameters:,})")


def _is_plain(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= 32:
        return False
    if isinstance(value, list):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def check_options(kwargs: Mapping[str, Any]) -> None:
    """Every constructor option stored with a version is plain JSON (str, int, float, bool, None, lists and
    objects of those), so building a version never hands its constructor anything but data.

    :raises ConfigError: naming the first option that is not.
    """
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"model constructor options must be a JSON object, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not _is_plain(value):
            raise ConfigError(f"model constructor option {key!r} is not plain JSON: {value!r:.80}")


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

    @classmethod
    def passthrough(cls, columns: Mapping[str, ColumnSpec]) -> Preprocessor:
        """The encoding of a model Loom did not train (an imported one): numeric columns (int, float, bool) as
        they are, in declared order, a missing value as NaN; then each category column one-hot over its declared
        ``categories``. Other column types have no encoding without training data.

        :raises ConfigError: naming a column that cannot be encoded.
        """
        numeric, categorical = [], {}
        for c, s in columns.items():
            if s.type in NUMERIC_TYPES:
                numeric.append(c)
            elif s.type == "category" and s.categories:
                categorical[c] = list(s.categories)
            else:
                need = "declared `categories`" if s.type == "category" else "a number, a category or a tensor"
                raise ConfigError(f"input {c!r} ({s.type}) cannot be encoded for an imported model: it needs {need} "
                                  "(docs/models.md, 'Imported models')")
        n = len(numeric)
        return cls(numeric=numeric, categorical=categorical, medians=[math.nan] * n, means=[0.0] * n, stds=[1.0] * n)

    def to_dict(self) -> dict[str, Any]:
        # a NaN median (no imputation: a passthrough encoding) is written as null, so model.json stays plain JSON
        return {"numeric": self.numeric, "categorical": self.categorical,
                "medians": [None if math.isnan(m) else m for m in self.medians], "means": self.means,
                "stds": self.stds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessor:
        return cls(**{**d, "medians": [math.nan if m is None else m for m in d.get("medians", [])]})


@dataclass
class ModelBundle:
    """Everything needed to rebuild a trained model without pickle."""

    architecture: str
    kwargs: dict[str, Any]
    preprocessor: Preprocessor
    inputs: dict[str, dict[str, Any]]  # input name -> its declared ColumnSpec (tabular) or tensor spec, as a dict
    label: str
    state_dict: dict[str, torch.Tensor]
    classes: list[Any] = field(default_factory=list)  # label values, index = output position (classification)
    task: Task | None = None  # default: classification over ``classes``

    def __post_init__(self) -> None:
        if self.task is None:
            self.task = Classification(list(self.classes))
        self.classes = list(self.task.classes)

    @property
    def tensors(self) -> dict[str, dict[str, Any]]:
        """The tensor inputs, in declared order."""
        return {n: s for n, s in self.inputs.items() if s.get("type") == "tensor"}

    def to_artifacts(self) -> dict[str, bytes]:
        assert self.task is not None
        spec = {"format": "loom-model/2", "architecture": self.architecture, "kwargs": self.kwargs,
                "task": self.task.to_dict(), "preprocessor": self.preprocessor.to_dict(), "classes": self.classes,
                "inputs": self.inputs, "label": self.label}
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()}
        return {WEIGHTS: st_save(weights), SPEC: json.dumps(spec, indent=2).encode()}

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, bytes], *, allowed: Collection[str] | None = None,
                       max_parameters: int | None = None) -> ModelBundle:
        """Read a bundle from its artifacts. With ``allowed`` and ``max_parameters`` (what a server may load), the
        architecture, the constructor options and the parameter count are checked before any tensor is decoded
        (see :meth:`build`)."""
        try:
            spec = json.loads(artifacts[SPEC])
            raw = artifacts[WEIGHTS]
        except KeyError as err:
            fmt = spec_format(artifacts[SPEC]) if SPEC in artifacts else TORCH
            if fmt != TORCH:
                raise LoomError(f"model version is a {fmt!r} model, not a torch bundle: load it with "
                                "runtime.formats.load_model") from None
            raise LoomError(f"model version is missing artifact {err.args[0]!r}") from None
        return cls.from_spec(spec, raw, allowed=allowed, max_parameters=max_parameters)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], weights: bytes, *, allowed: Collection[str] | None = None,
                  max_parameters: int | None = None) -> ModelBundle:
        """A bundle from its parsed spec (``model.json``) and its safetensors weights, checked as
        :meth:`from_artifacts` says.

        :raises LoomError: the weights are not a safetensors file.
        """
        check_architecture(spec["architecture"], allowed)
        check_options(spec["kwargs"])
        count = parameter_count(weights)  # also the check that these are safetensors, before decoding any tensor
        if max_parameters is not None:
            check_parameters(count, max_parameters)
        try:
            state_dict = st_load(weights)
        except Exception as err:  # noqa: BLE001 - safetensors' own error types
            raise LoomError(f"model weights are not a readable safetensors file: {err}") from None
        return cls(architecture=spec["architecture"], kwargs=legacy_kwargs(spec["architecture"], spec["kwargs"]),
                   preprocessor=Preprocessor.from_dict(spec["preprocessor"]),
                   task=task_from_dict(spec.get("task"), spec.get("classes")), inputs=spec["inputs"],
                   label=spec["label"], state_dict=state_dict)

    @classmethod
    def from_registry(cls, registry: ModelRegistry, name: str, version: int, *,
                      allowed: Collection[str] | None = None, max_parameters: int | None = None) -> ModelBundle:
        """Read version ``version`` of model ``name`` from a registry plugin (its spec and weights), checked as
        :meth:`from_artifacts` says."""
        spec = registry.read_artifact(name, version, SPEC)
        fmt = spec_format(spec)
        if fmt != TORCH:  # before reading weights it does not have
            raise LoomError(f"model {name!r} v{version} is a {fmt!r} model, not a torch bundle: load it with "
                            "runtime.formats.load_model")
        return cls.from_artifacts({SPEC: spec, WEIGHTS: registry.read_artifact(name, version, WEIGHTS)},
                                  allowed=allowed, max_parameters=max_parameters)

    @property
    def parameters(self) -> int:
        """Elements of all weight tensors."""
        return sum(math.prod(t.shape) for t in self.state_dict.values())

    def build(self, *, allowed: Collection[str] | None = None, max_parameters: int | None = None) -> nn.Module:
        """Instantiate the architecture and load the weights (strictly: every tensor must match).

        What a server loads is checked first: ``allowed`` (import paths ``module:Class``; see
        ``ServingConfig.architectures``) before the architecture is imported, then that the constructor options
        are plain JSON, and ``max_parameters`` before the module is constructed.

        :raises ConfigError: the architecture is not allowed, an option is not plain JSON, or the version has too
            many parameters.
        """
        if allowed is not None or max_parameters is not None:
            check_architecture(self.architecture, allowed)
            check_options(self.kwargs)
            check_parameters(self.parameters, max_parameters)
        model = build_architecture(self.architecture, self.kwargs)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()

    def model_inputs(self, cols: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        """The forward pass's arguments for a mapping of input -> values (a DataFrame works): see
        :func:`encode_inputs`."""
        return encode_inputs(self.preprocessor, self.tensors, cols)


def encode_inputs(preprocessor: Preprocessor, tensors: Mapping[str, Mapping[str, Any]],
                  cols: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """A network's positional arguments for a mapping of input -> values (a DataFrame works), whatever its format:
    the encoded tabular matrix ``[N, n_features]`` float32, when there are tabular columns, then each tensor input
    as ``[N, *shape]`` of its declared dtype."""
    out: list[np.ndarray] = []
    if preprocessor.input_columns:
        out.append(preprocessor.transform(cols))
    for name, spec in tensors.items():
        out.append(tensor_array(cols[name], spec))
    return tuple(out)


#: The built-in model format: safetensors weights and the architecture's import path (``model.json`` without a
#: ``model_format`` is one).
TORCH = "torch"


def spec_format(spec: bytes | Mapping[str, Any]) -> str:
    """The model format a version's ``model.json`` names (``torch`` when it names none).

    :raises LoomError: the spec is not a JSON object.
    """
    if isinstance(spec, (bytes, str)):
        try:
            spec = json.loads(spec)
        except ValueError as err:
            raise LoomError(f"model.json is not JSON: {err}") from None
    if not isinstance(spec, Mapping):
        raise LoomError("model.json is not a JSON object")
    fmt = spec.get("model_format", TORCH)
    if not isinstance(fmt, str):
        raise LoomError(f"model.json names model_format {fmt!r:.40}, not a name")
    return fmt.lower()


#: The numpy type of each tensor dtype (BF16 is served as float32).
TENSOR_NUMPY = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BF16": np.float32, "INT8": np.int8,
                "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16,
                "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_}


def tensor_array(values: Any, spec: Mapping[str, Any]) -> np.ndarray:
    """A tensor input's rows as one ``[N, *shape]`` array of its declared dtype (from an array, or a sequence of
    per-row arrays or nested lists)."""
    dtype = TENSOR_NUMPY[spec.get("dtype") or "FP32"]
    if isinstance(values, np.ndarray) and values.dtype != object:
        arr = values
    else:
        rows = list(values)
        arr = (np.stack([np.asarray(r, dtype=dtype) for r in rows]) if rows
               else np.empty((0, *spec["shape"]), dtype=dtype))
    return np.ascontiguousarray(arr.reshape(len(arr), *spec["shape"]), dtype=dtype)


def read_reference(registry: ModelRegistry, version: ModelVersion) -> pd.DataFrame | None:
    """A version's reference sample (training rows with the model's predictions), ``None`` when it has none."""
    if REFERENCE not in version.artifacts:
        return None
    return pd.read_parquet(io.BytesIO(registry.read_artifact(version.name, version.version, REFERENCE)))


class Predictor:
    """A loaded model ready to answer: encode, forward, the task's outputs. Thread-safe for inference."""

    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.model = bundle.build()
        self.inputs = bundle.inputs
        self.task = bundle.task
        self.classes = bundle.classes

    @torch.inference_mode()
    def outputs(self, cols: Mapping[str, Any]) -> np.ndarray:
        """Class probabilities ``[N, classes]`` (classification) or values ``[N]`` (regression)."""
        assert self.task is not None
        x = tuple(torch.from_numpy(a) for a in self.bundle.model_inputs(cols))
        return self.task.postprocess(self.model(*x))

    def predict_proba(self, cols: Mapping[str, Any]) -> np.ndarray:
        return self.outputs(cols)

    def predict(self, cols: Mapping[str, Any]) -> tuple[list[Any], np.ndarray]:
        """The predictions (classes or values) and the task's outputs they come from."""
        assert self.task is not None
        out = self.outputs(cols)
        return self.task.predictions(out), out
