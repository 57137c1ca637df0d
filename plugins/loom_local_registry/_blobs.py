"""Content-addressed, crash-safe blob storage for model artifacts, on a local directory or any file system URI.

Each blob lives at ``<root>/sha256/<first two hex digits>/<hex digest>``. Identical content is stored once, so
re-registering unchanged weights costs nothing, and a blob's name is its checksum, so corruption is detectable
on every read. Blobs are written to a temporary name next to their destination and renamed into place: a reader
never sees a partial blob, and a crash leaves at most a stray ``.tmp`` file. On a local disk every step is
fsynced; on an object store (``s3://``, ``gs://``, ...) the upload itself is what becomes visible atomically.

A URI is opened with :func:`runtime.open_location` (S3 with short timeouts and ``AWS_ENDPOINT_URL``) and checked at
once, so a missing bucket, an endpoint that cannot be reached or refused credentials are a
:class:`runtime.ConfigError` naming the URI (credentials redacted) when the registry opens, within seconds, rather
than an error or a hang at the first write.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from runtime import LoomError, fsync_dir, open_location, redact, write_atomic

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
#: Blobs are immutable once written; read-only permissions guard against accidental edits in place.
_BLOB_MODE = 0o444
#: URI schemes whose file system lives in one process or on one host, however they are spelled.
_HOST_LOCAL_SCHEMES = frozenset({"file", "local", "memory"})
#: What the artifact store is called in errors.
_WHAT = "the model registry's artifact store"
#: On S3 the reachability check at opening runs on a probe with shorter requests and fewer attempts than the
#: store's own (20 s, 3 attempts, sized for big uploads), so an endpoint that accepts connections and never answers
#: is reported in about 13 s rather than two minutes; a refused connection or a missing bucket in a second or two.
PROBE_REQUEST_TIMEOUT_S = 3.0
PROBE_ATTEMPTS = 2


def _makedirs_durable(path: Path) -> None:
    """Create ``path`` and any missing parents, fsyncing each new entry's parent so it survives power loss."""
    if path.is_dir():
        return
    _makedirs_durable(path.parent)
    with suppress(FileExistsError):  # another process got there first
        path.mkdir()
    fsync_dir(path.parent)


class Blobs(Protocol):
    """What the registry needs from an artifact store."""

    location: str
    #: Whether the nodes of a cluster can all read this store on their own (an object store, not a local disk).
    shared: bool

    def put(self, data: bytes | bytearray | memoryview) -> str: ...

    def read(self, digest: str, what: str) -> bytes: ...


def _check_digest(digest: str) -> str:
    """Refuse anything that is not a digest, so a tampered database cannot point reads outside the store."""
    if not _DIGEST.match(digest):
        raise LoomError(f"invalid artifact digest {digest!r} in the registry database (expected 64 hex digits)")
    return digest


def _verified(data: bytes, digest: str, where: str, what: str) -> bytes:
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise LoomError(
            f"{what} is corrupt: {where} has sha256 {actual} but the registry recorded {digest}; restore the "
            "file from a backup or register the model again"
        )
    return data


def _missing(what: str, where: str) -> LoomError:
    return LoomError(f"{what} is missing from the artifact store: expected {where}; restore it from a backup or "
                     "register the model again")


def open_blobs(root: str | os.PathLike[str]) -> Blobs:
    """The blob store at ``root``: a local directory (a path or ``file://`` URI), or any other file system URI
    that ``pyarrow.fs`` (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``) or ``fsspec`` (``memory://``, ...)
    understands, so every node of a cluster can share one store."""
    text = os.fspath(root)
    scheme = urlsplit(text).scheme if "://" in text else ""
    if not scheme:
        return BlobStore(Path(text))
    if scheme == "file":
        return BlobStore(Path(unquote(urlsplit(text).path)))
    return FileSystemBlobStore(text)


class BlobStore:
    """SHA-256 addressed files under a local directory ``root``, written durably (fsync, then rename)."""

    shared = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        _makedirs_durable(root / "sha256")

    def path_of(self, digest: str) -> Path:
        """Where the blob with this hex digest lives."""
        _check_digest(digest)
        return self.root / "sha256" / digest[:2] / digest

    def put(self, data: bytes | bytearray | memoryview) -> str:
        """Store ``data`` durably (if not already present and intact) and return its SHA-256 hex digest."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_of(digest)
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            return digest  # already stored; a damaged copy falls through and is replaced
        _makedirs_durable(path.parent)
        write_atomic(path, data, mode=_BLOB_MODE)
        return digest

    def read(self, digest: str, what: str) -> bytes:
        """Return the blob's bytes after checking them against ``digest``; ``what`` names it in errors."""
        path = self.path_of(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise _missing(what, str(path)) from None
        return _verified(data, digest, str(path), what)


class FileSystemBlobStore:
    """SHA-256 addressed objects under a file system URI, opened with :func:`runtime.open_location` (``pyarrow.fs``,
    or ``fsspec`` for schemes pyarrow lacks) and checked to be reachable before anything else. Storing content that
    is already there reads it back to check it (cheaper than uploading it again, and a damaged copy is replaced);
    every read verifies the digest."""

    def __init__(self, uri: str) -> None:
        self.location = uri.rstrip("/")
        location = open_location(uri, what=_WHAT)
        probe = location
        if urlsplit(uri).scheme.lower() in ("s3", "s3a"):
            probe = open_location(uri, what=_WHAT, request_timeout_s=PROBE_REQUEST_TIMEOUT_S, attempts=PROBE_ATTEMPTS)
        probe.check(_WHAT)  # a ConfigError naming the URI (redacted) within seconds: no bucket, dead endpoint, ...
        self._fs, self._root = location.fs, location.path.rstrip("/")
        #: Every node can read it: not a file system that lives on one host or in one process.
        self.shared = not location.local and urlsplit(uri).scheme.lower() not in _HOST_LOCAL_SCHEMES
        self._fs.create_dir(f"{self._root}/sha256", recursive=True)

    def _key(self, digest: str) -> str:
        _check_digest(digest)
        return f"{self._root}/sha256/{digest[:2]}/{digest}"

    def put(self, data: bytes | bytearray | memoryview) -> str:
        from pyarrow.fs import FileType

        digest = hashlib.sha256(data).hexdigest()
        key = self._key(digest)
        info = self._fs.get_file_info(key)
        if info.type == FileType.File and info.size == len(data) and self._intact(key, digest):
            return digest  # already stored; a damaged copy falls through and is replaced, as on a local disk
        parent = key.rsplit("/", 1)[0]
        self._fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{digest[:12]}-{uuid.uuid4().hex}.tmp"
        try:
            with self._fs.open_output_stream(tmp) as f:
                f.write(data)
            self._fs.move(tmp, key)
        except BaseException:
            with suppress(OSError):
                self._fs.delete_file(tmp)
            raise
        return digest

    def _intact(self, key: str, digest: str) -> bool:
        hasher = hashlib.sha256()
        try:
            with self._fs.open_input_stream(key) as f:
                while chunk := f.read(1 << 20):
                    hasher.update(chunk)
        except FileNotFoundError:
            return False
        return hasher.hexdigest() == digest

    def read(self, digest: str, what: str) -> bytes:
        key = self._key(digest)
        where = redact(f"{self.location}/sha256/{digest[:2]}/{digest}")
        try:
            with self._fs.open_input_stream(key) as f:
                data = f.read()
        except FileNotFoundError:
            raise _missing(what, where) from None
        return _verified(data, digest, where, what)
