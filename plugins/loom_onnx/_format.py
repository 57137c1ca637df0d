"""The ``onnx`` format's work: reading a graph's declared inputs and size without running it, and running it with
onnxruntime."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from runtime import ConfigError, LoomError

if TYPE_CHECKING:
    import onnx
    import onnxruntime

    from runtime import LoadLimits

#: The artifact a version of this format holds next to model.json.
ARTIFACT = "model.onnx"
#: ONNX TensorProto element types, as Open Inference Protocol datatypes.
DTYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16",
          11: "FP64", 12: "UINT32", 13: "UINT64", 16: "BF16"}
#: Overrides the execution providers, comma-separated (e.g. ``CPUExecutionProvider``).
PROVIDERS_ENV = "LOOM_ONNX_PROVIDERS"


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise LoomError("the onnx model format needs onnx and onnxruntime: pip install 'loom-mlops[onnx]'") from None
    return onnx


def parse(data: bytes) -> onnx.ModelProto:
    """The ONNX model in ``data``, checked by onnx's own checker.

    :raises LoomError: ``data`` is not a valid ONNX model.
    """
    onnx = _onnx()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise LoomError(f"not an ONNX model (it does not parse: {type(err).__name__})") from None
    if not model.opset_import or not model.graph.output:
        raise LoomError("not an ONNX model (no operator set or no graph output)")
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # noqa: BLE001 - onnx.checker.ValidationError and friends
        raise LoomError(f"not a valid ONNX model: {str(err).strip().splitlines()[0][:300]}") from None
    return model


def graph_inputs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The graph's inputs that are fed at run time (initializers listed as inputs are not), in order."""
    initializers = {i.name for i in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        out.append({"name": value.name, "dtype": DTYPES.get(tensor.elem_type), "shape": shape})
    return out


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements of every initializer (the graph's weights), read from their declared dimensions."""
    return sum(math.prod(t.dims) for t in model.graph.initializer)


def providers() -> list[str]:
    """CUDA when onnxruntime has it, then the CPU; ``LOOM_ONNX_PROVIDERS`` overrides."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = [p.strip() for p in os.environ.get(PROVIDERS_ENV, "").split(",") if p.strip()]
    if chosen:
        unknown = [p for p in chosen if p not in available]
        if unknown:
            raise ConfigError(f"{PROVIDERS_ENV} names {', '.join(unknown)}, which this onnxruntime does not have "
                              f"(available: {', '.join(available)})")
        return chosen
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session(data: bytes) -> onnxruntime.InferenceSession:
    """An inference session of ``data``: threads as ``OMP_NUM_THREADS`` says (0: onnxruntime's default), idle
    threads not spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    options.intra_op_num_threads = int(threads) if threads.isdigit() else 0
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise here
    return ort.InferenceSession(data, sess_options=options, providers=providers())


class OnnxNetwork:
    """An onnxruntime session as a Loom network: positional inputs in, the first output out (thread-safe: a
    session's ``run`` may be called from many threads)."""

    def __init__(self, sess: onnxruntime.InferenceSession, inputs: list[str]):
        self.session = sess
        self.inputs = inputs
        self.output = sess.get_outputs()[0].name

    def __call__(self, x: tuple[np.ndarray, ...]) -> np.ndarray:
        return self.session.run([self.output], dict(zip(self.inputs, x)))[0]


class OnnxFormat:
    """Versions stored as ``model.onnx``; see the package's docstring."""

    artifacts = (ARTIFACT,)

    def inputs(self, files: Mapping[str, bytes]) -> list[dict[str, Any]] | None:
        return graph_inputs(parse(files[ARTIFACT]))

    def load(self, files: Mapping[str, bytes], spec: Mapping[str, Any], limits: LoadLimits) -> OnnxNetwork:
        data = files[ARTIFACT]
        model = parse(data)
        count = parameter_count(model)
        if limits.max_parameters is not None and count > limits.max_parameters:
            raise ConfigError(f"model has {count:,} parameters, more than serving.max_parameters "
                              f"({limits.max_parameters:,})")
        try:
            sess = session(data)
        except (ConfigError, LoomError):
            raise
        except Exception as err:  # noqa: BLE001 - onnxruntime's errors (an operator it lacks, a bad graph)
            raise LoomError(f"onnxruntime cannot run this model: {str(err).strip().splitlines()[0][:300]}") from None
        return OnnxNetwork(sess, [i["name"] for i in graph_inputs(model)])
