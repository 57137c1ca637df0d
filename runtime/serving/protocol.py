"""What every served protocol shares: client errors, and checking decoded columns against a model's input schema.

Each protocol module (:mod:`.oip`, :mod:`.scoring`) turns a request body into ``{column: values}`` and calls
:func:`check_columns`, which checks every value in place or raises :class:`RequestError` naming the column, the
row and the problem. Nothing here touches the model or the web framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Validated request columns: JSON-decoded values stay lists (checked in place, no copies), binary tensors stay
#: numpy arrays. Nulls are None in lists; the encoder turns them into its own missing-value handling.
Columns = dict[str, Sequence[Any]]
Schema = Mapping[str, Mapping[str, Any]]

_I64 = 2 ** 63


class RequestError(Exception):
    """A client error: answered with ``status``, ``{"error": message}`` and any extra ``headers``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _null(col: str, spec: Mapping[str, Any], i: int) -> None:
    if not spec.get("nullable", True):
        raise RequestError(400, f"input {col!r}: null at row {i}, but the column is not nullable")


def _check_numbers(col: str, spec: Mapping[str, Any], values: list[Any]) -> list[Any]:
    is_int = spec["type"] == "int"
    for i, v in enumerate(values):
        t = type(v)
        if t is int:
            if -_I64 <= v < _I64:
                continue
            raise RequestError(400, f"input {col!r}: integer {v} at row {i} is out of the int64 range")
        if t is float:
            if v - v != 0.0:  # NaN or infinite
                raise RequestError(400, f"input {col!r}: non-finite value {v!r} at row {i}")
            if is_int and not v.is_integer():
                raise RequestError(400, f"input {col!r}: expected an integer at row {i}, got {v!r}")
            continue
        if v is None:
            _null(col, spec, i)
            continue
        raise RequestError(400, f"input {col!r}: expected {'an integer' if is_int else 'a number'} at row {i}, "
                                f"got {v!r}")
    return values


def _check_bools(col: str, spec: Mapping[str, Any], values: list[Any]) -> list[Any]:
    for i, v in enumerate(values):
        if type(v) is not bool:
            if v is None:
                _null(col, spec, i)
            else:
                raise RequestError(400, f"input {col!r}: expected true/false at row {i}, got {v!r}")
    return values


def _check_strings(col: str, spec: Mapping[str, Any], values: list[Any]) -> list[Any]:
    allowed = spec.get("categories")
    allowed_set = frozenset(allowed) if allowed else None
    for i, v in enumerate(values):
        if type(v) is not str:
            if v is None:
                _null(col, spec, i)
                continue
            raise RequestError(400, f"input {col!r}: expected a string at row {i}, got {v!r}")
        if allowed_set is not None and v not in allowed_set:
            raise RequestError(400, f"input {col!r}: unknown category {v!r} at row {i} "
                                    f"(allowed: {', '.join(allowed)})")
    return values


def _check_array(col: str, spec: Mapping[str, Any], arr: np.ndarray) -> np.ndarray:
    """Binary tensors arrive typed: checks run vectorised."""
    t = spec["type"]
    if t == "bool":
        return arr.astype(bool, copy=False)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            i = int(np.argmax(bad))
            raise RequestError(400, f"input {col!r}: non-finite value {arr[i]!r} at row {i}")
        if t == "int":
            frac = arr != np.floor(arr)
            if frac.any():
                i = int(np.argmax(frac))
                raise RequestError(400, f"input {col!r}: expected an integer at row {i}, got {arr[i]!r}")
            return arr.astype(np.int64)
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind == "u" and t == "int" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise RequestError(400, f"input {col!r}: integer out of the int64 range")
    return arr.astype(np.int64 if t == "int" else np.float64, copy=False)


def check_column(col: str, spec: Mapping[str, Any], values: Sequence[Any]) -> Sequence[Any]:
    """Check one column's values against its declared spec (see :data:`Columns`)."""
    t = spec["type"]
    if isinstance(values, np.ndarray) and values.dtype != object:
        return _check_array(col, spec, values)
    values = values if type(values) is list else list(values)
    if t in ("int", "float"):
        return _check_numbers(col, spec, values)
    if t == "bool":
        return _check_bools(col, spec, values)
    return _check_strings(col, spec, values)


def check_columns(cols: Mapping[str, Sequence[Any]], schema: Schema) -> Columns:
    """Validate decoded columns against the model's input schema: every input present, nothing unknown, equal
    lengths, at least one row, and each value of its column's type."""
    missing = [c for c in schema if c not in cols]
    if missing:
        raise RequestError(400, f"missing input(s): {', '.join(missing)}")
    if len(cols) != len(schema):
        unknown = [c for c in cols if c not in schema]
        raise RequestError(400, f"unknown input(s): {', '.join(map(str, unknown))} (expected: {', '.join(schema)})")
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1:
        raise RequestError(400, "inputs have different lengths: "
                                + ", ".join(f"{c}={len(v)}" for c, v in cols.items()))
    if lengths.pop() == 0:
        raise RequestError(400, "empty input: send at least one row")
    return {c: check_column(c, spec, cols[c]) for c, spec in schema.items()}


def rows_to_columns(records: Any, schema: Schema, what: str = "record") -> dict[str, list[Any]]:
    """``[{col: value}, ...]`` -> ``{col: [values]}``, naming the first record with a missing or unknown column."""
    if not isinstance(records, list):
        raise RequestError(400, f"expected a list of {what}s (objects)")
    if not records:
        raise RequestError(400, f"empty input: send at least one {what}")
    names = list(schema)
    cols: dict[str, list[Any]] = {c: [] for c in names}
    appends = [(c, cols[c].append) for c in names]
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise RequestError(400, f"{what} {i} is not an object")
        if len(rec) != len(names):
            extra = sorted(map(str, set(rec) - set(names)))
            if extra:
                raise RequestError(400, f"{what} {i}: unknown column(s) {', '.join(extra)}")
        for c, append in appends:
            try:
                append(rec[c])
            except KeyError:
                raise RequestError(400, f"{what} {i}: missing column {c!r}") from None
    return cols
