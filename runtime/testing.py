"""Pytest helpers for Loom plugin authors, shipped with Loom.

Loom registers this module as a pytest plugin (the ``pytest11`` entry point), so its fixtures are available in
any test run where Loom is installed, with no import:

``loom_plugins``
    A factory: ``loom_plugins(MyPlugin())`` returns a fresh, fully initialised :class:`runtime.Plugins` with
    that plugin registered (start-up validation and registration hooks included);
    ``loom_plugins(installed=True)`` also loads every installed plugin through its entry point.
``loom_ray``
    A local Ray cluster for the whole test session (always local: ``RAY_ADDRESS`` is ignored).

The contract suites are one import away: subclass :class:`DataSourceContract` (fixture ``make_source``),
:class:`FeatureStoreContract` (``store``), :class:`RegistryContract` and :class:`TrackerContract` (``registry``),
:class:`DriftMonitorContract` (``monitor``) or :class:`ModelFormatContract` (``model_format`` and
``linear_model``), define the fixture it names, and every behaviour Loom relies on is
tested against your implementation.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Iterable, Iterator

import pytest

from .plugins import Plugins, get_plugins

# The suites are plain assert-based classes; rewrite them so a failure shows the values compared.
pytest.register_assert_rewrite("runtime._contracts")

#: Environment variables that change which plugins load; the fixtures clear them so tests do not depend on the
#: shell they were started from.
DISCOVERY_VARIABLES = ("LOOM_PLUGINS", "LOOM_DISABLE_PLUGINS")

_CONTRACTS = {
    "DataSourceContract": "runtime._contracts.data",
    "FeatureStoreContract": "runtime._contracts.features",
    "RegistryContract": "runtime._contracts.registry",
    "TrackerContract": "runtime._contracts.registry",
    "DriftMonitorContract": "runtime._contracts.monitor",
    "ModelFormatContract": "runtime._contracts.formats",
}

__all__ = ["DISCOVERY_VARIABLES", *_CONTRACTS, "loom_plugins", "loom_ray", "plugin_manager"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the suites pull in pandas and numpy, and this module loads with every pytest run.
    if name in _CONTRACTS:
        return getattr(importlib.import_module(_CONTRACTS[name]), name)
    raise AttributeError(f"module 'runtime.testing' has no attribute {name!r}")


def plugin_manager(*plugins: Any, installed: bool = False, modules: Iterable[str] = ()) -> Plugins:
    """A fresh plugin manager with ``plugins`` (objects or modules) registered, validated and initialised.

    :param installed: also load every installed plugin from the ``loom`` entry-point group (Loom's built-ins
        included), honouring ``LOOM_PLUGINS`` / ``LOOM_DISABLE_PLUGINS``.
    :param modules: plugin modules to import by path, like the ``plugins:`` list of ``loom.yaml``.
    :raises runtime.PluginError: a plugin fails start-up validation or a registration hook.
    """
    return get_plugins(plugins, modules=modules, entrypoints=installed)


@pytest.fixture
def loom_plugins(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Plugins]:
    """:func:`plugin_manager`, with the plugin-discovery environment variables cleared for the test."""
    for var in DISCOVERY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    return plugin_manager


@pytest.fixture(scope="session")
def loom_ray() -> Iterator[dict[str, Any]]:
    """A local Ray cluster, shared by the session; yields its resources. Started the way Loom starts its
    embedded cluster (:func:`runtime.connect`), and shut down at the end only if this fixture started it."""
    import ray

    from .cluster import connect

    started = not ray.is_initialized()
    address = os.environ.pop("RAY_ADDRESS", None)
    try:
        resources = connect()
    finally:
        if address is not None:
            os.environ["RAY_ADDRESS"] = address
    yield resources
    if started:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
