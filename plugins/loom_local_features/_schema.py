"""View definitions on disk, column types, and the coercions that keep offline and online data consistent.

Every value that enters the store passes through :func:`coerce_column`, so the Parquet files, the SQLite rows and
the frames handed back to callers all agree on one type per column. The type of a column is the one declared in
``FeatureView.dtypes`` or, failing that, the one inferred from the first non-empty write; it is then recorded in
the view's JSON file and never silently changes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import pyarrow as pa

from runtime import ConfigError, DataValidationError, FeatureView, check_name

#: Logical column types, as in ``loom.yaml`` (``category`` is stored as a string).
LoomType = Literal["int", "float", "bool", "string", "category", "timestamp"]
LOOM_TYPES: frozenset[str] = frozenset({"int", "float", "bool", "string", "category", "timestamp"})
#: Types an entity key may have (ints and strings only: they must compare exactly, in SQL and in pandas).
ENTITY_TYPES: frozenset[str] = frozenset({"int", "string", "category"})
#: On-disk format version of a view file; bumped on incompatible changes.
VIEW_FORMAT = 1

_ARROW: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "category": pa.string(),
    "timestamp": pa.timestamp("ns"),
}
#: pandas dtype handed back to callers for each type: nullable where numpy has no null (ints, bools, strings).
#: The same dtypes as ``runtime.validate_frame`` produces, so stored features look like validated data.
OUTPUT_DTYPES: dict[str | None, str] = {
    "int": "Int64",
    "float": "float64",
    "bool": "boolean",
    "string": "string",
    "category": "string",
    "timestamp": "datetime64[ns]",
    None: "object",
}


def arrow_type(loom_type: str | None) -> pa.DataType:
    """Arrow type a column of ``loom_type`` is written as (``null`` while the type is still unknown)."""
    return _ARROW[loom_type] if loom_type is not None else pa.null()


# -- view definitions --------------------------------------------------------------------------------------------


def validate_view(view: FeatureView) -> FeatureView:
    """Check a view's names and declared types, returning a normalised copy (features as a tuple).

    Names end up in file paths and SQL identifiers, so they must pass :func:`runtime.check_name`; the columns
    must be distinct, and declared types must be Loom types that make sense for their role.
    """
    if not isinstance(view, FeatureView):
        raise ConfigError(f"apply() needs a runtime.FeatureView, got {type(view).__name__}")
    check_name(view.name, "feature view name")
    check_name(view.entity, f"feature view {view.name!r}: entity column")
    check_name(view.timestamp, f"feature view {view.name!r}: timestamp column")
    if isinstance(view.features, str):
        raise ConfigError(f"feature view {view.name!r}: features must be a list of column names, not a string")
    features = tuple(view.features)
    if not features:
        raise ConfigError(f"feature view {view.name!r} has no features")
    for f in features:
        check_name(f, f"feature view {view.name!r}: feature column")
    columns = [view.entity, view.timestamp, *features]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise ConfigError(f"feature view {view.name!r}: columns used more than once: {', '.join(dupes)}")
    if view.ttl is not None and (not isinstance(view.ttl, timedelta) or view.ttl <= timedelta(0)):
        raise ConfigError(f"feature view {view.name!r}: ttl must be a positive timedelta or None, got {view.ttl!r}")
    dtypes = dict(view.dtypes or {})
    for col, typ in dtypes.items():
        if col not in columns:
            raise ConfigError(f"feature view {view.name!r}: dtypes names {col!r}, which is not one of its columns")
        if typ not in LOOM_TYPES:
            raise ConfigError(
                f"feature view {view.name!r}: column {col!r} has unknown type {typ!r} "
                f"(use one of {', '.join(sorted(LOOM_TYPES))})"
            )
    if dtypes.get(view.entity, "int") not in ENTITY_TYPES:
        raise ConfigError(f"feature view {view.name!r}: entity column {view.entity!r} must be int or string")
    if dtypes.get(view.timestamp, "timestamp") != "timestamp":
        raise ConfigError(f"feature view {view.name!r}: timestamp column {view.timestamp!r} must have type timestamp")
    return FeatureView(
        name=view.name, entity=view.entity, timestamp=view.timestamp, features=features, ttl=view.ttl, dtypes=dtypes
    )


def view_to_dict(view: FeatureView) -> dict[str, Any]:
    """JSON-ready definition of a (validated) view."""
    return {
        "name": view.name,
        "entity": view.entity,
        "timestamp": view.timestamp,
        "features": list(view.features),
        "ttl_seconds": view.ttl.total_seconds() if view.ttl is not None else None,
        "dtypes": dict(sorted(view.dtypes.items())),
    }


def view_from_dict(data: dict[str, Any]) -> FeatureView:
    """Inverse of :func:`view_to_dict`."""
    ttl = data.get("ttl_seconds")
    return FeatureView(
        name=data["name"],
        entity=data["entity"],
        timestamp=data["timestamp"],
        features=tuple(data["features"]),
        ttl=timedelta(seconds=ttl) if ttl is not None else None,
        dtypes=dict(data.get("dtypes") or {}),
    )


@dataclass
class ViewRecord:
    """A view as stored: its definition plus the column types learned so far (``types``: column -> Loom type)."""

    view: FeatureView
    types: dict[str, str] = field(default_factory=dict)

    def type_of(self, column: str) -> str | None:
        """The column's type: declared, else learned from data, else ``None`` (no data yet)."""
        return self.view.dtypes.get(column) or self.types.get(column)

    def to_json(self) -> str:
        return json.dumps(
            {"format": VIEW_FORMAT, "view": view_to_dict(self.view), "types": dict(sorted(self.types.items()))},
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, source: Path | str) -> ViewRecord:
        try:
            data = json.loads(text)
            if data.get("format") != VIEW_FORMAT:
                raise ValueError(f"unsupported format {data.get('format')!r}")
            return cls(view=view_from_dict(data["view"]), types=dict(data.get("types") or {}))
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"feature view file {source} is corrupt: {err}") from None


# -- column types and coercion -------------------------------------------------------------------------------------


def infer_type(series: pd.Series) -> str | None:
    """Loom type of an undeclared column from its data; ``None`` when it holds only nulls (decided later)."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if isinstance(dtype, pd.CategoricalDtype):
        return "category"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float" if series.notna().any() else None
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamp"
    if pd.api.types.is_string_dtype(dtype) or dtype == object:
        kind = pd.api.types.infer_dtype(series, skipna=True)
        return {
            "string": "string",
            "boolean": "bool",
            "integer": "int",
            "floating": "float",
            "mixed-integer-float": "float",
            "decimal": "float",
            "datetime": "timestamp",
            "datetime64": "timestamp",
            "empty": None,
        }.get(kind, "mixed")
    return "mixed"


def to_utc_naive(series: pd.Series, what: str) -> pd.Series:
    """Timestamps as ``datetime64[ns]``, tz-naive, in UTC: aware values are converted, naive ones taken as UTC.

    Numbers are refused rather than guessed at (seconds? milliseconds?)."""
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        out = series.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(dtype):
        out = series
    elif pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        raise DataValidationError(what, [f"timestamps must be datetimes or ISO strings, got {dtype} numbers"])
    else:
        try:
            out = pd.to_datetime(series, utc=True).dt.tz_localize(None)
        except (ValueError, TypeError, OverflowError) as err:
            raise DataValidationError(what, [f"cannot read timestamps: {err}"]) from None
    try:
        return out.astype("datetime64[ns]")
    except (ValueError, OverflowError) as err:  # out of the ns range (before 1677 or after 2262)
        raise DataValidationError(what, [f"timestamps out of range: {err}"]) from None


def timestamp_ns(value: Any, what: str) -> int:
    """One point in time (datetime, ISO string, pandas/numpy timestamp) as ns since the epoch, UTC."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise DataValidationError(what, [f"expected a datetime or ISO string, got the number {value!r}"])
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as err:
        raise DataValidationError(what, [f"cannot read timestamp {value!r}: {err}"]) from None
    if ts is pd.NaT:
        raise DataValidationError(what, ["timestamp is null"])
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.as_unit("ns").value)


def coerce_column(series: pd.Series, loom_type: str | None, column: str, source: str) -> pd.Series:
    """``series`` in the canonical storage form of ``loom_type``, or :class:`runtime.DataValidationError` naming
    the column when its values do not fit the type. The forms are those of :data:`OUTPUT_DTYPES`, except that
    strings are ``object`` with ``None`` for nulls (what Arrow and SQLite take directly)."""
    try:
        if loom_type is None:
            return pd.Series([None] * len(series), index=series.index, dtype=object)
        if loom_type == "int":
            if pd.api.types.is_bool_dtype(series.dtype):
                raise TypeError("booleans are not ints")
            return series.astype("Int64")
        if loom_type == "float":
            if pd.api.types.is_bool_dtype(series.dtype):
                raise TypeError("booleans are not floats")
            if series.dtype == object:
                series = pd.to_numeric(series)
            return series.astype("float64")
        if loom_type == "bool":
            if not pd.api.types.is_bool_dtype(series.dtype):
                values = series[series.notna()]
                if not all(isinstance(v, (bool, np.bool_)) for v in values):
                    raise TypeError("values are not all booleans")
            return series.astype("boolean")
        if loom_type in ("string", "category"):
            return series.astype(str).astype(object).mask(series.isna(), None)
        if loom_type == "timestamp":
            return to_utc_naive(series, source)
    except DataValidationError:
        raise
    except (TypeError, ValueError, OverflowError) as err:
        raise DataValidationError(source, [f"column {column!r} does not hold {loom_type} values: {err}"]) from None
    raise ConfigError(f"column {column!r} has unknown type {loom_type!r}")


def coerce_entity(series: pd.Series, loom_type: str, column: str, source: str) -> pd.Series:
    """Entity keys as plain ``int64`` or ``object`` strings (no nulls allowed: a row without a key is lost)."""
    if series.isna().any():
        raise DataValidationError(source, [f"entity column {column!r} has {int(series.isna().sum())} null value(s)"])
    if loom_type == "int":
        out = coerce_column(series, "int", column, source)
        return out.astype("int64")
    if loom_type in ("string", "category"):
        return coerce_column(series, "string", column, source)
    raise DataValidationError(source, [f"entity column {column!r} must hold ints or strings, not {loom_type}"])


def to_output(series: pd.Series, loom_type: str | None) -> pd.Series:
    """A joined or looked-up column in the dtype callers get for ``loom_type`` (nulls as NA/NaN/NaT/None)."""
    target = OUTPUT_DTYPES[loom_type]
    if target == "object":  # type not known yet: the column has only ever held nulls
        out = series.astype(object)
        return out.where(out.notna(), None)
    if str(series.dtype) == target:
        return series
    return series.astype(target)


def sqlite_values(series: pd.Series, loom_type: str | None) -> list[Any]:
    """A canonical column (from :func:`coerce_column`) as plain Python values SQLite can bind.

    Bools go in as 0/1 and timestamps as ns since the epoch; the view's recorded type turns them back on read."""
    if loom_type == "timestamp":
        ints = series.to_numpy(dtype="datetime64[ns]").view("int64")
        mask = series.isna().to_numpy()
        return [None if m else int(v) for v, m in zip(ints, mask)]
    if loom_type == "float":
        return [None if math.isnan(v) else v for v in series.to_numpy(dtype="float64").tolist()]
    if loom_type in ("int", "bool"):
        return cast(list[Any], series.to_numpy(dtype=object, na_value=None).tolist())
    return cast(list[Any], series.tolist())
