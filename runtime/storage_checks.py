"""Where Loom's embedded stores may keep SQLite: a local disk, never a network file system.

SQLite's locking (and WAL's shared memory) rely on POSIX locks and mmap working as on a local disk; over NFS, SMB,
FUSE mounts and cluster file systems they do not, and concurrent writers corrupt the database. ``os.statvfs``
cannot tell these apart, so the file system's kind is read from Linux ``statfs``'s ``f_type`` (through libc). On
other systems, or when ``statfs`` fails, nothing is refused.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from .errors import ConfigError

log = logging.getLogger(__name__)

#: Set to 1 to open a store on a network file system anyway (you make sure one process writes at a time).
ALLOW_ENV = "LOOM_ALLOW_NETWORK_FS"

#: ``statfs`` ``f_type`` magic numbers (linux/magic.h and the file systems' own headers) -> what they are.
NETWORK_FILESYSTEMS: dict[int, str] = {
    0x6969: "NFS",
    0xFF534D42: "CIFS/SMB",
    0xFE534D42: "SMB2/3",
    0x517B: "SMB",
    0x65735546: "FUSE (s3fs, gcsfuse, GlusterFS, sshfs, ...)",
    0x00C36400: "Ceph",
    0x0BD00BD0: "Lustre",
    0x47504653: "GPFS",
    0x5346414F: "AFS",
    0x01021997: "9P",
}


@functools.lru_cache(maxsize=1)
def _libc_statfs() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).statfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def _statfs(path: str) -> int | None:
    """``f_type`` of the file system holding ``path`` (which exists), or ``None`` when it cannot be read."""
    fn = _libc_statfs()
    if fn is None:
        return None
    # struct statfs starts with f_type (__fsword_t, a C long on glibc and musl); 256 bytes hold all of it.
    buf = ctypes.create_string_buffer(256)
    if fn(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF  # magic numbers are 32-bit; a 32-bit long is signed


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(Path(path).expanduser()))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def network_filesystem(path: str | os.PathLike[str]) -> tuple[str, Path] | None:
    """The kind of network file system ``path`` (or, if it does not exist yet, its nearest existing ancestor) is
    on, with the directory that was checked; ``None`` for a local disk or when it cannot be told."""
    checked = _existing_ancestor(Path(path))
    try:
        f_type = _statfs(str(checked))
    except (OSError, ValueError):
        return None
    kind = NETWORK_FILESYSTEMS.get(f_type) if f_type is not None else None
    return (kind, checked) if kind else None


def check_local_filesystem(path: str | os.PathLike[str], *, what: str) -> None:
    """Refuse to keep ``what`` (an SQLite database's directory) at ``path`` on a network file system.

    :raises ConfigError: naming the path, the file system and what to do instead; unless ``LOOM_ALLOW_NETWORK_FS``
        is ``1``, in which case a warning is logged.
    """
    found = network_filesystem(path)
    if found is None:
        return
    kind, checked = found
    where = f"{path}" + (f" (checked {checked})" if Path(checked) != Path(path) else "")
    if os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes"):
        log.warning("%s at %s is on %s; opening it anyway because %s is set", what, where, kind, ALLOW_ENV)
        return
    raise ConfigError(
        f"{what} at {where} is on a network file system ({kind}): SQLite's locking is unsafe there and concurrent "
        f"writers can corrupt it. Put it on a local disk, or share the registry across hosts with storage.db "
        f"(PostgreSQL) and storage.url (object storage): see docs/registry.md. Set {ALLOW_ENV}=1 to open it anyway.")
