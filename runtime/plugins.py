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
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from ._version import __version__
from .config import Storage
from .errors import LoomError, NotFoundError, PluginError
from .secrets import redact, redact_error

log = logging.getLogger("loom.plugins")
#: With ``LOOM_TRACE_PLUGINS=1``: one INFO record per plugin load, registration, factory call and hook call,
#: with its duration. Records carry ``loom_event``, ``loom_plugin`` and ``loom_ms`` attributes for handlers.
trace_log = logging.getLogger("loom.plugins.trace")

ENTRY_POINT_GROUP = "loom"
#: Registration hooks and the kind of thing each registers.
KINDS = {
    "loom_register_data_sources": "data source",
    "loom_register_feature_stores": "feature store",
    "loom_register_registries": "registry",
    "loom_register_drift_monitors": "drift monitor",
    "loom_register_model_formats": "model format",
}
#: Names of a kind that Loom itself provides (no plugin may register them), and who provides them.
BUILT_IN = {"loom_register_model_formats": {"torch": "runtime"}}


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin, as listed by ``loom plugins``."""

    name: str
    module: str
    dist: str | None
    version: str | None
    hooks: tuple[str, ...]
    #: What its registration hooks registered, by kind: ``{"data_sources": ["csv", "parquet"]}``.
    provides: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class _Kind:
    what: str
    factories: dict[str, tuple[Callable[..., Any], str]] = field(default_factory=dict)  # name -> (factory, plugin)
    built_in: dict[str, str] = field(default_factory=dict)  # name -> who provides it (not a plugin's factory)


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


def _enable_trace_output() -> None:
    """Make trace records visible: INFO on the trace logger, and a stderr handler unless logging is configured."""
    trace_log.setLevel(logging.INFO)
    if not trace_log.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("loom trace: %(message)s"))
        trace_log.addHandler(handler)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _takes(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` accepts the keyword argument ``name`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): pass only the original arguments
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY) for p in params)


def _owning_dist(module: str) -> str | None:
    """The installed distribution that ships top-level module ``module`` (slow: used for error messages only)."""
    dists = md.packages_distributions().get(module.partition(".")[0], [])
    return dists[0] if dists else None


class Plugins:
    """A pluggy manager plus the factories its plugins registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("loom")
        self.pm.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str | None, str | None]] = {}
        self._kinds = {hook: _Kind(what, built_in=dict(BUILT_IN.get(hook, {}))) for hook, what in KINDS.items()}
        self.trace = os.environ.get("LOOM_TRACE_PLUGINS", "") not in ("", "0")
        if self.trace:
            _enable_trace_output()

    # -- loading -------------------------------------------------------------------------------------------

    def add(self, plugin: Any, name: str | None = None, dist: str | None = None, version: str | None = None) -> str:
        """Register a plugin object or module; validate its hooks now so mistakes surface at start-up."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__

        def failed(hook: str, reason: str) -> PluginError:
            owner = dist or (_owning_dist(plugin.__name__) if inspect.ismodule(plugin) else None)
            return PluginError(name, hook, reason, dist=owner)

        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as err:
            # pluggy's message is "Plugin 'x' for hook 'h'\nhookimpl definition: ...\n<reason>": keep hook + reason.
            text = str(err)
            found = re.search(r"for hook '(\w+)'", text)
            hook = found.group(1) if found else "(validation)"
            reason = text.strip().splitlines()[-1]
            spec = getattr(getattr(self.pm.hook, hook, None), "spec", None)
            if spec is not None:
                reason += f" (the hook's parameters are: {', '.join(spec.argnames)})"
            raise failed(hook, reason) from None
        except ValueError as err:  # already registered
            raise failed("(registration)", str(err)) from None
        problem = self._misdeclared(plugin)
        if problem:
            self.pm.unregister(plugin)
            raise failed(*problem)
        self._dists[name] = (dist, version)
        return name

    def _misdeclared(self, plugin: Any) -> tuple[str, str] | None:
        """``(hook, reason)`` for what pluggy accepts but Loom would mishandle: hook wrappers (Loom calls each
        implementation itself) and ``loom_*`` functions lacking ``@hookimpl`` (they would never be called)."""
        marked = set()
        for hookcaller in self.pm.get_hookcallers(plugin) or ():
            marked.add(hookcaller.name)
            for impl in hookcaller.get_hookimpls():
                if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                    return hookcaller.name, ("hook wrappers are not supported; Loom calls every implementation "
                                             "itself (order them with tryfirst/trylast)")
        for attr in dir(plugin):
            if attr.startswith("loom_") and attr not in marked and inspect.isroutine(getattr(plugin, attr, None)):
                return attr, "is not marked with @runtime.hookimpl, so Loom would never call it"
        return None

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
            started = time.perf_counter()
            try:
                plugin = ep.load()
            except Exception as err:  # noqa: BLE001 - any import failure is the plugin's
                raise PluginError(ep.name, "(import)", f"{type(err).__name__}: {err}", dist=dist) from err
            self.add(plugin, name=ep.name, dist=dist, version=version)
            self._trace("load", ep.name, started, f"load {ep.name} = {ep.value} ({dist} {version})")

    def load_modules(self, modules: Iterable[str]) -> None:
        """Load plugins by import path (the ``plugins:`` list of ``loom.yaml``)."""
        block = _env_list("LOOM_DISABLE_PLUGINS") or set()
        for mod in modules:
            if mod in block or self.pm.has_plugin(mod):
                continue
            started = time.perf_counter()
            try:
                plugin = importlib.import_module(mod)
            except Exception as err:  # noqa: BLE001
                raise PluginError(mod, "(import)", f"{type(err).__name__}: {err}") from err
            self.add(plugin, name=mod)
            self._trace("load", mod, started, f"load {mod} (project file)")

    def finish(self) -> Plugins:
        """Reject implementations of unknown hooks (unless marked ``optionalhook``), then run the registration
        hooks."""
        for name, plugin in self.pm.list_name_plugin():
            for hookcaller in self.pm.get_hookcallers(plugin) or ():
                if hookcaller.spec is not None:
                    continue
                if all(i.optionalhook for i in hookcaller.get_hookimpls() if i.plugin is plugin):
                    continue
                raise PluginError(name, hookcaller.name, f"implements a hook that Loom {__version__} does not define "
                                  "(a typo? a hook of a newer Loom needs @hookimpl(optionalhook=True))",
                                  dist=self.dist_of(name))
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
        call = f"{hook} {impl.plugin_name}({', '.join(args)})"
        started = time.perf_counter()
        try:
            result = impl.function(**args)
        except Exception as err:  # noqa: BLE001 - attribute every failure to its plugin
            redact_error(err)
            self._trace("hook", impl.plugin_name, started, f"{call} raised {type(err).__name__}: {redact(err)}")
            if isinstance(err, PluginError):
                raise
            message = redact(err) if isinstance(err, LoomError) else f"{type(err).__name__}: {redact(err)}"
            raise PluginError(impl.plugin_name, hook, message, dist=self.dist_of(impl.plugin_name)) from err
        self._trace("hook", impl.plugin_name, started, f"{call} returned {_brief(result)}")
        return result

    def _trace(self, event: str, plugin: str, started: float | None, message: str) -> None:
        """Log one trace record (secrets redacted); ``started`` (a ``perf_counter`` reading) adds the duration since
        then."""
        if not self.trace:
            return
        message = redact(message)
        ms = None if started is None else (time.perf_counter() - started) * 1000
        extra = {"loom_event": event, "loom_plugin": plugin, "loom_ms": ms}
        if ms is None:
            trace_log.info("%s", message, extra=extra)
        else:
            trace_log.info("%s in %.2f ms", message, ms, extra=extra)

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

    def _registrar(self, kind: _Kind, plugin: str, hook: str) -> hookspecs.Register:
        def register(name: str, factory: Callable[..., Any]) -> None:
            if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
                raise PluginError(plugin, hook, f"registered an invalid {kind.what} name {name!r}",
                                  dist=self.dist_of(plugin))
            if not callable(factory):
                raise PluginError(plugin, hook, f"registered {kind.what} {name!r} with a non-callable factory "
                                  f"({type(factory).__name__})", dist=self.dist_of(plugin))
            key = name.lower()
            if key in kind.built_in:
                raise PluginError(plugin, hook, f"{kind.what} {name!r} is built into Loom "
                                  f"({kind.built_in[key]}); register it under another name", dist=self.dist_of(plugin))
            if key in kind.factories:
                other = kind.factories[key][1]
                raise PluginError(plugin, hook, f"{kind.what} {name!r} is already registered by plugin {other!r}",
                                  dist=self.dist_of(plugin))
            kind.factories[key] = (factory, plugin)
            self._trace("register", plugin, None, f"register {kind.what} {key!r} by {plugin}")

        return register

    def _make(self, hook: str, name: str, *, storage: Storage | None = None, **kwargs: Any) -> Any:
        """Build a plugin object with its registered factory. ``storage`` (given for the kinds that keep state) goes
        only to a factory that takes it (a ``storage`` parameter or ``**kwargs``), so factories written before it
        existed keep working."""
        kind = self._kinds[hook]
        entry = kind.factories.get(name.lower())
        if entry is None:
            known = ", ".join(sorted({*kind.factories, *kind.built_in})) or "none"
            raise NotFoundError(f"no {kind.what} plugin named {name!r} is loaded (available: {known})")
        factory, plugin = entry
        if storage is not None and _takes(factory, "storage"):
            kwargs["storage"] = storage
        started = time.perf_counter()
        try:
            made = factory(**kwargs)
        except LoomError as err:  # its options may hold a URI with a password (a registry's tracking URI)
            redact_error(err)
            raise
        except Exception as err:  # noqa: BLE001
            redact_error(err)
            raise PluginError(plugin, hook, f"{kind.what} {name!r} could not be created: "
                              f"{type(err).__name__}: {redact(err)}", dist=self.dist_of(plugin)) from err
        self._trace("create", plugin, started, f"create {kind.what} {name!r} by {plugin}: {type(made).__name__}")
        return made

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
        started = time.perf_counter()
        shown = redact(uri)  # a URI may carry a password or a signed query: never shown as it is
        try:
            made = factory(uri, base_dir=base_dir, options=dict(options or {}))
        except LoomError as err:
            redact_error(err)
            raise
        except Exception as err:  # noqa: BLE001
            redact_error(err)
            raise PluginError(plugin, "loom_register_data_sources", f"data source {shown!r} could not be opened: "
                              f"{type(err).__name__}: {redact(err)}", dist=self.dist_of(plugin)) from err
        self._trace("create", plugin, started, f"create data source {shown!r} by {plugin}: {type(made).__name__}")
        return made

    def feature_store(self, name: str, *, state_dir: Any, options: dict[str, Any] | None = None,
                      storage: Storage | None = None) -> Any:
        """The feature store ``name``; ``storage`` is the project's (:attr:`runtime.Project.storage`), default all
        local."""
        return self._make("loom_register_feature_stores", name, state_dir=state_dir, options=dict(options or {}),
                          storage=storage or Storage())

    def registry(self, name: str, *, state_dir: Any, options: dict[str, Any] | None = None,
                 storage: Storage | None = None) -> Any:
        """The registry ``name``; ``storage`` is the project's (:attr:`runtime.Project.storage`), default all
        local."""
        return self._make("loom_register_registries", name, state_dir=state_dir, options=dict(options or {}),
                          storage=storage or Storage())

    def drift_monitor(self, name: str, *, options: dict[str, Any] | None = None) -> Any:
        return self._make("loom_register_drift_monitors", name, options=dict(options or {}))

    def model_format(self, name: str) -> Any:
        """The model format ``name`` registered by a plugin (``torch``, built in, is
        :func:`runtime.formats.model_format`'s own)."""
        return self._make("loom_register_model_formats", name)

    # -- introspection ---------------------------------------------------------------------------------------

    def dist_of(self, plugin: str) -> str | None:
        """The distribution a plugin was installed from (``None`` for plugins registered by object or path)."""
        return self._dists.get(plugin, (None, None))[0]

    def info(self) -> list[PluginInfo]:
        """Loaded plugins with their distribution, version, implemented hooks and registered names."""
        provides: dict[str, dict[str, list[str]]] = {}
        for hook, kind in self._kinds.items():
            for key, (_, plugin_name) in sorted(kind.factories.items()):
                provides.setdefault(plugin_name, {}).setdefault(hook.removeprefix("loom_register_"), []).append(key)
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda np: np[0]):
            if plugin is None:
                continue
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
            dist, version = self._dists.get(name, (None, None))
            module = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
            out.append(PluginInfo(name=name, module=module, dist=dist, version=version, hooks=hooks,
                                  provides=provides.get(name, {})))
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
