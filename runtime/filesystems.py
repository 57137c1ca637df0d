"""Where Loom's files live: a local directory, or any file system URI that several hosts share.

:func:`open_location` turns what ``storage.url`` (or a plugin option) says into a :class:`Location`: a
``pyarrow.fs`` file system plus the path under it. Local paths and ``file://`` URIs stay on the local disk (and
writes there are fsynced); ``s3://`` honours ``AWS_ENDPOINT_URL`` (``AWS_ENDPOINT_URL_S3``) and the usual AWS
credential chain, with short connection timeouts so that an unreachable endpoint fails in seconds instead of
hanging; ``gs://``, ``hdfs://`` and ``abfs://`` go to pyarrow, and any other scheme to ``fsspec`` (``memory://``).

A location never puts a credential into an error: every message shows the URI through :func:`runtime.redact`.
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigError
from .files import fsync_dir, write_atomic
from .secrets import redact

#: Seconds to wait for an object store's TCP connection, and for one request, before giving up (per attempt).
CONNECT_TIMEOUT_S = float(os.environ.get("LOOM_STORAGE_CONNECT_TIMEOUT_S", "3"))
REQUEST_TIMEOUT_S = float(os.environ.get("LOOM_STORAGE_REQUEST_TIMEOUT_S", "20"))
#: Attempts per request (pyarrow's default AWS retry strategy with this many attempts).
ATTEMPTS = int(os.environ.get("LOOM_STORAGE_ATTEMPTS", "3"))

#: ``pyarrow.fs`` file systems where an object needs no directory above it (making one costs requests, not safety).
_NO_DIRECTORIES = frozenset({"s3", "gcs"})

_S3_QUERY = {"region", "endpoint_override", "scheme", "allow_bucket_creation", "force_virtual_addressing"}


def is_uri(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a file system other than the local disk (``s3://...``, ``gs://...``)."""
    text = os.fspath(location)
    return "://" in text and urlsplit(text).scheme not in ("", "file")


def join_uri(base: str | os.PathLike[str], *parts: str) -> str:
    """``base`` (a directory or file system URI) with ``parts`` appended to its path, keeping a URI's options
    (``?endpoint_override=...``) at its end: ``join_uri("s3://b/loom?region=x", "capture")`` is
    ``s3://b/loom/capture?region=x``."""
    text = os.fspath(base)
    rel = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    if not rel:
        return text
    head, sep, query = text.partition("?") if is_uri(text) else (text, "", "")
    return f"{head.rstrip('/')}/{rel}{sep}{query}"


def _s3(uri: str, *, request_timeout_s: float | None = None, attempts: int | None = None) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - _S3_QUERY)
    if unknown:
        raise ConfigError(f"unknown S3 option(s) {', '.join(unknown)} in {redact(uri)} (known: {', '.join(sorted(_S3_QUERY))})")
    kwargs: dict[str, Any] = {}
    endpoint = query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL")
    if endpoint:
        ep = urlsplit(endpoint if "://" in endpoint else f"{query.get('scheme', 'https')}://{endpoint}")
        kwargs.update(endpoint_override=ep.netloc + ep.path.rstrip("/"), scheme=query.get("scheme") or ep.scheme)
    elif "scheme" in query:
        kwargs["scheme"] = query["scheme"]
    region = query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if parts.username:  # s3://KEY:SECRET@bucket/prefix (better: the environment's credential chain)
        kwargs.update(access_key=unquote(parts.username), secret_key=unquote(parts.password or ""))
        bucket = parts.hostname or ""
    else:
        bucket = parts.netloc
    for flag in ("allow_bucket_creation", "force_virtual_addressing"):
        if flag in query:
            kwargs[flag] = query[flag].lower() in ("1", "true", "yes")
    if not bucket:
        raise ConfigError(f"{redact(uri)} names no bucket (write s3://bucket/prefix)")
    request_timeout = REQUEST_TIMEOUT_S if request_timeout_s is None else request_timeout_s
    retry = pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS if attempts is None else attempts)
    filesystem = pafs.S3FileSystem(connect_timeout=CONNECT_TIMEOUT_S, request_timeout=request_timeout,
                                   retry_strategy=retry, **kwargs)
    return filesystem, f"{bucket}{parts.path}".rstrip("/")


def _open(uri: str, **s3_timeouts: Any) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    scheme = urlsplit(uri).scheme
    if scheme in ("s3", "s3a"):
        return _s3(uri, **s3_timeouts)
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        return filesystem, path.rstrip("/")
    except ValueError:  # pyarrow.ArrowInvalid: a scheme pyarrow has no file system for; try fsspec
        pass
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        fs, path = fsspec.url_to_fs(uri)
    except (ImportError, ValueError) as err:
        raise ConfigError(f"no file system handles {redact(uri)}: {redact(str(err))}") from None
    return PyFileSystem(FSSpecHandler(fs)), str(path).rstrip("/")


@dataclass(frozen=True)
class Location:
    """A directory on some file system: ``fs`` (a ``pyarrow.fs.FileSystem``) and ``path`` under it. ``uri`` is what
    was configured (show it through :attr:`shown`: it may hold credentials); ``local`` is True on the local disk."""

    fs: Any
    path: str
    uri: str
    local: bool

    @property
    def shown(self) -> str:
        """The URI with any password or key replaced by ``***``."""
        return redact(self.uri)

    def child(self, *parts: str) -> Location:
        """The location ``parts`` below this one."""
        rel = "/".join(p.strip("/") for p in parts if p)
        if not rel:
            return self
        uri = self.uri
        if "?" in uri:  # keep a URI's options (endpoint_override=...) at its end
            base, query = uri.split("?", 1)
            uri = f"{base.rstrip('/')}/{rel}?{query}"
        else:
            uri = f"{uri.rstrip('/')}/{rel}"
        return Location(self.fs, posixpath.join(self.path, rel) if self.path else rel, uri, self.local)

    def _full(self, rel: str) -> str:
        return posixpath.join(self.path, rel) if rel else self.path

    def local_path(self, rel: str = "") -> Path:
        """The local file system path of ``rel`` (only for a local location)."""
        assert self.local, "not a local location"
        return Path(self._full(rel))

    def fs_path(self, rel: str = "") -> str:
        """The path of ``rel`` on :attr:`fs`, as ``pyarrow`` readers take it (``filesystem=location.fs``)."""
        return self._full(rel)

    def makedirs(self, rel: str = "") -> None:
        self.fs.create_dir(self._full(rel), recursive=True)

    def write_bytes(self, rel: str, data: bytes | bytearray | memoryview) -> None:
        """Write ``rel`` so that readers see the whole file or none of it: fsync and rename on a local disk; on an
        object store, one upload (which becomes visible at once) under the final name."""
        full = self._full(rel)
        if self.local:
            Path(full).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(Path(full), bytes(data))
            return
        parent = posixpath.dirname(full)
        if parent and self.fs.type_name not in _NO_DIRECTORIES:
            self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(full) as f:
            f.write(data)

    def write_file(self, rel: str, fill: Callable[[Any], None]) -> None:
        """Write ``rel`` by streaming into it: ``fill(f)`` writes to a binary file object. Readers see the previous
        file (or none) until the whole new one is in place: ``fill`` writes a hidden temporary next to ``rel``
        (:meth:`temporary`; fsynced on a local disk), which is then moved over ``rel`` (an ``os.replace`` locally, a
        server-side copy on an object store). If ``fill`` or the upload fails, the temporary is removed; a writer
        killed midway leaves at most a hidden temporary (see :meth:`remove_temporaries`)."""
        full, tmp = self._full(rel), self._full(self.temporary(rel))
        if self.local:
            parent = Path(full).parent
            parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    fill(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, full)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            fsync_dir(parent)
            return
        parent_key = posixpath.dirname(full)
        if parent_key and self.fs.type_name not in _NO_DIRECTORIES:
            self.fs.create_dir(parent_key, recursive=True)
        try:
            with self.fs.open_output_stream(tmp) as f:
                fill(f)
            self.fs.move(tmp, full)
        except BaseException:
            with suppress(Exception):  # noqa: BLE001 - best effort: the original error is what matters
                self.fs.delete_file(tmp)
            raise

    def remove_temporaries(self, rel: str = "", older_than_s: float = 3600.0) -> int:
        """Delete the temporaries (hidden ``.*.tmp`` files, as :meth:`temporary` names them) directly under ``rel``
        that were last modified more than ``older_than_s`` seconds ago: what writers killed mid-write leave behind.
        Returns how many were removed."""
        from pyarrow.fs import FileSelector, FileType

        try:
            infos = self.fs.get_file_info(FileSelector(self._full(rel), recursive=False, allow_not_found=True))
        except FileNotFoundError:
            return 0
        cutoff_ns = time.time_ns() - int(older_than_s * 1e9)
        removed = 0
        for info in infos:
            name = info.base_name
            if info.type == FileType.File and name.startswith(".") and name.endswith(".tmp") \
                    and info.mtime_ns is not None and info.mtime_ns < cutoff_ns:
                with suppress(FileNotFoundError):
                    self.fs.delete_file(info.path)
                    removed += 1
        return removed

    def read_bytes(self, rel: str) -> bytes:
        """The contents of ``rel``; :class:`FileNotFoundError` when it is not there.

        On an object store a read that overlaps a rewrite of ``rel`` can be torn: pyarrow asks for the size first,
        then for that many bytes of what may by then be the new version (its start, cut to the old length). Files
        that are rewritten in place should be checkable (JSON, say) and read again when the check fails."""
        with self.fs.open_input_stream(self._full(rel)) as f:
            return f.read()

    def exists(self, rel: str = "") -> bool:
        from pyarrow.fs import FileType

        return self.fs.get_file_info(self._full(rel)).type != FileType.NotFound

    def files(self, rel: str = "", suffix: str = "") -> list[str]:
        """Paths (relative to this location) of every file under ``rel`` ending in ``suffix``, sorted; hidden files
        and temporaries (``.name``) are left out. An absent directory has no files."""
        from pyarrow.fs import FileSelector, FileType

        base = self._full(rel)
        try:
            infos = self.fs.get_file_info(FileSelector(base, recursive=True, allow_not_found=True))
        except FileNotFoundError:
            return []
        root = self.path.rstrip("/") + "/" if self.path else ""
        out = [i.path[len(root):] if i.path.startswith(root) else i.path for i in infos
               if i.type == FileType.File and i.path.endswith(suffix) and not i.base_name.startswith(".")]
        return sorted(out)

    def delete(self, rel: str) -> None:
        with suppress(FileNotFoundError):
            self.fs.delete_file(self._full(rel))

    def check(self, what: str) -> Location:
        """Make sure this location is reachable and writable now (create it, list it): a :class:`ConfigError` naming
        ``what`` and the URI (redacted) otherwise, within seconds rather than a hang."""
        try:
            self.makedirs()
            self.files(".loom-probe")  # one listing: reachable, and the bucket exists
        except Exception as err:  # noqa: BLE001 - OSError, ArrowInvalid, botocore errors...: all say the same
            raise ConfigError(f"cannot reach {what} at {self.shown}: {redact(str(err)).splitlines()[0][:300]}; "
                              "check the URI, the endpoint (AWS_ENDPOINT_URL) and the credentials") from None
        return self

    def temporary(self, rel: str) -> str:
        """A fresh hidden name next to ``rel``, for writing a file before moving it into place."""
        head, tail = posixpath.split(rel)
        return posixpath.join(head, f".{tail}.{uuid.uuid4().hex[:12]}.tmp")

    def move(self, src: str, dst: str) -> None:
        self.fs.move(self._full(src), self._full(dst))


def open_location(location: str | os.PathLike[str], *, what: str = "storage", request_timeout_s: float | None = None,
                  attempts: int | None = None) -> Location:
    """The :class:`Location` for a directory path, a ``file://`` URI, or any other file system URI. Opening does no
    I/O on an object store; call :meth:`Location.check` to fail fast when it is unreachable. On S3,
    ``request_timeout_s`` and ``attempts`` replace :data:`REQUEST_TIMEOUT_S` and :data:`ATTEMPTS`, e.g. for a
    start-up probe (:meth:`Location.check`) that should give up sooner on an endpoint that never answers."""
    from pyarrow import fs as pafs

    text = os.fspath(location)
    if not is_uri(text):
        path = unquote(urlsplit(text).path) if text.startswith("file://") else text
        resolved = str(Path(path).expanduser().resolve())
        return Location(pafs.LocalFileSystem(), resolved, resolved, True)
    try:
        filesystem, path = _open(text, request_timeout_s=request_timeout_s, attempts=attempts)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - pyarrow's and fsspec's errors, in Loom's words
        raise ConfigError(f"cannot open {what} at {redact(text)}: {redact(str(err)).splitlines()[0][:300]}") from None
    if isinstance(filesystem, pafs.LocalFileSystem):
        return Location(filesystem, path, text, True)
    return Location(filesystem, path, text, False)


def require_reachable(location: str | os.PathLike[str], *, what: str = "storage") -> Location:
    """:func:`open_location`, then :meth:`Location.check`: for start-up, where an unreachable store must be said."""
    return open_location(location, what=what).check(what)


__all__ = ["Location", "is_uri", "join_uri", "open_location", "require_reachable"]
