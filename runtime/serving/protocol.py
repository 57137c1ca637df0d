"""Request decoding and response encoding for the served protocols, independent of the web framework.

Every malformed request raises :class:`RequestError` with an HTTP status and a message naming the problem;
the app turns it into ``{"error": "..."}``. Nothing here touches the model.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..model import OIP_DATATYPES


class RequestError(Exception):
    """A client error: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64"}
#: Open Inference Protocol datatypes accepted for each declared column type.
ACCEPTED = {
    "int": _INT_TYPES,
    "float": _FLOAT_TYPES | _INT_TYPES,
    "bool": {"BOOL"},
    "category": {"BYTES"},
    "string": {"BYTES"},
    "timestamp": {"BYTES"},
}


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list) and data and isinstance(data[0], list):
        return [v for row in data for v in _flatten(row)]
    if not isinstance(data, list):
        raise RequestError(400, "tensor 'data' must be a list")
    return data


def _check_value(col: str, spec: Mapping[str, Any], v: Any, i: int) -> Any:
    t = spec["type"]
    if v is None:
        if not spec.get("nullable", True):
            raise RequestError(400, f"input {col!r}: null at position {i}, but the column is not nullable")
        return None
    if t in ("int", "float"):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RequestError(400, f"input {col!r}: expected a number at position {i}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise RequestError(400, f"input {col!r}: non-finite value {v!r} at position {i}")
        if t == "int" and isinstance(v, float) and not v.is_integer():
            raise RequestError(400, f"input {col!r}: expected an integer at position {i}, got {v!r}")
        return v
    if t == "bool":
        if not isinstance(v, bool):
            raise RequestError(400, f"input {col!r}: expected true/false at position {i}, got {v!r}")
        return v
    if not isinstance(v, str):
        raise RequestError(400, f"input {col!r}: expected a string at position {i}, got {v!r}")
    cats = spec.get("categories")
    if cats and v not in cats:
        raise RequestError(400, f"input {col!r}: unknown category {v!r} at position {i} (allowed: {', '.join(cats)})")
    return v


def check_columns(cols: Mapping[str, list[Any]], schema: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Validate decoded columns against the model's input schema; return them as object arrays of equal length."""
    missing = [c for c in schema if c not in cols]
    if missing:
        raise RequestError(400, f"missing input(s): {', '.join(missing)}")
    unknown = [c for c in cols if c not in schema]
    if unknown:
        raise RequestError(400, f"unknown input(s): {', '.join(unknown)} (expected: {', '.join(schema)})")
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1:
        raise RequestError(400, "inputs have different lengths")
    n = lengths.pop()
    if n == 0:
        raise RequestError(400, "empty input: send at least one row")
    out = {}
    for c, spec in schema.items():
        out[c] = np.array([_check_value(c, spec, v, i) for i, v in enumerate(cols[c])], dtype=object)
    return out


def decode_records(body: Any, schema: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """``[{col: value, ...}, ...]`` or ``{"records": [...]}`` -> validated columns."""
    records = body.get("records") if isinstance(body, dict) and "records" in body else body
    if isinstance(body, dict) and "records" not in body:
        raise RequestError(400, "expected a list of records or {\"records\": [...]}")
    if not isinstance(records, list):
        raise RequestError(400, "'records' must be a list of objects")
    if not records:
        raise RequestError(400, "empty input: send at least one record")
    cols: dict[str, list[Any]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise RequestError(400, f"record {i} is not an object")
        extra = set(rec) - set(schema)
        if extra:
            raise RequestError(400, f"record {i}: unknown column(s) {', '.join(sorted(extra))}")
        for c in schema:
            if c not in rec:
                raise RequestError(400, f"record {i}: missing column {c!r}")
            cols.setdefault(c, []).append(rec[c])
    return check_columns(cols, schema)


def decode_oip(body: Any, schema: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """An Open Inference Protocol v2 JSON request -> (validated columns, request meta: id, outputs)."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object with 'inputs'")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "'inputs' must be a non-empty list of tensors")
    cols: dict[str, list[Any]] = {}
    for t in inputs:
        if not isinstance(t, dict):
            raise RequestError(400, "each input must be an object with name, shape, datatype and data")
        name, shape, dtype = t.get("name"), t.get("shape"), t.get("datatype")
        if not isinstance(name, str):
            raise RequestError(400, "input is missing its 'name'")
        if name not in schema:
            raise RequestError(400, f"unknown input {name!r} (expected: {', '.join(schema)})")
        if name in cols:
            raise RequestError(400, f"input {name!r} given twice")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise RequestError(400, f"input {name!r}: 'shape' must be a list of non-negative integers")
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(400, f"input {name!r}: shape {shape} not supported; use [N] or [N, 1]")
        expected = ACCEPTED[schema[name]["type"]]
        if dtype not in expected:
            raise RequestError(400, f"input {name!r}: datatype {dtype!r} not accepted; "
                                    f"use {OIP_DATATYPES[schema[name]['type']]}")
        data = _flatten(t.get("data"))
        if len(data) != math.prod(shape):
            raise RequestError(400, f"input {name!r}: shape {shape} needs {math.prod(shape)} values, "
                                    f"got {len(data)}")
        cols[name] = data
    outputs = body.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                   for o in outputs):
            raise RequestError(400, "'outputs' must be a list of {\"name\": ...}")
        requested = [o["name"] for o in outputs]
    rid = body.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError(400, "'id' must be a string")
    return check_columns(cols, schema), {"id": rid, "outputs": requested}


def _label_datatype(classes: list[Any]) -> str:
    if all(isinstance(c, bool) for c in classes):
        return "BOOL"
    if all(isinstance(c, int) for c in classes):
        return "INT64"
    return "BYTES"


def output_metadata(classes: list[Any]) -> list[dict[str, Any]]:
    return [
        {"name": "predicted", "datatype": _label_datatype(classes), "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]},
    ]


def encode_oip(model: str, version: int, predicted: list[Any], proba: np.ndarray, classes: list[Any],
               meta: Mapping[str, Any]) -> dict[str, Any]:
    tensors = {
        "predicted": {"name": "predicted", "datatype": _label_datatype(classes), "shape": [len(predicted)],
                      "data": [c.item() if hasattr(c, "item") else c for c in predicted]},
        "probabilities": {"name": "probabilities", "datatype": "FP32", "shape": list(proba.shape),
                          "data": proba.astype(float).ravel().tolist()},
    }
    names = meta.get("outputs") or list(tensors)
    unknown = [n for n in names if n not in tensors]
    if unknown:
        raise RequestError(400, f"unknown output(s) {', '.join(unknown)} (available: {', '.join(tensors)})")
    out: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": [tensors[n] for n in names]}
    if meta.get("id") is not None:
        out["id"] = meta["id"]
    return out
