"""An order-independent content hash of query results, computed batch by batch as rows stream past.

A SQL result has no inherent row order (PostgreSQL may return a table's rows in another order after a vacuum or
during a synchronised scan), so the hash is of the *multiset* of rows: each row is hashed on its own, vectorised,
and the row hashes are added up modulo 2**64 under two independent keys. It is also independent of how the rows
were cut into batches: values are hashed in canonical forms (an integer and the float with the same value hash
alike; timestamps by their UTC instant; everything else by its text), and a null hashes the same in any column
type.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from pandas.api import types as ptypes
from pandas.util import hash_array

_KEYS = ("loom.sql.rows.01", "loom.sql.rows.02")  # hash_array keys: 16 characters each
_NULL = np.uint64(0x9E3779B97F4A7C15)
_MULT = np.uint64(1_000_003)
_EXACT = 2**53  # integers below this in magnitude are exactly representable as float64


def _column_hash(s: pd.Series, key: str) -> np.ndarray:
    nulls = s.isna().to_numpy()
    if ptypes.is_bool_dtype(s.dtype):
        h = hash_array(s.to_numpy(dtype="uint8", na_value=0), hash_key=key)
    elif ptypes.is_integer_dtype(s.dtype):
        ints = s.to_numpy(dtype="int64", na_value=0)
        exact = np.abs(ints) < _EXACT
        h = np.where(exact, hash_array(ints.astype("float64"), hash_key=key), hash_array(ints, hash_key=key))
    elif ptypes.is_float_dtype(s.dtype):
        h = hash_array(s.to_numpy(dtype="float64", na_value=0.0), hash_key=key)
    elif ptypes.is_datetime64_any_dtype(s.dtype):
        t = s.dt.tz_convert("UTC").dt.tz_localize(None) if s.dt.tz is not None else s
        h = hash_array(t.astype("datetime64[ns]").to_numpy().view("int64"), hash_key=key)
    else:
        text = s.astype(object).where(~nulls, "").astype(str).to_numpy(dtype=object)
        h = hash_array(text, hash_key=key, categorize=False)
    h[nulls] = _NULL
    return h


class RowMultisetHash:
    """Accumulates rows with :meth:`add`; :meth:`hexdigest` names the multiset of rows seen, with the columns."""

    def __init__(self) -> None:
        self.columns: tuple[str, ...] | None = None
        self.rows = 0
        self._sums = [np.uint64(0), np.uint64(0)]

    def add(self, df: pd.DataFrame) -> None:
        if self.columns is None:
            self.columns = tuple(map(str, df.columns))
        self.rows += len(df)
        if not len(df):
            return
        with np.errstate(over="ignore"):
            for i, key in enumerate(_KEYS):
                row = np.zeros(len(df), dtype="uint64")
                for j in range(df.shape[1]):
                    row = (row * _MULT) ^ _column_hash(df.iloc[:, j], key)
                self._sums[i] = self._sums[i] + row.sum(dtype="uint64")

    def hexdigest(self) -> str:
        h = hashlib.sha256(repr((self.columns or (), self.rows, int(self._sums[0]), int(self._sums[1]))).encode())
        return h.hexdigest()
