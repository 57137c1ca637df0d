"""Content-addressed, crash-safe blob storage for model artifacts.

Each blob lives at ``<root>/sha256/<first two hex digits>/<hex digest>``. Identical content is stored once, so
re-registering unchanged weights costs nothing, and a blob's name is its checksum, so corruption is detectable
on every read. Blobs are written to a temporary file in the destination directory, fsynced and renamed into
place: a reader never sees a partial blob, and a crash leaves at most a stray ``.tmp`` file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from contextlib import suppress
from pathlib import Path

from runtime import LoomError

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
#: Blobs are immutable once written; read-only permissions guard against accidental edits in place.
_BLOB_MODE = 0o444


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new subdirectory) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: Path) -> None:
    """Create ``path`` and any missing parents, fsyncing each new entry's parent so it survives power loss."""
    if path.is_dir():
        return
    _makedirs_durable(path.parent)
    with suppress(FileExistsError):  # another process got there first
        path.mkdir()
    _fsync_dir(path.parent)


class BlobStore:
    """SHA-256 addressed files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        _makedirs_durable(root / "sha256")

    def path_of(self, digest: str) -> Path:
        """Where the blob with this hex digest lives; refuses anything that is not a digest (so a tampered
        database cannot point reads outside the store)."""
        if not _DIGEST.match(digest):
            raise LoomError(f"invalid artifact digest {digest!r} in the registry database (expected 64 hex digits)")
        return self.root / "sha256" / digest[:2] / digest

    def put(self, data: bytes | bytearray | memoryview) -> str:
        """Store ``data`` durably (if not already present and intact) and return its SHA-256 hex digest."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_of(digest)
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            return digest  # already stored; a damaged copy falls through and is replaced
        _makedirs_durable(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{digest[:12]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _BLOB_MODE)
            os.replace(tmp, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)
        return digest

    def read(self, digest: str, what: str) -> bytes:
        """Return the blob's bytes after checking them against ``digest``; ``what`` names it in errors."""
        path = self.path_of(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise LoomError(
                f"{what} is missing from the artifact store: expected {path}; restore it from a backup or "
                "register the model again"
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise LoomError(
                f"{what} is corrupt: {path} has sha256 {actual} but the registry recorded {digest}; restore the "
                "file from a backup or register the model again"
            )
        return data
