"""Loom's built-in feature store (``features.store: local``): Parquet offline, SQLite online, no servers.

Layout under ``path`` (option ``path``, default ``<state_dir>/features``)::

    views/<view>.json          view definitions plus the column types learned from data (atomic rewrites)
    services/<service>.json    feature services: the features each takes from each view
    offline/<view>/part-*.parquet   append-only history, one atomically renamed file per write or push
    online.db                  SQLite (WAL): latest value per entity, one table per view

Training reads the offline history through a point-in-time join (:meth:`LocalFeatureStore.get_historical_features`,
pandas ``merge_asof``), so a label at time ``t`` only ever sees feature values stamped ``<= t`` and within the view's
TTL. Serving reads the online tables (:meth:`LocalFeatureStore.get_online_features`), kept up to date by
:meth:`~LocalFeatureStore.materialize` (batch, incremental) and :meth:`~LocalFeatureStore.push` (streaming).

``path`` must be on a local disk: the store refuses to open on a network file system (NFS, SMB, FUSE, ...), where
SQLite's locking is unsafe, unless ``LOOM_ALLOW_NETWORK_FS=1``.

This plugin uses only ``runtime``'s public API, exactly as a third-party plugin would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtime import ConfigError, Register, hookimpl

from ._store import LocalFeatureStore

__all__ = ["LocalFeatureStore", "loom_register_feature_stores", "make_store"]

#: The options this store accepts in ``features.options``.
OPTIONS = ("path",)


@hookimpl
def loom_register_feature_stores(register: Register) -> None:
    """Register this store as ``local``."""
    register("local", make_store)


def make_store(*, state_dir: Path | str, options: dict[str, Any]) -> LocalFeatureStore:
    """The ``local`` factory: validate ``options`` and open the store (creating its directory and database).

    ``path`` (optional) is where the store keeps its files; a relative path is taken relative to ``state_dir``.
    Any other option is a :class:`runtime.ConfigError` naming it, so a typo is never silently ignored."""
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"feature store 'local': unknown option {unknown[0]!r}"
            + (f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
            + f"; known options: {', '.join(OPTIONS)}"
        )
    raw = opts.get("path")
    if raw is None:
        path = Path(state_dir) / "features"
    elif isinstance(raw, (str, os.PathLike)) and str(raw).strip():
        p = Path(raw).expanduser()
        path = p if p.is_absolute() else Path(state_dir) / p
    else:
        raise ConfigError(f"feature store 'local': option 'path' must be a non-empty path, got {raw!r}")
    return LocalFeatureStore(path)
