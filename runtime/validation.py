"""Coerce a DataFrame to the schema declared in ``loom.yaml`` and report every way it does not fit.

Data arrives with whatever types its reader inferred (CSV text, parquet types, JSON objects). Each declared
column is converted by one explicit rule for its type; a present value that the rule cannot convert is reported
as a problem and becomes missing in the coerced frame, so nothing is silently turned into NaN.

Input columns are booleans, numbers, datetimes or text; a column of any other dtype (object, categorical,
timedelta, ...) is taken as the text of its values. Missing values: ``None``, ``NaN``, ``NaT``, ``pd.NA`` and
empty or whitespace-only strings, in every type.

Coercion rules, by declared type:

* ``int`` -> pandas ``Int64``. Integers; floats with a whole-number value (``3.0``); strings that parse as a
  number with a whole-number value (``"42"``, ``" -7 "``). ``3.5``, ``"abc"``, ``inf`` and booleans are problems.
* ``float`` -> ``float64``. Numbers and strings that parse as numbers. Booleans and other text are problems.
* ``bool`` -> pandas ``boolean``. Booleans; the numbers 0 and 1; the strings true/false, yes/no, t/f, y/n, 1/0
  in any case. Anything else is a problem.
* ``string`` -> pandas ``string`` (pyarrow-backed). Any value, as its text.
* ``category`` -> pandas ``string``, like ``string``; values must be in ``categories`` when they are declared.
* ``timestamp`` -> ``datetime64[ns]``, tz-naive, in UTC. Datetimes (tz-aware ones are converted to UTC, naive ones
  are taken as UTC), ISO 8601 strings (with or without an offset) and numeric columns (Unix epoch seconds).
  Other text, including digits in a text column, is a problem.

Checks, each reported as one line naming the source and the column, with up to three example rows:

* a declared column is missing or appears more than once (undeclared columns are dropped, which is fine);
* present values that cannot be coerced to the declared type;
* a column that is entirely null (only when there is at least one row);
* nulls in a column declared ``nullable: false``;
* values below ``min`` or above ``max`` (``int`` and ``float`` columns);
* values not in ``categories`` (``category`` columns).

Row numbers in messages are 0-based positions in the frame that was checked. Values that fail a range or
category check stay in the coerced frame; a caller that continues despite problems decides what to do with them.
Everything is vectorised (no per-row Python), so a million rows take seconds at most.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from .config import ColumnSpec
from .errors import DataValidationError

#: Text is held as pyarrow-backed pandas ``string``: its string operations are vectorised in C++, not per value.
_TEXT = pd.StringDtype("pyarrow")
#: Resulting pandas dtype of each declared type.
DTYPES: dict[str, str | pd.api.extensions.ExtensionDtype] = {
    "int": "Int64",
    "float": "float64",
    "bool": "boolean",
    "string": _TEXT,
    "category": _TEXT,
    "timestamp": "datetime64[ns]",
}

_BOOL_WORDS = {
    **dict.fromkeys(["true", "t", "yes", "y", "1"], True),
    **dict.fromkeys(["false", "f", "no", "n", "0"], False),
}
_EXAMPLES = 3


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_frame`."""

    source: str
    """Where the data came from (file or URI), as named in messages."""
    rows: int
    """Rows checked."""
    frame: pd.DataFrame
    """The coerced frame: declared columns only, in declared order, with a fresh RangeIndex."""
    problems: list[str]
    """One line per problem; empty when the data is valid."""
    bad_rows: int
    """Rows with at least one problem."""

    @property
    def ok(self) -> bool:
        return not self.problems


# -- coercion --------------------------------------------------------------------------------------------------


def _kind(s: pd.Series) -> str:
    """What a column holds: ``bool``, ``number``, ``datetime`` or ``text`` (everything else is turned into text)."""
    if ptypes.is_bool_dtype(s):
        return "bool"
    if ptypes.is_numeric_dtype(s):
        return "number"
    if ptypes.is_datetime64_any_dtype(s):
        return "datetime"
    return "text"


def _normalise(s: pd.Series) -> pd.Series:
    """Turn a text-like column (object, string, categorical, ...) into pandas ``string`` with blanks as missing."""
    if _kind(s) != "text":
        return s
    s = s.astype(object).astype(_TEXT)
    return s.mask(s.str.strip() == "")


def _all_missing(index: pd.Index, dtype: str | pd.api.extensions.ExtensionDtype) -> pd.Series:
    return pd.Series(index=index, dtype=dtype)


def _to_int(s: pd.Series) -> pd.Series:
    kind = _kind(s)
    if kind == "text":
        s = pd.to_numeric(s, errors="coerce", dtype_backend="numpy_nullable")
    elif kind != "number":
        return _all_missing(s.index, "Int64")
    if ptypes.is_integer_dtype(s):  # exact, even for ids above 2**53
        return s.astype("Int64")
    f = s.astype("float64")
    return f.where(np.isfinite(f) & (f % 1 == 0)).astype("Int64")


def _to_float(s: pd.Series) -> pd.Series:
    kind = _kind(s)
    if kind == "text":
        s = pd.to_numeric(s, errors="coerce")
    elif kind != "number":
        return _all_missing(s.index, "float64")
    return s.astype("float64")


def _to_bool(s: pd.Series) -> pd.Series:
    kind = _kind(s)
    if kind == "bool":
        return s.astype("boolean")
    if kind == "number":
        f = s.astype("float64")
        return f.where(f.isin([0.0, 1.0])).astype("boolean")
    if kind == "text":
        return s.str.strip().str.lower().map(_BOOL_WORDS).astype("boolean")
    return _all_missing(s.index, "boolean")


def _to_string(s: pd.Series) -> pd.Series:
    return s.astype(_TEXT)


def _to_timestamp(s: pd.Series) -> pd.Series:
    kind = _kind(s)
    if kind == "datetime":
        t = s
    elif kind == "number":
        t = pd.to_datetime(s.astype("float64"), unit="s", errors="coerce", utc=True)
    elif kind == "text":
        t = pd.to_datetime(s, format="ISO8601", errors="coerce", utc=True)
    else:
        return _all_missing(s.index, "datetime64[ns]")
    if t.dt.tz is not None:
        t = t.dt.tz_convert("UTC").dt.tz_localize(None)
    return t.astype("datetime64[ns]")


_COERCE: dict[str, Callable[[pd.Series], pd.Series]] = {
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "string": _to_string,
    "category": _to_string,
    "timestamp": _to_timestamp,
}


# -- problem lines -------------------------------------------------------------------------------------------


def _bools(x: pd.Series) -> np.ndarray:
    return x.to_numpy(dtype=bool, na_value=False)


def _number(x: float) -> str:
    return str(int(x)) if x.is_integer() else str(x)


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _problem(
    source: str, column: str, what: str, mask: np.ndarray, values: pd.Series | None, noun: str = "value"
) -> str:
    """``source: column 'x': N <noun>(s) <what> (e.g. row 3: 'a', row 9: 'b')``; rows only when no ``values``."""
    n = int(mask.sum())
    rows = np.flatnonzero(mask)[:_EXAMPLES]
    if values is None:
        examples = ", ".join(f"row {r}" for r in rows)
    else:
        examples = ", ".join(f"row {r}: {_show(v)}" for r, v in zip(rows, values.iloc[rows].tolist()))
    return f"{source}: column {column!r}: {n} {noun}{'s' if n != 1 else ''} {what} (e.g. {examples})"


def _check_column(
    raw: pd.Series, spec: ColumnSpec, name: str, source: str
) -> tuple[pd.Series, list[str], np.ndarray]:
    """Coerce one column and check it; return (coerced, problems, bad-row mask)."""
    s = _normalise(raw)
    coerced = _COERCE[spec.type](s)
    missing = s.isna().to_numpy()
    problems: list[str] = []

    uncoercible = ~missing & coerced.isna().to_numpy()
    if uncoercible.any():
        problems.append(_problem(source, name, f"cannot be coerced to {spec.type}", uncoercible, raw))

    nulls = missing if not spec.nullable else np.zeros_like(missing)
    if len(missing) and missing.all():
        problems.append(f"{source}: column {name!r} is entirely null")
    elif nulls.any():
        problems.append(_problem(source, name, "in a non-nullable column", nulls, None, noun="null value"))

    checks: list[tuple[pd.Series, str]] = []
    if spec.type in ("int", "float") and spec.min is not None:
        checks.append((coerced < spec.min, f"below min {_number(spec.min)}"))
    if spec.type in ("int", "float") and spec.max is not None:
        checks.append((coerced > spec.max, f"above max {_number(spec.max)}"))
    if spec.type == "category" and spec.categories is not None:
        checks.append((coerced.notna() & ~coerced.isin(spec.categories), f"not in categories {spec.categories}"))

    bad = uncoercible | nulls
    for condition, what in checks:
        mask = _bools(condition)
        if mask.any():
            problems.append(_problem(source, name, what, mask, coerced))
            bad |= mask
    return coerced, problems, bad


# -- public API ----------------------------------------------------------------------------------------------


def coerce_frame(
    df: pd.DataFrame, columns: Mapping[str, ColumnSpec], *, source: str
) -> tuple[pd.DataFrame, list[str], pd.Series]:
    """Coerce ``df`` to the declared ``columns`` by the rules in this module's docstring.

    :return: ``(frame, problems, bad)``: the coerced frame (declared columns only, in declared order, fresh
        RangeIndex; a missing column is all-null), one line per problem, and a boolean Series marking the rows
        with at least one problem.
    """
    df = df.reset_index(drop=True)
    bad = np.zeros(len(df), dtype=bool)
    problems: list[str] = []
    out: dict[str, pd.Series] = {}
    for name, spec in columns.items():
        copies = int((df.columns == name).sum())
        if copies != 1:
            problems.append(f"{source}: column {name!r} " + ("is missing" if not copies else f"appears {copies} times"))
            out[name] = _all_missing(df.index, DTYPES[spec.type])
            continue
        out[name], col_problems, col_bad = _check_column(df[name], spec, name, source)
        problems += col_problems
        bad |= col_bad
    return pd.DataFrame(out, index=df.index), problems, pd.Series(bad, index=df.index)


def validate_frame(
    df: pd.DataFrame, columns: Mapping[str, ColumnSpec], *, source: str, raise_on_error: bool = True
) -> ValidationReport:
    """Coerce and check ``df`` against the declared ``columns``.

    :param source: where the data came from (file or URI); every problem line starts with it.
    :param raise_on_error: raise :class:`runtime.DataValidationError` listing every problem when there are any.
    """
    frame, problems, bad = coerce_frame(df, columns, source=source)
    if problems and raise_on_error:
        raise DataValidationError(source, problems)
    return ValidationReport(source=source, rows=len(frame), frame=frame, problems=problems, bad_rows=int(bad.sum()))
