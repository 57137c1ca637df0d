"""The offline store: append-only Parquet part files, one directory per feature view, on any file system.

The store's files are under a :class:`runtime.Location`: a local directory (the default) or a file system URI
(``<storage.url>/features``: ``s3://``, ``gs://``, ...). Each write becomes one new ``part-<seq>-<random>.parquet``,
written under a hidden temporary name next to it and then moved into place (:meth:`runtime.Location.write_file`:
fsync and ``os.replace`` on a local disk, a server-side copy on an object store), so a writer that fails or is
killed mid-write leaves at most an invisible ``.*.tmp`` file and readers never see half a part. ``seq`` is a
nanosecond clock reading, strictly increasing within a process; sorting part names therefore sorts them by write
order, which breaks ties between rows with the same entity and event time (the later write wins, offline and
online alike).
"""

from __future__ import annotations

import posixpath
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from runtime import Location

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
#: Name of the per-row column carrying the part's sequence number in frames read back.
SEQ = "__loom_seq"
#: Temporary files older than this are debris from a crashed writer and are removed on a later write.
_STALE_TMP_S = 3600.0
#: Parts read at once from an object store (each read is a few requests; local reads stay sequential).
_REMOTE_READERS = 8


@dataclass(frozen=True)
class Part:
    """One committed Parquet part file: ``path`` relative to the store's location."""

    path: str
    seq: int

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


class OfflineStore:
    """Parquet part files under ``<location>/<view>/``; safe for concurrent writers (each writes its own file)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._seq_lock = threading.Lock()
        self._last_seq = 0
        self._swept: set[str] = set()

    def _dir(self, view: str) -> str:
        return view

    def _next_seq(self) -> int:
        with self._seq_lock:
            seq = max(time.time_ns(), self._last_seq + 1)
            self._last_seq = seq
            return seq

    def append(self, view: str, table: pa.Table) -> Part:
        """Write ``table`` as a new part of ``view``, atomically; return the committed part."""
        directory = self._dir(view)
        if directory not in self._swept:  # once per view and process: one listing, not one per write
            self._swept.add(directory)
            self.location.remove_temporaries(directory, older_than_s=_STALE_TMP_S)
        seq = self._next_seq()
        rel = f"{directory}/{PART_PREFIX}{seq:020d}-{uuid.uuid4().hex[:12]}{PART_SUFFIX}"
        self.location.write_file(rel, lambda f: pq.write_table(table, f, compression="zstd"))
        return Part(rel, seq)

    def parts(self, view: str) -> list[Part]:
        """Committed parts of ``view`` in write order (temporary files are never listed)."""
        out = []
        for rel in self.location.files(self._dir(view), PART_SUFFIX):
            name = posixpath.basename(rel)
            if name.startswith(PART_PREFIX):
                try:
                    seq = int(name[len(PART_PREFIX) :].split("-", 1)[0])
                except ValueError:
                    continue
                out.append(Part(rel, seq))
        out.sort(key=lambda p: p.name)
        return out

    def has_data(self, view: str) -> bool:
        """Whether ``view`` has at least one committed part."""
        return bool(self.parts(view))

    def _read_part(self, part: Part, schema: pa.Schema) -> pa.Table:
        loc = self.location
        if loc.local:
            source = pq.ParquetFile(loc.fs_path(part.path))
        else:
            source = pq.ParquetFile(loc.fs.open_input_file(loc.fs_path(part.path)))
        with source:
            present = set(source.schema_arrow.names)
            t = source.read(columns=[f.name for f in schema if f.name in present])
        columns = []
        for f in schema:
            if f.name in present:
                col = t.column(f.name)
                columns.append(col.cast(f.type) if col.type != f.type else col)
            else:
                columns.append(pa.nulls(t.num_rows, type=f.type))
        columns.append(pa.array(np.full(t.num_rows, part.seq, dtype=np.int64)))
        return pa.Table.from_arrays(columns, names=[*schema.names, SEQ])

    def read(self, parts: list[Part], schema: pa.Schema) -> pd.DataFrame:
        """Rows of ``parts`` (in write order) with exactly the columns of ``schema`` plus :data:`SEQ`.

        Columns a part lacks (it predates a feature added to the view) come back as nulls. Only the requested
        columns are read; on an object store several parts are fetched at once."""
        if not self.location.local and len(parts) > 1:
            with ThreadPoolExecutor(min(_REMOTE_READERS, len(parts))) as pool:
                tables = list(pool.map(lambda p: self._read_part(p, schema), parts))
        else:
            tables = [self._read_part(p, schema) for p in parts]
        if not tables:
            fields = [*schema, pa.field(SEQ, pa.int64())]
            tables.append(pa.schema(fields).empty_table())
        table = pa.concat_tables(tables)
        return table.to_pandas(types_mapper=_NULLABLE.get, self_destruct=True)


#: Arrow -> pandas dtypes that keep nulls without changing the type (ints stay ints, bools stay bools).
_NULLABLE: dict[pa.DataType, object] = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
