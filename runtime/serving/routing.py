"""Which model versions are live and how traffic reaches them: the routing table, and the rollout steps that change
it (deploy, canary, promote, rollback, scale to zero).

The table travels as the ingress deployment's Ray Serve ``user_config``: changing it calls ``reconfigure()`` on the
running replicas, which load new versions before switching and keep old ones until the switch is done, so a
rollout drops no request and restarts no replica. Every function here is pure; :mod:`.deploy` applies the result.

Per model:

- ``traffic``: version -> weight; a request that names no version goes to one of these, at random by weight;
- ``aliases``: alias -> version, for ``name@alias`` routes (a snapshot of the registry's aliases of live versions);
- ``standby``: versions kept loaded with no traffic of their own: the previous primary, for an instant rollback.
  Explicit ``name/versions/N`` routes reach every live version.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import LoomError
from ..names import check_name


@dataclass(frozen=True)
class ModelRoutes:
    """The live versions of one model and how traffic is split between them."""

    traffic: dict[int, int]
    aliases: dict[str, int] = field(default_factory=dict)
    standby: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.traffic or any(w <= 0 for w in self.traffic.values()):
            raise LoomError("a served model needs at least one version with a positive traffic weight")
        versions, weights = zip(*sorted(self.traffic.items()))
        total, cumulative = 0, []
        for w in weights:
            total += w
            cumulative.append(total)
        object.__setattr__(self, "_versions", versions)
        object.__setattr__(self, "_cumulative", [c / total for c in cumulative])

    @property
    def live(self) -> tuple[int, ...]:
        """Every loaded version, lowest first."""
        return tuple(sorted({*self.traffic, *self.standby}))

    @property
    def primary(self) -> int:
        """The version with the most traffic (the older one on a tie): what a canary is measured against."""
        return max(self.traffic, key=lambda v: (self.traffic[v], -v))

    @property
    def canary(self) -> int | None:
        """The other version while traffic is split between two, else None."""
        others = [v for v in self.traffic if v != self.primary]
        return others[0] if len(others) == 1 else None

    def pick(self, rand: float | None = None) -> int:
        """A version for a request that names none, chosen by weight."""
        versions = self._versions  # type: ignore[attr-defined]
        if len(versions) == 1:
            return versions[0]
        i = bisect.bisect_right(self._cumulative, random.random() if rand is None else rand)  # type: ignore[attr-defined]
        return versions[min(i, len(versions) - 1)]

    def to_config(self) -> dict[str, Any]:
        return {"traffic": {str(v): w for v, w in sorted(self.traffic.items())},
                "aliases": dict(sorted(self.aliases.items())), "standby": list(self.standby)}

    @classmethod
    def from_config(cls, name: str, cfg: Any) -> ModelRoutes:
        if not isinstance(cfg, Mapping):
            raise LoomError(f"routes of model {name!r} must be a mapping")
        try:
            traffic = {int(v): int(w) for v, w in dict(cfg.get("traffic") or {}).items()}
            aliases = {check_name(a, "alias"): int(v) for a, v in dict(cfg.get("aliases") or {}).items()}
            standby = tuple(int(v) for v in cfg.get("standby") or ())
        except (TypeError, ValueError) as err:
            raise LoomError(f"routes of model {name!r} are malformed: {err}") from None
        return cls(traffic=traffic, aliases=aliases, standby=standby)


@dataclass(frozen=True)
class RoutingTable:
    """Every served model's routes; ``generation`` grows by one with each change."""

    models: dict[str, ModelRoutes] = field(default_factory=dict)
    generation: int = 0

    def to_config(self) -> dict[str, Any]:
        """The JSON-serialisable form used as the deployment's ``user_config``."""
        return {"generation": self.generation, "models": {n: r.to_config() for n, r in sorted(self.models.items())}}

    @classmethod
    def from_config(cls, cfg: Any) -> RoutingTable:
        if not cfg:
            return cls()
        if not isinstance(cfg, Mapping) or not isinstance(cfg.get("models", {}), Mapping):
            raise LoomError("the routing table must be a mapping with 'models'")
        models = {check_name(n, "model name"): ModelRoutes.from_config(n, r) for n, r in cfg["models"].items()}
        return cls(models=models, generation=int(cfg.get("generation", 0)))

    def routes(self, model: str) -> ModelRoutes:
        routes = self.models.get(model)
        if routes is None:
            raise LoomError(f"model {model!r} is not being served (served: {', '.join(self.models) or 'none'})")
        return routes

    def _with(self, model: str, routes: ModelRoutes | None) -> RoutingTable:
        models = dict(self.models)
        if routes is None:
            models.pop(model, None)
        else:
            models[model] = routes
        return RoutingTable(models=models, generation=self.generation + 1)

    # -- rollout steps -----------------------------------------------------------------------------------------

    def deploy(self, model: str, version: int, *, canary: int | None = None) -> RoutingTable:
        """Serve ``version``: with all traffic (the old primary stays loaded on standby), or, with ``canary``
        percent, next to the current primary, which keeps the rest."""
        current = self.models.get(model)
        if canary is None:
            standby = (current.primary,) if current is not None and current.primary != version else ()
            return self._with(model, ModelRoutes(traffic={version: 100}, standby=standby))
        if not 0 < canary < 100:
            raise LoomError(f"canary must be a percentage between 1 and 99, got {canary}")
        if current is None:
            raise LoomError(f"model {model!r} is not being served yet: deploy a version without --canary first")
        if current.primary == version:
            raise LoomError(f"version {version} of {model!r} is already the primary; nothing to canary")
        return self._with(model, ModelRoutes(traffic={current.primary: 100 - canary, version: canary},
                                             standby=tuple(v for v in current.standby if v != version)))

    def set_canary_weight(self, model: str, percent: int) -> RoutingTable:
        """Change the share of a running canary."""
        current = self.routes(model)
        if current.canary is None:
            raise LoomError(f"model {model!r} has no canary running")
        if not 0 < percent < 100:
            raise LoomError(f"canary must be a percentage between 1 and 99, got {percent}")
        return self._with(model, replace(current, traffic={current.primary: 100 - percent, current.canary: percent}))

    def promote(self, model: str) -> tuple[RoutingTable, int]:
        """Give the running canary all traffic; the old primary goes on standby. Returns the promoted version."""
        current = self.routes(model)
        canary = current.canary
        if canary is None:
            raise LoomError(f"model {model!r} has no canary to promote (deploy one with --canary)")
        return self._with(model, ModelRoutes(traffic={canary: 100}, standby=(current.primary,))), canary

    def rollback(self, model: str) -> tuple[RoutingTable, int]:
        """Abort a running canary, or else give all traffic back to the standby version (the old primary, which
        in turn goes on standby). Returns the version that now has all traffic."""
        current = self.routes(model)
        if current.canary is not None:
            primary = current.primary
            return self._with(model, ModelRoutes(traffic={primary: 100}, standby=current.standby)), primary
        if not current.standby:
            raise LoomError(f"model {model!r} has no previous version loaded to roll back to")
        previous = current.standby[-1]
        return self._with(model, ModelRoutes(traffic={previous: 100}, standby=(current.primary,))), previous

    def scale_to_zero(self, model: str, version: int | None = None) -> RoutingTable:
        """Unload ``version`` (a standby one), or the whole model when ``version`` is None."""
        current = self.routes(model)
        if version is None:
            return self._with(model, None)
        if version in current.traffic:
            raise LoomError(f"version {version} of {model!r} still takes traffic; promote or roll back first")
        if version not in current.live:
            raise LoomError(f"version {version} of {model!r} is not loaded (live: {', '.join(map(str, current.live))})")
        return self._with(model, ModelRoutes(traffic=dict(current.traffic),
                                             standby=tuple(v for v in current.standby if v != version)))

    def with_aliases(self, model: str, aliases: Mapping[str, int]) -> RoutingTable:
        """Record the registry's aliases that point at live versions (others are not routable)."""
        current = self.routes(model)
        live = set(current.live)
        kept = {a: v for a, v in sorted(aliases.items()) if v in live}
        if kept == current.aliases:
            return self
        return self._with(model, replace(current, aliases=kept))
