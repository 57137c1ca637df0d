"""Open Inference Protocol v2 (KServe v2, Triton, MLServer) over REST: decoding infer requests and encoding
responses, with the binary tensor data extension that ``tritonclient`` uses by default.

Binary extension: the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw
tensors, in input order, of every input whose ``parameters.binary_data_size`` is set. Fixed-size types are
little-endian C-order arrays; ``BYTES`` elements are each a 4-byte little-endian length and the bytes. Outputs go
back the same way when the request asks (``outputs[].parameters.binary_data`` or
``parameters.binary_data_output``).

A tensor input (``{"type": "tensor", "dtype": ..., "shape": [...]}`` in the schema) takes shape ``[N, *shape]`` and
its declared datatype (a float tensor: any float or integer datatype, converted); ``data`` may be flat or nested.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model import OIP_DATATYPES
from .protocol import LIMITS, Columns, Limits, RequestError, Schema, check_columns, parse_json, tensor_array

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]
OUTPUTS = ("predicted", "probabilities")
#: Outputs of a regression model: the predicted value of each row.
REGRESSION_OUTPUTS = ("predicted",)

#: Fixed-size datatypes and their little-endian numpy types.
_FIXED = {
    "BOOL": np.dtype("?"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_INTS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOATS = {"FP16", "FP32", "FP64", "BF16"}
_NUMBERS = frozenset(_FLOATS | _INTS)
#: Datatypes accepted for each declared column type.
ACCEPTED = {
    "int": _INTS,
    "float": _FLOATS | _INTS,
    "bool": {"BOOL"},
    "category": {"BYTES"},
    "string": {"BYTES"},
    "timestamp": {"BYTES"},
}


def datatypes(spec: Mapping[str, Any]) -> set[str] | frozenset[str]:
    """The datatypes an input with this spec accepts."""
    if spec["type"] != "tensor":
        return ACCEPTED[spec["type"]]
    return _NUMBERS if spec["dtype"] in _FLOATS else {spec["dtype"]}


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request."""

    columns: Columns
    id: str | None
    outputs: tuple[str, ...]
    """Output names to return, in order."""
    binary: frozenset[str]
    """Outputs to return as binary data."""


def _flatten(data: list[Any], name: str) -> list[Any]:
    flat: list[Any] = []
    for row in data:
        if type(row) is not list:
            raise RequestError(400, f"input {name!r}: 'data' mixes nested lists and values")
        flat.extend(row)
    return flat


def _count(shape: Any, name: str) -> int:
    """The number of values a tabular input's shape holds: ``[N]`` or ``[N, 1]``."""
    if type(shape) is list and 1 <= len(shape) <= 2:
        n = shape[0]
        if type(n) is int and n >= 0 and (len(shape) == 1 or shape[1] == 1 and type(shape[1]) is int):
            return n
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(400, f"input {name!r}: 'shape' must be a list of non-negative integers")
    raise RequestError(400, f"input {name!r}: shape {repr(shape)[:60]} not supported; use [N] or [N, 1]")


def _tensor_rows(shape: Any, name: str, spec: Mapping[str, Any]) -> int:
    """The number of rows a tensor input's shape holds: ``[N, *shape]``."""
    per_row = list(spec["shape"])
    if (type(shape) is list and len(shape) == len(per_row) + 1 and all(type(d) is int for d in shape)
            and shape[0] >= 0 and shape[1:] == per_row):
        return shape[0]
    raise RequestError(400, f"input {name!r}: shape {repr(shape)[:60]} does not match {shape_text(per_row)}")


def shape_text(per_row: Sequence[int]) -> str:
    """A tensor input's shape with its batch dimension, as written in messages: ``[N, 1, 28, 28]``."""
    return "[" + ", ".join(["N", *map(str, per_row)]) + "]"


def _decode_bytes(raw: memoryview, name: str, count: int) -> list[str]:
    out: list[str] = []
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 4 > end:
            raise RequestError(400, f"input {name!r}: truncated BYTES element length at byte {pos}")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > end:
            raise RequestError(400, f"input {name!r}: BYTES element of {n} bytes overruns the tensor")
        try:
            out.append(bytes(raw[pos:pos + n]).decode())
        except UnicodeDecodeError:
            raise RequestError(400, f"input {name!r}: BYTES element {len(out)} is not UTF-8 text") from None
        pos += n
    if len(out) != count:
        raise RequestError(400, f"input {name!r}: shape needs {count} BYTES elements, got {len(out)}")
    return out


def _decode_fixed(raw: memoryview, name: str, dtype: str, count: int) -> np.ndarray:
    if dtype == "BF16":
        if len(raw) != 2 * count:
            raise RequestError(400, f"input {name!r}: BF16 shape needs {2 * count} bytes, got {len(raw)}")
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    np_type = _FIXED[dtype]
    if len(raw) != np_type.itemsize * count:
        raise RequestError(400, f"input {name!r}: {dtype} shape needs {np_type.itemsize * count} bytes, "
                                f"got {len(raw)}")
    arr = np.frombuffer(raw, dtype=np_type)
    if dtype == "BOOL" and arr.size and not np.isin(np.frombuffer(raw, dtype=np.uint8), (0, 1)).all():
        raise RequestError(400, f"input {name!r}: BOOL bytes must be 0 or 1")
    return arr


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if (len(header_length) > 19 or not (header_length.isascii() and header_length.isdigit())
            or int(header_length) > len(body)):
        raise RequestError(400, f"Inference-Header-Content-Length {header_length[:40]!r} must be a byte count within "
                                f"the body ({len(body)} bytes)")
    n = int(header_length)
    return body[:n], memoryview(body)[n:]


def decode_infer(body: bytes, header_length: str | None, schema: Schema,
                 available: tuple[str, ...] = OUTPUTS, limits: Limits = LIMITS) -> InferRequest:
    """Decode an infer request body (JSON, or JSON header + binary tensors) against the model's input schema;
    ``available`` are the model's output names."""
    head, binary = _split_body(body, header_length)
    req = parse_json(head, limits, "send a JSON object with 'inputs'")
    if not isinstance(req, dict):
        raise RequestError(400, "request body must be a JSON object with 'inputs'")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "'inputs' must be a non-empty list of tensors")
    cols: dict[str, Sequence[Any]] = {}
    offset = 0
    for t in inputs:
        if type(t) is not dict:
            raise RequestError(400, "each input must be an object with name, shape, datatype and data")
        name = t.get("name")
        spec = schema.get(name) if type(name) is str else None
        if spec is None:
            if type(name) is not str:
                raise RequestError(400, "an input is missing its 'name'")
            raise RequestError(400, f"unknown input {name[:40]!r} (expected: {', '.join(schema)})")
        if name in cols:
            raise RequestError(400, f"input {name!r} given twice")
        dtype = t.get("datatype")
        accepted = ACCEPTED.get(spec["type"])
        tensor = accepted is None
        if accepted is None:
            rows = _tensor_rows(t.get("shape"), name, spec)
            count = rows * int(np.prod(spec["shape"]))
            if type(dtype) is not str or dtype not in datatypes(spec):
                raise RequestError(400, f"input {name!r}: datatype {repr(dtype)[:40]} not accepted; use {spec['dtype']}")
        else:
            count = _count(t.get("shape"), name)
            try:
                ok = dtype in accepted
            except TypeError:  # an unhashable datatype (a list, an object)
                ok = False
            if not ok:
                raise RequestError(400, f"input {name!r}: datatype {repr(dtype)[:40]} not accepted; "
                                        f"use {OIP_DATATYPES[spec['type']]}")
        params = t.get("parameters")
        size = None
        if params is not None:
            if type(params) is not dict:
                raise RequestError(400, f"input {name!r}: 'parameters' must be an object")
            size = params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise RequestError(400, f"input {name!r}: binary_data_size {repr(size)[:40]} does not fit the "
                                        f"{len(binary) - offset} binary bytes left")
            raw = binary[offset:offset + size]
            offset += size
            if tensor:
                cols[name] = tensor_array(name, spec, _decode_fixed(raw, name, dtype, count), rows)
            else:
                cols[name] = (_decode_bytes(raw, name, count) if dtype == "BYTES"
                              else _decode_fixed(raw, name, dtype, count))
            continue
        data = t.get("data")
        if type(data) is not list:
            if "data" not in t:
                raise RequestError(400, f"input {name!r} has neither 'data' nor parameters.binary_data_size")
            raise RequestError(400, f"input {name!r}: 'data' must be a list")
        if tensor:
            cols[name] = tensor_array(name, spec, data, rows)
            continue
        if data and type(data[0]) is list:
            data = _flatten(data, name)
        if len(data) != count:
            raise RequestError(400, f"input {name!r}: shape {t['shape']} needs {count} values, got {len(data)}")
        cols[name] = data
    if offset != len(binary):
        raise RequestError(400, f"{len(binary) - offset} binary bytes after the last binary input")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError(400, "'id' must be a string")
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(400, "'parameters' must be an object")
    all_binary = params.get("binary_data_output") is True
    outputs, binary_out = _requested_outputs(req.get("outputs"), all_binary, available)
    return InferRequest(check_columns(cols, schema, limits), rid, outputs, binary_out)


def _requested_outputs(outputs: Any, all_binary: bool,
                       available: tuple[str, ...] = OUTPUTS) -> tuple[tuple[str, ...], frozenset[str]]:
    if outputs is None:
        return available, frozenset(available if all_binary else ())
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                               for o in outputs):
        raise RequestError(400, "'outputs' must be a list of {\"name\": ...}")
    names, binary = [], set()
    for o in outputs:
        if o["name"] not in available:
            raise RequestError(400, f"unknown output {o['name'][:40]!r} (available: {', '.join(available)})")
        names.append(o["name"])
        params = o.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(400, f"output {o['name']!r}: 'parameters' must be an object")
        if params.get("binary_data", all_binary) is True:
            binary.add(o["name"])
    return tuple(names), frozenset(binary)


def label_datatype(classes: Sequence[Any]) -> str:
    """The datatype of the ``predicted`` output for a model with these class labels."""
    if all(isinstance(c, bool) for c in classes):
        return "BOOL"
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64"
    if all(isinstance(c, float) for c in classes):
        return "FP64"
    return "BYTES"


def output_metadata(classes: Sequence[Any], regression: bool = False) -> list[dict[str, Any]]:
    if regression:
        return [{"name": "predicted", "datatype": "FP64", "shape": [-1]}]
    return [
        {"name": "predicted", "datatype": label_datatype(classes), "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]},
    ]


def input_metadata(schema: Schema) -> list[dict[str, Any]]:
    return [{"name": c, "datatype": s["dtype"], "shape": [-1, *s["shape"]]} if s["type"] == "tensor"
            else {"name": c, "datatype": OIP_DATATYPES[s["type"]], "shape": [-1]} for c, s in schema.items()]


def _to_binary(datatype: str, values: np.ndarray | list[Any]) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in values:
            b = str(v).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(values, dtype=_FIXED[datatype]).tobytes()


def encode_infer(model: str, version: int, labels: list[Any], label_type: str, proba: np.ndarray | None,
                 request: InferRequest) -> tuple[bytes, dict[str, str]]:
    """The response body and its content headers (binary tensors appended when the request asked for them)."""
    blobs: list[bytes] = []
    outputs = []
    for name in request.outputs:
        if name == "predicted":
            datatype, shape, values = label_type, [len(labels)], labels
        else:
            assert proba is not None  # decode_infer only offers the model's own outputs
            datatype, shape, values = "FP32", list(proba.shape), proba
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if name in request.binary:
            blob = _to_binary(datatype, values)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values if isinstance(values, list) else values.ravel().tolist()
        outputs.append(tensor)
    out: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": outputs}
    if request.id is not None:
        out["id"] = request.id
    head = json.dumps(out, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return b"".join([head, *blobs]), {"content-type": "application/octet-stream",
                                      HEADER_LENGTH: str(len(head))}


def model_metadata(name: str, versions: Sequence[int], schema: Schema, classes: Sequence[Any],
                   regression: bool = False) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's live versions and its input and output tensors."""
    return {"name": name, "versions": [str(v) for v in versions], "platform": "loom-pytorch",
            "inputs": input_metadata(schema), "outputs": output_metadata(classes, regression)}


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "loom", "version": version, "extensions": list(EXTENSIONS)}

