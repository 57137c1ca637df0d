"""The online store: one SQLite database (WAL mode), one table per feature view, one row per entity.

Row layout of ``fv_<view>``: ``_key`` (the entity, primary key of a ``WITHOUT ROWID`` table, so a lookup is one
B-tree search), ``_ts`` (event time, ns since the epoch, UTC), ``_seq`` (the offline part the value came from) and
one column per feature. Columns are declared without a type so SQLite stores each value exactly as bound; the
view's recorded column types turn them back into ints, floats, bools, strings or timestamps on the way out.

An upsert only replaces a row whose ``(_ts, _seq)`` is smaller than the incoming one, so an older value never
overwrites a newer one, whatever order materialisations and pushes run in, and re-applying the same data changes
nothing. ``_loom_parts`` records which offline parts have been materialised, in the same transaction as the rows
they produced: that is the incremental watermark, and it survives crashes and late-arriving (out-of-order) data.

Connections are opened one per thread (SQLite connections must not be shared across threads without a lock) and
re-opened after a fork; Python's ``sqlite3`` caches prepared statements per connection, so the fixed SQL strings
built here are compiled once and reused on every lookup. A lookup of more keys than one ``IN (...)`` binds runs its
queries in one read transaction, so it sees a single snapshot (never half of a concurrent materialisation).

:mod:`._postgres` is the same store on PostgreSQL (``storage.db``); both offer the methods used by
:class:`~loom_local_features._store.LocalFeatureStore`: ``ensure_table``, ``upsert``, ``done_parts``, ``fetcher``,
``meta_lock``, ``close`` and ``retry_errors``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:  # cross-process lock for view-file updates; POSIX only (elsewhere, the store's in-process lock still applies)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Largest number of keys bound in one ``IN (...)`` lookup (well under SQLite's variable limit).
MAX_KEYS_PER_QUERY = 500
_PARTS_TABLE = "_loom_parts"


def quote_ident(name: str) -> str:
    """SQL identifier quoting. Names were already validated by ``runtime.check_name`` (no quotes possible); the
    doubling of ``"`` is defence in depth."""
    return '"' + name.replace('"', '""') + '"'


def table_name(view: str) -> str:
    """Quoted table holding ``view``'s online rows (internal tables start with ``_``, views cannot)."""
    return quote_ident(f"fv_{view}")


class OnlineStore:
    """Thread-safe access to the online SQLite database at ``path``."""

    #: Errors of a lookup that (re)creating the view's table fixes: the table was dropped or lacks a new column.
    retry_errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)

    def __init__(self, path: Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self.location = str(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = self.conn()
        conn.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the database file
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_PARTS_TABLE} (view TEXT NOT NULL, part TEXT NOT NULL, "
            "PRIMARY KEY (view, part)) WITHOUT ROWID"
        )

    # -- connections ----------------------------------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, and again in a forked child)."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        pid = os.getpid()
        if conn is None or local.pid != pid:
            # isolation_level=None: autocommit; write transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
            # check_same_thread=False only so close() can close every thread's connection; each is used by
            # one thread at a time.
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
            )
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe against corruption in WAL
            local.conn, local.pid = conn, pid
            with self._all_lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this object opened, in any thread."""
        with self._all_lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: takes the write lock up front (no deadlocking upgrade), commits or rolls back."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def meta_lock(self) -> Iterator[None]:
        """Serialise view-file read-modify-write cycles across the processes of this host (an ``flock`` on
        ``.lock`` next to the database; the caller holds its in-process lock)."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.path.parent / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- schema ---------------------------------------------------------------------------------------------

    def ensure_table(self, view: str, features: Sequence[str], types: Mapping[str, str | None] | None = None) -> None:
        """Create ``view``'s table, or add columns for features that were added to the view since. (``types`` is
        for PostgreSQL's typed columns; SQLite's columns take any value.)"""
        table = table_name(view)
        with self.transaction() as conn:
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS {table} ("_key" PRIMARY KEY NOT NULL, "_ts" INTEGER NOT NULL, '
                '"_seq" INTEGER NOT NULL) WITHOUT ROWID'
            )
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for f in features:
                if f not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(f)}")

    # -- writes ---------------------------------------------------------------------------------------------

    @staticmethod
    def upsert_sql(view: str, features: Sequence[str]) -> str:
        """Insert-or-replace-if-newer for one row of ``view``; parameters: key, ts, seq, *features."""
        table = table_name(view)
        cols = ", ".join(quote_ident(c) for c in ("_key", "_ts", "_seq", *features))
        marks = ", ".join("?" * (3 + len(features)))
        sets = ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in ("_ts", "_seq", *features))
        return (
            f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT (\"_key\") DO UPDATE SET {sets} "
            f'WHERE (excluded."_ts", excluded."_seq") > ({table}."_ts", {table}."_seq")'
        )

    def upsert(
        self,
        view: str,
        features: Sequence[str],
        rows: Sequence[Sequence[Any]],
        done_parts: Sequence[str] = (),
        types: Mapping[str, str | None] | None = None,
    ) -> int:
        """Upsert ``rows`` (key, ts, seq, *features) and mark ``done_parts`` materialised, in one transaction.

        Returns how many entities were inserted or changed (rows that lost to a newer stored value do not count).
        """
        sql = self.upsert_sql(view, features)
        with self.transaction() as conn:
            before = conn.total_changes
            if rows:
                conn.executemany(sql, rows)
            written = conn.total_changes - before
            if done_parts:
                conn.executemany(
                    f"INSERT OR IGNORE INTO {_PARTS_TABLE} (view, part) VALUES (?, ?)",
                    [(view, p) for p in done_parts],
                )
        return written

    def done_parts(self, view: str) -> set[str]:
        """Offline parts of ``view`` already materialised."""
        rows = self.conn().execute(f"SELECT part FROM {_PARTS_TABLE} WHERE view = ?", (view,))
        return {r[0] for r in rows}

    # -- reads ----------------------------------------------------------------------------------------------

    @staticmethod
    def select_sql(view: str, features: Sequence[str], n_keys: int) -> str:
        """Lookup of ``n_keys`` entities: one parameter per key; rows come back as (key, *features)."""
        cols = ", ".join(quote_ident(c) for c in ("_key", *features))
        if n_keys == 1:
            return f'SELECT {cols} FROM {table_name(view)} WHERE "_key" = ?'
        return f'SELECT {cols} FROM {table_name(view)} WHERE "_key" IN ({", ".join("?" * n_keys)})'

    def fetcher(
        self, view: str, features: Sequence[str], types: Mapping[str, str | None] | None = None
    ) -> Callable[[list[Any]], dict[Any, tuple[Any, ...]]]:
        """A function from normalised keys (``None``: no match possible) to the rows found, ``key -> (key,
        *features)``. It keeps its SQL strings, so this thread's connection keeps them prepared."""
        sql_one = self.select_sql(view, features, 1)
        sql_many: dict[int, str] = {}

        def sql_for(n: int) -> str:
            sql = sql_many.get(n)
            if sql is None:
                sql = sql_many[n] = self.select_sql(view, features, n)
            return sql

        def fetch(keys: list[Any]) -> dict[Any, tuple[Any, ...]]:
            conn = self.conn()
            if len(keys) == 1:
                key = keys[0]
                if key is None:
                    return {}
                row = conn.execute(sql_one, (key,)).fetchone()
                return {key: row} if row is not None else {}
            unique = [k for k in dict.fromkeys(keys) if k is not None]
            found: dict[Any, tuple[Any, ...]] = {}
            if len(unique) <= MAX_KEYS_PER_QUERY:
                if unique:
                    for row in conn.execute(sql_one if len(unique) == 1 else sql_for(len(unique)), unique):
                        found[row[0]] = row
                return found
            # several queries: one read transaction, so they all see the same committed state
            conn.execute("BEGIN")
            try:
                for start in range(0, len(unique), MAX_KEYS_PER_QUERY):
                    chunk = unique[start : start + MAX_KEYS_PER_QUERY]
                    for row in conn.execute(sql_one if len(chunk) == 1 else sql_for(len(chunk)), chunk):
                        found[row[0]] = row
            finally:
                conn.execute("COMMIT")
            return found

        return fetch
