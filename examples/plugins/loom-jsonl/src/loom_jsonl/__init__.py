"""JSON Lines data sources for Loom: ``jsonl://`` and ``ndjson://``.

The path after ``scheme://`` is a file, a directory (its ``*.jsonl`` / ``*.ndjson`` files, sorted by name) or a
glob; a relative path is resolved against the project directory. Files are matched once, when the source is
opened, so ``read``, ``iter_batches`` and ``fingerprint`` describe the same files.

Like any third-party plugin, it imports only from Loom's public API (``runtime``).
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.json as pajson

from runtime import (
    ConfigError,
    DataValidationError,
    NotFoundError,
    Register,
    hash_files,
    hookimpl,
    resolve_path,
    split_uri,
)

SUFFIXES = (".jsonl", ".ndjson")


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow to pandas, integers as nullable ``Int64`` so ids stay exact when a value is missing."""
    return table.to_pandas(types_mapper=lambda t: pd.Int64Dtype() if pa.types.is_integer(t) else None)


def _rebatch(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Regroup record batches into tables of exactly ``size`` rows; the last may be shorter."""
    pending: pa.Table | None = None
    for batch in batches:
        table = pa.Table.from_batches([batch])
        pending = table if pending is None else pa.concat_tables([pending, table])
        while pending.num_rows >= size:
            yield pending.slice(0, size)
            pending = pending.slice(size)
    if pending is not None and pending.num_rows:
        yield pending


def _blank(path: Path, probe: int = 1 << 16) -> bool:
    if path.stat().st_size > probe:
        return False
    return not path.read_bytes().strip()


@dataclass(frozen=True)
class JsonLinesSource:
    """A table stored as JSON Lines in one or more files (a :class:`runtime.DataSource`)."""

    uri: str
    paths: tuple[Path, ...]

    def read(self) -> pd.DataFrame:
        """All files, concatenated in path order; a column's type is unified across files."""
        tables = []
        for path in self._non_empty():
            with self._reading(path):
                tables.append(pajson.read_json(path))
        if not tables:
            return pd.DataFrame()
        try:
            return _to_pandas(pa.concat_tables(tables, promote_options="permissive"))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise DataValidationError(self.uri, [f"files disagree on column types: {err}"]) from err

    def iter_batches(self, batch_size: int = 65_536) -> Iterator[pd.DataFrame]:
        """Stream the files in path order as frames of at most ``batch_size`` rows, one file open at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for path in self._non_empty():
            with self._reading(path):
                for table in _rebatch(pajson.open_json(path), batch_size):
                    yield _to_pandas(table)

    def fingerprint(self) -> str:
        """SHA-256 of the matched files' names and bytes."""
        return hash_files(list(self.paths))

    def _non_empty(self) -> list[Path]:
        """The files holding at least one line: pyarrow refuses a blank file, which in JSON Lines is no rows."""
        return [p for p in self.paths if not _blank(p)]

    @contextmanager
    def _reading(self, path: Path) -> Iterator[None]:
        """Report a line pyarrow cannot parse as a data problem naming the source and the file."""
        try:
            yield
        except pa.ArrowInvalid as err:
            raise DataValidationError(self.uri, [f"{path}: {err}"]) from err


def _match(pattern: Path) -> list[Path]:
    if any(c in str(pattern) for c in "*?["):
        return sorted(p for p in map(Path, glob.glob(str(pattern), recursive=True)) if p.is_file())
    if pattern.is_dir():
        return sorted(p for p in pattern.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    return [pattern] if pattern.is_file() else []


def open_source(uri: str, *, base_dir: Path, options: dict[str, Any]) -> JsonLinesSource:
    """The factory Loom calls for ``jsonl://`` and ``ndjson://`` URIs."""
    if options:
        raise ConfigError(f"data source {uri}: unknown option(s) {', '.join(sorted(options))} (jsonl takes none)")
    pattern = resolve_path(split_uri(uri)[1], Path(base_dir))
    paths = _match(pattern)
    if not paths:
        raise NotFoundError(f"data source {uri}: no JSON Lines files match {pattern}")
    return JsonLinesSource(uri=uri, paths=tuple(paths))


@hookimpl
def loom_register_data_sources(register: Register) -> None:
    """``jsonl://`` and its synonym ``ndjson://``."""
    register("jsonl", open_source)
    register("ndjson", open_source)
