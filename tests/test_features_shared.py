"""The ``local`` feature store on both of its storages: ``local`` (files and SQLite under the state directory, the
default) and ``shared`` (``storage.url`` on S3, ``storage.db`` on PostgreSQL, as several hosts would share them).

The storage-neutral helpers here (:func:`open_store`, the ``shared_features`` fixture) are also used by
tests/test_local_features.py, whose behavioural tests and contract suite run on both storages. This module holds
what is about sharing: where things go, two stores (hosts) of one storage seeing each other, concurrent
materialisations never seen half-done, writers that fail or are killed mid-write, concurrent openers, option
precedence, and start-up faults (an unreachable database or bucket is named, password redacted, within seconds).

PostgreSQL comes from the session fixture ``postgres_url`` and S3 from ``s3_server`` (moto); each test module gets a
database and a bucket of its own, and each test a PostgreSQL schema (dropped afterwards) and a prefix of its own.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

import runtime
from loom_local_features import LocalFeatureStore
from runtime import ConfigError, FeatureView
from runtime.config import Storage

ONLY_THIS_PLUGIN = "local_features"
STORAGES = ["local", "shared"]
T0 = pd.Timestamp("2024-01-01")
ROOT = Path(__file__).resolve().parents[1]


def day(n: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=n)


@pytest.fixture(autouse=True)
def _only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_PLUGINS", ONLY_THIS_PLUGIN)


# -- shared storage: one PostgreSQL schema and one S3 prefix per test -------------------------------------------


@dataclass(frozen=True)
class SharedFeatures:
    """Where a test's shared feature store lives: ``storage`` as a project hands it to the factory, and ``schema``,
    the test's own PostgreSQL schema (the store's ``schema`` option)."""

    storage: Storage
    schema: str
    bucket: str
    prefix: str

    @property
    def options(self) -> dict[str, Any]:
        return {"schema": self.schema}


def _libpq(url: str) -> str:
    scheme = urlsplit(url).scheme
    return "postgresql" + url[len(scheme) :]


def _password(url: str) -> str:
    return urlsplit(url).password or "\x00no password\x00"


@pytest.fixture(scope="module")
def features_database(postgres_url: str) -> Iterator[str]:
    """A database of this test module's own on the session's PostgreSQL server, dropped at the end."""
    from services import fresh_database

    url = fresh_database(postgres_url)
    yield url
    with psycopg.connect(_libpq(postgres_url), autocommit=True) as conn:  # FORCE: the pools' idle connections
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(urlsplit(url).path.lstrip("/")))
        )


@pytest.fixture(scope="module")
def features_bucket(s3_server: Any) -> str:
    """A bucket of this test module's own on the session's S3 server."""
    name = f"loom-features-{uuid.uuid4().hex[:12]}"
    s3_server.bucket(name)
    return name


@pytest.fixture
def shared_features(
    features_database: str, s3_server: Any, features_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SharedFeatures]:
    """A fresh, empty shared storage: a PostgreSQL schema of this test's own (dropped afterwards) in the module's
    database, and a prefix of its own in the module's bucket. S3's endpoint and credentials reach pyarrow as AWS_*
    variables only (child processes inherit them), as a deployment would pass them."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield SharedFeatures(
        Storage(url=f"s3://{features_bucket}/{schema}", db=features_database), schema, features_bucket, schema
    )
    with psycopg.connect(_libpq(features_database), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def open_store(state_dir: Path, shared: SharedFeatures | None = None, **options: Any) -> LocalFeatureStore:
    """A ``local`` feature store built through the plugin manager as a project builds it: on the local storage, or
    on ``shared`` (PostgreSQL + S3) when given. ``state_dir`` stands for the host: two stores with different state
    directories on one shared storage are two hosts."""
    storage = None
    if shared is not None:
        storage, options = shared.storage, {**shared.options, **options}
    return runtime.get_plugins().feature_store("local", state_dir=state_dir, options=options, storage=storage)


def storage_for(request: pytest.FixtureRequest, kind: str) -> SharedFeatures | None:
    """The shared storage of this test when ``kind`` is ``shared``, else ``None`` (local)."""
    return request.getfixturevalue("shared_features") if kind == "shared" else None


@pytest.fixture(params=STORAGES)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., LocalFeatureStore]]:
    """Opens stores of one storage (the test's): ``opener()`` is this host's store, ``opener(host="b")`` another
    host's (its own state directory; on the local storage, the same directory: there is no other host)."""
    shared = storage_for(request, request.param)
    opened: list[LocalFeatureStore] = []

    def open_(host: str = "a", **options: Any) -> LocalFeatureStore:
        state_dir = tmp_path / (host if shared is not None else "a")
        store = open_store(state_dir, shared, **options)
        opened.append(store)
        return store

    open_.shared = shared  # type: ignore[attr-defined]
    yield open_
    for store in opened:
        store.close()


def spend_view(**dtypes: str) -> FeatureView:
    return FeatureView(name="spend", entity="cid", timestamp="ts", features=("amount",), dtypes=dtypes)


def frame(keys: Any, ts: Any, amounts: Any) -> pd.DataFrame:
    keys = list(keys)
    ts = ts if isinstance(ts, list) else [ts] * len(keys)
    amounts = amounts if isinstance(amounts, list) else [amounts] * len(keys)
    return pd.DataFrame({"cid": keys, "ts": ts, "amount": pd.array(amounts, dtype="float64")})


def amounts(store: LocalFeatureStore, keys: list[Any]) -> list[Any]:
    out = store.get_online_features("spend", keys, ["amount"])["amount"]
    return [None if pd.isna(v) else v for v in out]


# -- where things go ----------------------------------------------------------------------------------------------


def test_shared_files_under_the_storage_url_and_online_rows_in_postgresql(
    shared_features: SharedFeatures, s3_server: Any, tmp_path: Path
) -> None:
    store = open_store(tmp_path, shared_features)
    store.apply(spend_view(amount="float"))
    store.write("spend", frame([1, 2], day(1), [1.0, 2.0]))
    assert store.materialize("spend") == 2
    assert store.path is None and not (tmp_path / "features" / "online.db").exists()
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(
        Bucket=shared_features.bucket, Prefix=shared_features.prefix)["Contents"])
    rel = [k[len(shared_features.prefix) + 1 :] for k in keys]
    assert "features/views/spend.json" in rel
    parts = [k for k in rel if k.startswith("features/offline/spend/part-") and k.endswith(".parquet")]
    assert len(parts) == 1
    assert not [k for k in rel if k.rsplit("/", 1)[-1].startswith(".")]  # no temporaries left behind
    with psycopg.connect(_libpq(shared_features.storage.db)) as conn:
        table = sql.SQL("{}.{}").format(sql.Identifier(shared_features.schema), sql.Identifier("fv_spend"))
        rows = conn.execute(sql.SQL('SELECT "_key", amount FROM {} ORDER BY 1').format(table)).fetchall()
        assert rows == [("1", 1.0), ("2", 2.0)]
        version = conn.execute(sql.SQL("SELECT MAX(version) FROM {}.schema_version").format(
            sql.Identifier(shared_features.schema))).fetchone()[0]
        assert version == 1
    assert _password(shared_features.storage.db) not in repr(store)
    store.close()


def test_default_schema_is_loom_features(shared_features: SharedFeatures, tmp_path: Path) -> None:
    store = runtime.get_plugins().feature_store("local", state_dir=tmp_path, options={},
                                                storage=shared_features.storage)
    try:
        assert store.online.schema == "loom_features"
        store.apply(spend_view())
        assert store.list_views() == ["spend"]
    finally:
        store.close()
        with psycopg.connect(_libpq(shared_features.storage.db), autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS loom_features CASCADE")


def test_storage_url_alone_keeps_sqlite_on_the_local_disk(s3_server: Any, features_bucket: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    storage = Storage(url=f"s3://{features_bucket}/url-only-{uuid.uuid4().hex[:8]}")
    store = runtime.get_plugins().feature_store("local", state_dir=tmp_path, options={}, storage=storage)
    store.apply(spend_view())
    store.push("spend", frame([1], day(1), 1.0))
    assert amounts(store, [1]) == [1.0]
    assert (tmp_path / "features" / "online.db").exists()
    assert not (tmp_path / "features" / "views").exists()  # the definitions are in the bucket
    assert store.location.uri == f"{storage.url}/features"
    store.close()


def test_storage_url_on_a_local_directory(tmp_path: Path) -> None:
    shared_dir = tmp_path / "shared"
    storage = Storage(url=str(shared_dir))
    store = runtime.get_plugins().feature_store("local", state_dir=tmp_path / "state", options={}, storage=storage)
    store.apply(spend_view())
    store.write("spend", frame([1], day(1), 1.0))
    assert store.materialize("spend") == 1
    assert len(list((shared_dir / "features" / "offline" / "spend").glob("part-*.parquet"))) == 1
    assert (shared_dir / "features" / "views" / "spend.json").exists()
    assert (tmp_path / "state" / "features" / "online.db").exists()  # SQLite stays in the state directory
    assert not (shared_dir / "features" / "online.db").exists()
    store.close()


def test_options_win_over_storage(shared_features: SharedFeatures, tmp_path: Path) -> None:
    store = open_store(tmp_path, shared_features, path="mine")
    store.apply(spend_view())
    store.write("spend", frame([1], day(1), 1.0))
    assert store.materialize("spend") == 1
    assert store.path == tmp_path / "mine"
    assert len(list((tmp_path / "mine" / "offline" / "spend").glob("part-*.parquet"))) == 1
    assert not (tmp_path / "mine" / "online.db").exists()  # online rows: still storage.db
    assert amounts(store, [1]) == [1.0]
    store.close()
    with pytest.raises(ConfigError, match=r"'schema'.*storage\.db"):
        runtime.get_plugins().feature_store("local", state_dir=tmp_path, options={"schema": "x"})
    with pytest.raises(ConfigError, match="schema name"):
        open_store(tmp_path, shared_features, schema="Bad-Name")


def test_other_database_urls_are_refused_without_their_password(tmp_path: Path) -> None:
    plugins = runtime.get_plugins()
    for url in ("sqlite:///" + str(tmp_path / "x.db"), "mysql://loom:hunter2@127.0.0.1/loom"):
        with pytest.raises(ConfigError, match=r"SQLite under the state directory.*PostgreSQL") as err:
            plugins.feature_store("local", state_dir=tmp_path, options={}, storage=Storage(db=url))
        assert "hunter2" not in str(err.value)
    assert not (tmp_path / "features").exists()


# -- start-up faults: named, password redacted, within seconds ------------------------------------------------------

#: The password every fault case uses: it must appear in no message.
PASSWORD = "s3cret-value"
#: How long a fault may take to be reported (the issue: "within a few seconds", not a hang).
BOUND_S = 8.0


def failure(make: Callable[[], object], bound: float = BOUND_S) -> tuple[str, float]:
    """The message of the ConfigError ``make`` raises and the seconds it took, checked against ``bound``: no
    password in it, on one line."""
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        make()
    took = time.monotonic() - started
    message = str(err.value)
    assert took < bound, f"the error took {took:.1f} s (bound {bound} s): {message}"
    assert PASSWORD not in message and quote(PASSWORD) not in message, message
    assert "\n" not in message, message
    return message, took


def _closed_port() -> int:
    """A port of 127.0.0.1 with nothing listening on it."""
    from services import free_port

    return free_port()


def open_with(state_dir: Path, **storage: str) -> Callable[[], object]:
    return lambda: runtime.get_plugins().feature_store("local", state_dir=state_dir, options={},
                                                       storage=Storage(**storage))


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never answers on them (a server that hangs, or a firewall that lets
    the handshake through): without timeouts a client would wait for minutes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


def test_an_unreachable_database_is_named_without_its_password(tmp_path: Path) -> None:
    port = _closed_port()
    url = f"postgresql+psycopg://loom:{PASSWORD}@127.0.0.1:{port}/loom"
    message, _ = failure(open_with(tmp_path, db=url))
    assert f"cannot connect to the feature store's online database postgresql+psycopg://loom:***@127.0.0.1:{port}/loom" \
        in message
    assert not (tmp_path / "features").exists()  # nothing made on the local disk either


@pytest.mark.slow
def test_a_database_that_never_answers_times_out(tmp_path: Path, silent_server: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from loom_local_features._postgres import CONNECT_TIMEOUT_S

    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    url = f"postgresql://loom:{PASSWORD}@127.0.0.1:{silent_server}/loom"
    message, took = failure(open_with(tmp_path, db=url), bound=CONNECT_TIMEOUT_S + 3)
    assert took >= CONNECT_TIMEOUT_S - 0.5, f"gave up after {took:.1f} s, before the {CONNECT_TIMEOUT_S} s timeout"
    assert f"127.0.0.1:{silent_server}" in message and "***" in message
    message, took = failure(open_with(tmp_path, db=url + "?connect_timeout=2"), bound=4.5)  # the URL's own wins


def test_a_wrong_database_password_is_named_without_either_password(features_database: str, tmp_path: Path) -> None:
    parts = urlsplit(features_database)
    url = parts._replace(netloc=f"{parts.username}:{PASSWORD}@{parts.hostname}:{parts.port}").geturl()
    message, _ = failure(open_with(tmp_path, db=url))
    assert "password authentication failed" in message and f"{parts.username}:***@" in message
    assert _password(features_database) not in message


def test_the_drivers_own_words_never_show_the_password(tmp_path: Path) -> None:
    """libpq quotes what it cannot parse (an invalid %-escape in the password): scrubbed from its message too."""
    bad = f"{PASSWORD}%zz"
    message, _ = failure(open_with(tmp_path, db=f"postgresql://loom:{bad}@127.0.0.1:{_closed_port()}/loom"))
    assert bad not in message and "percent-encoded" in message


def test_a_missing_bucket_is_named_without_credentials(s3_env: Any, tmp_path: Path) -> None:
    bucket = f"loom-missing-{uuid.uuid4().hex[:12]}"
    message, _ = failure(open_with(tmp_path, url=f"s3://{bucket}/p"))
    assert f"cannot reach the feature store's files at s3://{bucket}/p/features" in message
    url = f"s3://testing:{PASSWORD}@{bucket}/p?endpoint_override={s3_env.endpoint}&scheme=http"
    message, _ = failure(open_with(tmp_path, url=url))
    assert f"s3://testing:***@{bucket}/p/features" in message
    assert not (tmp_path / "features").exists()


def test_a_dead_object_store_endpoint_fails_fast(s3_env: Any, features_database: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    message, _ = failure(open_with(tmp_path, url="s3://bucket/loom", db=features_database), bound=10)
    assert "cannot reach the feature store's files at s3://bucket/loom/features" in message
    assert _password(features_database) not in message


@pytest.mark.slow
def test_a_silent_object_store_endpoint_is_an_error_not_a_hang(s3_env: Any, tmp_path: Path, silent_server: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from loom_local_features._store import PROBE_ATTEMPTS, PROBE_REQUEST_TIMEOUT_S

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent_server}")
    bound = 2 * PROBE_ATTEMPTS * PROBE_REQUEST_TIMEOUT_S + 8  # each attempt may wait out the timeout twice, + backoff
    message, _ = failure(open_with(tmp_path, url="s3://loom-any/x"), bound=bound)
    assert "s3://loom-any/x/features" in message


# -- the store's behaviour, on both storages (more in tests/test_local_features.py) -----------------------------


def test_materialize_lookup_and_point_in_time_read(opener: Callable[..., LocalFeatureStore]) -> None:
    store = opener()
    store.apply(spend_view(amount="float"))
    store.write("spend", frame([1, 1, 2], [day(1), day(3), day(2)], [1.0, 3.0, 2.0]))
    assert store.materialize("spend") == 2
    assert store.materialize("spend") == 0
    assert amounts(store, [2, 1, 99]) == [2.0, 3.0, None]
    assert amounts(store, [1]) == [3.0]
    labels = pd.DataFrame({"cid": [1, 1, 1, 2], "ts": [day(0), day(2), day(4), day(2)]})
    out = store.get_historical_features(labels, "spend", ["amount"])
    assert [None if pd.isna(v) else v for v in out["amount"]] == [None, 1.0, 3.0, 2.0]
    store.write("spend", frame([1], day(2.5), 9.0))  # late data, older than what is served
    assert store.materialize("spend") == 0
    assert amounts(store, [1]) == [3.0]


def test_stores_of_one_storage_see_each_other(opener: Callable[..., LocalFeatureStore]) -> None:
    a, b = opener(), opener(host="b")
    a.apply(spend_view())
    assert b.list_views() == ["spend"]
    assert amounts(b, [1]) == [None]  # b caches a view that has no data yet...
    a.write("spend", frame([1, 2], day(1), [1.0, 2.0]))
    a.materialize("spend")
    assert amounts(b, [1, 2]) == [1.0, 2.0]  # ...and still sees a's data at once
    assert b.materialize("spend") == 0  # a's materialisation is recorded where b looks
    b.push("spend", frame([2], day(5), 5.0))
    assert amounts(a, [2]) == [5.0]
    out = a.get_historical_features(pd.DataFrame({"cid": [2], "ts": [day(6)]}), "spend", ["amount"])
    assert out["amount"].tolist() == [5.0]
    a.apply(FeatureView(name="spend", entity="cid", timestamp="ts", features=("amount", "visits")))
    a.write("spend", pd.DataFrame({"cid": [3], "ts": [day(7)], "amount": [3.0], "visits": [4]}))
    a.materialize("spend")
    out = b.get_online_features("spend", [3, 1], ["visits", "amount"])  # a feature b has not seen defined yet
    assert out["visits"].tolist()[0] == 4 and out["amount"].tolist() == [3.0, 1.0]


def test_pickled_store_reopens_the_same_storage(opener: Callable[..., LocalFeatureStore]) -> None:
    store = opener()
    store.apply(spend_view())
    store.push("spend", frame([1], day(1), 1.0))
    clone = pickle.loads(pickle.dumps(store))
    try:
        assert amounts(clone, [1]) == [1.0]
        assert clone.materialize("spend") == 0
        assert repr(clone) == repr(store)
    finally:
        clone.close()


def test_a_failed_write_leaves_the_previous_state(opener: Callable[..., LocalFeatureStore],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import loom_local_features._offline as offline

    store = opener()
    store.apply(spend_view())
    store.write("spend", frame([1], day(1), 1.0))
    real = pq.write_table

    def half_then_fail(table: Any, where: Any, **kwargs: Any) -> None:
        real(table.slice(0, 1), where, **kwargs)  # bytes have gone out...
        raise OSError("disk full")  # ...and then the writer fails

    monkeypatch.setattr(offline.pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        store.write("spend", frame(range(10), day(2), 2.0))
    monkeypatch.setattr(offline.pq, "write_table", real)
    parts = store.offline.parts("spend")
    assert len(parts) == 1
    loc = store.offline.location
    assert [n.rsplit("/", 1)[-1].startswith("part-") for n in loc.files("spend")] == [True]
    assert store.materialize("spend") == 1
    assert amounts(store, [1, 2]) == [1.0, None]
    # what a writer killed mid-write leaves (a hidden temporary) is never read, and goes once it is old
    loc.write_bytes("spend/.part-00000000000000000001-deadbeef.parquet.0123456789ab.tmp", b"PAR1\x00trunc")
    assert len(store.offline.parts("spend")) == 1
    assert loc.remove_temporaries("spend", older_than_s=3600) == 0
    assert loc.remove_temporaries("spend", older_than_s=-60) == 1
    assert loc.files("spend") == [parts[0].path]


_WRITER = """
import pickle, sys
import numpy as np, pandas as pd
store = pickle.loads(bytes.fromhex(sys.stdin.read()))
n, g = 100_000, 0
while True:
    g += 1
    store.write("spend", pd.DataFrame({"cid": np.arange(n), "ts": pd.Timestamp("2024-01-01") + pd.Timedelta(g, "s"),
                                       "amount": np.random.default_rng(g).normal(size=n)}))
    print(g, flush=True)
"""


@pytest.mark.slow
def test_a_writer_killed_mid_write_leaves_only_whole_parts(opener: Callable[..., LocalFeatureStore]) -> None:
    """kill -9 of a process writing large parts, at a random moment: every visible part is whole and readable,
    and the store carries on."""
    store = opener()
    store.apply(spend_view(amount="float"))
    rng = np.random.default_rng()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    for _ in range(2):
        child = subprocess.Popen([sys.executable, "-c", _WRITER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 env=env, text=True)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(pickle.dumps(store).hex())
        child.stdin.close()
        child.stdout.readline()  # one part written: the next is under way
        time.sleep(float(rng.uniform(0.0, 0.3)))
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    parts = store.offline.parts("spend")
    assert len(parts) >= 2
    loc = store.offline.location
    for part in parts:
        assert pq.read_metadata(loc.fs.open_input_file(loc.fs_path(part.path))).num_rows == 100_000
    assert store.materialize("spend") == 100_000
    assert amounts(store, [0, 99_999, 100_000])[2] is None
    store.write("spend", frame([7], day(400), 7.0))
    store.materialize("spend")
    assert amounts(store, [7]) == [7.0]


def test_concurrent_materialize_is_never_seen_half_done(opener: Callable[..., LocalFeatureStore]) -> None:
    """Each materialisation moves every entity to the next generation in one transaction: a lookup of all of them
    (one of more keys than one SQLite query binds, one of fewer), from another store of the same storage, sees a
    single generation, and never an older one than it saw before."""
    n, generations = 1200, 6
    writer, reader = opener(), opener(host="b")
    writer.apply(spend_view(amount="float"))
    keys = list(range(n))
    errors: list[BaseException] = []
    done = threading.Event()
    seen: dict[str, list[float]] = {"all": [], "some": []}

    def read(name: str, ks: list[int]) -> None:
        last = 0.0
        try:
            while not done.is_set():
                got = set(amounts(reader, ks))
                assert len(got) == 1, f"a lookup saw several generations at once: {sorted(got, key=str)[:5]}"
                value = got.pop()
                value = 0.0 if value is None else value
                assert value >= last, f"went back from generation {last} to {value}"
                last = value
                seen[name].append(value)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=read, args=("all", keys)),
               threading.Thread(target=read, args=("some", keys[::7][:100]))]
    for t in threads:
        t.start()
    try:
        for g in range(1, generations + 1):
            writer.write("spend", frame(keys, day(g), float(g)))
            assert writer.materialize("spend") == n
            time.sleep(0.02)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert amounts(reader, keys[:3]) == [float(generations)] * 3
    assert all(seen.values())


def test_concurrent_materializers_agree(opener: Callable[..., LocalFeatureStore]) -> None:
    """Several stores materialising the same view at once (row locks in key order: no deadlock) end with the
    newest value of every entity; re-running changes nothing."""
    stores = [opener(host=h) for h in "abcd"]
    stores[0].apply(spend_view(amount="float"))
    rng = np.random.default_rng(5)
    for g in range(4):
        keys = rng.permutation(400)[:300]
        stores[g].write("spend", frame(keys, day(g), float(g)))
    errors: list[BaseException] = []

    def run(store: LocalFeatureStore) -> None:
        try:
            store.materialize("spend")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    labels = pd.DataFrame({"cid": range(400), "ts": day(10)})
    want = stores[0].get_historical_features(labels, "spend", ["amount"])["amount"]
    assert amounts(stores[1], list(range(400))) == [None if pd.isna(v) else v for v in want]
    assert all(s.materialize("spend") == 0 for s in stores)


def test_many_openers_may_create_a_new_store_at_once(opener: Callable[..., LocalFeatureStore]) -> None:
    errors: list[BaseException] = []
    stores: list[LocalFeatureStore] = []

    def open_and_apply(i: int) -> None:
        try:
            store = opener(host=f"h{i}")
            stores.append(store)
            store.apply(spend_view(amount="float"))
            store.push("spend", frame([i], day(1), float(i)))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=open_and_apply, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert amounts(stores[0], list(range(6))) == [float(i) for i in range(6)]


def test_concurrent_first_writes_record_one_type(opener: Callable[..., LocalFeatureStore]) -> None:
    """Two hosts writing a view's first data at once: its column types are recorded once (the view-file update
    is serialised across hosts), and both writes are served."""
    a, b = opener(), opener(host="b")
    a.apply(FeatureView(name="v", entity="id", timestamp="ts", features=("n",)))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(store: LocalFeatureStore, key: int) -> None:
        try:
            barrier.wait()
            store.push("v", pd.DataFrame({"id": [key], "ts": [day(1)], "n": [key * 10]}))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(s, k)) for s, k in ((a, 1), (b, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    out = b.get_online_features("v", [1, 2], ["n"])
    assert str(out["n"].dtype) == "Int64" and out["n"].tolist() == [10, 20]


def test_long_view_and_feature_names(opener: Callable[..., LocalFeatureStore]) -> None:
    """Names up to 128 characters (runtime.check_name's limit) work although PostgreSQL's identifiers stop at 63."""
    name, long_a, long_b = "v" * 120, "f" * 100 + "a", "f" * 100 + "b"
    store = opener()
    store.apply(FeatureView(name=name, entity="id", timestamp="ts", features=(long_a, long_b)))
    store.push(name, pd.DataFrame({"id": [1], "ts": [day(1)], long_a: [1.5], long_b: ["x"]}))
    out = store.get_online_features(name, [1], [long_b, long_a])
    assert out.iloc[0].tolist() == ["x", 1.5]
