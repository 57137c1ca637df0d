"""Feast as Loom's feature store (``features.store: feast``), from the optional extra ``loom-mlops[feast]``.

A real Feast repository with the local provider (file offline store, SQLite online store) under the project's state
directory; Loom's entities, feature views and feature services are applied to it, and training and serving read
through Feast's own API. See ``_store`` for the layout. Options (``features.options``): ``path`` (the repo directory,
relative to the state directory; default ``feast``) and ``project`` (the Feast project name; default ``loom``).

This module imports nothing from Feast, so Loom starts (and lists this plugin) whether or not Feast is installed;
Feast is imported when a store is opened. Uses only ``runtime``'s public API, exactly as a third-party plugin would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime import ConfigError, FeatureStore, Register, hookimpl

__all__ = ["loom_register_feature_stores", "make_store"]


def make_store(*, state_dir: Path | str, options: dict[str, Any]) -> FeatureStore:
    """The ``feast`` factory; a :class:`runtime.ConfigError` says what to install when Feast is missing."""
    try:
        from ._store import make_store as make
    except ImportError as err:
        if "feast" not in str(err):
            raise
        raise ConfigError("features.store 'feast' needs Feast: pip install 'loom-mlops[feast]'") from None
    return make(state_dir=state_dir, options=options)


@hookimpl
def loom_register_feature_stores(register: Register) -> None:
    """Register Feast as ``feast``."""
    register("feast", make_store)
