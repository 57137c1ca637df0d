"""Shared fixtures: one embedded Ray cluster for the whole test run, and a quickstart project in a temp dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster shared by every test that needs Ray; shut down at the end of the run."""
    import ray

    from runtime import connect

    resources = connect()
    yield resources
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_port() -> int:
    """Ray Serve binds one HTTP port per cluster: every serving test shares it."""
    return free_port()


def make_project(dest: Path, *, port: int, generate: bool = True, source: Path = QUICKSTART, **overrides) -> Path:
    """Copy an example (the quickstart by default) into ``dest`` with fresh generated data (none with
    ``generate=False``: ``loom up`` then makes it through ``data.generate``) and the given config overrides."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("data", ".loom", "__pycache__"), dirs_exist_ok=True)
    if generate:
        subprocess.run([sys.executable, str(dest / "generate_data.py")], check=True, cwd=dest)
    cfg = yaml.safe_load((dest / "loom.yaml").read_text())
    cfg["serving"]["port"] = port
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    (dest / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def edit_config(root: Path, section: str, **values) -> None:
    """Update one section of a project's loom.yaml in place."""
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg.setdefault(section, {}).update(values)
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server for the run (``postgresql://user:password@127.0.0.1:port/db``, loom_sql's form):
    ``LOOM_TEST_POSTGRES_URL`` if set, else a private one from the local server binaries (tests/services.py),
    deleted at the end. Never a skip: no server is an error."""
    from services import postgres

    with postgres() as url:
        yield url


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 for the run: ``endpoint_url``, ``access_key``, ``secret_key``, ``region``,
    ``env()`` (the ``AWS_*`` variables for it), ``bucket(name)``, ``filesystem()`` (pyarrow) and ``uri(path)``."""
    from services import s3

    with s3() as server:
        yield server


@pytest.fixture(scope="session")
def quickstart_dir(tmp_path_factory, serve_port) -> Path:
    return make_project(tmp_path_factory.mktemp("quickstart"), port=serve_port, training={"epochs": 4})


os.environ.setdefault("LOOM_RAY_LOGS", "0")
