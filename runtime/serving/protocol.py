"""What every served protocol shares: client errors, and checking decoded columns against a model's input schema.

Each protocol module (:mod:`.oip`, :mod:`.scoring`) turns a request body into ``{column: values}`` and calls
:func:`check_columns`, which checks every value in place or raises :class:`RequestError` naming the column, the
row and the problem. Nothing here touches the model or the web framework.

A tensor input (spec ``{"type": "tensor", "dtype": "FP32", "shape": [1, 28, 28]}``, ``shape`` per row) decodes to
one C-contiguous numpy array of shape ``[N, *shape]`` in :data:`TENSOR_DTYPES` ``[dtype]``; it never goes through the
tabular checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

#: Validated request columns: JSON-decoded values stay lists (checked in place, no copies), binary tensors stay
#: numpy arrays. Nulls are None in lists; the encoder turns them into its own missing-value handling. A tensor
#: input's column is always an array of shape ``[N, *shape]`` (see :func:`check_tensor`).
Columns = dict[str, Sequence[Any]]
Schema = Mapping[str, Mapping[str, Any]]

_I64 = 2 ** 63

#: A tensor input's Open Inference Protocol datatype -> the numpy type of its decoded column (numpy has no
#: bfloat16: BF16 inputs are float32).
TENSOR_DTYPES = {
    "BOOL": np.dtype(np.bool_), "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64), "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16), "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.float32),
}
#: The numpy kinds of decoded values each tensor kind takes (floats take integers too; integers take integral
#: floats, range-checked).
_TENSOR_SOURCES = {"b": "b", "i": "iuf", "u": "iuf", "f": "iuf"}


class RequestError(Exception):
    """A client error: answered with ``status``, ``{"error": message}`` and any extra ``headers``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Limits:
    """What one request may carry (``serving.max_rows``, ``max_string_length``, ``max_json_depth``)."""

    rows: int = 10_000
    string_length: int = 4096
    json_depth: int = 32

    @classmethod
    def of(cls, serving: Any) -> Limits:
        return cls(serving.max_rows, serving.max_string_length, serving.max_json_depth)

    def check_rows(self, n: int) -> None:
        if n > self.rows:
            raise RequestError(413, f"the request has {n} rows; at most {self.rows} are accepted per request "
                                    "(serving.max_rows): split it")


#: The defaults, for callers without a project (tests, tools).
LIMITS = Limits()

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """How deeply the arrays and objects of a JSON document nest (strings skipped), vectorised."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    return int(np.cumsum(np.where((codes == 0x5B) | (codes == 0x7B), 1, -1)).max())


def parse_json(raw: bytes, limits: Limits = LIMITS, what: str = "send JSON") -> Any:
    """A JSON request body, or a 400 naming the problem: empty, too deeply nested, malformed, not UTF-8."""
    if not raw:
        raise RequestError(400, f"empty request body: {what}")
    if raw.count(b"[") + raw.count(b"{") > limits.json_depth and (depth := json_depth(raw)) > limits.json_depth:
        raise RequestError(400, f"JSON nested {depth} levels deep; at most {limits.json_depth} are accepted "
                                "(serving.max_json_depth)")
    try:
        return json.loads(raw)
    except RecursionError:
        raise RequestError(400, "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"malformed JSON: {err}") from None


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
            raise RequestError(400, f"input {col!r}: integer {_short(v)} at row {i} is out of the int64 range")
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
                                f"got {_short(v)}")
    return values


def _check_bools(col: str, spec: Mapping[str, Any], values: list[Any]) -> list[Any]:
    for i, v in enumerate(values):
        if type(v) is not bool:
            if v is None:
                _null(col, spec, i)
            else:
                raise RequestError(400, f"input {col!r}: expected true/false at row {i}, got {_short(v)}")
    return values


def _check_strings(col: str, spec: Mapping[str, Any], values: list[Any], max_length: int) -> list[Any]:
    allowed = spec.get("categories")
    allowed_set = frozenset(allowed) if allowed else None
    for i, v in enumerate(values):
        if type(v) is not str:
            if v is None:
                _null(col, spec, i)
                continue
            raise RequestError(400, f"input {col!r}: expected a string at row {i}, got {_short(v)}")
        if len(v) > max_length:
            raise RequestError(400, f"input {col!r}: a string of {len(v)} characters at row {i}; at most "
                                    f"{max_length} are accepted (serving.max_string_length)")
        if allowed_set is not None and v not in allowed_set:
            raise RequestError(400, f"input {col!r}: unknown category {_short(v)} at row {i} "
                                    f"(allowed: {', '.join(allowed)})")
    return values


def _short(v: Any, limit: int = 80) -> str:
    """A value as written in an error message, cut to ``limit`` characters."""
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


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


def _scalars(values: Any) -> Any:
    """The leaves of nested lists, row-major."""
    for v in values:
        if type(v) is list:
            yield from _scalars(v)
        else:
            yield v


def _bad_element(col: str, dtype: str, values: Any, per_row: int) -> RequestError:
    """The error naming the first element of the wrong type (only called once a vectorised check failed)."""
    what = "true/false" if dtype == "BOOL" else "an integer" if TENSOR_DTYPES[dtype].kind in "iu" else "a number"
    leaves = values.ravel().tolist() if isinstance(values, np.ndarray) else values
    for i, v in enumerate(_scalars(leaves)):
        t = type(v)
        if t is int and dtype != "BOOL" and not -_I64 <= v < 2 * _I64:
            return RequestError(400, f"input {col!r}: integer {v} at row {i // per_row} is out of the 64-bit range")
        if (t is not bool) if dtype == "BOOL" else (t is not int and t is not float):
            return RequestError(400, f"input {col!r}: expected {what} at row {i // per_row}, got {_short(v)}")
    return RequestError(400, f"input {col!r}: expected {what} values")


def _first(col: str, bad: np.ndarray, values: Any, per_row: int, problem: str) -> RequestError:
    """The error naming the first element ``bad`` marks, as sent (``values``: an array or nested lists)."""
    i = int(np.argmax(bad.ravel()))
    v = values.ravel()[i].item() if isinstance(values, np.ndarray) else next(islice(_scalars(values), i, None))
    return RequestError(400, f"input {col!r}: {problem.format(v=v)} at row {i // per_row}")


def tensor_array(col: str, spec: Mapping[str, Any], values: Any, rows: int | None = None) -> np.ndarray:
    """A tensor input's values as a C-contiguous array of its declared dtype, element types and ranges checked
    (finiteness is :func:`check_tensor`'s). ``rows=None``: ``values`` holds one nested list (or array) of the
    declared shape per row. ``rows=N``: ``values`` holds the ``N * prod(shape)`` elements in row-major order, flat
    or nested to any depth (Open Inference Protocol ``data``), and the result is reshaped to ``[N, *shape]``."""
    dtype = spec["dtype"]
    target = TENSOR_DTYPES[dtype]
    shape = tuple(spec["shape"])
    per_row = int(np.prod(shape))
    if isinstance(values, np.ndarray):
        src = values
    else:
        try:
            src = np.asarray(values)  # one pass in C; the element types are checked on its dtype
        except (ValueError, TypeError, OverflowError):
            raise RequestError(400, f"input {col!r}: ragged nested lists; each row must have shape "
                                    f"{list(shape)}") from None
    if rows is None:
        if src.shape[1:] != shape:
            raise RequestError(400, f"input {col!r}: each row must have shape {list(shape)}, got shape "
                                    f"{list(src.shape[1:])}")
    elif src.size != rows * per_row:
        raise RequestError(400, f"input {col!r}: shape {[rows, *shape]} needs {rows * per_row} values, "
                                f"got {src.size}")
    kind = src.dtype.kind
    if not src.size:
        out = np.ascontiguousarray(src, dtype=target)
    elif kind not in _TENSOR_SOURCES[target.kind]:
        raise _bad_element(col, dtype, values, per_row)
    elif target.kind in "iu":
        out = _integers(col, dtype, values, src, per_row)
    elif target.kind == "f" and (src.dtype.itemsize > target.itemsize if kind == "f" else target.itemsize == 2):
        with np.errstate(over="ignore"):  # a narrowing cast: name a finite value it overflowed
            out = np.ascontiguousarray(src, dtype=target)
        overflow = np.isinf(out)
        if overflow.any() and (overflow := overflow & np.isfinite(src)).any():  # (check_tensor names an inf)
            raise _first(col, overflow, values, per_row, "value {v!r} is out of the " + dtype + " range")
    else:
        out = np.ascontiguousarray(src, dtype=target)
    return out if rows is None else out.reshape((rows, *shape))


def _integers(col: str, dtype: str, values: Any, src: np.ndarray, per_row: int) -> np.ndarray:
    """An integer tensor from integers or integral floats, range-checked."""
    target = TENSOR_DTYPES[dtype]
    if src.dtype == target:
        return np.ascontiguousarray(src)
    kind = src.dtype.kind
    if kind == "f":
        frac = src != np.floor(src)  # NaN included
        if frac.any():
            raise _first(col, frac, values, per_row, "expected an integer, got {v!r}")
    info = np.iinfo(target)
    out_of_range = (src < info.min) | (src >= float(info.max) + 1 if kind == "f" else src > info.max)
    if out_of_range.any():
        raise _first(col, out_of_range, values, per_row, "value {v!r} is out of the " + dtype + " range")
    if kind == "f" and not isinstance(values, np.ndarray):
        # numpy reads [1, 2**63 + 1] as float64: convert the sent numbers one by one so large integers stay exact
        try:
            return np.asarray(values, dtype=target)
        except OverflowError:
            raise RequestError(400, f"input {col!r}: a value is out of the {dtype} range") from None
    return np.ascontiguousarray(src, dtype=target)


def check_tensor(col: str, spec: Mapping[str, Any], values: Any) -> np.ndarray:
    """A tensor column: one nested list (or array) of the declared shape per row, or an array from
    :func:`tensor_array` -> a C-contiguous array of shape ``[N, *shape]`` in the declared dtype's numpy type
    (:data:`TENSOR_DTYPES`); non-finite floats are refused. An array that already is one is not copied."""
    target = TENSOR_DTYPES[spec["dtype"]]
    shape = tuple(spec["shape"])
    if not (type(values) is np.ndarray and values.dtype == target and values.shape[1:] == shape
            and values.ndim == len(shape) + 1 and values.flags.c_contiguous):
        values = tensor_array(col, spec, values)
    if target.kind == "f" and values.size:
        finite = np.isfinite(values)
        if not finite.all():
            raise _first(col, ~finite, values, values.size // len(values), "non-finite value {v!r}")
    return values


def check_column(col: str, spec: Mapping[str, Any], values: Sequence[Any], limits: Limits = LIMITS) -> Sequence[Any]:
    """Check one column's values against its declared spec (see :data:`Columns`)."""
    t = spec["type"]
    if t == "tensor":
        return check_tensor(col, spec, values)
    if isinstance(values, np.ndarray) and values.dtype != object:
        return _check_array(col, spec, values)
    values = values if type(values) is list else list(values)
    if t in ("int", "float"):
        return _check_numbers(col, spec, values)
    if t == "bool":
        return _check_bools(col, spec, values)
    return _check_strings(col, spec, values, limits.string_length)


def check_columns(cols: Mapping[str, Sequence[Any]], schema: Schema, limits: Limits = LIMITS) -> Columns:
    """Validate decoded columns against the model's input schema: every input present, nothing unknown, equal
    lengths (rows: a tensor input's first dimension), at least one row and at most ``limits.rows``, and each value
    of its column's type."""
    missing = [c for c in schema if c not in cols]
    if missing:
        raise RequestError(400, f"missing input(s): {', '.join(missing)}")
    if len(cols) != len(schema):
        unknown = [str(c)[:40] for c in cols if c not in schema]
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise RequestError(400, f"unknown input(s): {', '.join(unknown[:10])}{more} (expected: {', '.join(schema)})")
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1:
        raise RequestError(400, "inputs have different lengths: "
                                + ", ".join(f"{c}={len(v)}" for c, v in cols.items()))
    rows = lengths.pop()
    if rows == 0:
        raise RequestError(400, "empty input: send at least one row")
    limits.check_rows(rows)
    return {c: check_column(c, spec, cols[c], limits) for c, spec in schema.items()}


def rows_to_columns(records: Any, schema: Schema, what: str = "record",
                    limits: Limits = LIMITS) -> dict[str, list[Any]]:
    """``[{col: value}, ...]`` -> ``{col: [values]}``, naming the first record with a missing or unknown column."""
    if not isinstance(records, list):
        raise RequestError(400, f"expected a list of {what}s (objects)")
    if not records:
        raise RequestError(400, f"empty input: send at least one {what}")
    limits.check_rows(len(records))
    names = list(schema)
    cols: dict[str, list[Any]] = {c: [] for c in names}
    appends = [(c, cols[c].append) for c in names]
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise RequestError(400, f"{what} {i} is not an object")
        if len(rec) != len(names):
            extra = sorted(str(c)[:40] for c in set(rec) - set(names))
            if extra:
                raise RequestError(400, f"{what} {i}: unknown column(s) {', '.join(extra[:10])}"
                                        + (f" and {len(extra) - 10} more" if len(extra) > 10 else ""))
        for c, append in appends:
            try:
                append(rec[c])
            except KeyError:
                raise RequestError(400, f"{what} {i}: missing column {c!r}") from None
    return cols
