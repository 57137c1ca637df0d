"""Building a plugin manager: discovery, allow/block lists, registration hooks and error attribution.

One :class:`Plugins` per process (the CLI, each Ray Train worker, each Serve replica builds its own with
:func:`get_plugins`). Nothing here is a module global, so tests can build as many as they like.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .errors import LoomError, NotFoundError, PluginError

log = logging.getLogger("loom.plugins")

ENTRY_POINT_GROUP = "loom"
#: Registration hooks and the kind of thing each registers.
KINDS = {
    "loom_register_data_sources": "data source",
    "loom_register_feature_stores": "feature store",
    "loom_register_registries": "registry",
    "loom_register_drift_monitors": "drift monitor",
}


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin, as listed by ``loom plugins``."""

    name: str
    module: str
    dist: str | None
    version: str | None
    hooks: tuple[str, ...]


@dataclass
class _Kind:
    what: str
    factories: dict[str, tuple[Callable[..., Any], str]] = field(default_factory=dict)  # name -> (factory, plugin)


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _selected(name: str, module: str, allow: set[str] | None, block: set[str]) -> bool:
    ids = {name, module}
    if ids & block:
        return False
    return allow is None or bool(ids & allow)


class Plugins:
    """A pluggy manager plus the factories its plugins registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("loom")
        self.pm.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str | None, str | None]] = {}
        self._kinds = {hook: _Kind(what) for hook, what in KINDS.items()}
        self.trace = os.environ.get("LOOM_TRACE_PLUGINS", "") not in ("", "0")

    # -- loading -------------------------------------------------------------------------------------------

    def add(self, plugin: Any, name: str | None = None, dist: str | None = None, version: str | None = None) -> str:
        """Register a plugin object or module; validate its hooks now so mistakes surface at start-up."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as err:
            # pluggy's message is "Plugin 'x' for hook 'h'\nhookimpl definition: ...\n<reason>": keep hook + reason.
            text = str(err)
            hook = re.search(r"for hook '(\w+)'", text)
            reason = text.strip().splitlines()[-1]
            raise PluginError(name, hook.group(1) if hook else "(validation)", reason, dist=dist) from None
        except ValueError as err:  # already registered
            raise PluginError(name, "(registration)", str(err), dist=dist) from None
        self._dists[name] = (dist, version)
        return name

    def load_entrypoints(self) -> None:
        """Load every plugin in the ``loom`` entry-point group, honouring ``LOOM_PLUGINS`` (allow-list) and
        ``LOOM_DISABLE_PLUGINS`` (block-list); both are comma-separated entry-point or module names."""
        allow = _env_list("LOOM_PLUGINS")
        block = _env_list("LOOM_DISABLE_PLUGINS") or set()
        seen = set()
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in seen or not _selected(ep.name, ep.value.split(":")[0], allow, block):
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            try:
                plugin = ep.load()
            except Exception as err:  # noqa: BLE001 - any import failure is the plugin's
                raise PluginError(ep.name, "(import)", f"{type(err).__name__}: {err}", dist=dist) from err
            self.add(plugin, name=ep.name, dist=dist, version=version)

    def load_modules(self, modules: Iterable[str]) -> None:
        """Load plugins by import path (the ``plugins:`` list of ``loom.yaml``)."""
        block = _env_list("LOOM_DISABLE_PLUGINS") or set()
        for mod in modules:
            if mod in block or self.pm.has_plugin(mod):
                continue
            try:
                plugin = importlib.import_module(mod)
            except Exception as err:  # noqa: BLE001
                raise PluginError(mod, "(import)", f"{type(err).__name__}: {err}") from err
            self.add(plugin, name=mod)

    def finish(self) -> Plugins:
        """Reject implementations of unknown hooks, then run the registration hooks."""
        for name, plugin in self.pm.list_name_plugin():
            for hookcaller in self.pm.get_hookcallers(plugin) or ():
                if hookcaller.spec is None:
                    dist = self._dists.get(name, (None, None))[0]
                    raise PluginError(name, hookcaller.name, "implements a hook that Loom does not define", dist=dist)
        for hook, kind in self._kinds.items():
            for impl in self._impls(hook):
                register = self._registrar(kind, impl.plugin_name, hook)
                self._call_impl(impl, hook, {"register": register})
        return self

    # -- calling hooks ---------------------------------------------------------------------------------------

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        # pluggy calls implementations last-registered-first (tryfirst/trylast respected): keep that order.
        return list(reversed(getattr(self.pm.hook, hook).get_hookimpls()))

    def _call_impl(self, impl: pluggy.HookImpl, hook: str, kwargs: dict[str, Any]) -> Any:
        args = {a: kwargs[a] for a in impl.argnames}
        if self.trace:
            log.warning("loom hook %s -> %s(%s)", hook, impl.plugin_name, ", ".join(args))
        try:
            return impl.function(**args)
        except LoomError as err:
            if isinstance(err, PluginError):
                raise
            raise PluginError(impl.plugin_name, hook, str(err), dist=self.dist_of(impl.plugin_name)) from err
        except Exception as err:  # noqa: BLE001 - attribute every failure to its plugin
            raise PluginError(
                impl.plugin_name, hook, f"{type(err).__name__}: {err}", dist=self.dist_of(impl.plugin_name)
            ) from err

    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of a life-cycle hook; return their non-``None`` results.

        An exception from a plugin becomes a :class:`PluginError` naming the plugin and the hook."""
        results = []
        for impl in self._impls(hook):
            out = self._call_impl(impl, hook, kwargs)
            if out is not None:
                results.append(out)
        return results

    def call_quietly(self, hook: str, **kwargs: Any) -> None:
        """Like :meth:`call`, but log failures instead of raising (for ``loom_on_error``)."""
        for impl in self._impls(hook):
            try:
                self._call_impl(impl, hook, kwargs)
            except PluginError as err:
                log.error("%s", err)

    # -- registrations ---------------------------------------------------------------------------------------

    def _registrar(self, kind: _Kind, plugin: str, hook: str) -> Callable[[str, Callable[..., Any]], None]:
        def register(name: str, factory: Callable[..., Any]) -> None:
            if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
                raise PluginError(plugin, hook, f"registered an invalid {kind.what} name {name!r}",
                                  dist=self.dist_of(plugin))
            if not callable(factory):
                raise PluginError(plugin, hook, f"registered {kind.what} {name!r} with a non-callable factory "
                                  f"({type(factory).__name__})", dist=self.dist_of(plugin))
            key = name.lower()
            if key in kind.factories:
                other = kind.factories[key][1]
                raise PluginError(plugin, hook, f"{kind.what} {name!r} is already registered by plugin {other!r}",
                                  dist=self.dist_of(plugin))
            kind.factories[key] = (factory, plugin)

        return register

    def _make(self, hook: str, name: str, **kwargs: Any) -> Any:
        kind = self._kinds[hook]
        entry = kind.factories.get(name.lower())
        if entry is None:
            known = ", ".join(sorted(kind.factories)) or "none"
            raise NotFoundError(f"no {kind.what} plugin named {name!r} is loaded (available: {known})")
        factory, plugin = entry
        try:
            return factory(**kwargs)
        except LoomError:
            raise
        except Exception as err:  # noqa: BLE001
            raise PluginError(plugin, hook, f"{kind.what} {name!r} could not be created: "
                              f"{type(err).__name__}: {err}", dist=self.dist_of(plugin)) from err

    def names(self, hook: str) -> dict[str, str]:
        """Registered names of one kind, mapped to the plugin that registered each."""
        return {n: p for n, (_, p) in self._kinds[hook].factories.items()}

    def data_source(self, uri: str, *, base_dir: Any, options: dict[str, Any] | None = None) -> Any:
        from .data import split_uri

        scheme, _ = split_uri(uri)
        kind = self._kinds["loom_register_data_sources"]
        if scheme.lower() not in kind.factories:
            known = ", ".join(f"{s}://" for s in sorted(kind.factories)) or "none"
            raise NotFoundError(f"no data-source plugin handles {scheme}:// URIs (available: {known})")
        factory, plugin = kind.factories[scheme.lower()]
        try:
            return factory(uri, base_dir=base_dir, options=dict(options or {}))
        except LoomError:
            raise
        except Exception as err:  # noqa: BLE001
            raise PluginError(plugin, "loom_register_data_sources", f"data source {uri!r} could not be opened: "
                              f"{type(err).__name__}: {err}", dist=self.dist_of(plugin)) from err

    def feature_store(self, name: str, *, state_dir: Any, options: dict[str, Any] | None = None) -> Any:
        return self._make("loom_register_feature_stores", name, state_dir=state_dir, options=dict(options or {}))

    def registry(self, name: str, *, state_dir: Any, options: dict[str, Any] | None = None) -> Any:
        return self._make("loom_register_registries", name, state_dir=state_dir, options=dict(options or {}))

    def drift_monitor(self, name: str, *, options: dict[str, Any] | None = None) -> Any:
        return self._make("loom_register_drift_monitors", name, options=dict(options or {}))

    # -- introspection ---------------------------------------------------------------------------------------

    def dist_of(self, plugin: str) -> str | None:
        return self._dists.get(plugin, (None, None))[0]

    def info(self) -> list[PluginInfo]:
        """Loaded plugins with their distribution, version and implemented hooks."""
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda np: np[0]):
            if plugin is None:
                continue
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
            dist, version = self._dists.get(name, (None, None))
            module = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
            out.append(PluginInfo(name=name, module=module, dist=dist, version=version, hooks=hooks))
        return out


def get_plugins(
    extra: Iterable[Any] = (), *, modules: Iterable[str] = (), entrypoints: bool = True
) -> Plugins:
    """Build a fresh, fully initialised plugin manager.

    :param extra: plugin objects to register in addition to the installed ones (tests, notebooks).
    :param modules: plugin modules to import by path (``plugins:`` in ``loom.yaml``).
    :param entrypoints: load installed plugins from the ``loom`` entry-point group.
    """
    plugins = Plugins()
    if entrypoints:
        plugins.load_entrypoints()
    plugins.load_modules(modules)
    for p in extra:
        plugins.add(p)
    return plugins.finish()
