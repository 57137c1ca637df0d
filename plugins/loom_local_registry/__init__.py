"""Loom's built-in model registry and experiment tracker, ``local``: SQLite metadata plus a content-addressed
artifact store.

Select it with ``registry: {kind: local}`` in ``loom.yaml`` (the default). Options:

``path``
    Directory holding ``registry.db``. Default: ``<state_dir>/registry``.
``artifact_root``
    Where artifact blobs go: a directory, or a file system URI such as ``s3://bucket/loom`` or
    ``file:///mnt/shared/loom`` (anything ``pyarrow.fs`` or ``fsspec`` opens), so that every node of a cluster
    reads the same artifacts. Default: ``<path>/artifacts``.

Relative paths are taken relative to the project's state directory. ``path`` must be on a local file system
(SQLite's locking and WAL mode do not work over NFS/SMB/FUSE): the registry refuses to open on a network file
system unless ``LOOM_ALLOW_NETWORK_FS=1``; many processes on one machine may use it at once.

This plugin uses only ``runtime``'s public API, exactly as a third-party registry would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtime import ConfigError, Register, hookimpl

from ._registry import LocalRegistry

__all__ = ["LocalRegistry", "loom_register_registries"]

_OPTIONS = ("path", "artifact_root")


def _path_option(options: dict[str, Any], key: str, default: Path, state_dir: Path) -> Path:
    value = options.get(key)
    if value is None:
        return default
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigError(f"registry option {key!r} must be a directory path, got {value!r}")
    return state_dir / Path(value).expanduser()  # an absolute path replaces state_dir


def _root_option(options: dict[str, Any], default: Path, state_dir: Path) -> str | Path:
    value = options.get("artifact_root")
    if isinstance(value, str) and "://" in value:
        return value
    return _path_option(options, "artifact_root", default, state_dir)


def _create(*, state_dir: Path, options: dict[str, Any]) -> LocalRegistry:
    """Factory for ``registry.kind: local``; rejects unknown options so typos do not go unnoticed."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) for registry 'local': {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(_OPTIONS)})"
        )
    state_dir = Path(state_dir)
    path = _path_option(options, "path", state_dir / "registry", state_dir)
    artifact_root = _root_option(options, path / "artifacts", state_dir)
    return LocalRegistry(path, artifact_root)


@hookimpl
def loom_register_registries(register: Register) -> None:
    """Register the ``local`` registry."""
    register("local", _create)
