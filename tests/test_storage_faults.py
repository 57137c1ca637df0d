"""The ``local`` registry on storage it cannot use: an unreachable or silent PostgreSQL server, a wrong password, a
missing bucket and a dead S3 endpoint each fail the registry's creation within seconds with a ConfigError naming the
store, its password redacted (also from the driver's own words); and ``LocalRegistry.shared`` says whether every
node can read the registry on its own (PostgreSQL + an object store only).

Faults are real: a free port with nothing listening, a socket that accepts connections and never answers, the
session's PostgreSQL server (``postgres_url``) asked with the wrong password, the session's moto S3 server
(``s3_server``) asked for a bucket that does not exist.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

import runtime
from conftest import free_port, make_project
from loom_local_registry import LocalRegistry
from runtime import ConfigError
from runtime.artifacts import WEIGHTS
from runtime.config import Storage
from test_registry_shared import (  # noqa: F401 - shared_* are fixtures that shared_storage uses
    SharedStorage,
    shared_bucket,
    shared_database,
    shared_storage,
)

#: Only the plugin under test: other built-in plugins are irrelevant here.
ONLY_THIS_PLUGIN = "local_registry"
#: The password every fault case uses: it must appear in no message.
PASSWORD = "s3cret-value"
#: How long a fault may take to be reported (the issue: "within a few seconds", not a hang).
BOUND_S = 8.0
#: A dead S3 endpoint: the AWS SDK's standard retry strategy backs off (at random) between attempts.
S3_BOUND_S = 10.0
ROOT = Path(__file__).resolve().parents[1]

#: Seconds each fault case took, printed at the end of the module (pytest -s, or -rA shows them).
MEASURED: dict[str, float] = {}


@pytest.fixture(autouse=True)
def _only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_PLUGINS", ONLY_THIS_PLUGIN)
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)


@pytest.fixture(scope="module", autouse=True)
def _report_timings() -> Iterator[None]:
    yield
    if MEASURED:
        print("\ntime to the error: " + ", ".join(f"{case} {s:.2f} s" for case, s in MEASURED.items()))


def open_registry(state_dir: Path, storage: Storage | None = None, **options: Any) -> LocalRegistry:
    return runtime.get_plugins().registry("local", state_dir=state_dir, options=options, storage=storage)


def failure(case: str, make: Callable[[], object], bound: float = BOUND_S) -> tuple[str, float]:
    """The message of the ConfigError ``make`` raises and the seconds it took, checked against ``bound``."""
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        make()
    took = time.monotonic() - started
    MEASURED[case] = took
    assert took < bound, f"{case}: the error took {took:.1f} s (bound {bound} s): {err.value}"
    message = str(err.value)
    assert PASSWORD not in message and quote(PASSWORD) not in message
    assert "\n" not in message, message  # one paragraph
    return message, took


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never answers on them (a PostgreSQL server that hangs, or a
    firewall that lets the handshake through): without a connect timeout a client would wait for minutes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return parts._replace(netloc=netloc).geturl()


# -- PostgreSQL ---------------------------------------------------------------------------------------------------


def test_unreachable_postgresql_is_a_config_error_naming_the_url(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://loom:{PASSWORD}@127.0.0.1:{port}/loom"
    message, _ = failure("postgresql: nothing listening", lambda: open_registry(tmp_path, Storage(db=url)))
    assert f"postgresql://loom:***@127.0.0.1:{port}/loom" in message
    assert "cannot connect to the model registry's database" in message and "Connection refused" in message
    assert not (tmp_path / "registry").exists()  # nothing made on the local disk either


def test_unknown_host_is_a_config_error(tmp_path: Path) -> None:
    url = f"postgres://loom:{PASSWORD}@no-such-host.invalid:5432/loom"
    message, _ = failure("postgresql: unknown host", lambda: open_registry(tmp_path, Storage(db=url)))
    assert "postgres://loom:***@no-such-host.invalid:5432/loom" in message and "no-such-host.invalid" in message


def test_a_server_that_never_answers_times_out(tmp_path: Path, silent_server: int) -> None:
    """The default connect timeout (5 s) applies when the URL sets none..."""
    from loom_local_registry._db import CONNECT_TIMEOUT_S

    url = f"postgresql://loom:{PASSWORD}@127.0.0.1:{silent_server}/loom"
    message, took = failure("postgresql: silent server, default timeout",
                            lambda: open_registry(tmp_path, Storage(db=url)), bound=CONNECT_TIMEOUT_S + 3)
    assert took >= CONNECT_TIMEOUT_S - 0.5, f"gave up after {took:.1f} s, before the {CONNECT_TIMEOUT_S} s timeout"
    assert f"127.0.0.1:{silent_server}" in message and "***" in message


def test_the_urls_own_connect_timeout_wins(tmp_path: Path, silent_server: int) -> None:
    """...and the URL's own ``connect_timeout`` overrides it (libpq's minimum is 2 s)."""
    url = f"postgresql://loom:{PASSWORD}@127.0.0.1:{silent_server}/loom?connect_timeout=2"
    message, took = failure("postgresql: silent server, connect_timeout=2",
                            lambda: open_registry(tmp_path, Storage(db=url)), bound=4.5)
    assert took >= 1.5
    assert "connect_timeout=2" in message


def test_wrong_password_fails_fast_and_shows_neither_password(tmp_path: Path, postgres_url: str) -> None:
    url = _with_password(postgres_url, PASSWORD)
    message, _ = failure("postgresql: wrong password", lambda: open_registry(tmp_path, Storage(db=url)))
    assert "password authentication failed" in message
    real = urlsplit(postgres_url)
    assert real.password and real.password not in message
    assert f"{real.username}:***@{real.hostname}:{real.port}" in message


def test_the_drivers_own_words_never_show_the_password(tmp_path: Path) -> None:
    """libpq quotes what it cannot parse (here an invalid %-escape in the password): the password is scrubbed from
    its message too, not only from URLs."""
    bad = f"{PASSWORD}%zz"
    url = f"postgresql://loom:{bad}@127.0.0.1:{free_port()}/loom"
    message, _ = failure("postgresql: unparseable password", lambda: open_registry(tmp_path, Storage(db=url)))
    assert bad not in message and "percent-encoded" in message


# -- S3 -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


def test_missing_bucket_is_a_config_error_naming_the_uri(tmp_path: Path, s3_env: Any) -> None:
    bucket = f"loom-missing-{uuid.uuid4().hex[:12]}"
    root = f"s3://{bucket}/churn/registry/artifacts"
    message, _ = failure("s3: missing bucket", lambda: open_registry(tmp_path, artifact_root=root))
    assert f"cannot reach the model registry's artifact store at {root}" in message
    assert bucket in message and "AWS_ENDPOINT_URL" in message
    assert bucket not in {b["Name"] for b in s3_env.client().list_buckets()["Buckets"]}  # none was created


def test_credentials_in_the_artifact_uri_are_redacted(tmp_path: Path, s3_env: Any) -> None:
    bucket = f"loom-missing-{uuid.uuid4().hex[:12]}"
    root = f"s3://testing:{PASSWORD}@{bucket}/x"
    message, _ = failure("s3: missing bucket, key in the URI", lambda: open_registry(tmp_path, artifact_root=root))
    assert f"s3://testing:***@{bucket}/x" in message


def test_dead_s3_endpoint_is_a_config_error(tmp_path: Path, s3_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_env.bucket(f"loom-{uuid.uuid4().hex[:12]}")  # exists, on the live server: the endpoint is the fault
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    message, _ = failure("s3: dead endpoint", lambda: open_registry(tmp_path, artifact_root=f"s3://{bucket}/x"),
                         bound=S3_BOUND_S)
    assert f"s3://{bucket}/x" in message and "127.0.0.1" in message


def test_silent_s3_endpoint_is_a_config_error_not_a_hang(tmp_path: Path, s3_env: Any, silent_server: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint that takes connections and never answers: the store's own 20 s requests with 3 attempts would
    take two minutes; the check at opening uses a quicker probe."""
    from loom_local_registry._blobs import PROBE_ATTEMPTS, PROBE_REQUEST_TIMEOUT_S

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent_server}")
    bound = 2 * PROBE_ATTEMPTS * PROBE_REQUEST_TIMEOUT_S + 8  # each attempt waits out the timeout twice, + backoff
    message, _ = failure("s3: silent endpoint", lambda: open_registry(tmp_path, artifact_root="s3://loom-any/x"),
                         bound=bound)
    assert "cannot reach the model registry's artifact store at s3://loom-any/x" in message


def test_dead_s3_endpoint_in_the_storage_url(tmp_path: Path, s3_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through loom.yaml's ``storage.url``, as a project configures it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    message, _ = failure("s3: dead endpoint via storage.url",
                         lambda: open_registry(tmp_path, Storage(url="s3://loom-anything/proj")), bound=S3_BOUND_S)
    assert "s3://loom-anything/proj/registry/artifacts" in message


def test_a_reachable_store_still_round_trips(tmp_path: Path, s3_env: Any) -> None:
    """The reachability check costs one listing; blobs stay content addressed and verified."""
    bucket = s3_env.bucket(f"loom-{uuid.uuid4().hex[:12]}")
    reg = open_registry(tmp_path, artifact_root=f"s3://{bucket}/x")
    reg.register("m", {WEIGHTS: b"w"})
    reg.register("m", {WEIGHTS: b"w"})
    assert reg.read_artifact("m", 2, WEIGHTS) == b"w"
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket).get("Contents", [])
            if "/sha256/" in o["Key"] and not o["Key"].endswith("/")]
    assert len(keys) == 1  # identical content stored once


# -- shared ---------------------------------------------------------------------------------------------------------


def test_shared_only_with_postgresql_and_an_object_store(tmp_path: Path, shared_storage: SharedStorage) -> None:
    db, url, schema = shared_storage.storage.db, shared_storage.storage.url, shared_storage.schema
    both = open_registry(tmp_path / "a", shared_storage.storage, schema=schema)
    assert both.shared is True
    assert pickle.loads(pickle.dumps(both)).shared is True  # as a replica receives it
    with pytest.raises(AttributeError):
        both.shared = False  # type: ignore[misc]  # read-only
    assert open_registry(tmp_path / "b").shared is False  # SQLite + a local directory (the default)
    assert open_registry(tmp_path / "c", Storage(url=url)).shared is False  # SQLite metadata: this host only
    assert open_registry(tmp_path / "d", Storage(db=db), schema=schema).shared is False  # local artifacts
    assert open_registry(tmp_path / "e", Storage(db=db), schema=schema,
                         artifact_root=(tmp_path / "mnt").as_uri()).shared is False  # file://: maybe one disk
    assert open_registry(tmp_path / "f", Storage(db=db), schema=schema,
                         artifact_root=f"memory://loom-{uuid.uuid4().hex[:8]}").shared is False  # one process


def test_mlflow_shared() -> None:
    pytest.importorskip("mlflow")
    from loom_mlflow._registry import MlflowRegistry

    def shared(tracking: str, artifacts: str | None, registry: str | None = None) -> bool:
        return MlflowRegistry(tracking, registry or tracking, artifacts).shared

    assert shared("postgresql://loom:pw@db/mlflow", "s3://bucket/mlflow")
    assert shared("postgresql+psycopg://loom:pw@db/mlflow", "gs://bucket/mlflow")
    assert shared("https://mlflow.internal", "s3://bucket/mlflow")
    assert shared("http://mlflow.internal:5000", "mlflow-artifacts:/loom")
    assert not shared("sqlite:////srv/mlflow.db", "s3://bucket/mlflow")  # the database is one host's file
    assert not shared("postgresql://loom:pw@db/mlflow", "file:///srv/mlflow/artifacts")
    assert not shared("http://mlflow.internal:5000", None)  # the server's choice: Loom cannot tell
    assert not shared("postgresql://loom:pw@db/mlflow", "mlflow-artifacts:/loom")  # no server to proxy it
    assert not shared("https://mlflow.internal", "s3://b/m", registry="sqlite:////srv/registry.db")
    assert not shared("file:///srv/mlruns", "s3://bucket/mlflow")


# -- the command line -----------------------------------------------------------------------------------------------


def test_loom_models_list_on_an_unreachable_database(tmp_path: Path) -> None:
    port = free_port()
    root = make_project(tmp_path / "proj", port=free_port(), generate=False,
                        storage={"db": f"postgresql://user:${{LOOM_DB_PASSWORD}}@127.0.0.1:{port}/x"})
    env = {**os.environ, "LOOM_DB_PASSWORD": PASSWORD, "COLUMNS": "200"}
    env.pop("LOOM_PLUGINS", None)  # the command as a user runs it, every built-in plugin loaded
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "models", "list", "-p", str(root)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    took = MEASURED["cli: loom models list, nothing listening"] = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert took < 15, f"took {took:.1f} s: {output}"
    assert PASSWORD not in output and "Traceback" not in output, output
    assert f"postgresql://user:***@127.0.0.1:{port}/x" in output
    assert output.strip().startswith("error:") and "\n\n" not in output.strip(), output  # one paragraph
