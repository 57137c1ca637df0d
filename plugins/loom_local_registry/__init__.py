"""Loom's built-in model registry and experiment tracker, ``local``: SQLite (or PostgreSQL) metadata plus a
content-addressed artifact store.

Select it with ``registry: {kind: local}`` in ``loom.yaml`` (the default). Where it keeps things follows the
project's ``storage:`` section (the factory's ``storage`` argument):

``storage.db`` unset (the default)
    Metadata in ``<path>/registry.db``, SQLite in WAL mode.
``storage.db: postgresql://...`` (or ``postgresql+psycopg://``)
    Metadata in that PostgreSQL database, in its own schema (``loom_registry``), so several hosts share it.
``storage.url`` set
    Artifacts under ``<storage.url>/registry/artifacts`` (any ``pyarrow.fs`` / ``fsspec`` URI, e.g. ``s3://``).

Options (``registry.options``), which win over ``storage:``:

``path``
    Directory holding ``registry.db``. Default: ``<state_dir>/registry``. SQLite only.
``artifact_root``
    Where artifact blobs go: a directory, or a file system URI such as ``s3://bucket/loom`` or
    ``file:///mnt/shared/loom`` (anything ``pyarrow.fs`` or ``fsspec`` opens), so that every node of a cluster
    reads the same artifacts. Default: ``<storage.url>/registry/artifacts``, else ``<path>/artifacts``.
``schema``
    The PostgreSQL schema of the registry's tables. Default: ``loom_registry``. PostgreSQL only.

Relative paths are taken relative to the project's state directory. ``path`` must be on a local file system
(SQLite's locking and WAL mode do not work over NFS/SMB/FUSE): the registry refuses to open on a network file
system unless ``LOOM_ALLOW_NETWORK_FS=1``; many processes on one machine may use it at once. State shared across
hosts belongs in PostgreSQL and object storage; with both, :attr:`LocalRegistry.shared` is True and serving
replicas on any node read versions straight from them.

Storage that cannot be reached fails the registry's creation within seconds with a :class:`runtime.ConfigError`
naming it, its password redacted: PostgreSQL gets a 5 s ``connect_timeout`` (the URL's own
``?connect_timeout=`` wins), the artifact store is opened with :func:`runtime.open_location` (S3: short
connection timeouts, ``AWS_ENDPOINT_URL``) and listed once.

This plugin uses only ``runtime``'s public API, exactly as a third-party registry would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtime import ConfigError, Register, hookimpl, join_uri, redact

from ._registry import LocalRegistry

__all__ = ["LocalRegistry", "loom_register_registries"]

_OPTIONS = ("path", "artifact_root", "schema")


def _path_option(options: dict[str, Any], key: str, default: Path, state_dir: Path) -> Path:
    value = options.get(key)
    if value is None:
        return default
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigError(f"registry option {key!r} must be a directory path, got {value!r}")
    return state_dir / Path(value).expanduser()  # an absolute path replaces state_dir


def _root_option(options: dict[str, Any], default: str | Path, state_dir: Path) -> str | Path:
    value = options.get("artifact_root")
    if isinstance(value, str) and "://" in value:
        return value
    return _path_option(options, "artifact_root", default, state_dir)


def _create(*, state_dir: Path, options: dict[str, Any], storage: Any = None) -> LocalRegistry:
    """Factory for ``registry.kind: local``; rejects unknown options so typos do not go unnoticed. ``storage`` is
    the project's ``storage:`` section (``url``, ``db``; ``None`` for all-local)."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) for registry 'local': {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(_OPTIONS)})"
        )
    state_dir = Path(state_dir)
    db = getattr(storage, "db", None)
    url = getattr(storage, "url", None)
    if db is not None and options.get("path") is not None:
        raise ConfigError(f"registry option 'path' places a SQLite registry.db, but storage.db keeps the registry "
                          f"in {redact(db)}; remove one of them")
    path = _path_option(options, "path", state_dir / "registry", state_dir)
    default_root: str | Path = path / "artifacts" if url is None else join_uri(url, "registry", "artifacts")
    artifact_root = _root_option(options, default_root, state_dir)
    return LocalRegistry(None if db is not None else path, artifact_root, db=db, schema=options.get("schema"))


@hookimpl
def loom_register_registries(register: Register) -> None:
    """Register the ``local`` registry."""
    register("local", _create)
