"""Loom's model registry and experiment tracker on MLflow, ``mlflow``.

Install MLflow with ``pip install 'loom-mlops[mlflow]'`` and select it in ``loom.yaml``::

    registry: {kind: mlflow}

Loom's versions and aliases become MLflow model versions and aliases, and each training run an MLflow run with its
params and per-epoch metrics, linked from the version it produced. Weights stay safetensors files next to a
``model.json``; MLflow's flavors (which pickle) are not used, and serving loads a version exactly as it does from
the local registry. A model registered by MLflow's own tools imports with ``loom models import NAME --from
models:/NAME/VERSION`` (the registry's ``open_model_uri``) when it is an ``onnx`` flavor or safetensors weights;
pickled flavors are refused. Options:

``tracking_uri``
    MLflow tracking store: ``sqlite:///path.db``, ``postgresql://...`` or a server's ``http(s)://`` URL. Default:
    ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<state_dir>/mlflow/mlflow.db``. A relative SQLite path is
    taken relative to the project's state directory.
``registry_uri``
    MLflow model-registry store. Default: the tracking URI.
``artifact_root``
    Where experiments that Loom creates keep their artifacts: a directory or any URI MLflow supports
    (``s3://...``). Default: ``<state_dir>/mlflow/artifacts`` with a database store, the server's choice with a
    tracking server.

A store URI may hold a password: write it as ``${VAR}`` in ``loom.yaml``
(``postgresql://loom:${MLFLOW_DB_PASSWORD}@db/mlflow``) or set ``MLFLOW_TRACKING_URI``; messages show every store
URI with its password and credential parameters redacted.

The core never imports MLflow; this module imports it only when a registry is created. MLflow's usage telemetry
is turned off (``MLFLOW_DISABLE_TELEMETRY=true`` unless already set), since Loom never phones home. It uses only
``runtime``'s public API, exactly as a third-party plugin would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtime import ConfigError, Register, hookimpl

__all__ = ["loom_register_registries"]

_OPTIONS = ("tracking_uri", "registry_uri", "artifact_root")
_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")


def _uri_option(options: dict[str, Any], key: str) -> str | None:
    value = options.get(key)
    if value is not None and (not isinstance(value, str) or not value):  # not shown: a URI may hold a password
        raise ConfigError(f"registry option {key!r} must be a non-empty string, got "
                          f"{type(value).__name__ if value else repr(value)}")
    return value


def _anchor_sqlite(uri: str, state_dir: Path) -> str:
    """``sqlite:///relative.db`` is relative to the working directory in SQLAlchemy; Loom anchors it to the
    project's state directory, so the CLI, the pipeline and every Serve replica open the same file. The
    database's directory is created if missing."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix + ":memory:":
        return uri
    path = state_dir / uri[len(prefix):]  # an absolute path replaces state_dir
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def _create(*, state_dir: Path, options: dict[str, Any]) -> Any:
    """Factory for ``registry.kind: mlflow``."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) for registry 'mlflow': {', '.join(map(repr, unknown))} (known: {', '.join(_OPTIONS)})"
        )
    try:
        from ._registry import MlflowRegistry
    except ImportError as err:
        raise ConfigError(
            f"registry 'mlflow' needs MLflow, which is not installed ({err}); run: pip install 'loom-mlops[mlflow]'"
        ) from None
    state_dir = Path(state_dir)
    default_db = state_dir / "mlflow" / "mlflow.db"
    tracking = _uri_option(options, "tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_db}"
    tracking = _anchor_sqlite(tracking, state_dir)
    registry = _anchor_sqlite(_uri_option(options, "registry_uri") or tracking, state_dir)
    root = _uri_option(options, "artifact_root")
    if root is None and tracking.split(":", 1)[0].split("+", 1)[0] in _DATABASES:
        root = str(state_dir / "mlflow" / "artifacts")
    if root is not None and "://" not in root:
        root = (state_dir / Path(root).expanduser()).resolve().as_uri()
    return MlflowRegistry(tracking, registry, root)


@hookimpl
def loom_register_registries(register: Register) -> None:
    """Register the ``mlflow`` registry."""
    register("mlflow", _create)
