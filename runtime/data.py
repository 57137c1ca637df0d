"""The data-source protocol: what a plugin registered with ``loom_register_data_sources`` must return."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd


@runtime_checkable
class DataSource(Protocol):
    """A readable table. Built by a factory ``factory(uri, *, base_dir, options)`` that a plugin registers
    for a URI scheme (``csv``, ``parquet``, ...)."""

    uri: str
    """The source's URI, for messages: it should hold no secret (Loom's plugins set it to the URI as
    :func:`runtime.redact` shows it). Loom redacts it again wherever it shows or stores it."""

    def read(self) -> pd.DataFrame:
        """Return the whole table (small data; large inputs use :meth:`iter_batches`)."""
        ...

    def iter_batches(self, batch_size: int = 65_536) -> Iterator[pd.DataFrame]:
        """Yield the table in batches of at most ``batch_size`` rows, never one giant copy."""
        ...

    def fingerprint(self) -> str:
        """A stable identifier of the exact data read (content hash or snapshot id), recorded as lineage."""
        ...


@runtime_checkable
class IncrementalSource(DataSource, Protocol):
    """A data source that can read only the rows newer than a watermark (SQL tables, appended files)."""

    def since(self, column: str, watermark: Any) -> DataSource:
        """The rows whose ``column`` (event or update time) is strictly after ``watermark`` (a datetime or ISO
        string; naive means UTC). Returns a source of its own: its ``read``, ``iter_batches`` and ``fingerprint``
        describe only those rows."""
        ...


def split_uri(uri: str) -> tuple[str, str]:
    """Split ``scheme://rest`` into ``(scheme, rest)``; a bare path has scheme ``file``."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return scheme.lower(), rest
    return "file", uri


def resolve_path(path: str, base_dir: Path) -> Path:
    """Resolve a (possibly relative) path from a URI against the project directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base_dir / p)


def hash_files(paths: list[Path]) -> str:
    """SHA-256 over the names and bytes of ``paths`` (sorted), as ``sha256:<hex>``."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def hash_frame(df: pd.DataFrame) -> str:
    """Content hash of a DataFrame (column names, dtypes and values), as ``sha256:<hex>``."""
    import pandas as pd

    h = hashlib.sha256()
    h.update(repr(list(zip(df.columns, map(str, df.dtypes)))).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return "sha256:" + h.hexdigest()


DataSourceFactory = Any  # Callable[[str], DataSource] with keyword-only base_dir: Path, options: dict
