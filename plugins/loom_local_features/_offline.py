"""The offline store: append-only Parquet part files, one directory per feature view.

Each write becomes one new ``part-<seq>-<random>.parquet``. The file is written under a hidden temporary name in
the same directory, fsync'd, then renamed with ``os.replace`` (atomic on POSIX and Windows), so a crash mid-write
leaves at most an invisible ``.tmp-*`` file and readers never see half a part. ``seq`` is a nanosecond clock
reading, strictly increasing within a process; sorting part names therefore sorts them by write order, which
breaks ties between rows with the same entity and event time (the later write wins, offline and online alike).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from runtime import fsync_dir


PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
TMP_PREFIX = ".tmp-"
#: Name of the per-row column carrying the part's sequence number in frames read back.
SEQ = "__loom_seq"
#: Temporary files older than this are debris from a crashed writer and are removed on the next write.
_STALE_TMP_S = 3600.0


@dataclass(frozen=True)
class Part:
    """One committed Parquet part file."""

    path: Path
    seq: int

    @property
    def name(self) -> str:
        return self.path.name


class OfflineStore:
    """Parquet part files under ``root/<view>/``; safe for concurrent writers (each writes its own file)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seq_lock = threading.Lock()
        self._last_seq = 0

    def _dir(self, view: str) -> Path:
        return self.root / view

    def _next_seq(self) -> int:
        with self._seq_lock:
            seq = max(time.time_ns(), self._last_seq + 1)
            self._last_seq = seq
            return seq

    def append(self, view: str, table: pa.Table) -> Part:
        """Write ``table`` as a new part of ``view``, atomically; return the committed part."""
        directory = self._dir(view)
        directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp(directory)
        seq = self._next_seq()
        final = directory / f"{PART_PREFIX}{seq:020d}-{uuid.uuid4().hex[:12]}{PART_SUFFIX}"
        tmp = directory / f"{TMP_PREFIX}{final.name}"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(directory)
        return Part(final, seq)

    def parts(self, view: str) -> list[Part]:
        """Committed parts of ``view`` in write order (temporary files are never listed)."""
        directory = self._dir(view)
        if not directory.is_dir():
            return []
        out = []
        for entry in os.scandir(directory):
            name = entry.name
            if name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX):
                try:
                    seq = int(name[len(PART_PREFIX) :].split("-", 1)[0])
                except ValueError:
                    continue
                out.append(Part(Path(entry.path), seq))
        out.sort(key=lambda p: p.name)
        return out

    def has_data(self, view: str) -> bool:
        """Whether ``view`` has at least one committed part."""
        return bool(self.parts(view))

    def read(self, parts: list[Part], schema: pa.Schema) -> pd.DataFrame:
        """Rows of ``parts`` (in write order) with exactly the columns of ``schema`` plus :data:`SEQ`.

        Columns a part lacks (it predates a feature added to the view) come back as nulls. Only the requested
        columns are read from disk."""
        tables = []
        for part in parts:
            present = set(pq.read_schema(part.path).names)
            t = pq.read_table(part.path, columns=[f.name for f in schema if f.name in present])
            columns = []
            for f in schema:
                if f.name in present:
                    col = t.column(f.name)
                    columns.append(col.cast(f.type) if col.type != f.type else col)
                else:
                    columns.append(pa.nulls(t.num_rows, type=f.type))
            columns.append(pa.array(np.full(t.num_rows, part.seq, dtype=np.int64)))
            tables.append(pa.Table.from_arrays(columns, names=[*schema.names, SEQ]))
        if not tables:
            fields = [*schema, pa.field(SEQ, pa.int64())]
            tables.append(pa.schema(fields).empty_table())
        table = pa.concat_tables(tables)
        return table.to_pandas(types_mapper=_NULLABLE.get, self_destruct=True)

    @staticmethod
    def _remove_stale_tmp(directory: Path) -> None:
        cutoff = time.time() - _STALE_TMP_S
        for entry in os.scandir(directory):
            if entry.name.startswith(TMP_PREFIX):
                try:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    pass


#: Arrow -> pandas dtypes that keep nulls without changing the type (ints stay ints, bools stay bools).
_NULLABLE: dict[pa.DataType, object] = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
