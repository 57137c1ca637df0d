"""Loom: a serving-centric MLOps runtime on Ray, extended with pluggy plugins.

This module is the public API. Plugins import from here only; anything not listed in ``__all__`` is private.
Heavy parts (Ray, torch, the pipeline) load lazily, so ``import runtime`` stays cheap for plugins and the CLI.
"""

from __future__ import annotations

from typing import Any

import pluggy

from ._version import __version__
from .config import ColumnSpec, Project, ProjectConfig, load_project, parse_config
from .data import DataSource, IncrementalSource, hash_files, hash_frame, resolve_path, split_uri
from .errors import ConfigError, DataValidationError, InvalidNameError, LoomError, NotFoundError, PluginError
from .features import FeatureService, FeatureStore, FeatureView
from .hookspecs import Register
from .monitoring import DriftMonitor, DriftReport, FeatureDrift, QualityMonitor
from .names import check_name
from .plugins import PluginInfo, Plugins, get_plugins
from .registry import (
    FORBIDDEN_ARTIFACT_SUFFIXES,
    LATEST,
    ModelRegistry,
    ModelVersion,
    check_alias,
    check_artifact_name,
    parse_ref,
)
from .files import fsync_dir, write_atomic
from .filesystems import Location, is_uri, join_uri, open_location, require_reachable
from .secrets import redact, redact_data
from .storage_checks import check_local_filesystem
from .tracking import (
    Comparison,
    MetricPoint,
    Run,
    Tracker,
    check_metrics,
    check_run_id,
    check_run_status,
    compare_runs,
)

#: Marker for hook implementations: ``@runtime.hookimpl``.
hookimpl = pluggy.HookimplMarker("loom")

_LAZY = {
    "validate_frame": "runtime.validation",
    "validate_batches": "runtime.validation",
    "coerce_frame": "runtime.validation",
    "ValidationReport": "runtime.validation",
    "Pipeline": "runtime.pipeline",
    "score": "runtime.batch",
    "connect": "runtime.cluster",
    "TrainingStep": "runtime.steps",
    "StepContext": "runtime.steps",
    "read_captured": "runtime.serving.capture",
    "read_feedback": "runtime.serving.capture",
    "ModelFormat": "runtime.formats",
    "LoadLimits": "runtime.formats",
    "load_model": "runtime.formats",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


__all__ = [
    "FORBIDDEN_ARTIFACT_SUFFIXES",
    "LATEST",
    "ColumnSpec",
    "Comparison",
    "ConfigError",
    "DataSource",
    "DataValidationError",
    "DriftMonitor",
    "DriftReport",
    "QualityMonitor",
    "FeatureDrift",
    "FeatureService",
    "FeatureStore",
    "FeatureView",
    "IncrementalSource",
    "InvalidNameError",
    "LoadLimits",
    "Location",
    "LoomError",
    "MetricPoint",
    "ModelFormat",
    "ModelRegistry",
    "ModelVersion",
    "NotFoundError",
    "Pipeline",
    "PluginError",
    "PluginInfo",
    "Plugins",
    "Project",
    "ProjectConfig",
    "Register",
    "Run",
    "StepContext",
    "Tracker",
    "TrainingStep",
    "ValidationReport",
    "__version__",
    "check_alias",
    "check_artifact_name",
    "check_local_filesystem",
    "check_metrics",
    "check_name",
    "check_run_id",
    "check_run_status",
    "coerce_frame",
    "compare_runs",
    "connect",
    "get_plugins",
    "hash_files",
    "hash_frame",
    "hookimpl",
    "is_uri",
    "join_uri",
    "fsync_dir",
    "load_model",
    "load_project",
    "open_location",
    "parse_config",
    "parse_ref",
    "read_captured",
    "read_feedback",
    "redact",
    "redact_data",
    "require_reachable",
    "resolve_path",
    "score",
    "split_uri",
    "validate_batches",
    "write_atomic",
    "validate_frame",
]
