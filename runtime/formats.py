"""Model formats: how a version's network is stored and loaded, whichever tool made it, and the import of a model
Loom did not train.

A version is two things. Loom owns its *encoding*, in ``model.json``: the declared inputs, the preprocessing, the
task and its classes; that is what every route decodes and validates against, what capture keeps and what drift
compares. A *format* owns the *network*: what runs on the encoded batch (the tabular matrix, then each tensor
input) and returns the raw outputs (class logits, or one value per row). ``torch`` is built in (safetensors weights
and the architecture's import path); plugins add others with ``loom_register_model_formats`` (``onnx`` is
first-party). So batching, capture, drift, shadows and canaries work unchanged for every format.

:func:`load_model` is the one way to load a version (serving replicas and batch scoring use it);
:func:`import_model` registers a model file as a new version (``loom models import``).
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
import yaml

from .artifacts import REFERENCE, SPEC, WEIGHTS
from .config import ColumnSpec, Project
from .errors import ConfigError, LoomError, PluginError
from .model import (
    TENSOR_NUMPY,
    TORCH,
    ModelBundle,
    Preprocessor,
    architecture_kwargs,
    encode_inputs,
    spec_format,
    tensor_array,
)
from .monitoring import tensor_summary
from .names import check_name
from .registry import FORBIDDEN_ARTIFACT_SUFFIXES
from .tasks import Classification, Regression, Task, check_label_type, infer_task, task_from_dict
from .validation import validate_frame

if TYPE_CHECKING:
    from .plugins import Plugins
    from .registry import ModelRegistry, ModelVersion

HOOK = "loom_register_model_formats"

#: A version's network: its positional inputs (the encoded tabular matrix ``[N, n_features]`` float32 when it has
#: tabular inputs, then each tensor input ``[N, *shape]`` in declared order) -> its raw outputs ``[N, outputs]``
#: (class logits, or one value per row in the label's units divided by the task's scaling). Thread-safe.
Network = Callable[[tuple[np.ndarray, ...]], np.ndarray]

#: What a pickle looks like at the start of a file: protocol 2+ (``\x80``), or the zip archive of ``torch.save``.
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


@dataclass(frozen=True)
class LoadLimits:
    """What a loaded version may be (``serving.allowed_architectures``, ``serving.max_parameters``); ``None``: no
    limit. Formats check them before building anything."""

    allowed: frozenset[str] | None = None
    """Architecture import paths a ``torch`` version may name."""
    max_parameters: int | None = None
    """Most parameters (weight elements) a version may have, counted without building it."""

    @classmethod
    def of(cls, project: Project) -> LoadLimits:
        """The limits of what ``project`` serves."""
        serving = project.config.serving
        return cls(allowed=serving.architectures(project.config.model), max_parameters=serving.max_parameters)


@runtime_checkable
class ModelFormat(Protocol):
    """Built by ``factory()`` registered with ``loom_register_model_formats``."""

    artifacts: tuple[str, ...]
    """The artifacts a version of this format holds next to ``model.json`` (e.g. ``("model.onnx",)``); the first is
    what ``loom models import`` stores the given file as."""

    def inputs(self, files: Mapping[str, bytes]) -> list[dict[str, Any]] | None:
        """The network's own declared inputs, in order, as ``{"name", "dtype", "shape"}`` (``dtype`` an Open
        Inference Protocol name such as ``FP32`` or ``None`` when it has none; ``shape`` the full shape, ``None``
        for a dynamic dimension), or ``None`` when the format does not declare them. Read without running anything.

        :raises LoomError: the files are not of this format.
        """
        ...

    def load(self, files: Mapping[str, bytes], spec: Mapping[str, Any], limits: LoadLimits) -> Network:
        """The network of a version: ``files`` are its :attr:`artifacts`, ``spec`` its ``model.json``.

        :raises LoomError: the files are not of this format.
        :raises ConfigError: the version is beyond ``limits`` (checked before anything is built).
        """
        ...


class TorchNetwork:
    """A ``torch.nn.Module`` as a :data:`Network`: numpy in, numpy out, in inference mode."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    @torch.inference_mode()
    def __call__(self, x: tuple[np.ndarray, ...]) -> np.ndarray:
        return self.module(*map(torch.from_numpy, x)).float().numpy()


class TorchFormat:
    """The built-in format: ``model.safetensors`` plus ``architecture`` and ``kwargs`` in ``model.json``. The
    architecture must be allowed and the parameter count within the limit (from the safetensors header) before the
    architecture is imported or built; nothing is unpickled."""

    artifacts = (WEIGHTS,)

    def inputs(self, files: Mapping[str, bytes]) -> list[dict[str, Any]] | None:
        from .model import parameter_count

        parameter_count(files[WEIGHTS])  # the check that the file is safetensors
        return None

    def load(self, files: Mapping[str, bytes], spec: Mapping[str, Any], limits: LoadLimits) -> Network:
        bundle = ModelBundle.from_spec(spec, files[WEIGHTS], allowed=limits.allowed,
                                       max_parameters=limits.max_parameters)
        try:
            return TorchNetwork(bundle.build())
        except RuntimeError as err:  # load_state_dict: the weights are not this architecture's
            raise LoomError(f"the weights do not fit {bundle.architecture} built with {bundle.kwargs}: "
                            f"{str(err).splitlines()[0][:300]}") from None


def model_format(plugins: Plugins, name: str) -> ModelFormat:
    """The format ``name``: ``torch``, or one a plugin registered.

    :raises NotFoundError: no plugin registered it (the message lists the formats there are).
    """
    return TorchFormat() if name.lower() == TORCH else plugins.model_format(name)


# -- a version's spec and its loaded network -------------------------------------------------------------------


@dataclass
class ModelSpec:
    """What Loom owns of a version, whatever its format (``model.json``): the inputs, their encoding, the task."""

    format: str
    inputs: dict[str, dict[str, Any]]
    """Input name -> its declared column spec (tabular) or tensor spec, as a dict, in declared order."""
    label: str
    preprocessor: Preprocessor
    task: Task
    raw: dict[str, Any] = field(default_factory=dict)
    """The whole ``model.json`` (a format reads its own keys from it)."""

    @classmethod
    def from_json(cls, data: bytes) -> ModelSpec:
        """Parse a version's ``model.json``.

        :raises LoomError: it is not a Loom model spec.
        """
        fmt = spec_format(data)
        spec = json.loads(data)
        try:
            return cls(format=fmt, inputs=dict(spec["inputs"]), label=str(spec["label"]),
                       preprocessor=Preprocessor.from_dict(spec["preprocessor"]),
                       task=task_from_dict(spec.get("task"), spec.get("classes")), raw=spec)
        except (KeyError, TypeError, ValueError) as err:
            raise LoomError(f"model.json is not a Loom model spec ({type(err).__name__}: {err})") from None

    @property
    def classes(self) -> list[Any]:
        return list(self.task.classes)

    @property
    def tensors(self) -> dict[str, dict[str, Any]]:
        """The tensor inputs, in declared order."""
        return {n: s for n, s in self.inputs.items() if s.get("type") == "tensor"}

    def model_inputs(self, cols: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        """The network's arguments for a mapping of input -> values (a DataFrame works)."""
        return encode_inputs(self.preprocessor, self.tensors, cols)

    def arguments(self) -> list[dict[str, Any]]:
        """What the network takes, in order, as ``{"name", "dtype", "shape"}`` (shape without the batch axis)."""
        out = []
        if self.preprocessor.input_columns:
            out.append({"name": "(the encoded tabular inputs)", "dtype": "FP32",
                        "shape": [self.preprocessor.n_features]})
        out += [{"name": n, "dtype": s.get("dtype") or "FP32", "shape": list(s["shape"])}
                for n, s in self.tensors.items()]
        return out


def postprocess(task: Task, raw: np.ndarray) -> np.ndarray:
    """The task's outputs (class probabilities, or values) from a network's raw outputs."""
    return task.postprocess(torch.from_numpy(np.ascontiguousarray(raw)))


@dataclass
class LoadedModel:
    """A version ready to answer: its registry record, its spec and its network."""

    version: ModelVersion
    spec: ModelSpec
    network: Network

    def outputs(self, cols: Mapping[str, Any]) -> np.ndarray:
        """Class probabilities ``[N, classes]`` (classification) or values ``[N]`` (regression)."""
        return postprocess(self.spec.task, self.network(self.spec.model_inputs(cols)))

    def predict(self, cols: Mapping[str, Any]) -> tuple[list[Any], np.ndarray]:
        """The predictions (classes or values) and the task's outputs they come from."""
        out = self.outputs(cols)
        return self.spec.task.predictions(out), out


def _load_network(plugins: Plugins, fmt: ModelFormat, spec: ModelSpec, files: Mapping[str, bytes],
                  limits: LoadLimits, what: str) -> Network:
    """``fmt.load``, with a plugin's unexpected failure turned into a :class:`PluginError` naming it."""
    try:
        return fmt.load(files, spec.raw, limits)
    except LoomError:
        raise
    except Exception as err:  # noqa: BLE001 - a format plugin's failure, named
        plugin = plugins.names(HOOK).get(spec.format) or "runtime"
        raise PluginError(plugin, HOOK, f"model format {spec.format!r} could not load {what}: "
                          f"{type(err).__name__}: {str(err)[:500]}", dist=plugins.dist_of(plugin)) from err


def load_model(registry: ModelRegistry, name: str, version: int | str, *, plugins: Plugins,
               limits: LoadLimits | None = None) -> LoadedModel:
    """Load version ``version`` (a number, an alias or ``latest``) of model ``name`` from ``registry``, in its
    format: the one function that serving replicas, batch scoring and anything else use to run a version.

    :param plugins: the process's plugin manager (it holds the formats plugins registered).
    :param limits: what may be loaded (:meth:`LoadLimits.of` a project for what it serves); default: no limit.
    :raises LoomError: the version's files are not what its spec says; :class:`ConfigError` when it is beyond
        ``limits``; :class:`NotFoundError` for an unknown version or format.
    """
    mv = registry.get_version(name, version)
    spec = ModelSpec.from_json(registry.read_artifact(name, mv.version, SPEC))
    fmt = model_format(plugins, spec.format)
    files = {a: registry.read_artifact(name, mv.version, a) for a in fmt.artifacts}
    network = _load_network(plugins, fmt, spec, files, limits or LoadLimits(), f"{name} v{mv.version}")
    return LoadedModel(mv, spec, network)


# -- importing a model file -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """What an imported model is asked and answers: its inputs (in the order the network takes them), the label's
    name, the task and the classes (``None``: ``0 .. outputs-1``)."""

    inputs: dict[str, ColumnSpec]
    label: str = "label"
    task: str = "classification"
    classes: list[Any] | None = None
    source: str = ""
    """Where it came from (``loom.yaml``, the ONNX graph, a file), recorded in the version's lineage."""

    @classmethod
    def of_project(cls, project: Project) -> Signature:
        """The project's model inputs (its feature service's features and tensor inputs, as ``loom.yaml``
        declares them), label, task and classes (a ``bool`` label: ``[False, True]``; a ``category`` label: its
        ``categories``)."""
        cfg = project.config
        d = cfg.data
        names = [*cfg.feature_definitions.service.features, *d.tensor_columns]
        inputs = {c: d.columns[c] if c in d.columns else cfg.feature_definitions.columns[c] for c in names}
        label = d.columns[d.label]
        task = cfg.model.task or infer_task(d.label, label.type)[0]
        check_label_type(task, d.label, label.type)
        classes = ([False, True] if label.type == "bool" else list(label.categories) if label.categories else None)
        return cls(inputs=inputs, label=d.label, task=task, classes=classes if task == "classification" else None,
                   source="loom.yaml")

    @classmethod
    def from_file(cls, path: str | Path, default: Signature | None = None) -> Signature:
        """Read a signature file: ``inputs`` (like ``data.columns`` in ``loom.yaml``), and optionally ``label``,
        ``task`` and ``classes`` (default: ``default``'s, e.g. the project's).

        :raises ConfigError: naming what is wrong in the file.
        """
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read signature {path}: {err}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("inputs"), dict) or not raw["inputs"]:
            raise ConfigError(f"signature {path}: needs `inputs:`, a mapping of input name -> column spec "
                              "(as data.columns in loom.yaml)")
        unknown = set(raw) - {"inputs", "label", "task", "classes"}
        if unknown:
            raise ConfigError(f"signature {path}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                              "(allowed: inputs, label, task, classes)")
        inputs = {}
        for name, spec in raw["inputs"].items():
            check_name(str(name), f"signature {path}: input name")
            try:
                inputs[str(name)] = ColumnSpec(**(spec or {}))
            except Exception as err:  # noqa: BLE001 - pydantic's error, shown
                raise ConfigError(f"signature {path}: input {name!r}: {err}") from None
        base = default or cls(inputs={})
        task = raw.get("task", base.task)
        if task not in ("classification", "regression"):
            raise ConfigError(f"signature {path}: task must be classification or regression, not {task!r}")
        classes = raw.get("classes", base.classes if task == base.task else None)
        if classes is not None and (not isinstance(classes, list) or len(classes) < 2
                                    or len({str(c) for c in classes}) != len(classes)):
            raise ConfigError(f"signature {path}: classes must be a list of at least two distinct values")
        return cls(inputs=inputs, label=str(raw.get("label", base.label)), task=task,
                   classes=None if task == "regression" else classes, source=path.name)

    @classmethod
    def of_graph(cls, graph: Sequence[Mapping[str, Any]], default: Signature | None = None) -> Signature:
        """The network's own declared inputs (:meth:`ModelFormat.inputs`), each as a Loom tensor input of its
        dtype and shape without the batch axis; label, task and classes from ``default`` (e.g. the project's).

        :raises ConfigError: an input has no fixed shape or dtype Loom can declare.
        """
        inputs = {}
        for item in graph:
            name, dtype, shape = str(item["name"]), item.get("dtype"), list(item.get("shape") or [])
            check_name(name, "the model's input name")
            dims = shape[1:]
            if dtype not in TENSOR_NUMPY or dtype == "BF16" or not dims or any(
                    not isinstance(d, int) or d < 1 for d in dims):
                raise ConfigError(f"the model's input {name!r} ({dtype or 'no dtype'}, shape {_shape(shape)}) cannot "
                                  "be declared from the model alone (a tensor input needs a dtype and fixed "
                                  "dimensions after the batch axis): give --signature inputs.yaml")
            inputs[name] = ColumnSpec(type="tensor", dtype=dtype, shape=dims)
        base = default or cls(inputs={})
        return cls(inputs=inputs, label=base.label, task=base.task, classes=base.classes, source="model graph")


def _shape(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def refuse_pickle(path: str | Path, data: bytes) -> None:
    """Refuse a file that is (or may be) a pickle, by name or by its first bytes (``torch.save`` writes a zip of
    pickles): loading one runs code.

    :raises LoomError: saying how to save the model instead.
    """
    name = Path(path).name
    if name.lower().endswith(FORBIDDEN_ARTIFACT_SUFFIXES) or data.startswith(_PICKLE_MAGIC):
        raise LoomError(f"{name} is a pickle (or a torch.save archive), which runs code when loaded: Loom refuses "
                        "pickled models. Save the weights with safetensors.torch.save_file(model.state_dict(), ...) "
                        "or export the model to ONNX (torch.onnx.export)")


def check_graph(graph: Sequence[Mapping[str, Any]] | None, spec: ModelSpec) -> None:
    """The network's declared inputs against what Loom will pass it (:meth:`ModelSpec.arguments`): as many, each
    of the same dtype, every fixed dimension equal and the batch axis dynamic.

    :raises ConfigError: naming the first input that does not match.
    """
    if graph is None:
        return
    wanted = spec.arguments()
    if len(graph) != len(wanted):
        raise ConfigError(f"the model takes {len(graph)} input(s) ({', '.join(str(g['name']) for g in graph)}) but "
                          f"the signature gives it {len(wanted)} ({', '.join(w['name'] for w in wanted)}): the "
                          "tabular inputs are one FP32 matrix, then one input per tensor input")
    for i, (g, w) in enumerate(zip(graph, wanted)):
        shape = list(g.get("shape") or [])
        batch = shape[0] if shape else None
        fits = (g.get("dtype") == w["dtype"] and len(shape) == len(w["shape"]) + 1 and
                all(d is None or d == e for d, e in zip(shape[1:], w["shape"])))
        if not fits:
            raise ConfigError(f"the model's input {i} {g['name']!r} is {g.get('dtype')} {_shape(shape)}, but the "
                              f"signature gives it {w['name']} as {w['dtype']} {_shape([None, *w['shape']])}")
        if batch is not None:
            raise ConfigError(f"the model's input {g['name']!r} has a fixed batch size of {batch}: export it with a "
                              f"dynamic first axis (torch.onnx.export(..., dynamic_axes={{{str(g['name'])!r}: "
                              "{0: 'batch'}}))")


def imported_spec(fmt: str, signature: Signature, *, classes: list[Any] | None,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``model.json`` of an imported model: Loom's passthrough encoding of the signature's inputs
    (:meth:`Preprocessor.passthrough`), its task (regression values as the network returns them), and ``extra``
    (a format's own keys: ``architecture`` and ``kwargs`` for ``torch``)."""
    tabular = {c: s for c, s in signature.inputs.items() if s.type != "tensor"}
    pre = Preprocessor.passthrough(tabular)
    task: Task = Regression(mean=0.0, std=1.0) if signature.task == "regression" else Classification(
        list(classes or []))
    ordered = {**{c: signature.inputs[c] for c in pre.input_columns},
               **{c: s for c, s in signature.inputs.items() if s.type == "tensor"}}
    return {"format": "loom-model/2", "model_format": fmt, "task": task.to_dict(), "classes": task.classes,
            "preprocessor": pre.to_dict(), "encoding": "passthrough",
            "inputs": {c: s.model_dump(exclude_none=True) for c, s in ordered.items()}, "label": signature.label,
            **(extra or {})}


def probe(network: Network, spec: ModelSpec) -> int:
    """Run ``network`` on two rows of zeros of what Loom will pass it; return its number of outputs per row.

    :raises ConfigError: it does not run on them, or does not answer ``[rows, outputs]`` numbers.
    """
    arguments = spec.arguments()
    x = tuple(np.zeros((2, *a["shape"]), dtype=TENSOR_NUMPY[a["dtype"]]) for a in arguments)
    try:
        out = np.asarray(network(x))
    except LoomError:
        raise
    except Exception as err:  # noqa: BLE001 - the model's own error, shown
        given = ", ".join(a["dtype"] + " " + _shape([None, *a["shape"]]) for a in arguments)
        last = (str(err).strip().splitlines() or [""])[-1][:300]
        raise ConfigError(f"the model does not run on the signature's inputs ({given}): {type(err).__name__}: "
                          f"{last}") from None
    if out.dtype.kind not in "fiu" or out.ndim not in (1, 2) or len(out) != 2:
        raise ConfigError(f"the model answers {out.dtype} of shape {list(out.shape)} for 2 rows: Loom needs numbers "
                          "[rows, outputs] (class logits, or one value per row)")
    return 1 if out.ndim == 1 else int(out.shape[1])


def _outputs_fit(outputs: int, signature: Signature) -> list[Any] | None:
    """The classes of an imported classifier with ``outputs`` outputs (``None`` for regression).

    :raises ConfigError: the outputs do not fit the task or its classes.
    """
    if signature.task == "regression":
        if outputs != 1:
            raise ConfigError(f"the model answers {outputs} values per row; a regression model answers one")
        return None
    if signature.classes is None:
        if outputs < 2:
            raise ConfigError(f"the model answers {outputs} value per row; a classifier answers one logit per class "
                              "(or set task: regression in the signature)")
        return list(range(outputs))
    if outputs != len(signature.classes):
        raise ConfigError(f"the model answers {outputs} values per row but the signature names "
                          f"{len(signature.classes)} classes ({', '.join(map(str, signature.classes))})")
    return list(signature.classes)


def reference_sample(reference: pd.DataFrame, spec: ModelSpec, signature: Signature, network: Network, *,
                     rows: int, source: str) -> bytes:
    """An imported version's drift baseline: up to ``rows`` rows of ``reference`` (validated against the
    signature) with the model's predictions on them, tensor inputs as their summary statistics; Parquet.

    :raises DataValidationError: the reference rows do not fit the signature.
    """
    missing = [c for c in signature.inputs if c not in reference.columns]
    if missing:
        raise ConfigError(f"reference data {source} lacks input column(s) {', '.join(missing)}")
    frame = validate_frame(reference[list(signature.inputs)], signature.inputs, source=source).frame
    if frame.empty:
        raise ConfigError(f"reference data {source} has no rows")
    frame = frame.sample(min(len(frame), rows), random_state=0).reset_index(drop=True)
    labels = spec.task.predictions(postprocess(spec.task, network(spec.model_inputs(frame))))
    frame = frame[list(spec.inputs)].assign(prediction=labels)
    for name, tspec in spec.tensors.items():
        stats = tensor_summary(name, tensor_array(frame[name], tspec))
        frame = frame.drop(columns=[name]).assign(**stats)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def read_reference_file(path: str | Path) -> pd.DataFrame:
    """A reference data file: Parquet, or CSV by its suffix.

    :raises ConfigError: it cannot be read.
    """
    path = Path(path)
    try:
        return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pandas' and pyarrow's errors, shown
        raise ConfigError(f"cannot read reference data {path}: {type(err).__name__}: {err}") from None


def _packages() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("loom-mlops", "torch", "onnx", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass(frozen=True)
class ImportFile:
    """The file an import stores: its bytes and where they came from (shown and recorded, never re-read)."""

    data: bytes
    origin: str

    @classmethod
    def read(cls, path: str | Path) -> ImportFile:
        path = Path(path)
        try:
            return cls(path.read_bytes(), path.name)
        except OSError as err:
            raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def import_model(registry: ModelRegistry, name: str, fmt_name: str, file: ImportFile, *, plugins: Plugins,
                 signature: Signature | str, default: Signature | None = None, architecture: str | None = None,
                 options: Mapping[str, Any] | None = None, reference: pd.DataFrame | None = None,
                 reference_origin: str = "", reference_rows: int = 5000, limits: LoadLimits | None = None,
                 alias: str | None = None, description: str = "",
                 lineage: Mapping[str, Any] | None = None) -> ModelVersion:
    """Register ``file`` as a new version of model ``name`` in format ``fmt_name``, after checking everything:
    that it is not a pickle and is of that format, that its declared inputs match ``signature``, that it runs on
    them and answers the task's outputs, that the reference rows fit. Only then is the version written, at once.

    :param signature: a :class:`Signature`, or ``"graph"``: the model's own declared inputs (label, task and
        classes from ``default``).
    :param architecture: ``torch``: the ``module:Class`` import path; ``options`` its constructor arguments
        (Loom adds ``in_features``/``out_features``/``input_shapes`` as for training).
    :param reference: rows of the model's inputs: the drift baseline (with the model's predictions on them).
    :param limits: what the version may be (:meth:`LoadLimits.of` the project: it will be served).
    :param lineage: more entries of the ``imported`` lineage record (e.g. the model's ``source``).
    :raises LoomError: nothing was registered; the message says why.
    """
    name = check_name(name, "model name")
    refuse_pickle(file.origin, file.data)
    fmt = model_format(plugins, fmt_name)
    fmt_name = fmt_name.lower()
    files = {fmt.artifacts[0]: file.data}
    try:
        graph = fmt.inputs(files)
    except LoomError as err:
        raise LoomError(f"{file.origin} is not in the {fmt_name!r} format: {err}") from None
    if isinstance(signature, str):
        if graph is None:
            raise ConfigError(f"a {fmt_name} model does not declare its inputs: give a signature (loom.yaml's, "
                              "or --signature inputs.yaml)")
        signature = Signature.of_graph(graph, default)
    extra = _torch_extra(signature, architecture, options) if fmt_name == TORCH else {}
    spec = ModelSpec.from_json(json.dumps(imported_spec(fmt_name, signature, classes=signature.classes or [0, 1],
                                                        extra=extra)).encode())
    check_graph(graph, spec)
    network = _load_network(plugins, fmt, spec, files, limits or LoadLimits(), file.origin)
    classes = _outputs_fit(probe(network, spec), signature)
    if classes is not None and fmt_name == TORCH and "out_features" not in (options or {}):
        extra = _torch_extra(signature, architecture, options, out_features=len(classes))
    raw = imported_spec(fmt_name, signature, classes=classes, extra=extra)
    spec = ModelSpec.from_json(json.dumps(raw).encode())
    artifacts = {SPEC: json.dumps(raw, indent=2).encode(), **files}
    record: dict[str, Any] = {"format": fmt_name, "file": file.origin, "sha256": file.sha256,
                              "bytes": len(file.data), "signature": signature.source, **(lineage or {})}
    if fmt_name == TORCH:
        record["architecture"] = architecture
    if reference is not None:
        artifacts[REFERENCE] = reference_sample(reference, spec, signature, network, rows=reference_rows,
                                                source=reference_origin or "reference data")
        record["reference"] = {"file": reference_origin, "rows": min(len(reference), reference_rows)}
    full = {"imported": record, "packages": _packages(), **({"reference_profile": REFERENCE} if reference is not None
                                                            else {})}
    return registry.register(name, artifacts, params={"format": fmt_name, "task": spec.task.name}, lineage=full,
                             tags={"imported": fmt_name}, description=description, alias=alias)


def _torch_extra(signature: Signature, architecture: str | None, options: Mapping[str, Any] | None, *,
                 out_features: int | None = None) -> dict[str, Any]:
    """``architecture`` and ``kwargs`` of an imported torch model (its constructor's arguments)."""
    if not architecture:
        raise ConfigError("a torch model needs --architecture module:Class, the torch.nn.Module its weights are for")
    tabular = {c: s for c, s in signature.inputs.items() if s.type != "tensor"}
    width = Preprocessor.passthrough(tabular).n_features if tabular else None
    shapes = {c: list(s.shape or []) for c, s in signature.inputs.items() if s.type == "tensor"}
    outputs = out_features or (1 if signature.task == "regression" else
                               len(signature.classes) if signature.classes else None)
    kwargs = architecture_kwargs(architecture, dict(options or {}), in_features=width, out_features=outputs,
                                 input_shapes=shapes or None)
    return {"architecture": architecture, "kwargs": kwargs}


__all__ = ["HOOK", "ImportFile", "LoadLimits", "LoadedModel", "ModelFormat", "ModelSpec", "Network", "Signature",
           "TorchFormat", "TorchNetwork", "check_graph", "import_model", "load_model", "model_format", "postprocess",
           "probe", "refuse_pickle"]
