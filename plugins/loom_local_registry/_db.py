"""The registry's metadata database: SQLite (the default) or PostgreSQL, with one set of SQL for both.

The registry's code writes its SQL once, with ``?`` placeholders, and runs it on a :class:`Connection` inside a
:meth:`transaction`; the two backends differ only here:

SQLite (a file under the state directory)
    Every operation opens its own short-lived connection, so a registry object is safe to share between threads
    and to carry across ``fork``/pickling boundaries, and no process ever holds a lock between calls. WAL mode
    lets readers (serving replicas) run while a writer commits; ``busy_timeout`` makes concurrent writers queue
    instead of failing; writes start with ``BEGIN IMMEDIATE`` so they take the write lock up front and never hit
    an unretryable lock upgrade. WAL needs a local file system (not NFS/SMB).

PostgreSQL (``storage.db: postgresql://...``, through psycopg 3)
    The registry's tables live in their own schema (``loom_registry`` unless the ``schema`` option says
    otherwise). Connections are pooled per process (a fresh pool after ``fork`` or unpickling). Writes run at
    READ COMMITTED and lock what they change: the ``models`` row of the model they touch (``UPDATE ... RETURNING``
    allocates the version number; other writes read it ``FOR UPDATE``, which :attr:`Connection.lock` adds) and the
    ``runs`` row of the run. So writes to one model are serialised exactly as SQLite serialises all writes, while
    reads run in a REPEATABLE READ READ ONLY snapshot. ``lock_timeout`` plays ``busy_timeout``'s part. A server
    that does not answer is given :data:`CONNECT_TIMEOUT_S` (libpq's ``connect_timeout``, per address; the URL's
    own ``?connect_timeout=`` or ``PGCONNECT_TIMEOUT`` wins), and opening the registry connects at once, so an
    unreachable server, a wrong host or a wrong password is a :class:`runtime.ConfigError` naming the URL (its
    password redacted, also from the driver's own message) within seconds, not a hang at the first query.

Schema migrations are numbered and recorded in a ``schema_version`` table in both; a migration runs in one
transaction (PostgreSQL's DDL is transactional too), under the write lock in SQLite and a transaction-level
advisory lock in PostgreSQL, so many processes may open a new registry at once.
"""

from __future__ import annotations

import os
import queue
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from runtime import ConfigError, LoomError, redact

#: How long a connection waits for another process's write lock before giving up.
BUSY_TIMEOUT_MS = 30_000

#: Migration ``n`` (0-based) brings the schema from version ``n`` to ``n + 1``. Append, never edit. Written for
#: SQLite and run on PostgreSQL through :func:`_postgres`, so keep to SQL both understand.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # last_version only ever grows, so a deleted version's number is never handed out again.
        """CREATE TABLE models (
            name TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            last_version INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE versions (
            name TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
            version INTEGER NOT NULL CHECK (version >= 1),
            created_at REAL NOT NULL,
            params TEXT NOT NULL,
            metrics TEXT NOT NULL,
            lineage TEXT NOT NULL,
            tags TEXT NOT NULL,
            description TEXT NOT NULL,
            artifacts TEXT NOT NULL,
            PRIMARY KEY (name, version)
        )""",
        """CREATE TABLE aliases (
            name TEXT NOT NULL,
            alias TEXT NOT NULL,
            version INTEGER NOT NULL,
            PRIMARY KEY (name, alias),
            FOREIGN KEY (name, version) REFERENCES versions(name, version) ON DELETE CASCADE
        )""",
        "CREATE INDEX aliases_by_version ON aliases(name, version)",
    ),
    (
        # Experiment tracking. A NULL metric value is a NaN: SQLite stores NaN as NULL.
        "ALTER TABLE versions ADD COLUMN run_id TEXT",
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            experiment TEXT NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'killed')),
            started_at REAL NOT NULL,
            ended_at REAL,
            params TEXT NOT NULL,
            tags TEXT NOT NULL,
            artifacts TEXT NOT NULL
        )""",
        "CREATE INDEX runs_by_experiment ON runs(experiment, started_at)",
        """CREATE TABLE metrics (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            step INTEGER NOT NULL,
            value REAL,
            timestamp REAL NOT NULL
        )""",
        "CREATE INDEX metrics_by_run ON metrics(run_id, key, step)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_SCHEMA_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
_RECORD_VERSION = "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)"


def _postgres(statement: str) -> str:
    """A migration statement in PostgreSQL's dialect: SQLite's ``REAL`` is 8 bytes (PostgreSQL's is 4), and every
    SQLite table has an implicit ``rowid`` (its insertion order, which runs and metrics are ordered by) that a
    PostgreSQL table must declare: it becomes an identity column, last so positional inserts still fit."""
    statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
    if re.match(r"\s*CREATE TABLE\b", statement):
        statement = re.sub(r"\)\s*$", ",\n    rowid BIGINT GENERATED ALWAYS AS IDENTITY\n)", statement)
    return statement


class Connection:
    """One connection inside a transaction. The registry's SQL uses ``?`` placeholders on both backends;
    ``lock`` is ``" FOR UPDATE"`` in a PostgreSQL write transaction (append it to a ``SELECT`` of a row the
    transaction is about to change) and empty otherwise (SQLite's write lock already covers the whole file)."""

    __slots__ = ("_raw", "_postgres", "lock")

    def __init__(self, raw: Any, *, postgres: bool, write: bool) -> None:
        self._raw = raw
        self._postgres = postgres
        self.lock = " FOR UPDATE" if postgres and write else ""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one statement; the result iterates over rows and has ``fetchone()``/``fetchall()``."""
        if self._postgres:
            return self._raw.execute(sql.replace("?", "%s"), args or None)
        return self._raw.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self._postgres:
            with self._raw.cursor() as cursor:
                cursor.executemany(sql.replace("?", "%s"), rows)
        else:
            self._raw.executemany(sql, rows)


class _Database:
    """What the registry needs from its metadata store; ``location`` names it in messages (no credentials)."""

    location: str

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Connection]:  # pragma: no cover - overridden
        raise NotImplementedError
        yield

    def _has_schema_table(self, conn: Connection) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def _lock_migrations(self, conn: Connection) -> None:
        """Serialise migrations beyond what the write transaction already does (PostgreSQL)."""

    def _schema_version(self, conn: Connection) -> int:
        if self._has_schema_table(conn):
            return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
        return 0

    def _check_not_newer(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise LoomError(
                f"the model registry at {self.location} uses schema version {current}, but this version of "
                f"loom_local_registry only understands up to {SCHEMA_VERSION}; upgrade Loom"
            )

    def _migrate(self, statements: Sequence[Sequence[str]], schema_table: str) -> None:
        """Bring the schema up to date; safe when many processes open a new registry at once."""
        with self.transaction(write=False) as conn:
            current = self._schema_version(conn)
        self._check_not_newer(current)
        if current == SCHEMA_VERSION:
            return
        with self.transaction(write=True) as conn:
            self._lock_migrations(conn)
            conn.execute(schema_table)
            current = self._schema_version(conn)  # another process may have migrated while we waited
            self._check_not_newer(current)
            for version in range(current, SCHEMA_VERSION):
                for statement in statements[version]:
                    conn.execute(statement)
                conn.execute(_RECORD_VERSION, (version + 1, time.time()))


class SQLiteDatabase(_Database):
    """One SQLite file holding the registry's metadata."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path.parent)
        conn = self._connect()
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the database file
        finally:
            conn.close()
        self._migrate(_MIGRATIONS, _SCHEMA_TABLE)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every transaction below is explicit.
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")  # a committed version survives power loss
        return conn

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Connection]:
        """Run a block in one transaction: committed if it returns, rolled back if it raises.

        ``write=True`` takes the write lock immediately (``BEGIN IMMEDIATE``), serialising writers across
        processes; reads get a consistent snapshot.
        """
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield Connection(conn, postgres=False, write=write)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _has_schema_table(self, conn: Connection) -> bool:
        return bool(conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone())


#: URL schemes of a PostgreSQL ``storage.db`` (SQLAlchemy's spellings; Loom always talks psycopg 3).
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
DEFAULT_SCHEMA = "loom_registry"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: Idle connections a process keeps per database; more may be open at once, the rest are closed when returned.
POOL_IDLE = 8
#: Seconds to wait for a PostgreSQL server to answer one connection attempt (libpq's ``connect_timeout``, per
#: address) unless the URL's ``?connect_timeout=`` or ``PGCONNECT_TIMEOUT`` says otherwise.
CONNECT_TIMEOUT_S = 5


def scrub(text: object, url: str) -> str:
    """``text`` (a message about ``url``, perhaps the driver's own) on one line, redacted, ``url``'s password
    masked in any spelling (:func:`runtime.redact` with ``url``)."""
    return " ".join(redact(text, url=url).split())


class PostgresDatabase(_Database):
    """The registry's tables in one schema of a PostgreSQL database, reached through a per-process pool."""

    def __init__(self, url: str, schema: str = DEFAULT_SCHEMA) -> None:
        scheme = urlsplit(url).scheme
        if scheme.lower() not in POSTGRES_SCHEMES:
            raise ConfigError(f"the local registry keeps metadata in SQLite (storage.db unset) or PostgreSQL "
                              f"({', '.join(s + '://' for s in POSTGRES_SCHEMES)}), not {scheme}:// "
                              f"(storage.db is {redact(url)!r})")
        if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
            raise ConfigError(f"registry option 'schema' must be a PostgreSQL schema name (lower-case letters, "
                              f"digits and '_', at most 63), got {schema!r}")
        self._conninfo = "postgresql" + url[len(scheme):]  # libpq's spelling of the scheme
        self.url = url
        self.schema = schema
        self.location = f"{redact(url)} (schema {schema})"
        self._reset_pool()
        # Connect now: an unreachable server or a refused login is a configuration problem, said at start-up.
        self._checkin(self._connect(ConfigError))
        self._migrate([[_postgres(s) for s in migration] for migration in _MIGRATIONS], _postgres(_SCHEMA_TABLE))

    # -- connections -------------------------------------------------------------------------------------------

    def _reset_pool(self) -> None:
        self._pid = os.getpid()
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()  # thread-safe; last in, first out keeps few warm

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "schema": self.schema, "location": self.location, "_conninfo": self._conninfo}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_pool()

    def _connect_timeout(self) -> dict[str, Any]:
        """``connect_timeout=`` for :func:`psycopg.connect`, unless the URL or ``PGCONNECT_TIMEOUT`` sets one."""
        from psycopg.conninfo import conninfo_to_dict

        if "connect_timeout" in conninfo_to_dict(self._conninfo) or os.environ.get("PGCONNECT_TIMEOUT"):
            return {}
        return {"connect_timeout": CONNECT_TIMEOUT_S}

    def _connect(self, error: type[LoomError] = LoomError) -> Any:
        """A new connection with the registry's session settings; ``error`` (with a one-line message naming the
        redacted URL and what the driver said, the password scrubbed from both) when there is none to be had."""
        import psycopg
        from psycopg import sql

        started = time.monotonic()
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, **self._connect_timeout())
        except psycopg.Error as err:
            waited = time.monotonic() - started
            after = f" (after {waited:.0f} s)" if waited >= 1 else ""
            raise error(
                f"cannot connect to the model registry's database {redact(self.url)}{after}: {scrub(err, self.url)}; "
                "check storage.db (host, port, database, user and password) and that the server accepts connections "
                "from this host") from None
        try:
            conn.execute(sql.SQL("SET search_path TO {}; SET lock_timeout = {}").format(
                sql.Identifier(self.schema), sql.Literal(f"{BUSY_TIMEOUT_MS}ms")))
        except BaseException:
            conn.close()
            raise
        return conn

    def _checkout(self) -> tuple[Any, bool]:
        """A connection and whether it came from the pool (so may have gone stale)."""
        if os.getpid() != self._pid:  # forked: the parent's connections are not ours to use (nor to close)
            self._reset_pool()
        try:
            return self._idle.get_nowait(), True
        except queue.Empty:
            return self._connect(), False

    def _checkin(self, conn: Any) -> None:
        from psycopg.pq import TransactionStatus

        if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE or os.getpid() != self._pid \
                or self._idle.qsize() >= POOL_IDLE:
            conn.close()
        else:
            self._idle.put(conn)

    def _begin(self, write: bool) -> Any:
        import psycopg

        begin = "BEGIN ISOLATION LEVEL READ COMMITTED" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        while True:
            conn, pooled = self._checkout()
            try:
                conn.execute(begin)
                return conn
            except psycopg.OperationalError:
                conn.close()
                if not pooled:
                    raise
                # a pooled connection the server has dropped (restart, idle timeout): nothing ran, so try another

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Connection]:
        """Run a block in one transaction: committed if it returns, rolled back if it raises. See the module's
        docstring for the isolation and locking of reads and writes."""
        conn = self._begin(write)
        try:
            yield Connection(conn, postgres=True, write=write)
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the connection is gone; the server rolls back without it
                conn.close()
            else:
                self._checkin(conn)
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._checkin(conn)

    # -- migrations --------------------------------------------------------------------------------------------

    def _has_schema_table(self, conn: Connection) -> bool:
        return conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is not None

    def _lock_migrations(self, conn: Connection) -> None:
        from psycopg import sql

        # CREATE SCHEMA IF NOT EXISTS and CREATE TABLE IF NOT EXISTS race with each other across sessions: one lock
        # per schema, held until this transaction ends, makes the check-then-migrate below atomic.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"loom_registry.migrate.{self.schema}",))
        conn._raw.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))


def open_database(path: Path | None, url: str | None, schema: str | None) -> _Database:
    """The registry's metadata store: PostgreSQL at ``url`` (in ``schema``), else SQLite at ``path``."""
    if url is None:
        if schema is not None:
            raise ConfigError("registry option 'schema' names a PostgreSQL schema; it needs storage.db set to a "
                              "postgresql:// URL")
        assert path is not None
        return SQLiteDatabase(path)
    return PostgresDatabase(url, schema or DEFAULT_SCHEMA)
