"""Real MLflow stores for tests: a SQLite tracking and registry database with its schema migrated once per test
session, copied for each test (migrating a fresh MLflow database takes seconds; copying one, milliseconds)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # tests never reach the network

TEMPLATE = "template.db"


def migrated_store(directory: Path) -> Path:
    """Create an MLflow SQLite database in ``directory`` with every migration applied; return its path."""
    from mlflow.tracking import MlflowClient

    db = directory / TEMPLATE
    uri = f"sqlite:///{db}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    return db


def store_options(template: Path, directory: Path) -> dict[str, str]:
    """``registry.options`` for the ``mlflow`` plugin: a private copy of ``template`` and an artifact root, both
    in ``directory``."""
    db = directory / "mlflow.db"
    shutil.copyfile(template, db)
    return {"tracking_uri": f"sqlite:///{db}", "artifact_root": str(directory / "mlflow-artifacts")}
