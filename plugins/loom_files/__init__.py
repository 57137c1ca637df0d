"""Loom's file data sources: ``csv://``, ``parquet://`` and ``file://`` (format from the file suffix).

A first-party plugin that uses only the public ``runtime`` API, exactly as a third-party plugin would.

The path after ``scheme://`` is a single file, a directory (every file of the format directly inside it,
sorted by name) or a glob (``data/2025-*.csv``, ``**`` recurses); a relative path is resolved against the project
directory. Files are matched once, when the source is opened, so ``read``, ``iter_batches`` and ``fingerprint``
all describe the same files.

Columns come back with the types pyarrow infers; validation coerces them to the declared schema. Integer
columns become pandas ``Int64`` so that ids stay exact even when a column has nulls. Empty CSV fields are nulls.

Options (``data.options`` in ``loom.yaml``): CSV takes ``delimiter`` (default ``","``) and ``encoding`` (default
``"utf-8"``); parquet takes none.
"""

from __future__ import annotations

import codecs
import glob
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from runtime import ConfigError, DataValidationError, NotFoundError, hash_files, hookimpl, resolve_path, split_uri

Format = Literal["csv", "parquet"]

#: File suffixes of each format (lower case), used to pick files in a directory and to infer ``file://`` formats.
SUFFIXES: dict[Format, tuple[str, ...]] = {"csv": (".csv",), "parquet": (".parquet", ".pq")}
#: Options each format accepts, with their defaults.
OPTIONS: dict[Format, dict[str, str]] = {"csv": {"delimiter": ",", "encoding": "utf-8"}, "parquet": {}}


def _to_pandas(table: pa.Table | pa.RecordBatch) -> pd.DataFrame:
    """Arrow to pandas, with integer columns as nullable ``Int64`` (a null would otherwise make them float)."""
    return table.to_pandas(types_mapper=lambda t: pd.Int64Dtype() if pa.types.is_integer(t) else None)


def _rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Regroup record batches of any length into tables of exactly ``size`` rows (the last one may be shorter)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


@dataclass(frozen=True)
class FileSource:
    """A table stored in one or more CSV or parquet files (a :class:`runtime.DataSource`)."""

    uri: str
    format: Format
    paths: tuple[Path, ...]
    options: dict[str, str] = field(default_factory=dict)

    def read(self) -> pd.DataFrame:
        """All files, concatenated in path order."""
        frames = []
        for path in self.paths:
            with self._reading(path):
                frames.append(_to_pandas(self._read_table(path)))
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def iter_batches(self, batch_size: int = 65_536) -> Iterator[pd.DataFrame]:
        """Stream the files in path order, one file open at a time, as frames of at most ``batch_size`` rows.

        Streaming CSV fixes each column's type from the file's first block (about 1 MB); a later value of another
        type (``3.5`` in a column of integers) is reported as a :class:`runtime.DataValidationError`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for path in self.paths:
            with self._reading(path):
                for table in _rebatch(self._stream(path, batch_size), batch_size):
                    yield _to_pandas(table)

    def fingerprint(self) -> str:
        """SHA-256 of the matched files' names and bytes: changes when any byte does."""
        return hash_files(list(self.paths))

    # -- format-specific reading ---------------------------------------------------------------------------

    @contextmanager
    def _reading(self, path: Path) -> Iterator[None]:
        """Report a file pyarrow cannot parse as a data problem naming the source and the file."""
        try:
            yield
        except pa.ArrowInvalid as err:
            raise DataValidationError(self.uri, [f"{path}: {err}"]) from err

    def _csv_options(self) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
        opts = {**OPTIONS["csv"], **self.options}
        return (
            pacsv.ReadOptions(encoding=opts["encoding"]),
            pacsv.ParseOptions(delimiter=opts["delimiter"]),
            pacsv.ConvertOptions(strings_can_be_null=True),
        )

    def _read_table(self, path: Path) -> pa.Table:
        if self.format == "parquet":
            return pq.read_table(path)
        read, parse, convert = self._csv_options()
        return pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)

    def _stream(self, path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            with pq.ParquetFile(path) as file:
                yield from file.iter_batches(batch_size=batch_size)
            return
        read, parse, convert = self._csv_options()
        with pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert) as reader:
            yield from reader


# -- opening a URI -----------------------------------------------------------------------------------------------


def _match(pattern: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files named by ``pattern``: the file itself, a directory's files with ``suffixes``, or a glob's files."""
    if any(c in str(pattern) for c in "*?["):
        return sorted(p for p in map(Path, glob.glob(str(pattern), recursive=True)) if p.is_file())
    if pattern.is_dir():
        return sorted(p for p in pattern.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    return [pattern] if pattern.is_file() else []


def _format_of(path: Path) -> Format:
    for fmt, suffixes in SUFFIXES.items():
        if path.suffix.lower() in suffixes:
            return fmt
    known = ", ".join(s for ss in SUFFIXES.values() for s in ss)
    raise ConfigError(f"cannot tell the format of {path} from its suffix (known: {known}); use csv:// or parquet://")


def _check_options(uri: str, fmt: Format, options: dict[str, Any]) -> dict[str, str]:
    known = OPTIONS[fmt]
    unknown = sorted(set(options) - set(known))
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"data source {uri}: unknown option(s) {', '.join(unknown)} for {fmt} (accepted: {accepted})")
    for key, value in options.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"data source {uri}: option {key!r} must be a non-empty string, got {value!r}")
    if "delimiter" in options and len(options["delimiter"]) != 1:
        raise ConfigError(f"data source {uri}: option 'delimiter' must be one character, got {options['delimiter']!r}")
    if "encoding" in options:
        try:
            codecs.lookup(options["encoding"])
        except LookupError:
            raise ConfigError(f"data source {uri}: unknown encoding {options['encoding']!r}") from None
    return dict(options)


def _open_source(uri: str, fmt: Format | None, *, base_dir: Path, options: dict[str, Any]) -> FileSource:
    """Match the files ``uri`` names and check ``options``; ``fmt=None`` infers the format from the suffixes."""
    pattern = resolve_path(split_uri(uri)[1], Path(base_dir))
    suffixes = SUFFIXES[fmt] if fmt else tuple(s for ss in SUFFIXES.values() for s in ss)
    paths = _match(pattern, suffixes)
    if not paths:
        what = f"{fmt} files" if fmt else "csv or parquet files"
        raise NotFoundError(f"data source {uri}: no {what} match {pattern}")
    if fmt is None:
        formats = {_format_of(p) for p in paths}
        if len(formats) > 1:
            raise ConfigError(f"data source {uri} matches both csv and parquet files; name one format")
        fmt = formats.pop()
    return FileSource(uri=uri, format=fmt, paths=tuple(paths), options=_check_options(uri, fmt, options))


def _factory(fmt: Format | None) -> Callable[..., FileSource]:
    def factory(uri: str, *, base_dir: Path, options: dict[str, Any]) -> FileSource:
        return _open_source(uri, fmt, base_dir=base_dir, options=options)

    return factory


@hookimpl
def loom_register_data_sources(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """``csv://`` and ``parquet://`` name their format; ``file://`` (and a bare path) infers it from suffixes."""
    register("csv", _factory("csv"))
    register("parquet", _factory("parquet"))
    register("file", _factory(None))
