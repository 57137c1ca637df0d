"""The registry and tracker contract suites (``runtime.testing``), run against every registry plugin Loom ships:
``local`` on its two storages (SQLite and a local directory; PostgreSQL and S3, as ``local-shared``) and
``mlflow``."""

from __future__ import annotations

from pathlib import Path

import pytest

import runtime
from runtime import ModelRegistry
from runtime.testing import RegistryContract, TrackerContract
from test_registry_shared import open_registry, shared_bucket, shared_database, shared_storage  # noqa: F401

KINDS = ["local", "local-shared", "mlflow"]
#: Only the registry plugins: the others are irrelevant here.
REGISTRY_PLUGINS = "local_registry,mlflow"


@pytest.fixture(autouse=True)
def _only_registry_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_PLUGINS", REGISTRY_PLUGINS)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its schema migrated once (copying it is much faster than migrating per test)."""
    pytest.importorskip("mlflow")
    from mlflow_store import migrated_store

    return migrated_store(tmp_path_factory.mktemp("mlflow-template"))


class TestRegistryPlugins(RegistryContract, TrackerContract):
    @pytest.fixture(params=KINDS)
    def registry(self, request: pytest.FixtureRequest, tmp_path: Path) -> ModelRegistry:
        options = {}
        if request.param == "local-shared":  # a fresh PostgreSQL schema and S3 prefix per test
            return open_registry(tmp_path, request.getfixturevalue("shared_storage"))
        if request.param == "mlflow":
            from mlflow_store import store_options

            options = store_options(request.getfixturevalue("mlflow_template"), tmp_path)
        return runtime.get_plugins().registry(request.param, state_dir=tmp_path, options=options)
