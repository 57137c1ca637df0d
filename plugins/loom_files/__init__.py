"""Loom's file data sources: CSV and Parquet on local disk or any ``pyarrow.fs`` / ``fsspec`` filesystem.

A first-party plugin that uses only the public ``runtime`` API, exactly as a third-party plugin would.

Schemes: ``csv://`` and ``parquet://`` name the format of local files; ``file://`` (and a bare path) infers it from
the suffix. Remote and virtual filesystems use their own URI schemes (``s3://``, ``gs://``, ``abfs://``,
``hdfs://``, ``memory://``, ``http(s)://``, ...) with the format inferred from the suffix or set by the ``format``
option. ``s3``, ``gs``, ``abfs`` and ``hdfs`` use pyarrow's native (C++) filesystems; the rest, or any of them
given ``storage_options``, go through ``fsspec`` (install its package for the scheme, e.g. ``s3fs``).

The path is a single file, a directory (every file of the format directly inside it, sorted by name) or a glob
(``data/2025-*.csv``; ``**`` recurses); a relative local path is resolved against the project directory; hidden
files (``.name``) are skipped. Files are matched once, when the source is opened, so ``read``, ``iter_batches`` and
``fingerprint`` all describe the same files.

Incremental reads: ``source.since(column, watermark)`` keeps only rows whose ``column`` is after ``watermark``
(files have no index, so every file is still scanned; its fingerprint names the files and the watermark).

Columns come back with the types pyarrow infers; validation coerces them to the declared schema. Integer
columns become pandas ``Int64`` so that ids stay exact even when a column has nulls. Empty CSV fields are nulls.

Options (``data.options`` in ``loom.yaml``): CSV takes ``delimiter`` (default ``","``) and ``encoding`` (default
``"utf-8"``); parquet takes none. Schemes that do not name a format take ``format`` (``csv`` or ``parquet``);
remote ones take ``storage_options`` (a mapping handed to the ``fsspec`` filesystem: credentials, endpoint, ...).

Credentials never appear in messages: URIs (``s3://key:secret@bucket/...``, signed ``https://...?X-Amz-Signature=``
URLs) are named as :func:`runtime.redact` shows them, and so is the source's ``uri``; ``storage_options`` values
are never shown. A signed URL's fingerprint names its files without the signature, so re-signing the same file
does not change it.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import posixpath
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from runtime import (
    ConfigError,
    DataValidationError,
    LoomError,
    NotFoundError,
    Register,
    hookimpl,
    redact,
    resolve_path,
    split_uri,
)

Format = Literal["csv", "parquet"]

#: File suffixes of each format (lower case), used to pick files in a directory and to infer ``file://`` formats.
SUFFIXES: dict[Format, tuple[str, ...]] = {"csv": (".csv",), "parquet": (".parquet", ".pq")}
#: Options each format accepts, with their defaults.
OPTIONS: dict[Format, dict[str, str]] = {"csv": {"delimiter": ",", "encoding": "utf-8"}, "parquet": {}}
#: Local schemes: the format each one fixes (``None``: inferred from suffixes or the ``format`` option).
LOCAL_SCHEMES: dict[str, Format | None] = {"csv": "csv", "parquet": "parquet", "file": None}
#: Remote and virtual filesystem schemes registered by this plugin.
REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "hdfs", "webhdfs", "sftp", "http", "https",
                  "memory")
#: Schemes pyarrow opens natively (faster than through fsspec) when no ``storage_options`` are given.
_NATIVE = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs")


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
    """A table stored in one or more CSV or parquet files on one filesystem (a :class:`runtime.DataSource`)."""

    uri: str
    """The URI as shown: credentials redacted (the filesystem holds what it needs)."""
    format: Format
    paths: tuple[str, ...]
    filesystem: pafs.FileSystem
    options: dict[str, str] = field(default_factory=dict)
    since_filter: tuple[str, pd.Timestamp] | None = None
    """``(column, watermark)`` set by :meth:`since`: only rows stamped after the watermark are returned."""

    def read(self) -> pd.DataFrame:
        """All files, concatenated in path order."""
        frames = []
        for path in self.paths:
            with self._reading(path):
                frames.append(self._filter(_to_pandas(self._read_table(path)), path))
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
                    yield self._filter(_to_pandas(table), path)

    def fingerprint(self) -> str:
        """SHA-256 of the matched files' names and bytes, as ``sha256:<hex>``: changes when any byte does, and is
        the same for the same files on any filesystem."""
        h = hashlib.sha256()
        for path in sorted(self.paths):
            h.update(redact(posixpath.basename(path)).encode())  # a signed URL's name, without its signature
            h.update(b"\0")
            with self.filesystem.open_input_stream(path) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        if self.since_filter is not None:
            column, watermark = self.since_filter
            h.update(f"\0since\0{column}\0{watermark.isoformat()}".encode())
        return "sha256:" + h.hexdigest()

    def _filter(self, df: pd.DataFrame, path: str) -> pd.DataFrame:
        if self.since_filter is None:
            return df
        column, watermark = self.since_filter
        if column not in df.columns:
            raise DataValidationError(self.uri, [f"{redact(path)}: no column {column!r} to read incrementally by"])
        times = _utc_column(df[column], f"{redact(path)}: column {column!r}")
        return df[(times > watermark).to_numpy(dtype=bool, na_value=False)].reset_index(drop=True)

    def since(self, column: str, watermark: Any) -> FileSource:
        """Only rows whose ``column`` is after ``watermark`` (naive times are UTC). Files have no index to skip
        by, so every file is still scanned; rows are filtered batch by batch as they stream past."""
        return replace(self, since_filter=(column, _utc(watermark, self.uri)))

    # -- format-specific reading ---------------------------------------------------------------------------

    @contextmanager
    def _reading(self, path: str) -> Iterator[None]:
        """Report a file pyarrow cannot parse as a data problem naming the source and the file."""
        try:
            yield
        except pa.ArrowInvalid as err:
            problem = f"{path}: {err}"
            shown = redact(problem)  # a signed URL's path carries its signature: then the cause is left out too
            raise DataValidationError(self.uri, [shown]) from (err if shown == problem else None)

    def _csv_options(self) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
        opts = {**OPTIONS["csv"], **self.options}
        return (
            pacsv.ReadOptions(encoding=opts["encoding"]),
            pacsv.ParseOptions(delimiter=opts["delimiter"]),
            pacsv.ConvertOptions(strings_can_be_null=True),
        )

    def _read_table(self, path: str) -> pa.Table:
        if self.format == "parquet":
            return pq.read_table(path, filesystem=self.filesystem)
        read, parse, convert = self._csv_options()
        with self.filesystem.open_input_stream(path) as stream:
            return pacsv.read_csv(stream, read_options=read, parse_options=parse, convert_options=convert)

    def _stream(self, path: str, batch_size: int) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            with self.filesystem.open_input_file(path) as raw, pq.ParquetFile(raw) as file:
                yield from file.iter_batches(batch_size=batch_size)
            return
        read, parse, convert = self._csv_options()
        with self.filesystem.open_input_stream(path) as stream, pacsv.open_csv(
            stream, read_options=read, parse_options=parse, convert_options=convert
        ) as reader:
            yield from reader


def _utc(value: Any, what: str) -> pd.Timestamp:
    """One instant, tz-aware in UTC (naive values are UTC)."""
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as err:
        raise DataValidationError(what, [f"watermark {value!r} is not a time: {err}"]) from None
    if ts is pd.NaT:
        raise DataValidationError(what, ["watermark is null"])
    return ts.tz_convert("UTC") if ts.tzinfo is not None else ts.tz_localize("UTC")


def _utc_column(s: pd.Series, what: str) -> pd.Series:
    """A time column as tz-aware UTC instants, by the rules validation uses (numbers are Unix seconds)."""
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return s.dt.tz_convert("UTC") if s.dt.tz is not None else s.dt.tz_localize("UTC")
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return pd.to_datetime(s.astype("float64"), unit="s", utc=True)
    try:
        return pd.to_datetime(s.astype(object), format="ISO8601", utc=True)
    except (TypeError, ValueError) as err:
        raise DataValidationError(what, [f"cannot read times: {err}"]) from None


# -- opening a URI -----------------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex over whole paths: ``*`` and ``?`` stay within a path segment, ``**`` spans segments."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _visible(path: str) -> bool:
    return not posixpath.basename(path).startswith(".")


def _match(fs: pafs.FileSystem, pattern: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files named by ``pattern``: the file itself, a directory's files with ``suffixes``, or a glob's files."""
    files = pafs.FileType.File
    if not any(c in pattern for c in "*?["):
        info = fs.get_file_info(pattern)
        if info.type == files:
            return [pattern]
        if info.type != pafs.FileType.Directory:
            return []
        listing = fs.get_file_info(pafs.FileSelector(pattern))
        return sorted(i.path for i in listing if i.type == files and _visible(i.path)
                      and posixpath.splitext(i.path)[1].lower() in suffixes)
    parts = pattern.split("/")
    first = next(n for n, part in enumerate(parts) if any(c in part for c in "*?["))
    base = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else ".")
    recursive = "**" in pattern or first < len(parts) - 1
    listing = fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
    regex = _glob_regex(pattern)
    return sorted(i.path for i in listing if i.type == files and _visible(i.path) and regex.fullmatch(i.path))


def _format_of(path: str) -> Format:
    suffix = posixpath.splitext(path)[1].lower()
    for fmt, suffixes in SUFFIXES.items():
        if suffix in suffixes:
            return fmt
    known = ", ".join(s for ss in SUFFIXES.values() for s in ss)
    raise ConfigError(f"cannot tell the format of {path} from its suffix (known: {known}); use csv:// or "
                      "parquet://, or the format option")


def _check_options(shown: str, fmt: Format, options: dict[str, Any]) -> dict[str, str]:
    known = OPTIONS[fmt]
    unknown = sorted(set(options) - set(known))
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"data source {shown}: unknown option(s) {', '.join(unknown)} for {fmt} "
                          f"(accepted: {accepted})")
    for key, value in options.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"data source {shown}: option {key!r} must be a non-empty string, got {value!r}")
    if "delimiter" in options and len(options["delimiter"]) != 1:
        raise ConfigError(f"data source {shown}: option 'delimiter' must be one character, got "
                          f"{options['delimiter']!r}")
    if "encoding" in options:
        try:
            codecs.lookup(options["encoding"])
        except LookupError:
            raise ConfigError(f"data source {shown}: unknown encoding {options['encoding']!r}") from None
    return dict(options)


def _remote_filesystem(uri: str, storage_options: dict[str, Any]) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path of a remote URI: pyarrow's own when it has one, else fsspec's."""
    scheme, shown = split_uri(uri)[0], redact(uri)
    if scheme in _NATIVE and not storage_options:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # this pyarrow build lacks it: fsspec may have it
        except OSError as err:
            raise LoomError(f"data source {shown}: cannot open its filesystem: {redact(err)}") from None
    try:
        import fsspec
    except ImportError:
        raise ConfigError(f"data source {shown}: {scheme}:// needs the fsspec package") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    except ImportError as err:
        raise ConfigError(f"data source {shown}: {scheme}:// needs a package fsspec names: {redact(err)}") from None
    except (ValueError, TypeError, OSError) as err:
        raise LoomError(f"data source {shown}: cannot open its filesystem: {_hide(err, storage_options)}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _hide(err: BaseException, storage_options: dict[str, Any]) -> str:
    """A filesystem's error fit to show: URIs redacted, and no value of ``storage_options`` (credentials) in it."""
    text = redact(err)
    for value in storage_options.values():
        if isinstance(value, str) and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _open_source(uri: str, scheme: str, *, base_dir: Path, options: dict[str, Any]) -> FileSource:
    """Match the files ``uri`` names and check ``options``; the format comes from the scheme, the ``format``
    option or the files' suffixes."""
    options = dict(options)
    shown = redact(uri)
    fmt = LOCAL_SCHEMES.get(scheme)
    if fmt is None and "format" in options:
        fmt = options.pop("format")
        if fmt not in SUFFIXES:
            raise ConfigError(f"data source {shown}: option 'format' must be csv or parquet, got {fmt!r}")
    storage = options.pop("storage_options", {}) if scheme in REMOTE_SCHEMES else {}
    if not isinstance(storage, dict):  # its value is not shown: it may be a credential in the wrong place
        raise ConfigError(f"data source {shown}: option 'storage_options' must be a mapping, got "
                          f"{type(storage).__name__}")
    if scheme in LOCAL_SCHEMES:
        filesystem: pafs.FileSystem = pafs.LocalFileSystem()
        pattern = where = os.path.abspath(resolve_path(split_uri(uri)[1], Path(base_dir)))
    else:
        filesystem, pattern = _remote_filesystem(uri, storage)
        where = shown
    suffixes = SUFFIXES[fmt] if fmt else tuple(s for ss in SUFFIXES.values() for s in ss)
    try:
        paths = _match(filesystem, pattern, suffixes)
    except OSError as err:  # a remote listing: its message may quote the URL, query string and all
        raise LoomError(f"data source {shown}: cannot list its files: {_hide(err, storage)}") from None
    if not paths:
        what = f"{fmt} files" if fmt else "csv or parquet files"
        raise NotFoundError(f"data source {shown}: no {what} match {redact(where)}")
    if fmt is None:
        formats = {_format_of(redact(p)) for p in paths}
        if len(formats) > 1:
            raise ConfigError(f"data source {shown} matches both csv and parquet files; name one format")
        fmt = formats.pop()
    return FileSource(uri=shown, format=fmt, paths=tuple(paths), filesystem=filesystem,
                      options=_check_options(shown, fmt, options))


def _factory(scheme: str) -> Callable[..., FileSource]:
    def factory(uri: str, *, base_dir: Path, options: dict[str, Any]) -> FileSource:
        return _open_source(uri, scheme, base_dir=base_dir, options=options)

    return factory


@hookimpl
def loom_register_data_sources(register: Register) -> None:
    """``csv://`` and ``parquet://`` name their format; ``file://`` (and a bare path) and the remote schemes
    infer it from suffixes or take the ``format`` option."""
    for scheme in (*LOCAL_SCHEMES, *REMOTE_SCHEMES):
        register(scheme, _factory(scheme))
