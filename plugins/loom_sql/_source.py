"""A table or query in a SQL database, read through SQLAlchemy in batches (a ``runtime.DataSource``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from runtime import DataValidationError, LoomError, redact

from ._hash import RowMultisetHash


#: Passwords shorter than this are not searched for in the driver's messages: replacing every "ab" would garble
#: them, and URLs (where a password is masked whatever its length) are redacted anyway.
_MIN_SCRUBBED = 4


def scrub(text: str, password: str | None) -> str:
    """A driver's message fit to show: URLs and credential parameters redacted (:func:`runtime.redact`), and the
    connection's password masked wherever else it appears (a driver may echo its connection string)."""
    text = redact(text)
    if password and len(password) >= _MIN_SCRUBBED:
        from urllib.parse import quote

        for form in {password, quote(password, safe=""), quote(password)}:
            text = text.replace(form, "***")
    return text


def _column(values: Sequence[Any]) -> pd.Series:
    """One result column as pandas: Arrow's inference (ints as nullable ``Int64``), objects when mixed."""
    try:
        arr = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pd.Series(list(values), dtype=object)
    if pa.types.is_integer(arr.type):
        return pd.Series(arr.to_pandas(types_mapper={arr.type: pd.Int64Dtype()}.get))
    if pa.types.is_null(arr.type):
        return pd.Series([None] * len(values), dtype=object)
    return pd.Series(arr.to_pandas())


def _frame(keys: Sequence[str], rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    columns = list(zip(*rows)) if rows else [() for _ in keys]
    df = pd.concat([_column(c) for c in columns], axis=1, ignore_index=True) if keys else pd.DataFrame()
    df.columns = list(keys)
    return df


@dataclass
class SqlSource:
    """Rows of a table or query. ``read`` and ``iter_batches`` run one streaming query each (a server-side cursor
    on PostgreSQL), so memory stays at one batch; the fingerprint of the rows a full pass returned is kept, so
    :meth:`fingerprint` after a read describes exactly the data read, at no extra cost."""

    uri: str
    """The URL as shown: any password and credential parameter redacted (the engine holds the real one)."""
    engine: sa.engine.Engine
    sql: str
    shown: str
    """The URL with any password hidden, for messages (the same as :attr:`uri`)."""
    since_column: str | None = None
    watermark: pd.Timestamp | None = None
    password: str | None = field(default=None, repr=False)
    """The connection's password, only to mask it in the driver's messages."""
    _fingerprint: str | None = field(default=None, repr=False)

    # -- the DataSource protocol ---------------------------------------------------------------------------

    def read(self) -> pd.DataFrame:
        """Every row, as one frame."""
        frames = list(self.iter_batches())
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def iter_batches(self, batch_size: int = 65_536) -> Iterator[pd.DataFrame]:
        """Frames of at most ``batch_size`` rows; always at least one (empty when the result is)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        digest = RowMultisetHash()
        sent = False
        with self._result(batch_size) as (keys, partitions):
            for rows in partitions:
                frame = _frame(keys, rows)
                digest.add(frame)
                sent = True
                yield frame
            if not sent:
                frame = _frame(keys, [])
                digest.add(frame)
                yield frame
        self._fingerprint = "sha256:" + digest.hexdigest()

    def fingerprint(self) -> str:
        """``sha256:`` content hash of the rows (their multiset: row order does not matter), as last read in full;
        computed by one streaming pass if nothing was read yet."""
        if self._fingerprint is None:
            for _ in self.iter_batches():
                pass
        assert self._fingerprint is not None
        return self._fingerprint

    def since(self, column: str, watermark: Any) -> SqlSource:
        """Only the rows whose ``column`` is after ``watermark``: a ``WHERE`` clause the database evaluates."""
        try:
            ts = pd.Timestamp(watermark)
        except (TypeError, ValueError) as err:
            raise DataValidationError(self.shown, [f"watermark {watermark!r} is not a time: {err}"]) from None
        if ts is pd.NaT:
            raise DataValidationError(self.shown, ["watermark is null"])
        ts = ts.tz_convert("UTC") if ts.tzinfo is not None else ts.tz_localize("UTC")
        return replace(self, since_column=column, watermark=ts, _fingerprint=None)

    # -- the query -----------------------------------------------------------------------------------------

    def _statement(self) -> tuple[str, dict[str, Any]]:
        if self.since_column is None or self.watermark is None:
            return self.sql, {}
        column = f"loom_src.{self.engine.dialect.identifier_preparer.quote(self.since_column)}"
        if self.engine.dialect.name == "sqlite":  # timestamps are ISO-8601 text there: compare them as instants
            condition = f"julianday({column}) > julianday(:loom_since)"
            value: Any = self.watermark.tz_localize(None).isoformat(sep=" ")
        else:
            condition = f"{column} > :loom_since"
            value = self.watermark.to_pydatetime()
        return f"SELECT * FROM ({self.sql}) AS loom_src WHERE {condition}", {"loom_since": value}

    @contextmanager
    def _result(self, batch_size: int) -> Iterator[tuple[list[str], Iterator[Sequence[Sequence[Any]]]]]:
        sql, params = self._statement()
        try:
            with self.engine.connect() as conn:
                options: dict[str, Any] = {"stream_results": True, "max_row_buffer": batch_size}
                if self.engine.dialect.name == "postgresql":
                    options["postgresql_readonly"] = True
                result = conn.execution_options(**options).execute(sa.text(sql), params)
                yield list(result.keys()), result.partitions(batch_size)
        except sa.exc.SQLAlchemyError as err:
            lines = str(getattr(err, "orig", None) or err).strip().splitlines() or [type(err).__name__]
            raise LoomError(f"data source {self.shown}: the query failed: {scrub(lines[0], self.password)}") from None
