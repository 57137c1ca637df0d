"""The loom_sql plugin against real databases: an SQLite file, and a PostgreSQL server.

PostgreSQL tests run against the session's ``postgres_url`` (tests/conftest.py): ``LOOM_TEST_POSTGRES_URL`` if set,
else a private server the run starts from the local PostgreSQL binaries (tests/services.py). They never skip.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pandas as pd
import pytest

from runtime import ConfigError, DataSource, LoomError, NotFoundError, Plugins, get_plugins
from runtime._contracts.data import DataSourceContract, table
from services import sqlalchemy_url

sa = pytest.importorskip("sqlalchemy")


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Plugins:
    monkeypatch.setenv("LOOM_PLUGINS", "sql")  # only this plugin, found through its entry point
    return get_plugins()


def sqlite_db(tmp_path: Path, frames: dict[str, pd.DataFrame], name: str = "app.db") -> Path:
    path = tmp_path / name
    with sqlite3.connect(path) as conn:
        for table_name, df in frames.items():
            df.to_sql(table_name, conn, index=False, if_exists="replace")
    return path


# -- the contract, on both databases ------------------------------------------------------------------------------


class TestSQLiteContract(DataSourceContract):
    @pytest.fixture
    def make_source(self, plugins: Plugins, tmp_path: Path):
        def make(df: pd.DataFrame) -> DataSource:
            name = f"t_{uuid.uuid4().hex[:12]}"
            sqlite_db(tmp_path, {name: df}, name=f"{name}.db")
            return plugins.data_source(f"sqlite:///{name}.db", base_dir=tmp_path, options={"table": name})

        return make


class TestPostgresContract(DataSourceContract):
    @pytest.fixture
    def make_source(self, plugins: Plugins, postgres_url: str):
        engine = sa.create_engine(sqlalchemy_url(postgres_url))
        created: list[str] = []

        def make(df: pd.DataFrame) -> DataSource:
            name = f"t_{uuid.uuid4().hex[:12]}"
            df.to_sql(name, engine, index=False)
            created.append(name)
            return plugins.data_source(postgres_url, base_dir=Path("."), options={"table": name})

        yield make
        with engine.begin() as conn:
            for name in created:
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
        engine.dispose()


# -- options, queries and errors ----------------------------------------------------------------------------------


def test_schemes_are_registered_by_the_sql_entry_point(plugins: Plugins) -> None:
    assert plugins.names("loom_register_data_sources") == {"sqlite": "sql", "postgresql": "sql", "postgres": "sql"}


def test_query_option_and_relative_paths(plugins: Plugins, tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    sqlite_db(tmp_path / "db", {"events": table()})
    source = plugins.data_source("sqlite:///db/app.db", base_dir=tmp_path,
                                 options={"query": "SELECT id, score FROM events WHERE id <= 3 ORDER BY id;"})
    assert source.read().to_dict("list") == {"id": [1, 2, 3], "score": [0.25, 0.5, 0.75]}
    assert str(source.read()["id"].dtype) == "Int64"


@pytest.mark.parametrize(
    "options, match",
    [({}, "exactly one"), ({"table": "a", "query": "SELECT 1"}, "exactly one"), ({"tabel": "a"}, "tabel"),
     ({"query": "SELECT 1", "schema": "s"}, "schema"), ({"table": ""}, "non-empty")],
)
def test_bad_options_are_config_errors(plugins: Plugins, tmp_path: Path, options: dict, match: str) -> None:
    sqlite_db(tmp_path, {"events": table()})
    with pytest.raises(ConfigError, match=match):
        plugins.data_source("sqlite:///app.db", base_dir=tmp_path, options=options)


def test_missing_database_and_table(plugins: Plugins, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no SQLite database"):
        plugins.data_source("sqlite:///nope.db", base_dir=tmp_path, options={"table": "t"})
    assert not (tmp_path / "nope.db").exists()  # opening never creates a database
    sqlite_db(tmp_path, {"events": table()})
    source = plugins.data_source("sqlite:///app.db", base_dir=tmp_path, options={"table": "nope"})
    with pytest.raises(LoomError, match="no such table"):
        source.read()


def test_sqlite_is_opened_read_only(plugins: Plugins, tmp_path: Path) -> None:
    sqlite_db(tmp_path, {"events": table()})
    source = plugins.data_source("sqlite:///app.db", base_dir=tmp_path,
                                 options={"query": "DELETE FROM events RETURNING id"})
    with pytest.raises(LoomError, match="readonly"):
        source.read()
    assert len(plugins.data_source("sqlite:///app.db", base_dir=tmp_path, options={"table": "events"}).read()) == 25


def test_identifiers_are_quoted(plugins: Plugins, tmp_path: Path) -> None:
    sqlite_db(tmp_path, {'odd "name"; --': table(3)})
    source = plugins.data_source("sqlite:///app.db", base_dir=tmp_path, options={"table": 'odd "name"; --'})
    assert len(source.read()) == 3


def test_fingerprint_ignores_row_order_and_batching(plugins: Plugins, tmp_path: Path) -> None:
    data = table(40)
    sqlite_db(tmp_path, {"a": data, "b": data.iloc[::-1]})
    a = plugins.data_source("sqlite:///app.db", base_dir=tmp_path, options={"table": "a"})
    b = plugins.data_source("sqlite:///app.db", base_dir=tmp_path, options={"table": "b"})
    assert a.fingerprint() == b.fingerprint()
    for size in (1, 7, 100):
        for _ in b.iter_batches(batch_size=size):
            pass
        assert b.fingerprint() == a.fingerprint()


def test_fingerprint_describes_the_data_read(plugins: Plugins, tmp_path: Path) -> None:
    path = sqlite_db(tmp_path, {"events": table()})
    source = plugins.data_source("sqlite:///app.db", base_dir=tmp_path, options={"table": "events"})
    read = source.read()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET score = 99 WHERE id = 1")
    assert source.fingerprint() != plugins.data_source("sqlite:///app.db", base_dir=tmp_path,
                                                       options={"table": "events"}).fingerprint()
    assert len(read) == 25  # the fingerprint kept is the one of what was read


def test_postgres_password_from_the_environment(plugins: Plugins, postgres_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url = sa.engine.make_url(postgres_url)
    assert url.password, "LOOM_TEST_POSTGRES_URL names no password: unset it, and the tests start a server with one"
    monkeypatch.setenv("LOOM_TEST_PG_PASSWORD", url.password)
    bare = url.set(password=None).render_as_string(hide_password=False)
    source = plugins.data_source(bare, base_dir=Path("."),
                                 options={"query": "SELECT 1 AS one", "password_env": "LOOM_TEST_PG_PASSWORD"})
    assert source.read()["one"].tolist() == [1]
    with pytest.raises(ConfigError, match="LOOM_UNSET_VARIABLE"):
        plugins.data_source(bare, base_dir=Path("."), options={"query": "SELECT 1", "password_env": "LOOM_UNSET_VARIABLE"})
    wrong = plugins.data_source(url.set(password="wrong").render_as_string(hide_password=False), base_dir=Path("."),
                                options={"query": "SELECT 1"})
    with pytest.raises(LoomError) as err:
        wrong.read()
    assert "wrong" not in str(err.value)  # the password never appears in messages


def test_postgres_types_and_timestamptz(plugins: Plugins, postgres_url: str) -> None:
    source = plugins.data_source(postgres_url, base_dir=Path("."), options={"query": (
        "SELECT 9007199254740993::bigint AS big, 1.5::numeric AS num, true AS flag, "
        "'2025-01-01 12:00+02'::timestamptz AS at, NULL::int AS nothing")})
    row = source.read().iloc[0]
    assert row["big"] == 2**53 + 1 and row["flag"] == True  # noqa: E712
    assert row["at"] == pd.Timestamp("2025-01-01 10:00", tz="UTC")
    assert pd.isna(row["nothing"])
    newer = source.since("at", "2025-01-01T09:59:59Z")
    assert len(newer.read()) == 1 and len(source.since("at", "2025-01-01T10:00:00Z").read()) == 0


def test_postgres_streams_with_a_server_side_cursor(plugins: Plugins, postgres_url: str) -> None:
    source = plugins.data_source(postgres_url, base_dir=Path("."),
                                 options={"query": "SELECT g AS id FROM generate_series(1, 100000) AS g"})
    sizes = [len(b) for b in source.iter_batches(batch_size=30_000)]
    assert sizes == [30_000, 30_000, 30_000, 10_000]
    assert sum(int(b["id"].count()) for b in source.iter_batches(batch_size=50_000)) == 100_000


# -- secrets ------------------------------------------------------------------------------------------------------

SECRET = "Pa55w0rd-xyzzy"


def test_the_password_is_in_no_message_nor_in_the_source(plugins: Plugins, tmp_path: Path) -> None:
    closed = f"postgresql://loom:{SECRET}@127.0.0.1:9/loom"  # discard port: nothing listens there
    source = plugins.data_source(closed, base_dir=tmp_path, options={"query": "SELECT 1"})
    assert source.uri == "postgresql://loom:***@127.0.0.1:9/loom" and SECRET not in repr(source)
    with pytest.raises(LoomError, match="connection failed") as err:
        source.read()
    assert SECRET not in str(err.value) and "loom:***@127.0.0.1:9" in str(err.value)
    for uri, error, match in [
        (f"postgresql://loom:{SECRET}@127.0.0.1:notaport/loom", ConfigError, "not a database URL"),
        (f"sqlite://loom:{SECRET}@/app.db", ConfigError, "names a file only"),
        (f"postgresql://loom:{SECRET}@127.0.0.1/loom", ConfigError, "unknown option"),
    ]:
        with pytest.raises(error, match=match) as err:
            plugins.data_source(uri, base_dir=tmp_path, options={"tabel": "t"} if "unknown" in match else
                                {"table": "t"})
        assert SECRET not in str(err.value) and ":***@" in str(err.value)


def test_the_drivers_message_is_scrubbed_of_the_password() -> None:
    from loom_sql._source import scrub

    text = f"invalid connection option: host=db password={SECRET} dbname=x (postgresql://u:{SECRET}@db/x)"
    assert scrub(text, SECRET) == "invalid connection option: host=db password=*** dbname=x (postgresql://u:***@db/x)"
    assert scrub("user ab failed", "ab") == "user ab failed"  # too short to search for without garbling
