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
* ``tensor`` -> an object column of numpy arrays of the declared ``shape`` and ``dtype``. Each value is a list,
  a nested list or an array (a Parquet list or fixed-size-list column), or the path of a ``.npy`` file (relative
  to the project directory; loaded without pickle). A value of another shape, non-numeric or non-finite elements,
  or a file that cannot be read is a problem.
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

Row numbers in messages are 0-based positions in the data that was checked (across all batches). Values that
fail a range or category check stay in the coerced frame of :func:`validate_frame`; a caller that continues despite
problems decides what to do with them.

Bad rows are never silently dropped. :func:`validate_batches` (what ``loom ingest`` uses) applies the project's
policy: ``reject`` fails with every problem listed; ``quarantine`` writes the bad rows (their values as read, their
0-based row number ``_loom_row`` and the reasons ``_loom_problems``) to a CSV file and continues with the others,
unless more than ``max_fraction`` of the rows are bad. Problems with a whole column (missing, duplicated, entirely
null) cannot be quarantined and always fail.

Everything is vectorised (no per-row Python), so a million rows take seconds at most, and data is checked one
batch at a time, so a large source is never held twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from .config import ColumnSpec
from .errors import DataValidationError
from .secrets import redact

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
    "tensor": "object",
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
    quarantined: int = 0
    """Bad rows written to :attr:`quarantine_file` instead of being kept in :attr:`frame`."""
    quarantine_file: Path | None = None

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


@dataclass
class _Tally:
    """One kind of row problem in one column, counted over every batch, with the first few examples."""

    column: str
    what: str
    noun: str
    show_values: bool
    count: int = 0
    examples: list[tuple[int, object]] = field(default_factory=list)

    def add(self, mask: np.ndarray, values: pd.Series, offset: int) -> None:
        self.count += int(mask.sum())
        room = _EXAMPLES - len(self.examples)
        if room > 0:
            rows = np.flatnonzero(mask)[:room]
            shown = values.iloc[rows].tolist() if self.show_values else [None] * len(rows)
            self.examples += [(int(r) + offset, v) for r, v in zip(rows, shown)]

    def line(self, source: str) -> str:
        """``source: column 'x': N <noun>(s) <what> (e.g. row 3: 'a', row 9: 'b')``."""
        if self.show_values:
            examples = ", ".join(f"row {r}: {_show(v)}" for r, v in self.examples)
        else:
            examples = ", ".join(f"row {r}" for r, _ in self.examples)
        plural = "s" if self.count != 1 else ""
        return f"{source}: column {self.column!r}: {self.count} {self.noun}{plural} {self.what} (e.g. {examples})"


_Check = tuple[str, str, np.ndarray, pd.Series, bool]  # (what, noun, mask, values, show values)


def _check_column(raw: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, np.ndarray, list[_Check]]:
    """Coerce one column; return (coerced, missing mask, row checks). Nulls in a non-nullable column come first
    after uncoercible values, so that messages keep one order: coercion, nulls, min, max, categories."""
    s = _normalise(raw)
    coerced = _COERCE[spec.type](s)
    missing = s.isna().to_numpy()
    checks: list[_Check] = [
        (f"cannot be coerced to {spec.type}", "value", ~missing & coerced.isna().to_numpy(), raw, True),
        ("in a non-nullable column", "null value", missing if not spec.nullable else np.zeros_like(missing), raw,
         False),
    ]
    if spec.type in ("int", "float") and spec.min is not None:
        checks.append((f"below min {_number(spec.min)}", "value", _bools(coerced < spec.min), coerced, True))
    if spec.type in ("int", "float") and spec.max is not None:
        checks.append((f"above max {_number(spec.max)}", "value", _bools(coerced > spec.max), coerced, True))
    if spec.type == "category" and spec.categories is not None:
        outside = _bools(coerced.notna() & ~coerced.isin(spec.categories))
        checks.append((f"not in categories {spec.categories}", "value", outside, coerced, True))
    return coerced, missing, checks


def _tensor_value(value: object, spec: ColumnSpec, base_dir: Path | None) -> np.ndarray:
    from .model import TENSOR_NUMPY

    if isinstance(value, str):
        path = Path(value)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if path.suffix != ".npy":
            raise ValueError("a path must name a .npy file")
        value = np.load(path, allow_pickle=False)
    arr = np.asarray(value)
    if arr.dtype == object:
        arr = np.stack([np.asarray(v) for v in value]) if len(arr) else arr  # a Parquet list of lists
    dtype = np.dtype(TENSOR_NUMPY[spec.dtype or "FP32"])
    if arr.dtype.kind not in "biuf":
        raise ValueError("not numeric")
    if tuple(arr.shape) != tuple(spec.shape or ()):
        if arr.size == int(np.prod(spec.shape or ())) and arr.ndim <= 1:
            arr = arr.reshape(spec.shape)  # a flat Parquet list of the right length
        else:
            raise ValueError(f"shape {list(arr.shape)}")
    if dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError("non-finite elements")
    return np.ascontiguousarray(arr, dtype=dtype)


def _describe(value: object) -> str:
    try:
        return f"values of shape {list(np.shape(value))}"
    except ValueError:  # ragged nested lists
        return "ragged values"


def _check_tensor(raw: pd.Series, spec: ColumnSpec, base_dir: Path | None) -> tuple[pd.Series, np.ndarray,
                                                                                    list[_Check]]:
    """Coerce a tensor column row by row (see the module docstring)."""
    values = raw.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=object)
    missing = np.zeros(len(values), dtype=bool)
    failed = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()):
            missing[i] = True
            continue
        try:
            out[i] = _tensor_value(v, spec, base_dir)
        except (ValueError, TypeError, OSError):
            failed[i] = True
    shown = pd.Series([v if isinstance(v, str) else _describe(v) for v in values], index=raw.index)
    checks: list[_Check] = [
        (f"cannot be read as a {spec.dtype} tensor of shape {spec.shape}", "value", failed, shown, True),
        ("in a non-nullable column", "null value", missing if not spec.nullable else np.zeros_like(missing), raw,
         False),
    ]
    return pd.Series(out, index=raw.index, dtype=object), missing, checks


# -- validating batch by batch ---------------------------------------------------------------------------------


class BatchValidator:
    """Coerces batches to the declared columns and tallies problems across them (row numbers continue): what
    training's ingest quarantines with, and batch scoring (:mod:`runtime.batch`) checks each batch with."""

    def __init__(self, columns: Mapping[str, ColumnSpec], source: str, *, empty_columns: bool = False,
                 base_dir: Path | None = None) -> None:
        self.columns = dict(columns)
        self.source = redact(source)
        self.base_dir = base_dir
        self.empty_columns = empty_columns
        self.rows = 0
        self.bad_rows = 0
        self.column_problems: dict[str, str] = {}
        self.tallies: dict[tuple[str, str], _Tally] = {}
        self.seen_value = dict.fromkeys(self.columns, False)

    def add(self, df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """Coerce one batch; return (coerced frame with a fresh RangeIndex, bad-row mask, per-row reasons)."""
        df = df.reset_index(drop=True)
        n = len(df)
        bad = np.zeros(n, dtype=bool)
        reasons = np.full(n, "", dtype=object)
        out: dict[str, pd.Series] = {}
        for name, spec in self.columns.items():
            copies = int((df.columns == name).sum())
            if copies != 1:
                self.column_problems.setdefault(
                    name, f"{self.source}: column {name!r} " + ("is missing" if not copies else f"appears {copies} times"))
                self.seen_value[name] = True  # the column is already reported; "entirely null" would repeat it
                out[name] = _all_missing(df.index, DTYPES[spec.type])
                continue
            out[name], missing, checks = (_check_tensor(df[name], spec, self.base_dir) if spec.type == "tensor"
                                          else _check_column(df[name], spec))
            self.seen_value[name] = self.seen_value[name] or not missing.all()
            for what, noun, mask, values, show in checks:
                if mask.any():
                    key = (name, what)
                    if key not in self.tallies:
                        self.tallies[key] = _Tally(name, what, noun, show)
                    self.tallies[key].add(mask, values, self.rows)
                    bad |= mask
                    reasons[mask] = reasons[mask] + f"; {name}: {noun} {what}"
        self.rows += n
        self.bad_rows += int(bad.sum())
        return pd.DataFrame(out, index=df.index), bad, reasons

    def whole_column_problems(self) -> dict[str, str]:
        """Problems with a whole column (missing, duplicated, entirely null), by column."""
        out = dict(self.column_problems)
        for name, seen in self.seen_value.items():
            if self.rows and not seen and not self.empty_columns:
                out[name] = f"{self.source}: column {name!r} is entirely null"
        return out

    def problems(self) -> list[str]:
        """Every problem in declared column order: a whole-column one, else its row problems by kind."""
        whole = self.whole_column_problems()
        lines = []
        for name in self.columns:
            if name in whole:
                lines.append(whole[name])  # an entirely null column's non-nullable nulls are the same news
            else:
                lines += [t.line(self.source) for (col, _), t in self.tallies.items() if col == name]
        return lines


def coerce_frame(
    df: pd.DataFrame, columns: Mapping[str, ColumnSpec], *, source: str, empty_columns: bool = False
) -> tuple[pd.DataFrame, list[str], pd.Series]:
    """Coerce ``df`` to the declared ``columns`` by the rules in this module's docstring.

    :param empty_columns: accept a nullable column that is entirely null (a small push of fresh values may
        have none for some feature); by default that is reported, since in a data set it signals a broken source.

    :return: ``(frame, problems, bad)``: the coerced frame (declared columns only, in declared order, fresh
        RangeIndex; a missing column is all-null), one line per problem, and a boolean Series marking the rows
        with at least one problem.
    """
    validator = BatchValidator(columns, source, empty_columns=empty_columns)
    frame, bad, _ = validator.add(df)
    return frame, validator.problems(), pd.Series(bad, index=frame.index)


def validate_frame(
    df: pd.DataFrame, columns: Mapping[str, ColumnSpec], *, source: str, raise_on_error: bool = True,
    empty_columns: bool = False,
) -> ValidationReport:
    """Coerce and check ``df`` against the declared ``columns``.

    :param source: where the data came from (file or URI); every problem line starts with it, secrets redacted.
    :param raise_on_error: raise :class:`runtime.DataValidationError` listing every problem when there are any.
    :param empty_columns: accept entirely null nullable columns (see :func:`coerce_frame`).
    """
    source = redact(source)
    frame, problems, bad = coerce_frame(df, columns, source=source, empty_columns=empty_columns)
    if problems and raise_on_error:
        raise DataValidationError(source, problems)
    return ValidationReport(source=source, rows=len(frame), frame=frame, problems=problems, bad_rows=int(bad.sum()))


def validate_batches(
    batches: Iterable[pd.DataFrame],
    columns: Mapping[str, ColumnSpec],
    *,
    source: str,
    policy: Literal["reject", "quarantine"] = "reject",
    quarantine_dir: Path | None = None,
    max_fraction: float = 1.0,
    base_dir: Path | None = None,
) -> ValidationReport:
    """Validate a source batch by batch and apply the bad-row ``policy`` (see the module docstring).

    :param batches: the source's batches (``DataSource.iter_batches``); each is coerced, then released.
    :param quarantine_dir: where ``quarantine`` writes ``quarantine-<UTC time>.csv`` (created when needed).
    :param max_fraction: with ``quarantine``, fail when more than this fraction of rows is bad.
    :param base_dir: what relative ``.npy`` paths of tensor columns are relative to (the project directory).
    :return: a report whose ``frame`` holds the good rows only; ``quarantined`` counts the others.
    :raises DataValidationError: with ``reject`` on any problem; with ``quarantine`` on a whole-column problem or
        too many bad rows. The message lists every problem and how many rows are bad.
    """
    if policy == "quarantine" and quarantine_dir is None:
        raise ValueError("the quarantine policy needs a quarantine_dir")
    source = redact(source)  # it starts every problem line and names the source in the report
    validator = BatchValidator(columns, source, base_dir=base_dir)
    good: list[pd.DataFrame] = []
    file = quarantine_dir / f"quarantine-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.csv" if quarantine_dir else None
    written = 0
    for batch in batches:
        offset = validator.rows
        frame, bad, reasons = validator.add(batch)
        if policy == "reject" or not bad.any():
            good.append(frame)
            continue
        good.append(frame[~bad].reset_index(drop=True))
        assert file is not None
        file.parent.mkdir(parents=True, exist_ok=True)
        raw = batch.reset_index(drop=True)
        rows = raw.loc[bad, ~raw.columns.duplicated()].reindex(columns=list(columns))
        rows.insert(0, "_loom_row", np.flatnonzero(bad) + offset)
        rows["_loom_problems"] = [r[2:] for r in reasons[bad]]
        rows.to_csv(file, mode="a", header=written == 0, index=False)
        written += len(rows)

    problems = validator.problems()
    summary = f"{source}: {validator.bad_rows} of {validator.rows} rows have problems"
    if policy == "reject" and problems:
        raise DataValidationError(source, [*problems, summary])
    where = f" (bad rows kept in {file})" if written else ""
    if validator.whole_column_problems():
        raise DataValidationError(source, [*problems, summary + where])
    if validator.rows and validator.bad_rows / validator.rows > max_fraction:
        raise DataValidationError(source, [*problems, f"{summary}, more than max_fraction {max_fraction:g}{where}"])
    if not good:
        frame = pd.DataFrame({name: _all_missing(pd.RangeIndex(0), DTYPES[spec.type]) for name, spec in columns.items()})
    else:
        frame = pd.concat(good, ignore_index=True) if len(good) > 1 else good[0]
    return ValidationReport(source=source, rows=validator.rows, frame=frame, problems=problems,
                            bad_rows=validator.bad_rows, quarantined=written, quarantine_file=file if written else None)
