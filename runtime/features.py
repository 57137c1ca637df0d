"""The feature-store protocol and feature-view definition."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd



@dataclass(frozen=True)
class FeatureView:
    """A named group of features keyed by an entity and stamped with event time."""

    name: str
    entity: str
    timestamp: str
    features: tuple[str, ...]
    ttl: timedelta | None = None
    dtypes: dict[str, str] = field(default_factory=dict)  # column -> declared Loom type


@runtime_checkable
class FeatureStore(Protocol):
    """Offline (training) and online (serving) feature storage. Built by ``factory(*, state_dir, options)``."""

    def apply(self, view: FeatureView) -> None:
        """Create or update a feature view definition."""
        ...

    def write(self, view: str, df: pd.DataFrame) -> int:
        """Append rows (entity, timestamp, features) to the offline store; return rows written."""
        ...

    def materialize(self, view: str, since: Any = None) -> int:
        """Copy the latest value per entity (newer than ``since``) from offline to online; return entities written."""
        ...

    def get_historical_features(self, entity_df: pd.DataFrame, view: str, features: list[str]) -> pd.DataFrame:
        """Point-in-time join: for each row of ``entity_df`` (entity, timestamp, anything else), the latest feature
        values with timestamp <= the row's and within the view's TTL. Row order and count are preserved."""
        ...

    def get_online_features(self, view: str, entity_keys: list[Any], features: list[str]) -> pd.DataFrame:
        """Latest feature values for ``entity_keys`` from the online store, one row per key in order
        (missing keys give nulls)."""
        ...

    def push(self, view: str, df: pd.DataFrame) -> int:
        """Write fresh values straight to the online store (and offline, for later training)."""
        ...


FeatureStoreFactory = Any  # Callable[..., FeatureStore] with keyword-only state_dir: Path, options: dict
