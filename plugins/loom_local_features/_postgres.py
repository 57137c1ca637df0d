"""The online store on PostgreSQL (``storage.db: postgresql://...``): the same rows as :mod:`._online`'s SQLite
store, in a database every host shares.

Everything lives in one schema (``loom_features`` unless the store's ``schema`` option says otherwise): a
``schema_version`` table, ``_loom_parts`` (which offline parts have been materialised: the incremental watermark)
and one table ``fv_<view>`` per feature view, ``_key TEXT PRIMARY KEY`` (int keys as their decimal text, so a
view's key type need not be known when its table is made), ``_ts``/``_seq`` (``BIGINT``: event time in ns since
the epoch, offline part) and one typed column per feature (``BIGINT``, ``DOUBLE PRECISION``, ``BOOLEAN``, ``TEXT``;
timestamps as ``BIGINT`` ns). A feature's column is added once its type is known (declared, or learned from its
first non-null data); until then lookups select ``NULL`` for it. Identifiers longer than PostgreSQL's 63 bytes are
shortened with a hash of the full name.

Writes: one transaction per materialisation or push. The rows go in as one ``INSERT ... SELECT FROM unnest(...)``
(one array per column: one round trip, whatever the row count) in key order, so concurrent writers lock rows in the
same order and cannot deadlock, and ``ON CONFLICT ... WHERE (excluded._ts, excluded._seq) > (_ts, _seq)`` keeps
an older value from replacing a newer one; ``_loom_parts`` is updated in the same transaction. A reader therefore
sees all of a materialisation or none of it.

Reads: one statement per lookup (``_key = $1`` for one key, ``_key = ANY($1)`` for a batch), prepared on each
pooled connection, in autocommit (a single statement reads one snapshot). Connections are pooled per process (a
fresh pool after ``fork`` or unpickling); one the server has dropped is replaced and the read retried once.

DDL (schema, tables, new columns) runs under a transaction-level advisory lock per schema, so many processes may
open a new store at once. ``meta_lock`` (around view-file updates) is another advisory lock, held by a transaction
for as long as the update takes: it serialises those updates across hosts, and is released if the process dies.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from runtime import ConfigError, LoomError, redact

#: URL schemes of a PostgreSQL ``storage.db`` (SQLAlchemy's spellings; the store always talks psycopg 3).
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
DEFAULT_SCHEMA = "loom_features"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: Seconds to wait for a server to answer one connection attempt (libpq's ``connect_timeout``, per address) before
#: naming the database as unreachable, unless the URL's ``?connect_timeout=`` or ``PGCONNECT_TIMEOUT`` says otherwise.
CONNECT_TIMEOUT_S = 5
#: How long a statement waits for another session's lock (DDL on a table a lookup reads) before failing.
LOCK_TIMEOUT_MS = 30_000
#: Idle connections a process keeps; more may be open at once, the rest are closed when returned.
POOL_IDLE = 8
#: Schema migrations, as for the registry: migration ``n`` brings version ``n`` to ``n + 1``. Append, never edit.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    ("CREATE TABLE _loom_parts (view TEXT NOT NULL, part TEXT NOT NULL, PRIMARY KEY (view, part))",),
)
SCHEMA_VERSION = len(_MIGRATIONS)

#: PostgreSQL column type of each Loom type (``format_type`` spelling, to compare with existing columns).
PG_TYPES = {
    "int": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "string": "text",
    "category": "text",
    "timestamp": "bigint",
}
_MAX_IDENT = 63


def ident(name: str) -> str:
    """``name`` as a PostgreSQL identifier of at most 63 bytes (longer ones keep a prefix plus a hash), unquoted."""
    if len(name.encode("utf-8")) <= _MAX_IDENT:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    return f"{name.encode('utf-8')[:_MAX_IDENT - 17].decode('utf-8', 'ignore')}_{digest}"


def quote(name: str) -> str:
    return '"' + ident(name).replace('"', '""') + '"'


def table_name(view: str) -> str:
    """Quoted (and, if need be, shortened) table of ``view``'s online rows."""
    return quote(f"fv_{view}")


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in POSTGRES_SCHEMES


def scrub(text: object, url: str) -> str:
    """``text`` (a message about ``url``, perhaps the driver's own) on one line, redacted, ``url``'s password
    masked in any spelling (:func:`runtime.redact` with ``url``)."""
    return " ".join(redact(text, url=url).split())


class PostgresOnlineStore:
    """The online rows of every view in one schema of a PostgreSQL database, reached through a per-process pool."""

    def __init__(self, url: str, schema: str = DEFAULT_SCHEMA) -> None:
        scheme = urlsplit(url).scheme
        if scheme.lower() not in POSTGRES_SCHEMES:
            raise ConfigError(
                f"feature store 'local' keeps online features in SQLite (storage.db unset) or PostgreSQL "
                f"({', '.join(s + '://' for s in POSTGRES_SCHEMES)}), not {scheme}:// (storage.db is {redact(url)!r})"
            )
        if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
            raise ConfigError(
                f"feature store 'local': option 'schema' must be a PostgreSQL schema name (lower-case letters, "
                f"digits and '_', at most 63), got {schema!r}"
            )
        import psycopg

        self.retry_errors: tuple[type[BaseException], ...] = (
            psycopg.errors.UndefinedTable,
            psycopg.errors.UndefinedColumn,
        )
        self._conninfo = "postgresql" + url[len(scheme) :]  # libpq's spelling of the scheme
        self.url = url
        self.schema = schema
        self.location = f"{redact(url)} (schema {schema})"
        self._reset_pool()
        self._started = False
        self._migrate()
        self._started = True

    def __repr__(self) -> str:
        return f"PostgresOnlineStore({self.location!r})"

    # -- connections -------------------------------------------------------------------------------------------

    def _reset_pool(self) -> None:
        self._pid = os.getpid()
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()  # thread-safe; last in, first out keeps few warm

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "schema": self.schema}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["schema"])  # type: ignore[misc]

    def _connect_timeout(self) -> dict[str, Any]:
        """``connect_timeout=`` for :func:`psycopg.connect`, unless the URL or ``PGCONNECT_TIMEOUT`` sets one."""
        from psycopg.conninfo import conninfo_to_dict

        try:
            if "connect_timeout" in conninfo_to_dict(self._conninfo) or os.environ.get("PGCONNECT_TIMEOUT"):
                return {}
        except Exception:  # noqa: BLE001 - an unparseable URL: connect() below says what is wrong with it
            pass
        return {"connect_timeout": CONNECT_TIMEOUT_S}

    def _connect(self) -> Any:
        """A new connection with the store's session settings. None to be had is a :class:`runtime.ConfigError`
        while the store opens (a configuration problem, said at start-up), a :class:`runtime.LoomError` later; the
        message is one line naming the redacted URL and what the driver said, the password scrubbed from both."""
        import psycopg
        from psycopg import sql

        started = time.monotonic()
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, **self._connect_timeout())
        except psycopg.Error as err:
            waited = time.monotonic() - started
            after = f" (after {waited:.0f} s)" if waited >= 1 else ""
            error = LoomError if self._started else ConfigError
            raise error(
                f"cannot connect to the feature store's online database {redact(self.url)}{after}: "
                f"{scrub(err, self.url) or type(err).__name__}; check storage.db (host, port, database, user and "
                "password) and that the server accepts connections from this host"
            ) from None
        try:
            conn.execute(
                sql.SQL("SET search_path TO {}; SET lock_timeout = {}").format(
                    sql.Identifier(self.schema), sql.Literal(f"{LOCK_TIMEOUT_MS}ms")
                )
            )
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

        if (
            conn.closed
            or conn.info.transaction_status != TransactionStatus.IDLE
            or os.getpid() != self._pid
            or self._idle.qsize() >= POOL_IDLE
        ):
            conn.close()
        else:
            self._idle.put(conn)

    def close(self) -> None:
        """Close the idle pooled connections (the store stays usable: later calls open new ones)."""
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    def _read(self, sql: str, params: Sequence[Any], *, one: bool) -> Any:
        """Run one read statement (prepared) on a pooled connection; a dropped pooled connection is replaced once."""
        import psycopg

        while True:
            conn, pooled = self._checkout()
            try:
                cur = conn.execute(sql, params, prepare=True)
                result = cur.fetchone() if one else cur.fetchall()
            except psycopg.OperationalError:
                broken = conn.broken or conn.closed
                if broken:
                    conn.close()
                else:
                    self._checkin(conn)
                if broken and pooled:
                    continue  # a connection the server had dropped (restart, idle timeout): nothing ran
                raise
            except BaseException:
                self._checkin(conn)
                raise
            self._checkin(conn)
            return result

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A READ COMMITTED write transaction: committed if the block returns, rolled back if it raises."""
        import psycopg

        while True:
            conn, pooled = self._checkout()
            try:
                conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                break
            except psycopg.OperationalError:
                conn.close()
                if not pooled:
                    raise
        try:
            yield conn
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

    @contextmanager
    def meta_lock(self) -> Iterator[None]:
        """Serialise view-file read-modify-write cycles across every process and host using this schema."""
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"loom_features.views.{self.schema}",))
            yield

    # -- schema ------------------------------------------------------------------------------------------------

    def _lock_ddl(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"loom_features.ddl.{self.schema}",))

    def _migrate(self) -> None:
        from psycopg import sql

        current = self._schema_version()
        if current == SCHEMA_VERSION:
            return
        self._check_not_newer(current)
        with self.transaction() as conn:
            self._lock_ddl(conn)
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                "applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
            self._check_not_newer(current)
            for version in range(current, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)", (version + 1, time.time())
                )

    def _schema_version(self) -> int:
        if self._read("SELECT to_regclass('schema_version')", (), one=True)[0] is None:
            return 0
        return int(self._read("SELECT COALESCE(MAX(version), 0) FROM schema_version", (), one=True)[0])

    def _check_not_newer(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise LoomError(
                f"the online feature store at {self.location} uses schema version {current}, but this version of "
                f"loom_local_features only understands up to {SCHEMA_VERSION}; upgrade Loom"
            )

    def _columns(self, view: str, conn: Any = None) -> dict[str, str] | None:
        """Columns of ``view``'s table (name -> type), or ``None`` when it does not exist; on ``conn`` (inside its
        transaction) or on a pooled connection."""
        qualified = f'"{self.schema}".{table_name(view)}'
        sql = (
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
        )
        rows = conn.execute(sql, (qualified,)).fetchall() if conn is not None else self._read(sql, (qualified,), one=False)
        return dict(rows) if rows else None  # a table always has _key, _ts and _seq

    def _wanted(self, features: Sequence[str], types: Mapping[str, str | None] | None) -> dict[str, str]:
        types = types or {}
        return {ident(f): PG_TYPES[t] for f in features if (t := types.get(f)) is not None}

    def _compare(self, view: str, have: dict[str, str], want: dict[str, str]) -> bool:
        """Whether every wanted column is there; a column of another type is an error."""
        for col, typ in want.items():
            if col in have and have[col] != typ:
                raise LoomError(
                    f"the online table of feature view {view!r} in {self.location} has column {col!r} of type "
                    f"{have[col]}, but the view's data is {typ}; drop the table (it is rebuilt by materialize)"
                )
        return all(col in have for col in want)

    def ensure_table(self, view: str, features: Sequence[str], types: Mapping[str, str | None] | None = None) -> None:
        """Create ``view``'s table, and a typed column for each feature whose type is known and has none yet."""
        want = self._wanted(features, types)
        have = self._columns(view)
        if have is not None and self._compare(view, have, want):
            return
        with self.transaction() as conn:
            self._lock_ddl(conn)
            table = table_name(view)
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS {table} ("_key" TEXT PRIMARY KEY, "_ts" BIGINT NOT NULL, '
                '"_seq" BIGINT NOT NULL)'
            )
            have = self._columns(view, conn) or {}
            if self._compare(view, have, want):
                return
            for col, typ in want.items():
                if col not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {quote(col)} {typ.upper()}")

    # -- writes --------------------------------------------------------------------------------------------------

    def upsert(
        self,
        view: str,
        features: Sequence[str],
        rows: Sequence[Sequence[Any]],
        done_parts: Sequence[str] = (),
        types: Mapping[str, str | None] | None = None,
    ) -> int:
        """Upsert ``rows`` (key, ts, seq, *features) and mark ``done_parts`` materialised, in one transaction.
        Features of unknown type (only ever null so far) have no column yet and are left out. Returns how many
        entities were inserted or changed (rows that lost to a newer stored value do not count)."""
        types = types or {}
        keep = [i for i, f in enumerate(features) if types.get(f) is not None]
        written = 0
        with self.transaction() as conn:
            if rows:
                table = table_name(view)
                names = ['"_key"', '"_ts"', '"_seq"', *(quote(features[i]) for i in keep)]
                pg_types = ["text", "bigint", "bigint", *(PG_TYPES[types[features[i]]] for i in keep)]  # type: ignore[index]
                ordered = sorted(rows, key=lambda r: str(r[0]))  # one lock order for every writer: no deadlocks
                arrays = [
                    [str(r[0]) for r in ordered],
                    [r[1] for r in ordered],
                    [r[2] for r in ordered],
                    *([r[3 + i] for r in ordered] for i in keep),
                ]
                cols = ", ".join(names)
                unnest = ", ".join(f"%s::{t}[]" for t in pg_types)
                sets = ", ".join(f"{n} = excluded.{n}" for n in names[1:])
                cur = conn.execute(
                    f"INSERT INTO {table} AS t ({cols}) SELECT * FROM unnest({unnest}) AS s({cols}) "
                    f'ORDER BY 1 ON CONFLICT ("_key") DO UPDATE SET {sets} '
                    'WHERE (excluded."_ts", excluded."_seq") > (t."_ts", t."_seq")',
                    arrays,
                )
                written = max(cur.rowcount, 0)
            if done_parts:
                conn.execute(
                    "INSERT INTO _loom_parts (view, part) SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
                    (view, list(done_parts)),
                )
        return written

    def done_parts(self, view: str) -> set[str]:
        """Offline parts of ``view`` already materialised."""
        return {r[0] for r in self._read("SELECT part FROM _loom_parts WHERE view = %s", (view,), one=False)}

    # -- reads ----------------------------------------------------------------------------------------------------

    def fetcher(
        self, view: str, features: Sequence[str], types: Mapping[str, str | None] | None = None
    ) -> Callable[[list[Any]], dict[Any, tuple[Any, ...]]]:
        """A function from normalised keys (``None``: no match possible) to the rows found, ``key -> (key,
        *features)``: one query whatever the number of keys. Features of unknown type come back as nulls."""
        types = types or {}
        table = table_name(view)
        cols = ", ".join(['"_key"', *(quote(f) if types.get(f) is not None else "NULL" for f in features)])
        sql_one = f'SELECT {cols} FROM {table} WHERE "_key" = %s'
        sql_many = f'SELECT {cols} FROM {table} WHERE "_key" = ANY(%s::text[])'
        read = self._read

        def fetch(keys: list[Any]) -> dict[Any, tuple[Any, ...]]:
            if len(keys) == 1:
                key = keys[0]
                if key is None:
                    return {}
                row = read(sql_one, (str(key),), one=True)
                return {key: row} if row is not None else {}
            by_text = {str(k): k for k in keys if k is not None}
            if not by_text:
                return {}
            return {by_text[row[0]]: row for row in read(sql_many, (list(by_text),), one=False)}

        return fetch
