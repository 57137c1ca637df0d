"""cluster.yaml is a valid Ray cluster launcher config (checked against Ray's own schema) that gives every node the
cluster's Ray token and never syncs local state or secrets."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster.yaml").read_text())
TOKEN = "/home/ubuntu/.loom/ray_token"


def test_cluster_yaml_matches_ray_launcher_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(CONFIG)))  # fills provider defaults as `ray up` does, checks all
    assert CONFIG["head_node_type"] in CONFIG["available_node_types"]
    assert any("pip install" in c for c in CONFIG["setup_commands"])


def test_every_node_gets_the_token_from_outside_the_checkout():
    mounts = CONFIG["file_mounts"]
    assert mounts[TOKEN] == "~/.loom/ray_token"  # the launcher's own file, not the synced project directory
    assert mounts["/home/ubuntu/loom"] == "." and mounts[TOKEN].startswith("~/")  # not inside the checkout
    # file_mounts reach every node: `ray up` syncs them to the head, whose autoscaler syncs the same mounts to
    # each worker (no cluster_synced_files needed); setup fails early when the launcher had no token.
    assert any(f"test -s {TOKEN}" in c for c in CONFIG["setup_commands"])
    assert any("chmod 600" in c and TOKEN in c for c in CONFIG["setup_commands"])


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_ray_starts_with_token_auth_and_the_token_on_every_node(key):
    start = next(c for c in CONFIG[key] if "ray start" in c)
    words = shlex.split(start)
    assert "RAY_AUTH_MODE=token" in words and f"RAY_AUTH_TOKEN_PATH={TOKEN}" in words
    assert start.index("RAY_AUTH_TOKEN_PATH") < start.index("ray start")  # exported before Ray starts
    assert "--dashboard-host=0.0.0.0" not in start


def test_state_secrets_and_vcs_are_never_synced():
    excluded = set(CONFIG["rsync_exclude"])
    assert {".loom", ".env", "*.token", ".git", ".venv"} <= excluded
    assert ".gitignore" in CONFIG["rsync_filter"]
    assert not any(".loom" in local and local != "~/.loom/ray_token" for local in CONFIG["file_mounts"].values())
