"""Which model versions are live and how traffic reaches them: the routing table, and the rollout steps that change
it (deploy, canary, shadow, promote, rollback, scale to zero).

The table travels as the ingress deployment's Ray Serve ``user_config``: changing it calls ``reconfigure()`` on the
running replicas, which load new versions before switching and keep old ones until the switch is done, so a
rollout drops no request and restarts no replica. Every function here is pure; :mod:`.deploy` applies the result.

Per model:

- ``primary``, and optionally a ``canary`` taking ``canary_percent`` of the requests that name no version;
- ``aliases``: alias -> version, for ``name@alias`` routes (a snapshot of the registry's aliases of live versions);
- ``standby``: versions kept loaded with no traffic of their own: the previous primary, for an instant rollback;
- ``shadow``: optionally a version that also scores every request the primary answers to one that names no version,
  off the request's path; its answers are compared with the primary's and never returned. A shadow and a canary
  never run at once.

Explicit ``name/versions/N`` routes reach every live version.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import LoomError
from ..names import check_name


@dataclass(frozen=True)
class ModelRoutes:
    """The live versions of one model and how traffic is split between them."""

    primary: int
    canary: int | None = None
    canary_percent: int = 0
    aliases: dict[str, int] = field(default_factory=dict)
    standby: tuple[int, ...] = ()
    shadow: int | None = None

    def __post_init__(self) -> None:
        if self.canary is not None and not 0 < self.canary_percent < 100:
            raise LoomError(f"canary share must be between 1 and 99 percent, got {self.canary_percent}")
        if self.canary == self.primary:
            raise LoomError(f"version {self.primary} cannot be both the primary and the canary")
        if self.shadow is not None:
            if self.shadow == self.primary:
                raise LoomError(f"version {self.primary} cannot be both the primary and the shadow")
            if self.canary is not None:
                raise LoomError(f"a shadow (v{self.shadow}) and a canary (v{self.canary}) cannot run at once")

    @property
    def traffic(self) -> dict[int, int]:
        """Version -> percent of the requests that name no version."""
        if self.canary is None:
            return {self.primary: 100}
        return {self.primary: 100 - self.canary_percent, self.canary: self.canary_percent}

    @property
    def live(self) -> tuple[int, ...]:
        """Every loaded version, lowest first."""
        shadow = () if self.shadow is None else (self.shadow,)
        return tuple(sorted({*self.traffic, *self.standby, *shadow}))

    def pick(self) -> int:
        """A version for a request that names none, chosen by weight."""
        if self.canary is not None and random.random() * 100 < self.canary_percent:
            return self.canary
        return self.primary

    def to_config(self) -> dict[str, Any]:
        return {"primary": self.primary, "canary": self.canary, "canary_percent": self.canary_percent,
                "aliases": dict(sorted(self.aliases.items())), "standby": list(self.standby), "shadow": self.shadow}

    @classmethod
    def from_config(cls, name: str, cfg: Any) -> ModelRoutes:
        if not isinstance(cfg, Mapping):
            raise LoomError(f"routes of model {name!r} must be a mapping")
        try:
            canary, shadow = cfg.get("canary"), cfg.get("shadow")
            return cls(primary=int(cfg["primary"]), canary=None if canary is None else int(canary),
                       canary_percent=int(cfg.get("canary_percent") or 0),
                       aliases={check_name(a, "alias"): int(v) for a, v in dict(cfg.get("aliases") or {}).items()},
                       standby=tuple(int(v) for v in cfg.get("standby") or ()),
                       shadow=None if shadow is None else int(shadow))
        except (KeyError, TypeError, ValueError) as err:
            raise LoomError(f"routes of model {name!r} are malformed: {err!r}") from None


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
        """Serve ``version``: with all traffic (the old primary stays loaded on standby; a shadow is dropped), or,
        with ``canary`` percent, next to the current primary, which keeps the rest. The shadow version may become
        the canary; another canary is refused while a shadow runs."""
        current = self.models.get(model)
        if canary is None:
            standby = (current.primary,) if current is not None and current.primary != version else ()
            return self._with(model, ModelRoutes(primary=version, standby=standby))
        if current is None:
            raise LoomError(f"model {model!r} is not being served yet: deploy a version without --canary first")
        if current.primary == version:
            raise LoomError(f"version {version} of {model!r} is already the primary; nothing to canary")
        if current.shadow is not None and current.shadow != version:
            raise LoomError(f"model {model!r} has a shadow running (v{current.shadow}): unshadow it before a canary "
                            f"of v{version}, or canary v{current.shadow}")
        return self._with(model, ModelRoutes(primary=current.primary, canary=version, canary_percent=canary,
                                             standby=tuple(v for v in current.standby if v != version)))

    def set_canary_percent(self, model: str, percent: int) -> RoutingTable:
        """Change the share of a running canary."""
        current = self.routes(model)
        if current.canary is None:
            raise LoomError(f"model {model!r} has no canary running")
        return self._with(model, replace(current, canary_percent=percent))

    def promote(self, model: str) -> tuple[RoutingTable, int]:
        """Give the running canary all traffic; the old primary goes on standby. Returns the promoted version."""
        current = self.routes(model)
        if current.canary is None:
            raise LoomError(f"model {model!r} has no canary to promote (deploy one with --canary)")
        return self._with(model, ModelRoutes(primary=current.canary, standby=(current.primary,))), current.canary

    def rollback(self, model: str) -> tuple[RoutingTable, int]:
        """Abort a running canary, or else give all traffic back to the standby version (the old primary, which
        in turn goes on standby). Returns the version that now has all traffic."""
        current = self.routes(model)
        if current.canary is not None:
            return self._with(model, ModelRoutes(primary=current.primary, standby=current.standby)), current.primary
        if not current.standby:
            raise LoomError(f"model {model!r} has no previous version loaded to roll back to")
        previous = current.standby[-1]
        return self._with(model, ModelRoutes(primary=previous, standby=(current.primary,))), previous

    def shadow(self, model: str, version: int) -> RoutingTable:
        """Load ``version`` as the shadow of ``model``'s primary (replacing a shadow, or taken off standby): it
        scores the requests the primary answers, and answers none itself. Refused while a canary runs."""
        current = self.routes(model)
        if current.primary == version:
            raise LoomError(f"version {version} of {model!r} is the primary; nothing to shadow")
        if current.canary is not None:
            raise LoomError(f"model {model!r} has a canary running (v{current.canary}): promote or roll it back "
                            "before starting a shadow")
        return self._with(model, replace(current, shadow=version,
                                         standby=tuple(v for v in current.standby if v != version)))

    def unshadow(self, model: str) -> RoutingTable:
        """Stop the shadow of ``model`` (its version is unloaded)."""
        current = self.routes(model)
        if current.shadow is None:
            raise LoomError(f"model {model!r} has no shadow running")
        return self._with(model, replace(current, shadow=None))

    def scale_to_zero(self, model: str, version: int | None = None) -> RoutingTable:
        """Unload ``version`` (a standby one, or the shadow), or the whole model when ``version`` is None."""
        current = self.routes(model)
        if version is None:
            return self._with(model, None)
        if version in current.traffic:
            raise LoomError(f"version {version} of {model!r} still takes traffic; promote or roll back first")
        if version not in current.live:
            raise LoomError(f"version {version} of {model!r} is not loaded (live: {', '.join(map(str, current.live))})")
        shadow = None if current.shadow == version else current.shadow
        return self._with(model, replace(current, aliases={}, shadow=shadow,
                                         standby=tuple(v for v in current.standby if v != version)))

    def with_aliases(self, model: str, aliases: Mapping[str, int]) -> RoutingTable:
        """Record the registry's aliases that point at live versions (others are not routable)."""
        current = self.routes(model)
        live = set(current.live)
        kept = {a: v for a, v in sorted(aliases.items()) if v in live}
        if kept == current.aliases:
            return self
        return self._with(model, replace(current, aliases=kept))
