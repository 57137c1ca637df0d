"""Loom: a serving-centric MLOps runtime on Ray, extended with pluggy plugins.

This module is the public API. Plugins import from here only; anything not listed in ``__all__`` is private.
Heavy parts (Ray, torch, the pipeline) load lazily, so ``import runtime`` stays cheap for plugins and the CLI.
"""

from __future__ import annotations

from typing import Any

import pluggy

from ._version import __version__
from .config import ColumnSpec, Project, ProjectConfig, load_project, parse_config
from .data import DataSource, hash_files, hash_frame, resolve_path, split_uri
from .errors import ConfigError, DataValidationError, InvalidNameError, LoomError, NotFoundError, PluginError
from .features import FeatureStore, FeatureView
from .hookspecs import Register
from .monitoring import DriftMonitor, DriftReport, FeatureDrift
from .names import check_name
from .plugins import PluginInfo, Plugins, get_plugins
from .registry import FORBIDDEN_ARTIFACT_SUFFIXES, ModelRegistry, ModelVersion, check_artifact_name, parse_ref

#: Marker for hook implementations: ``@runtime.hookimpl``.
hookimpl = pluggy.HookimplMarker("loom")

_LAZY = {
    "validate_frame": "runtime.validation",
    "coerce_frame": "runtime.validation",
    "ValidationReport": "runtime.validation",
    "Pipeline": "runtime.pipeline",
    "connect": "runtime.cluster",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


__all__ = [
    "FORBIDDEN_ARTIFACT_SUFFIXES",
    "ColumnSpec",
    "ConfigError",
    "DataSource",
    "DataValidationError",
    "DriftMonitor",
    "DriftReport",
    "FeatureDrift",
    "FeatureStore",
    "FeatureView",
    "InvalidNameError",
    "LoomError",
    "ModelRegistry",
    "ModelVersion",
    "NotFoundError",
    "Pipeline",
    "PluginError",
    "PluginInfo",
    "Register",
    "Plugins",
    "Project",
    "ProjectConfig",
    "ValidationReport",
    "__version__",
    "check_artifact_name",
    "check_name",
    "coerce_frame",
    "connect",
    "get_plugins",
    "hash_files",
    "hash_frame",
    "hookimpl",
    "load_project",
    "parse_config",
    "parse_ref",
    "resolve_path",
    "split_uri",
    "validate_frame",
]
