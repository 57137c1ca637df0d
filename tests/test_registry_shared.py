"""The ``local`` registry's promises on both of its storages: ``local`` (SQLite + a local directory, the default)
and ``shared`` (``storage.db`` on PostgreSQL + ``storage.url`` on S3, as several hosts would share them).

The storage-neutral helpers here (:func:`open_registry`, the ``shared_storage`` fixture, the blob helpers) are also
used by tests/test_registry_contract.py and tests/test_local_registry.py to run their suites on both storages.
PostgreSQL comes from the session fixture ``postgres_url`` and S3 from ``s3_server`` (a moto server); each test
module gets a database and a bucket of its own, and each test a PostgreSQL schema (dropped afterwards) and a prefix
of its own in them.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from psycopg import sql

import runtime
from loom_local_registry import LocalRegistry
from loom_local_registry._blobs import BlobStore
from loom_local_registry._db import SCHEMA_VERSION
from runtime import ConfigError, LoomError, NotFoundError, load_project
from runtime.artifacts import WEIGHTS
from runtime.config import Storage

#: Only the plugin under test: other built-in plugins are irrelevant here and slow to import in child processes.
ONLY_THIS_PLUGIN = "local_registry"
STORAGES = ["local", "shared"]
QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"


@pytest.fixture(autouse=True)
def _only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_PLUGINS", ONLY_THIS_PLUGIN)


# -- shared storage: one PostgreSQL schema and one S3 prefix per test -------------------------------------------


@dataclass(frozen=True)
class SharedStorage:
    """Where a test's shared registry lives: ``storage`` as a project would hand it to the factory, and
    ``schema``, the test's own PostgreSQL schema (the registry's ``schema`` option)."""

    storage: Storage
    schema: str
    admin_url: str

    @property
    def options(self) -> dict[str, Any]:
        return {"schema": self.schema}


def _libpq(url: str) -> str:
    scheme = urlsplit(url).scheme
    return "postgresql" + url[len(scheme):]


def drop_schema(admin_url: str, schema: str) -> None:
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="module")
def shared_database(postgres_url: str) -> Iterator[str]:
    """A database of this test module's own on the session's PostgreSQL server, dropped at the end."""
    from services import fresh_database

    url = fresh_database(postgres_url)
    yield url
    with psycopg.connect(_libpq(postgres_url), autocommit=True) as conn:  # FORCE: the pools' idle connections
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(
            urlsplit(url).path.lstrip("/"))))


@pytest.fixture(scope="module")
def shared_bucket(s3_server: Any) -> str:
    """A bucket of this test module's own on the session's S3 server."""
    name = f"loom-{uuid.uuid4().hex[:16]}"
    s3_server.bucket(name)
    return name


@pytest.fixture
def shared_storage(shared_database: str, s3_server: Any, shared_bucket: str,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[SharedStorage]:
    """A fresh, empty shared storage: a PostgreSQL schema of this test's own (dropped afterwards) in the module's
    database, and a prefix of its own in the module's bucket. S3 credentials and endpoint reach pyarrow as AWS_*
    variables only (child processes inherit them), exactly as a deployment would pass them."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield SharedStorage(Storage(url=f"s3://{shared_bucket}/{schema}", db=shared_database), schema, shared_database)
    drop_schema(shared_database, schema)


def open_registry(state_dir: Path, shared: SharedStorage | None = None, **options: Any) -> LocalRegistry:
    """A ``local`` registry built through the plugin manager as a project builds it: on the local storage, or on
    ``shared`` (PostgreSQL + S3) when given."""
    storage = None
    if shared is not None:
        storage, options = shared.storage, {**shared.options, **options}
    return runtime.get_plugins().registry("local", state_dir=state_dir, options=options, storage=storage)


def storage_for(request: pytest.FixtureRequest, kind: str) -> SharedStorage | None:
    """The shared storage of this test when ``kind`` is ``shared``, else ``None`` (local)."""
    return request.getfixturevalue("shared_storage") if kind == "shared" else None


@pytest.fixture(params=STORAGES)
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> LocalRegistry:
    return open_registry(tmp_path, storage_for(request, request.param))


# -- the blobs of either store, for tests that look at them ------------------------------------------------------


def stored_blobs(reg: LocalRegistry) -> list[str]:
    """Digests of every blob in the registry's artifact store (stray temporary files count too, by name)."""
    blobs = reg._blobs
    if isinstance(blobs, BlobStore):
        return sorted(p.name for p in (blobs.root / "sha256").rglob("*") if p.is_file())
    from pyarrow.fs import FileSelector, FileType

    infos = blobs._fs.get_file_info(FileSelector(f"{blobs._root}/sha256", recursive=True, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == FileType.File)


def overwrite_blob(reg: LocalRegistry, data: bytes, replacement: bytes | None) -> None:
    """Replace the stored blob of ``data`` with ``replacement`` (``None``: delete it), behind the registry's back."""
    digest = hashlib.sha256(data).hexdigest()
    blobs = reg._blobs
    if isinstance(blobs, BlobStore):
        path = blobs.path_of(digest)
        if replacement is None:
            path.unlink()
        else:
            path.chmod(0o644)
            path.write_bytes(replacement)
        return
    key = blobs._key(digest)
    if replacement is None:
        blobs._fs.delete_file(key)
    else:
        with blobs._fs.open_output_stream(key) as f:
            f.write(replacement)


def blob_is_stored(reg: LocalRegistry, data: bytes) -> bool:
    return hashlib.sha256(data).hexdigest() in stored_blobs(reg)


# -- child-process bodies (module level so the spawn context can import them) ---------------------------------


def _register_and_hang(registry: LocalRegistry, ready: Any) -> None:
    def hang(version: runtime.ModelVersion) -> None:
        ready.set()
        time.sleep(120)  # the parent SIGKILLs us here, inside the open transaction

    registry._before_commit = hang  # type: ignore[method-assign]
    registry.register("m", {WEIGHTS: b"never committed"}, alias="production")


# -- the promises, on both storages ------------------------------------------------------------------------------


@contextmanager
def writes_held(reg: LocalRegistry) -> Iterator[None]:
    """Hold the registry's write lock from outside: SQLite's (``BEGIN IMMEDIATE``), or an exclusive lock on
    PostgreSQL's ``models`` table (every registration's first write waits for it; reads do not)."""
    if reg.path is not None:
        lock = sqlite3.connect(reg.path / "registry.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        return
    with psycopg.connect(_libpq(reg._db.url)) as conn:  # a transaction until rollback()
        conn.execute(sql.SQL("LOCK TABLE {}.models IN EXCLUSIVE MODE").format(sql.Identifier(reg._db.schema)))
        try:
            yield
        finally:
            conn.rollback()


def test_sixteen_concurrent_processes_get_distinct_consecutive_versions(reg: LocalRegistry) -> None:
    # Each child gets the registry by pickling (as Ray would ship it) and runs one register(). The test holds the
    # write lock until every child has stored its blob, so all sixteen then race for it at once.
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=reg.register, args=("m", {WEIGHTS: f"w{i}".encode()}), kwargs={"params": {"worker": i}})
        for i in range(16)
    ]
    with writes_held(reg):
        try:
            for p in procs:
                p.start()
            # A child waits for the lock (up to 30 s) once its blob is stored: release 20 s after the first one
            # is, even if a child slow to start on a busy machine has not got that far yet.
            deadline = time.monotonic() + 180
            while (waiting := len(stored_blobs(reg))) < 16 and time.monotonic() < deadline:
                assert all(p.exitcode is None for p in procs), "a child finished before the lock was released"
                if waiting:
                    deadline = min(deadline, time.monotonic() + 20)
                time.sleep(0.2)
            assert waiting >= 8, f"only {waiting} of 16 children were waiting for the lock"
        except BaseException:
            for p in procs:
                p.kill()
            raise
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 16
    versions = reg.list_versions("m")
    assert [v.version for v in versions] == list(range(1, 17))
    assert sorted(v.params["worker"] for v in versions) == list(range(16))
    for v in versions:
        assert reg.read_artifact("m", v.version, WEIGHTS) == f"w{v.params['worker']}".encode()


def test_sixteen_concurrent_threads_get_distinct_consecutive_versions(reg: LocalRegistry) -> None:
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []
    numbers: list[int] = []

    def register(i: int) -> None:
        barrier.wait(60)
        try:
            numbers.append(reg.register("m", {WEIGHTS: f"t{i}".encode()}, params={"worker": i}).version)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(numbers) == list(range(1, 17))
    assert [v.version for v in reg.list_versions("m")] == list(range(1, 17))


def test_process_killed_mid_write_leaves_no_version_and_no_number_is_reused(reg: LocalRegistry) -> None:
    reg.register("m", {WEIGHTS: b"v1"}, alias="production")
    before = reg.list_versions("m")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_register_and_hang, args=(reg, ready))
    child.start()
    try:
        assert ready.wait(60), "child never reached the commit point"
        assert blob_is_stored(reg, b"never committed")  # the blob is stored before the metadata commit
    finally:
        child.kill()  # SIGKILL, with its transaction open (and, on PostgreSQL, the model's row locked)
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert reg.list_versions("m") == before
    assert reg.get_version("m", "production").version == 1
    assert reg.register("m", {WEIGHTS: b"v2"}).version == 2  # not blocked: the dead writer's lock is gone
    reg.delete_version("m", 2)
    assert reg.register("m", {WEIGHTS: b"v3"}).version == 3
    assert [v.version for v in reg.list_versions("m")] == [1, 3]


def test_version_numbers_are_never_reused_after_delete(reg: LocalRegistry) -> None:
    for i in range(3):
        reg.register("m", {WEIGHTS: f"{i}".encode()}, alias="production")
    reg.delete_version("m", 3)  # the latest, which production pointed at
    reg.delete_version("m", 2)
    assert reg.register("m", {WEIGHTS: b"4"}).version == 4
    reg.delete_version("m", 1)
    reg.delete_version("m", 4)
    assert reg.list_versions("m") == []
    assert reg.list_models() == ["m"]  # the model keeps its counter
    with pytest.raises(NotFoundError, match="no versions"):
        reg.get_version("m", "latest")
    assert reg.register("m", {WEIGHTS: b"5"}, alias="production").version == 5
    assert [v.version for v in reg.list_versions("m")] == [5]
    assert reg.get_version("m", "production").version == 5


def test_registries_of_one_storage_see_each_other(reg: LocalRegistry) -> None:
    """Two registry objects on the same storage (two hosts, in production) share versions, aliases and runs."""
    other = pickle.loads(pickle.dumps(reg))
    run = reg.start_run("exp")
    reg.register("m", {WEIGHTS: b"w"}, alias="production", run_id=run.id)
    got = other.get_version("m", "production")
    assert (got.version, got.run_id) == (1, run.id)
    assert other.read_artifact("m", 1, WEIGHTS) == b"w"
    other.set_alias("m", "staging", 1)
    assert reg.get_version("m", "staging").version == 1


# -- PostgreSQL: schema, migrations, credentials -----------------------------------------------------------------


def _query(shared: SharedStorage, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(_libpq(shared.admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(shared.schema)))
        return conn.execute(query).fetchall()


def test_metadata_lives_in_postgresql_and_artifacts_under_the_storage_url(shared_storage: SharedStorage,
                                                                          tmp_path: Path) -> None:
    reg = open_registry(tmp_path, shared_storage)
    assert reg.path is None and reg.artifact_root == f"{shared_storage.storage.url}/registry/artifacts"
    reg.register("m", {WEIGHTS: b"shared weights"}, metrics={"auc": 0.5})
    assert not (tmp_path / "registry").exists()  # nothing on the local disk
    assert _query(shared_storage, "SELECT name, version FROM versions") == [("m", 1)]
    assert _query(shared_storage, "SELECT name, last_version FROM models") == [("m", 1)]
    assert [r[0] for r in _query(shared_storage, "SELECT version FROM schema_version ORDER BY version")] == [
        *range(1, SCHEMA_VERSION + 1)]
    types = dict(_query(shared_storage, "SELECT column_name, data_type FROM information_schema.columns "
                                        "WHERE table_schema = current_schema() AND table_name = 'metrics'"))
    assert types["value"] == types["timestamp"] == "double precision"  # SQLite's REAL is 8 bytes: so is this
    assert blob_is_stored(reg, b"shared weights")


def test_a_newer_schema_is_refused(shared_storage: SharedStorage, tmp_path: Path) -> None:
    open_registry(tmp_path, shared_storage)
    with psycopg.connect(_libpq(shared_storage.admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("INSERT INTO {}.schema_version (version, applied_at) VALUES (99, 0)").format(
            sql.Identifier(shared_storage.schema)))
    with pytest.raises(LoomError, match="schema version 99") as err:
        open_registry(tmp_path, shared_storage)
    assert _password(shared_storage.admin_url) not in str(err.value)


def test_many_openers_may_create_a_new_registry_at_once(shared_storage: SharedStorage, tmp_path: Path) -> None:
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait(30)
        try:
            open_registry(tmp_path, shared_storage).list_models()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert [r[0] for r in _query(shared_storage, "SELECT version FROM schema_version ORDER BY version")] == [
        *range(1, SCHEMA_VERSION + 1)]


def test_a_dropped_connection_is_replaced(shared_storage: SharedStorage, tmp_path: Path) -> None:
    """Pooled connections the server has closed (a restart, an idle timeout) are replaced, not reported."""
    reg = open_registry(tmp_path, shared_storage)
    reg.register("m", {WEIGHTS: b"w"})
    pooled = [conn.info.backend_pid for conn in reg._db._idle.queue]
    assert pooled
    with psycopg.connect(_libpq(shared_storage.admin_url), autocommit=True) as conn:
        for pid in pooled:
            conn.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))  # waits for the backend to exit
    assert reg.get_version("m", 1).version == 1
    assert reg.register("m", {WEIGHTS: b"w2"}).version == 2


# -- configuration: loom.yaml's storage section reaches the factory -----------------------------------------------


def _project(tmp_path: Path, storage: dict[str, Any], **registry: Any) -> Path:
    data = yaml.safe_load((QUICKSTART / "loom.yaml").read_text())
    data["storage"] = storage
    data["registry"] = {**data.get("registry", {}), **registry}
    (tmp_path / "loom.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def _password(url: str) -> str:
    return urlsplit(url).password or "\x00no password\x00"


def _open_project_registry(root: Path) -> LocalRegistry:
    project = load_project(root)
    r = project.config.registry
    return runtime.get_plugins().registry(r.kind, state_dir=project.state_dir, options=r.options,
                                          storage=project.storage)


def test_loom_yaml_storage_with_credentials_from_the_environment(shared_storage: SharedStorage, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_TEST_DB_URL", shared_storage.storage.db)
    bucket, prefix = shared_storage.storage.url.removeprefix("s3://").split("/", 1)
    monkeypatch.setenv("LOOM_TEST_BUCKET", bucket)
    root = _project(tmp_path, {"url": f"s3://${{LOOM_TEST_BUCKET}}/{prefix}", "db": "${LOOM_TEST_DB_URL}"},
                    options={"schema": shared_storage.schema})
    project = load_project(root)
    assert project.storage == shared_storage.storage
    assert (project.storage_url, project.storage_db) == (shared_storage.storage.url, shared_storage.storage.db)
    assert _password(shared_storage.storage.db) not in repr(project.storage)
    reg = _open_project_registry(root)
    reg.register("churn", {WEIGHTS: b"w"}, alias="production")
    assert reg.artifact_root == f"s3://{bucket}/{prefix}/registry/artifacts"
    assert _query(shared_storage, "SELECT name, version FROM versions") == [("churn", 1)]
    assert _password(shared_storage.storage.db) not in repr(reg)
    assert not (project.state_dir / "registry").exists()


def test_storage_defaults_and_relative_url(tmp_path: Path) -> None:
    project = load_project(_project(tmp_path, {}))
    assert project.storage == Storage() and project.storage_db is None
    assert project.storage_url == str(project.state_dir)
    assert project.storage.location("registry", "artifacts", default="/x/artifacts") == "/x/artifacts"
    project = load_project(_project(tmp_path, {"url": "shared/state"}))
    assert project.storage.url == str(tmp_path / "shared" / "state") == project.storage_url
    reg = _open_project_registry(tmp_path)
    reg.register("churn", {WEIGHTS: b"w"})
    assert reg.path == project.state_dir / "registry"  # metadata stays in SQLite under the state dir
    assert len(list((tmp_path / "shared" / "state" / "registry" / "artifacts" / "sha256").rglob("*/*"))) == 1
    assert Storage(url="s3://b/p/").location("registry", "artifacts", default="/x") == "s3://b/p/registry/artifacts"


def test_storage_is_not_part_of_the_lineage_key(tmp_path: Path) -> None:
    """Where state lives does not shape training: moving a project's storage must not make ``loom up`` retrain."""
    from runtime.lineage import lineage_key

    fingerprints = {"csv://data/churn.csv": "ab" * 32}
    local = lineage_key(load_project(_project(tmp_path, {})), fingerprints)
    shared = lineage_key(load_project(_project(tmp_path, {"url": "s3://b/p", "db": "postgresql://u:pw@db/loom"})),
                         fingerprints)
    assert local == shared


def test_invalid_storage_settings_are_refused_without_showing_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"storage\.db: .*not a database URL") as err:
        load_project(_project(tmp_path, {"db": "loom:hunter2@db/loom"}))
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match=r"storage\.url"):
        load_project(_project(tmp_path, {"url": " "}))
    with pytest.raises(ConfigError, match=r"storage\.dsn: unknown key"):
        load_project(_project(tmp_path, {"dsn": "x"}))


def test_registry_options_that_contradict_the_storage(tmp_path: Path) -> None:
    plugins = runtime.get_plugins()
    db = Storage(db="postgresql://loom:hunter2@127.0.0.1:1/loom")
    with pytest.raises(ConfigError, match="'path'") as err:
        plugins.registry("local", state_dir=tmp_path, options={"path": "meta"}, storage=db)
    assert "hunter2" not in str(err.value) and "loom:***@" in str(err.value)
    with pytest.raises(ConfigError, match="'schema'"):
        plugins.registry("local", state_dir=tmp_path, options={"schema": "x"})
    with pytest.raises(ConfigError, match="schema name"):
        plugins.registry("local", state_dir=tmp_path, options={"schema": "Bad-Name"}, storage=db)
    with pytest.raises(ConfigError, match="mysql://") as err:
        plugins.registry("local", state_dir=tmp_path, options={},
                         storage=Storage(db="mysql://loom:hunter2@127.0.0.1/loom"))
    assert "hunter2" not in str(err.value)


def test_an_unreachable_database_is_named_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(LoomError, match="cannot connect") as err:
        runtime.get_plugins().registry("local", state_dir=tmp_path, options={},
                                       storage=Storage(db="postgresql://loom:hunter2@127.0.0.1:1/loom"))
    assert "hunter2" not in str(err.value) and "postgresql://loom:***@127.0.0.1:1/loom" in str(err.value)


# -- plugin factories: storage= is passed only to those that take it ---------------------------------------------


def test_storage_reaches_only_factories_that_take_it(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Plugin:
        @runtime.hookimpl
        def loom_register_registries(self, register: runtime.Register) -> None:
            register("old", lambda *, state_dir, options: seen.setdefault("old", options))
            register("new", lambda *, state_dir, options, storage: seen.setdefault("new", storage))
            register("kw", lambda **kwargs: seen.setdefault("kw", sorted(kwargs)))

        @runtime.hookimpl
        def loom_register_feature_stores(self, register: runtime.Register) -> None:
            register("fs", lambda *, state_dir, options, storage=None: seen.setdefault("fs", storage))

        @runtime.hookimpl
        def loom_register_drift_monitors(self, register: runtime.Register) -> None:
            register("dm", lambda **kwargs: seen.setdefault("dm", sorted(kwargs)))  # keeps no state: no storage

    plugins = runtime.get_plugins([Plugin()], entrypoints=False)
    storage = Storage(url="s3://bucket/loom", db="postgresql://db/loom")
    plugins.registry("old", state_dir=tmp_path, options={"a": 1}, storage=storage)
    plugins.registry("new", state_dir=tmp_path, storage=storage)
    plugins.registry("kw", state_dir=tmp_path)
    plugins.feature_store("fs", state_dir=tmp_path)
    plugins.drift_monitor("dm")
    assert seen == {"old": {"a": 1}, "new": storage, "kw": ["options", "state_dir", "storage"], "fs": Storage(),
                    "dm": ["options"]}
