"""The registry's SQLite database: connections, transactions and schema migrations.

Every operation opens its own short-lived connection, so a registry object is safe to share between threads
and to carry across ``fork``/pickling boundaries, and no process ever holds a lock between calls. WAL mode lets
readers (serving replicas) run while a writer commits; ``busy_timeout`` makes concurrent writers queue instead
of failing; writes start with ``BEGIN IMMEDIATE`` so they take the write lock up front and never hit an
unretryable lock upgrade. WAL needs a local file system (not NFS/SMB).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime import LoomError

#: How long a connection waits for another process's write lock before giving up.
BUSY_TIMEOUT_MS = 30_000

#: Migration ``n`` (0-based) brings the schema from version ``n`` to ``n + 1``. Append, never edit.
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


class Database:
    """One SQLite file holding the registry's metadata."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._migrate()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every transaction below is explicit.
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")  # a committed version survives power loss
        return conn

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """Run a block in one transaction: committed if it returns, rolled back if it raises.

        ``write=True`` takes the write lock immediately (``BEGIN IMMEDIATE``), serialising writers across
        processes; reads get a consistent snapshot.
        """
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone():
            return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
        return 0

    def _check_not_newer(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise LoomError(
                f"the model registry at {self.path} uses schema version {current}, but this version of "
                f"loom_local_registry only understands up to {SCHEMA_VERSION}; upgrade Loom"
            )

    def _migrate(self) -> None:
        """Switch to WAL and bring the schema up to date; safe when many processes open a new registry at once."""
        conn = self._connect()
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the database file
            current = self._schema_version(conn)
        finally:
            conn.close()
        self._check_not_newer(current)
        if current == SCHEMA_VERSION:
            return
        with self.transaction(write=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            current = self._schema_version(conn)  # another process may have migrated while we waited
            self._check_not_newer(current)
            for version in range(current, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version + 1, time.time()))
