"""The built-in ``local`` model registry, built through the installed entry point: its construction, options and
SQLite specifics on real files, and its storage-neutral behaviour on both storages (``local``: SQLite and a local
directory; ``shared``: PostgreSQL and S3; see tests/test_registry_shared.py, which also holds the concurrency and
crash tests of both)."""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from pathlib import Path

import pytest

import runtime
from loom_local_registry import LocalRegistry
from runtime import ConfigError, InvalidNameError, LoomError, ModelRegistry, NotFoundError
from runtime import storage_checks

from runtime.artifacts import WEIGHTS
from test_registry_shared import (  # noqa: F401 - shared_* are fixtures that reg uses
    overwrite_blob,
    reg,
    shared_bucket,
    shared_database,
    shared_storage,
    stored_blobs,
)

#: Only the plugin under test: other built-in plugins are irrelevant here and slow to import in child processes.
ONLY_THIS_PLUGIN = "local_registry"


def _open(state_dir: Path, **options: object) -> LocalRegistry:
    return runtime.get_plugins().registry("local", state_dir=state_dir, options=options)


@pytest.fixture(autouse=True)
def _only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_PLUGINS", ONLY_THIS_PLUGIN)


def _blob_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- construction -----------------------------------------------------------------------------------------------


def test_factory_is_registered_by_the_entry_point(tmp_path: Path) -> None:
    reg = _open(tmp_path)
    assert isinstance(reg, LocalRegistry) and isinstance(reg, ModelRegistry)
    assert runtime.get_plugins().names("loom_register_registries") == {"local": "local_registry"}
    db = tmp_path / "registry" / "registry.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 2


def test_options(tmp_path: Path) -> None:
    reg = _open(tmp_path, path="meta", artifact_root=str(tmp_path / "blobs"))
    reg.register("m", {WEIGHTS: b"w"})
    assert (tmp_path / "meta" / "registry.db").is_file()
    assert len(_blob_files(tmp_path / "blobs")) == 1
    with pytest.raises(ConfigError, match="'colour'"):
        _open(tmp_path, colour="blue")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    _open(tmp_path)
    with sqlite3.connect(tmp_path / "registry" / "registry.db") as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    with pytest.raises(LoomError, match="schema version 99"):
        _open(tmp_path)


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    from loom_local_registry._db import _MIGRATIONS

    db = tmp_path / "registry" / "registry.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:  # the schema as the first release wrote it, with one version in it
        for statement in _MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1, 0)")
        conn.execute("INSERT INTO models VALUES ('m', 0, 1)")
        conn.execute("INSERT INTO versions VALUES ('m', 1, 0, '{}', '{\"auc\": 0.9}', '{}', '{}', 'old', '{}')")
    reg = _open(tmp_path)
    v = reg.get_version("m", 1)
    assert (v.metrics, v.description, v.run_id) == ({"auc": 0.9}, "old", None)
    run = reg.start_run("exp")
    assert reg.register("m", {WEIGHTS: b"w"}, run_id=run.id).version == 2


# -- artifact roots ---------------------------------------------------------------------------------------------


def test_artifact_root_as_a_file_uri(tmp_path: Path) -> None:
    reg = _open(tmp_path, artifact_root=(tmp_path / "shared blobs").as_uri())
    reg.register("m", {WEIGHTS: b"w"})
    assert reg.read_artifact("m", 1, WEIGHTS) == b"w"
    assert len(_blob_files(tmp_path / "shared blobs" / "sha256")) == 1


def test_artifact_root_on_an_fsspec_file_system(tmp_path: Path) -> None:
    """``memory://`` has no pyarrow file system, so this goes through fsspec, as ``s3://`` without pyarrow's S3
    support or any other fsspec protocol would."""
    fsspec = pytest.importorskip("fsspec")
    root = f"memory://loom-test-{tmp_path.name}"
    reg = _open(tmp_path, artifact_root=root)
    assert reg.artifact_root == root
    data = bytes(range(256)) * 1000
    reg.register("m", {WEIGHTS: data, "model.json": b"{}"}, alias="production")
    run = reg.start_run("exp")
    reg.log_artifact(run.id, "history.json", b"[]")
    assert reg.read_artifact("m", 1, WEIGHTS) == data
    assert reg.read_run_artifact(run.id, "history.json") == b"[]"
    memory = fsspec.filesystem("memory")
    digest = hashlib.sha256(data).hexdigest()
    blob = f"/loom-test-{tmp_path.name}/sha256/{digest[:2]}/{digest}"
    assert memory.cat_file(blob) == data
    assert not [p for p in memory.find(f"/loom-test-{tmp_path.name}") if p.endswith(".tmp")]
    memory.pipe_file(blob, b"tampered")
    with pytest.raises(LoomError, match="corrupt"):
        reg.read_artifact("m", 1, WEIGHTS)
    memory.rm_file(blob)
    with pytest.raises(LoomError, match="missing"):
        reg.read_artifact("m", 1, WEIGHTS)


def test_unknown_artifact_root_scheme_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nosuchfs://"):
        _open(tmp_path, artifact_root="nosuchfs://bucket/x")


# -- round trips ------------------------------------------------------------------------------------------------


def test_identical_content_is_stored_once(reg: LocalRegistry) -> None:
    for i in range(3):
        reg.register("m", {WEIGHTS: b"same bytes"}, metrics={"i": i})
    run = reg.start_run("exp")
    reg.log_artifact(run.id, "copy.safetensors", b"same bytes")
    reg.register("a", {WEIGHTS: b"other"})
    assert stored_blobs(reg) == sorted(hashlib.sha256(b).hexdigest() for b in (b"same bytes", b"other"))


def test_not_found_errors_say_what_exists(reg: LocalRegistry) -> None:
    reg.register("m", {WEIGHTS: b"1"}, alias="production")
    reg.register("m", {WEIGHTS: b"2"})
    with pytest.raises(NotFoundError, match=r"no model named 'nope' .*\(models: m\)"):
        reg.get_version("nope", 1)
    with pytest.raises(NotFoundError, match=r"no version 7 \(versions: 1, 2\)"):
        reg.get_version("m", 7)
    with pytest.raises(NotFoundError, match=r"no alias 'prod' \(aliases: production -> 1\)"):
        reg.get_version("m", "prod")
    with pytest.raises(NotFoundError, match=r"no artifact 'x.onnx' \(artifacts: model.safetensors\)"):
        reg.read_artifact("m", 1, "x.onnx")
    with pytest.raises(NotFoundError, match="no version 9"):
        reg.set_alias("m", "production", 9)
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        reg.list_versions("nope")
    assert reg.get_version("m", "production").version == 1


# -- safety ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["..", "a/b", "a\\b", "%2e%2e", "a\x00b", "new\nline", "\x1b[31m", "../etc"])
def test_unsafe_names_are_rejected_before_anything_is_written(reg: LocalRegistry, bad: str) -> None:
    with pytest.raises(InvalidNameError):
        reg.register(bad, {WEIGHTS: b"w"})
    with pytest.raises(InvalidNameError):
        reg.register("m", {WEIGHTS: b"w"}, alias=bad)
    with pytest.raises(InvalidNameError):
        reg.register("m", {WEIGHTS: b"w", bad: b"x"})
    with pytest.raises(InvalidNameError):
        reg.get_version("m", bad)
    assert reg.list_models() == []
    assert stored_blobs(reg) == []
    reg.register("m", {WEIGHTS: b"w"})
    with pytest.raises(InvalidNameError):
        reg.set_alias("m", bad, 1)
    with pytest.raises(InvalidNameError):
        reg.read_artifact("m", 1, bad)


@pytest.mark.parametrize("name", ["model.pkl", "model.PICKLE", "w.pt", "w.pth", "m.joblib", "c.ckpt", "w.bin"])
def test_pickle_artifacts_are_rejected(reg: LocalRegistry, name: str) -> None:
    with pytest.raises(ValueError, match="pickle"):
        reg.register("m", {WEIGHTS: b"fine", name: b"evil"})
    assert reg.list_models() == []
    assert stored_blobs(reg) == []


def test_corrupted_blob_is_detected_on_read(reg: LocalRegistry) -> None:
    reg.register("m", {WEIGHTS: b"good weights"})
    overwrite_blob(reg, b"good weights", b"bad weights!")
    with pytest.raises(LoomError, match=r"artifact 'model.safetensors' of model 'm' version 1 is corrupt"):
        reg.read_artifact("m", 1, WEIGHTS)
    reg.register("m", {WEIGHTS: b"good weights"})  # storing the same content again repairs the blob
    assert reg.read_artifact("m", 1, WEIGHTS) == b"good weights"
    overwrite_blob(reg, b"good weights", None)
    with pytest.raises(LoomError, match="missing"):
        reg.read_artifact("m", 2, WEIGHTS)
    reg.register("m", {WEIGHTS: b"good weights"})  # and restores a missing one
    assert reg.read_artifact("m", 1, WEIGHTS) == b"good weights"
    assert not [b for b in stored_blobs(reg) if b.endswith(".tmp")]


# -- network file systems ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("f_type", "kind"), [
    (0x6969, "NFS"), (0xFF534D42, "CIFS/SMB"), (0xFE534D42, "SMB2/3"), (0x517B, "SMB"), (0x65735546, "FUSE"),
    (0x00C36400, "Ceph"), (0x0BD00BD0, "Lustre"), (0x47504653, "GPFS"), (0x5346414F, "AFS"), (0x01021997, "9P"),
])
def test_registry_refuses_a_network_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, f_type: int,
                                                kind: str) -> None:
    asked: list[str] = []
    monkeypatch.setattr(storage_checks, "_statfs", lambda path: asked.append(path) or f_type)
    monkeypatch.delenv(storage_checks.ALLOW_ENV, raising=False)
    state = tmp_path / "not" / "yet"
    with pytest.raises(ConfigError) as err:
        _open(state)
    message = str(err.value)
    assert str(state / "registry") in message and kind in message
    assert "SQLite's locking is unsafe" in message and "storage.db (PostgreSQL)" in message and "see docs/registry.md" in message
    assert "LOOM_ALLOW_NETWORK_FS=1" in message
    assert asked == [str(tmp_path)]  # the nearest existing ancestor, before anything is created
    assert not (tmp_path / "not").exists()


def test_network_file_system_override_and_local_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_checks, "_statfs", lambda path: 0x6969)
    monkeypatch.setenv(storage_checks.ALLOW_ENV, "1")
    assert _open(tmp_path).list_models() == []
    monkeypatch.delenv(storage_checks.ALLOW_ENV)
    for local in (0xEF53, 0x58465342, 0x01021994, 0x9123683E, None):  # ext4, xfs, tmpfs, btrfs, unreadable
        monkeypatch.setattr(storage_checks, "_statfs", lambda path, t=local: t)
        assert storage_checks.network_filesystem(tmp_path) is None
        _open(tmp_path / str(local))


def test_statfs_falls_back_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No refusal where the kind cannot be read: another OS, no libc statfs, or a failing call."""
    monkeypatch.setattr(storage_checks, "_libc_statfs", lambda: None)
    assert storage_checks._statfs(str(tmp_path)) is None
    monkeypatch.setattr(storage_checks, "_libc_statfs", lambda: lambda path, buf: -1)
    assert storage_checks._statfs(str(tmp_path)) is None
    _open(tmp_path)


def test_a_local_directory_is_accepted_on_the_real_file_system(tmp_path: Path) -> None:
    """The real statfs (no monkeypatching): this machine's temp dir is a local disk."""
    if sys.platform.startswith("linux"):
        assert storage_checks._statfs(str(tmp_path)) not in (None, *storage_checks.NETWORK_FILESYSTEMS)
    assert storage_checks.network_filesystem(tmp_path / "a" / "b") is None
    reg = _open(tmp_path / "a" / "b")
    assert reg.register("m", {WEIGHTS: b"w"}).version == 1
