"""The whole life cycle on shared storage (``storage: {url: s3://..., db: postgresql://...}``): training's
checkpoints, the registry's artifacts, features and captured traffic go to the bucket, metadata to PostgreSQL,
and the project's state directory stays empty; an unreachable bucket or database stops ``loom train`` at once
with the URL named and no password shown."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import edit_config, free_port, make_project
from runtime import load_project
from runtime.cli import cli
from services import fresh_database
from serving_models import registry

LOOM = str(Path(sys.executable).parent / "loom")


@pytest.fixture
def shared(s3_server, postgres_url, monkeypatch):
    bucket = s3_server.bucket("loom-shared-life-cycle")
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    db = fresh_database(postgres_url)
    monkeypatch.setenv("LOOM_TEST_DB", db)
    # Credentials and endpoint in the URI (the keys through ${VAR}): Ray Train's controller and workers run in the
    # test session's cluster, started before these variables were set, and get the driver's file system from it.
    url = (f"s3://${{AWS_ACCESS_KEY_ID}}:${{AWS_SECRET_ACCESS_KEY}}@{bucket}/project"
           f"?endpoint_override={s3_server.endpoint}&scheme=http")
    return {"url": url, "bucket": bucket, "db": db}


@pytest.mark.slow
def test_training_on_shared_storage_leaves_nothing_on_the_local_disk(ray_cluster, shared, s3_server, tmp_path):
    project = make_project(tmp_path / "qs", port=free_port(), training={"epochs": 2})
    edit_config(project, "storage", url=shared["url"], db="${LOOM_TEST_DB}")
    result = CliRunner().invoke(cli, ["train", str(project)], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    mv = registry(project).get_version("churn", "latest")
    assert mv.version == 1
    keys = [o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(
        Bucket=shared["bucket"]) for o in page.get("Contents", [])]
    assert any(k.startswith("project/registry/artifacts/sha256/") for k in keys), keys[:20]
    assert any(k.startswith("project/runs/") for k in keys), keys[:20]  # Ray Train's checkpoints
    state = load_project(project).state_dir
    left = sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file()) if state.exists() else []
    assert left == [], f"written to the local state directory instead of storage: {left[:20]}"


def _loom(project: Path, *args: str, env: dict, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    out = subprocess.run([LOOM, *args, str(project)], env=env, capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - started


def test_an_unreachable_bucket_stops_training_at_once_and_names_it(s3_server, tmp_path):
    import os

    project = make_project(tmp_path / "qs", port=free_port(), generate=False)
    edit_config(project, "storage", url="s3://loom-no-such-bucket/x")
    env = {**os.environ, **s3_server.env()}
    out, seconds = _loom(project, "train", env=env)
    assert out.returncode != 0
    assert "s3://loom-no-such-bucket/x" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    assert seconds < 30


def test_an_unreachable_database_stops_training_at_once_without_the_password(tmp_path):
    import os

    project = make_project(tmp_path / "qs", port=free_port(), generate=False)
    edit_config(project, "storage", db=f"postgresql://loom:${{LOOM_DB_PASSWORD}}@127.0.0.1:{free_port()}/loom")
    env = {**os.environ, "LOOM_DB_PASSWORD": "hunter2-s3cret"}
    out, seconds = _loom(project, "train", env=env)
    text = out.stderr + out.stdout
    assert out.returncode != 0
    assert "127.0.0.1" in text and "hunter2-s3cret" not in text
    assert "Traceback" not in out.stderr
    assert seconds < 30
