"""The feature-store protocol and the definitions it stores: feature views and feature services.

A **feature view** is a named group of features keyed by one entity column and stamped with event time; its TTL
bounds how old a value may be and still be joined. A **feature service** is a named selection of features from one
or more views: what one model trains on and is served with. Entities are named in ``loom.yaml``; a view carries
its entity's join-key column (``FeatureView.entity``), which is all a store needs to know about it.

Stores answer per view; :meth:`FeatureService.historical` and :meth:`FeatureService.online` assemble a service's
features from its views, so every store supports services the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class FeatureView:
    """A named group of features keyed by an entity and stamped with event time."""

    name: str
    entity: str
    """The entity's join-key column, e.g. ``customer_id``."""
    timestamp: str
    """The event-time column."""
    features: tuple[str, ...]
    ttl: timedelta | None = None
    """Values older than this (relative to the row they are joined to) are not joined; ``None``: no limit."""
    dtypes: dict[str, str] = field(default_factory=dict)
    """Column -> declared Loom type (``int``, ``float``, ``bool``, ``string``, ``category``, ``timestamp``)."""


@dataclass(frozen=True)
class FeatureService:
    """The features one model uses, drawn from one or more views.

    ``projections`` are the views, each narrowed to the features the service takes from it. Feature names are
    unique across a service (they become the model's input columns).
    """

    name: str
    projections: tuple[FeatureView, ...]

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for view in self.projections:
            for f in view.features:
                if f in seen:
                    raise ConfigError(f"feature service {self.name!r}: feature {f!r} comes from both view "
                                      f"{seen[f]!r} and view {view.name!r}; feature names must be unique")
                seen[f] = view.name
        if not seen and self.projections:  # no view at all: a model of tensor inputs only
            raise ConfigError(f"feature service {self.name!r} has no features")

    @classmethod
    def of(cls, name: str, views: Sequence[FeatureView], selection: Mapping[str, Sequence[str] | None]) -> FeatureService:
        """Build a service from full view definitions and ``{view name: features or None (all of them)}``."""
        by_name = {v.name: v for v in views}
        projections = []
        for view_name, wanted in selection.items():
            view = by_name.get(view_name)
            if view is None:
                raise ConfigError(f"feature service {name!r} names view {view_name!r}, which is not defined "
                                  f"(views: {', '.join(by_name) or 'none'})")
            if wanted is None:
                projections.append(view)
                continue
            unknown = [f for f in wanted if f not in view.features]
            if unknown:
                raise ConfigError(f"feature service {name!r}: view {view_name!r} has no feature {unknown[0]!r} "
                                  f"(features: {', '.join(view.features)})")
            projections.append(replace(view, features=tuple(dict.fromkeys(wanted))))
        return cls(name=name, projections=tuple(projections))

    @property
    def features(self) -> tuple[str, ...]:
        """Every feature of the service, in order: the model's input columns."""
        return tuple(f for view in self.projections for f in view.features)

    @property
    def join_keys(self) -> tuple[str, ...]:
        """The entity columns needed to look the service's features up."""
        return tuple(dict.fromkeys(view.entity for view in self.projections))

    @property
    def entity(self) -> str:
        """The join key of the first view: for the usual single-entity service, its only one (see :attr:`join_keys`)."""
        return self.projections[0].entity

    @property
    def timestamp(self) -> str:
        """The event-time column of the first view (each view keeps its own; joins take the caller's)."""
        return self.projections[0].timestamp

    @property
    def dtypes(self) -> dict[str, str]:
        """Declared Loom types of the join keys and features of every view."""
        return {c: t for view in self.projections for c, t in view.dtypes.items()
                if c in view.features or c == view.entity}

    def dtype(self, feature: str) -> str | None:
        """The declared Loom type of ``feature``, if its view declares one."""
        for view in self.projections:
            if feature in view.features:
                return view.dtypes.get(feature)
        raise KeyError(feature)

    def historical(self, store: FeatureStore, entity_df: pd.DataFrame, *, timestamp: str) -> pd.DataFrame:
        """Point-in-time join of every view of the service onto ``entity_df`` (one call per view).

        ``entity_df`` has a column per join key and the event-time column ``timestamp``; the views' own timestamp
        column names do not matter. Returns a copy of ``entity_df`` (same index, order and other columns) with
        one column per feature of the service."""
        out = entity_df.copy()
        for view in self.projections:
            left = entity_df[[view.entity, timestamp]].set_axis([view.entity, view.timestamp], axis=1)
            joined = store.get_historical_features(left, view.name, list(view.features))
            for f in view.features:
                out[f] = joined[f].set_axis(out.index)
        return out

    def online(self, store: FeatureStore, entity_rows: Any) -> pd.DataFrame:
        """Latest values of every feature of the service, one row per entity row, in order (``RangeIndex``).

        ``entity_rows`` maps each join key to a sequence of keys (a dict or a DataFrame); a service with a single
        join key also takes a plain sequence of keys. Columns and dtypes are those of
        :meth:`FeatureStore.get_online_features`."""
        import pandas as pd

        if isinstance(entity_rows, (pd.DataFrame, Mapping)):
            rows = entity_rows
        elif len(self.join_keys) == 1:
            rows = {self.join_keys[0]: list(entity_rows)}
        else:
            raise ConfigError(f"feature service {self.name!r} needs keys for {', '.join(self.join_keys)}: "
                              "pass a mapping or DataFrame with one column per join key")
        missing = [k for k in self.join_keys if k not in rows]
        if missing:
            raise ConfigError(f"feature service {self.name!r}: entity rows lack join key(s) {', '.join(missing)}")
        frames = [store.get_online_features(view.name, list(rows[view.entity]), list(view.features))
                  for view in self.projections]
        return pd.concat(frames, axis=1) if len(frames) > 1 else frames[0]


@runtime_checkable
class FeatureStore(Protocol):
    """Offline (training) and online (serving) feature storage. Built by ``factory(*, state_dir, options)``.

    Value types are the same offline and online: a view's declared ``dtypes`` (or, undeclared, the type of the
    first data written) decide them. Frames handed back use these pandas dtypes: ``int`` -> ``Int64``, ``float``
    -> ``float64``, ``bool`` -> ``boolean``, ``string``/``category`` -> ``string``, ``timestamp`` ->
    ``datetime64[ns]`` (naive UTC). Timestamps going in are taken as UTC when naive.
    """

    def apply(self, view: FeatureView) -> None:
        """Create or update a feature view definition; applying an unchanged definition changes nothing."""
        ...

    def apply_service(self, service: FeatureService) -> None:
        """Record a feature service. Its views must have been applied; it names only features they have."""
        ...

    def write(self, view: str, df: pd.DataFrame) -> int:
        """Append rows (entity, timestamp, features) to the offline store; return rows written."""
        ...

    def materialize(self, view: str, since: Any = None) -> int:
        """Copy the latest value per entity from offline to online and return how many entities changed.

        Without ``since``: incremental, only data written since the last materialisation. With ``since`` (a
        datetime or ISO string): rows stamped after it. An online value is only ever replaced by a newer one."""
        ...

    def get_historical_features(self, entity_df: pd.DataFrame, view: str, features: list[str]) -> pd.DataFrame:
        """Point-in-time join: for each row of ``entity_df`` (the view's entity and timestamp columns, anything
        else), the latest feature values with timestamp <= the row's and within the view's TTL; nulls where none
        qualifies. Returns a copy of ``entity_df`` plus the feature columns; row order, count and index kept."""
        ...

    def get_online_features(self, view: str, entity_keys: list[Any], features: list[str]) -> pd.DataFrame:
        """Latest feature values for ``entity_keys``, for serving.

        Result shape: one row per key in input order (duplicates repeated), a ``RangeIndex``, exactly the
        requested ``features`` as columns in the requested order, typed as described on the class; a key with no
        value (unknown, or never materialised) gives a row of nulls. No entity or timestamp column."""
        ...

    def push(self, view: str, df: pd.DataFrame) -> int:
        """Write fresh values straight to the online store (and offline, for later training); return rows."""
        ...

    def close(self) -> None:
        """Release connections and files. Idempotent."""
        ...


FeatureStoreFactory = Any  # Callable[..., FeatureStore] with keyword-only state_dir: Path, options: dict
