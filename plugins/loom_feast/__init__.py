"""Feast as Loom's feature store (``features.store: feast``)."""

from __future__ import annotations

from typing import Any, Callable

from runtime import hookimpl


def make_store(*, state_dir: Any, options: dict[str, Any]) -> Any:
    from ._store import make_store as make

    return make(state_dir=state_dir, options=options)


@hookimpl
def loom_register_feature_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register Feast as ``feast``."""
    register("feast", make_store)
