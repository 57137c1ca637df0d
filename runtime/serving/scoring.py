"""Record-style request bodies: MLflow's scoring protocol (``/invocations``) and Loom's ``/predict``.

MLflow's JSON formats are ``dataframe_split``, ``dataframe_records``, ``instances`` and ``inputs`` (records, or
``{name: [value per row]}``, MLflow's tensor form); ``text/csv`` takes a header row naming the columns. A tensor
input's value in a row is a nested list of its declared shape (CSV cannot carry one). ``/predict`` takes a list of
records, ``{"records": [...]}``, or ``{"entities": [...]}`` whose features are looked up in the online feature store.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from itertools import islice
from typing import Any

from .protocol import LIMITS, Columns, Limits, RequestError, Schema, check_columns, parse_json, rows_to_columns

MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_TRUE = {"true", "1", "t", "yes"}
_FALSE = {"false", "0", "f", "no"}


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _split(payload: Any, limits: Limits) -> dict[str, list[Any]]:
    if not isinstance(payload, dict):
        raise RequestError(400, "dataframe_split must be an object with 'columns' and 'data'")
    columns, data = payload.get("columns"), payload.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise RequestError(400, "dataframe_split.columns must be a list of column names")
    if len(set(columns)) != len(columns):
        raise RequestError(400, "dataframe_split.columns names a column twice")
    if not isinstance(data, list):
        raise RequestError(400, "dataframe_split.data must be a list of rows")
    limits.check_rows(len(data))
    cols: dict[str, list[Any]] = {c: [] for c in columns}
    appends = [cols[c].append for c in columns]
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise RequestError(400, f"dataframe_split.data row {i} must be a list of {len(columns)} values")
        for append, v in zip(appends, row):
            append(v)
    return cols


def _columnar(payload: Any, schema: Schema, limits: Limits) -> dict[str, list[Any]]:
    if isinstance(payload, list):
        return rows_to_columns(payload, schema, "input", limits)
    if not isinstance(payload, dict):
        raise RequestError(400, "'inputs' must map column names to lists of values, or be a list of records")
    for c, v in payload.items():
        if not isinstance(v, list):
            raise RequestError(400, f"inputs.{str(c)[:40]} must be a list of values")
    return payload


def decode_mlflow(body: bytes, content_type: str | None, schema: Schema, limits: Limits = LIMITS) -> Columns:
    """Decode an MLflow scoring request (JSON or CSV) into validated columns."""
    kind = media_type(content_type)
    if kind == "text/csv":
        return decode_csv(body, schema, limits)
    if kind not in ("application/json", "") and not kind.endswith("+json"):
        raise RequestError(415, f"unsupported content type {kind[:60]!r}: send application/json or text/csv")
    req = parse_json(body, limits)
    if not isinstance(req, dict):
        raise RequestError(400, f"request must be a JSON object with one of: {', '.join(MLFLOW_FORMATS)}")
    params = req.get("params")
    if params not in (None, {}):
        raise RequestError(400, "this model takes no 'params'")
    formats = [k for k in req if k in MLFLOW_FORMATS]
    unknown = [k for k in req if k not in MLFLOW_FORMATS and k != "params"]
    if unknown:
        raise RequestError(400, f"unknown key(s) {', '.join(repr(k[:40]) for k in unknown[:10])}; "
                                f"use one of: {', '.join(MLFLOW_FORMATS)}")
    if len(formats) != 1:
        raise RequestError(400, f"send exactly one of: {', '.join(MLFLOW_FORMATS)}")
    fmt = formats[0]
    payload = req[fmt]
    if fmt == "dataframe_split":
        cols = _split(payload, limits)
    elif fmt == "inputs":
        cols = _columnar(payload, schema, limits)
    else:
        cols = rows_to_columns(payload, schema, "record" if fmt == "dataframe_records" else "instance", limits)
    return check_columns(cols, schema, limits)


def _csv_value(text: str, col: str, kind: str, row: int) -> Any:
    if text == "":
        return None
    try:
        if kind == "int":
            return int(text) if text.lstrip("+-").isascii() and text.lstrip("+-").isdigit() else float(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise RequestError(400, f"CSV column {col!r}: {text[:40]!r} at row {row} is not a number") from None
    if kind == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise RequestError(400, f"CSV column {col!r}: {text[:40]!r} at row {row} is not true/false")
    return text


def decode_csv(body: bytes, schema: Schema, limits: Limits = LIMITS) -> Columns:
    """CSV with a header row; values are converted by each column's declared type (empty means null)."""
    tensors = [c for c, s in schema.items() if s["type"] == "tensor"]
    if tensors:
        raise RequestError(415, f"tensor input(s) {', '.join(tensors)} need JSON: send application/json "
                                "(e.g. {\"inputs\": {name: [row, ...]}}), not text/csv")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise RequestError(400, "CSV body is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))  # newline="": CR, LF and CRLF all end a row
    try:
        rows = list(islice(reader, limits.rows + 2))
    except csv.Error as err:
        raise RequestError(400, f"malformed CSV: {err}") from None
    limits.check_rows(len(rows) - 1)
    if not rows:
        raise RequestError(400, "empty CSV: send a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise RequestError(400, "CSV header names a column twice")
    unknown = [h for h in header if h not in schema]
    if unknown:
        raise RequestError(400, f"unknown CSV column(s): {', '.join(h[:40] for h in unknown[:10])} "
                                f"(expected: {', '.join(schema)})")
    cols: dict[str, list[Any]] = {h: [] for h in header}
    for i, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise RequestError(400, f"CSV row {i} has {len(row)} fields, the header has {len(header)}")
        for h, v in zip(header, row):
            cols[h].append(_csv_value(v, h, schema[h]["type"], i))
    return check_columns(cols, schema, limits)


@dataclass(frozen=True)
class PredictRequest:
    """A ``/predict`` body: either validated columns, or entity rows to look up in the online store."""

    columns: Columns | None = None
    entities: dict[str, list[Any]] | None = None


def decode_predict(body: bytes, schema: Schema, join_keys: tuple[str, ...], limits: Limits = LIMITS) -> PredictRequest:
    """``[{...}]`` or ``{"records": [...]}`` -> columns; ``{"entities": [{key: value}, ...]}`` -> entity rows."""
    req = parse_json(body, limits)
    if isinstance(req, dict):
        keys = set(req)
        if keys == {"records"}:
            req = req["records"]
        elif keys == {"entities"}:
            return PredictRequest(entities=_entity_rows(req["entities"], join_keys, limits))
        else:
            raise RequestError(400, "expected a list of records, {\"records\": [...]} or {\"entities\": [...]}")
    return PredictRequest(columns=check_columns(rows_to_columns(req, schema, "record", limits), schema, limits))


def _entity_rows(entities: Any, join_keys: tuple[str, ...], limits: Limits) -> dict[str, list[Any]]:
    if not isinstance(entities, list) or not entities:
        raise RequestError(400, "'entities' must be a non-empty list of objects, e.g. "
                                f"[{{\"{join_keys[0]}\": 42}}]")
    limits.check_rows(len(entities))
    rows: dict[str, list[Any]] = {k: [] for k in join_keys}
    for i, ent in enumerate(entities):
        if not isinstance(ent, dict) or set(ent) != set(join_keys):
            raise RequestError(400, f"entity {i} must be an object with exactly the key(s) {', '.join(join_keys)}")
        for k in join_keys:
            v = ent[k]
            if type(v) is int and not -2 ** 63 <= v < 2 ** 63:
                raise RequestError(400, f"entity {i}: {k} is out of the int64 range")
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise RequestError(400, f"entity {i}: {k} must be an integer or a string, got {repr(v)[:60]}")
            if type(v) is str and len(v) > limits.string_length:
                raise RequestError(400, f"entity {i}: {k} is {len(v)} characters long; at most "
                                        f"{limits.string_length} are accepted (serving.max_string_length)")
            rows[k].append(v)
    return rows
