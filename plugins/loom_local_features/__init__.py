"""Loom's built-in feature store (``features.store: local``): Parquet offline, SQLite or PostgreSQL online.

Where it keeps things follows the project's ``storage:`` section (the factory's ``storage`` argument):

``storage:`` unset (the default)
    Everything under ``<state_dir>/features`` on the local disk; no servers.
``storage.url`` set (a directory or any ``pyarrow.fs``/``fsspec`` URI: ``s3://bucket/prefix``, ``gs://...``)
    View definitions, services and the offline history under ``<storage.url>/features``. S3 honours
    ``AWS_ENDPOINT_URL`` and the usual credential chain.
``storage.db: postgresql://...`` (or ``postgresql+psycopg://``)
    The online rows and the materialisation bookkeeping in that database, schema ``loom_features``, shared by
    every host; else SQLite in ``<state_dir>/features/online.db`` (a ``sqlite://`` URL there is refused: the
    SQLite file is always the store's own).

Layout of the files (under ``path``, or ``<storage.url>/features``)::

    views/<view>.json          view definitions plus the column types learned from data (atomic rewrites)
    services/<service>.json    feature services: the features each takes from each view
    offline/<view>/part-*.parquet   append-only history, one file per write or push, written under a hidden
                               temporary name and then moved into place (readers never see half a part)
    online.db                  (SQLite only, on the local disk) latest value per entity, one table per view

Options (``features.options``), which win over ``storage:``:

``path``
    Where the files go: a directory (relative to the state directory) or a file system URI. Default:
    ``<storage.url>/features``, else ``<state_dir>/features``. Without ``storage.db``, a local ``path`` also holds
    ``online.db``.
``schema``
    The PostgreSQL schema of the online tables. Default: ``loom_features``. PostgreSQL only.

Training reads the offline history through a point-in-time join (:meth:`LocalFeatureStore.get_historical_features`,
pandas ``merge_asof``), so a label at time ``t`` only ever sees feature values stamped ``<= t`` and within the view's
TTL. Serving reads the online tables (:meth:`LocalFeatureStore.get_online_features`: one query per lookup), kept up
to date by :meth:`~LocalFeatureStore.materialize` (batch, incremental) and :meth:`~LocalFeatureStore.push`
(streaming); each materialisation or push is one transaction, so a lookup never sees half of one.

The SQLite ``online.db`` must be on a local disk: the store refuses to open on a network file system (NFS, SMB,
FUSE, ...), where SQLite's locking is unsafe, unless ``LOOM_ALLOW_NETWORK_FS=1``. Several hosts share a store by
putting its files on shared storage (``storage.url``) and its online rows in PostgreSQL (``storage.db``); updates
of view definitions are then serialised across hosts by a PostgreSQL advisory lock. An unreachable bucket or
database is a :class:`runtime.ConfigError` at start-up naming it (password redacted), within seconds.

This plugin uses only ``runtime``'s public API, exactly as a third-party plugin would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtime import ConfigError, Location, Register, hookimpl, open_location

from ._store import LocalFeatureStore

__all__ = ["LocalFeatureStore", "loom_register_feature_stores", "make_store"]

#: The options this store accepts in ``features.options``.
OPTIONS = ("path", "schema")


@hookimpl
def loom_register_feature_stores(register: Register) -> None:
    """Register this store as ``local``."""
    register("local", make_store)


def make_store(*, state_dir: Path | str, options: dict[str, Any], storage: Any = None) -> LocalFeatureStore:
    """The ``local`` factory: validate ``options`` and open the store (creating its directory and database).

    ``storage`` is the project's ``storage:`` section (``url``, ``db``; ``None`` for all-local); see the module
    docstring for where each goes. ``path`` (optional) is where the store keeps its files; a relative path is taken
    relative to ``state_dir``. Any other option is a :class:`runtime.ConfigError` naming it, so a typo is never
    silently ignored."""
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"feature store 'local': unknown option {unknown[0]!r}"
            + (f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
            + f"; known options: {', '.join(OPTIONS)}"
        )
    state_dir = Path(state_dir)
    url = getattr(storage, "url", None)
    db = getattr(storage, "db", None)
    local_default = state_dir / "features"
    raw = opts.get("path")
    root: Path | Location
    local_dir = local_default
    if raw is None:
        root = open_location(url, what="storage.url").child("features") if url is not None else local_default
    elif isinstance(raw, (str, os.PathLike)) and str(raw).strip():
        if "://" in os.fspath(raw):
            root = open_location(os.fspath(raw), what="feature store option 'path'")
            if root.local:
                local_dir = Path(root.path)
        else:
            p = Path(raw).expanduser()
            root = local_dir = p if p.is_absolute() else state_dir / p
    else:
        raise ConfigError(f"feature store 'local': option 'path' must be a non-empty path, got {raw!r}")
    return LocalFeatureStore(root, db=db, schema=opts.get("schema"), local_dir=local_dir if db is None else None)
