"""cluster.yaml is a valid Ray cluster launcher config (checked against Ray's own schema) that gives every node the
cluster's Ray token and the project's shared storage (an S3 bucket through an instance profile, PostgreSQL with the
password from a file outside the checkout, exported before Ray starts), and never syncs local state or secrets."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from runtime.config import StorageConfig
from runtime.secrets import interpolate

TEXT = (Path(__file__).resolve().parents[1] / "cluster.yaml").read_text()
CONFIG = yaml.safe_load(TEXT)
TOKEN = "/home/ubuntu/.loom/ray_token"
DB_PASSWORD = "/home/ubuntu/.loom/db_password"
#: Where the start commands and login shells read the password from: the file, never a literal.
READ_PASSWORD = f'LOOM_DB_PASSWORD="$(cat {DB_PASSWORD})"'


def _storage_block() -> dict:
    """The ``storage:`` lines of loom.yaml that the file's comments show, parsed."""
    lines = TEXT.splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"#\s+storage:", line))
    indent = len(lines[start]) - len(lines[start].lstrip("# "))
    block = [lines[start][1:]]
    for line in lines[start + 1:]:
        body = line[1:]
        if not line.startswith("#") or len(body) - len(body.lstrip()) <= indent - 1 or not body.strip():
            break
        block.append(body)
    return yaml.safe_load("\n".join(block))["storage"]


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


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_ray_starts_with_the_storage_environment_on_every_node(key):
    """Loom ships the project's settings with ${VAR} unreplaced: every Ray worker process (training workers, Serve
    replicas, the monitor) fills them in from the environment its node's `ray start` had."""
    start = next(c for c in CONFIG[key] if "ray start" in c)
    words = shlex.split(start)
    assert words[0] == "export" and f"LOOM_DB_PASSWORD=$(cat {DB_PASSWORD})" in words
    assert "AWS_REGION=us-west-2" in words and CONFIG["provider"]["region"] == "us-west-2"
    assert start.index("LOOM_DB_PASSWORD") < start.index("ray start")  # exported before Ray starts
    assert words.index("&&") < words.index("ray")  # the exports are one command, the same shell starts Ray


def test_every_node_gets_the_database_password_from_outside_the_checkout():
    mounts = CONFIG["file_mounts"]
    assert mounts[DB_PASSWORD] == "~/.loom/db_password"  # beside the token, never in the synced checkout
    setup = CONFIG["setup_commands"]
    assert any(f"test -s {DB_PASSWORD}" in c for c in setup)  # setup fails early when the launcher had none
    assert any("chmod 600" in c and DB_PASSWORD in c for c in setup)
    # login shells on the head (`ray attach`, then `loom up`) read it too, from the file
    assert any(READ_PASSWORD in c and ">> ~/.bashrc" in c for c in setup)
    # PostgreSQL needs psycopg on every node: the `sql` extra
    assert any(re.search(r"pip install -e '?/home/ubuntu/loom\[sql\]", c) for c in setup)


def test_every_node_reaches_the_bucket_through_an_instance_profile():
    for name, node in CONFIG["available_node_types"].items():
        profile = node["node_config"].get("IamInstanceProfile")
        assert profile and set(profile) <= {"Name", "Arn"} and any(profile.values()), name
    head = CONFIG["available_node_types"][CONFIG["head_node_type"]]["node_config"]["IamInstanceProfile"]
    workers = [n["node_config"]["IamInstanceProfile"] for k, n in CONFIG["available_node_types"].items()
               if k != CONFIG["head_node_type"]]
    assert all(w != head for w in workers)  # workers get the bucket only, not the autoscaler's EC2 rights
    assert "iam:PassRole" in TEXT and "s3:ListBucket" in TEXT


def test_the_storage_block_it_shows_is_valid_and_names_the_exported_password():
    storage = _storage_block()
    assert set(storage) == {"url", "db"}
    assert storage["url"].startswith("s3://") and storage["db"].startswith("postgresql://")
    assert "${LOOM_DB_PASSWORD}" in storage["db"]  # interpolated on each node from what `ray start` exported
    StorageConfig(**interpolate(storage, {"LOOM_DB_PASSWORD": "x"}))
    assert "aws s3 mb s3://" + storage["url"][len("s3://"):].split("/")[0] in TEXT  # how to create the bucket
    assert "aws rds create-db-instance" in TEXT and "--db-name loom" in TEXT


def test_no_secret_is_written_in_the_file():
    for url in re.findall(r"\w+://[^\s'\"]+", TEXT):  # a URL's password is always a ${VAR}
        userinfo = url.split("://", 1)[1].split("@", 1)[0] if "@" in url else ""
        assert ":" not in userinfo or re.fullmatch(r"[^:]+:\$\{\w+\}", userinfo), url
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|AWS_SECRET_ACCESS_KEY", TEXT)
    values = re.findall(r"LOOM_DB_PASSWORD=(\"[^\"]*\"|\S+)", TEXT)
    assert len(values) == 3 and set(values) == {f'"$(cat {DB_PASSWORD})"'}, values  # two starts, the login shell
    assert re.findall(r"--master-user-password (\S+)", TEXT) == ['"$(cat']


def test_state_secrets_and_vcs_are_never_synced():
    excluded = set(CONFIG["rsync_exclude"])
    assert {".loom", ".env", "*.token", ".git", ".venv"} <= excluded
    assert ".gitignore" in CONFIG["rsync_filter"]
    secrets = {"~/.loom/ray_token", "~/.loom/db_password"}  # files from ~/.loom, each a mount of its own
    assert not any(".loom" in local and local not in secrets for local in CONFIG["file_mounts"].values())
