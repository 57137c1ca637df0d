"""``LocalRegistry``: model versions in SQLite or PostgreSQL, their artifacts in a content-addressed blob store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from runtime import (
    LATEST,
    ModelVersion,
    NotFoundError,
    check_alias,
    check_local_filesystem,
    check_name,
    check_run_id,
    parse_ref,
    redact,
)

from ._blobs import open_blobs
from ._db import Connection, PostgresDatabase, open_database
from ._runs import RunTracking
from ._values import check_artifacts, check_tags, check_version, listing, to_json

_VERSION_COLUMNS = "name, version, created_at, params, metrics, lineage, tags, description, artifacts, run_id"


class LocalRegistry(RunTracking):
    """A :class:`runtime.ModelRegistry` and :class:`runtime.Tracker` on SQLite or PostgreSQL, safe for many
    processes (and, on PostgreSQL with a shared artifact root, many hosts).

    Metadata lives in ``<path>/registry.db`` (SQLite, WAL), or in schema ``schema`` of the PostgreSQL database
    ``db`` when that is given; artifacts in ``<artifact_root>/sha256/...``, where ``artifact_root`` is a local
    directory or a file system URI (see :func:`open_blobs`). A version
    becomes visible only when its single metadata transaction commits, after all its blobs are durably stored,
    so a crash at any point leaves either the whole version or none of it (plus, at worst, unreferenced blobs).
    Version numbers are allocated inside that transaction and never reused, even after :meth:`delete_version`.
    The object holds only locations (each call opens its own SQLite connection, or takes a PostgreSQL one from a
    per-process pool that is not pickled), so it can be pickled to other processes. Opening one connects to its
    database and checks its artifact store, so storage that cannot be reached is a :class:`runtime.ConfigError`
    naming it (credentials redacted) within seconds; :attr:`shared` says whether other nodes can read it too.
    """

    def __init__(self, path: Path | None, artifact_root: str | os.PathLike[str], *, db: str | None = None,
                 schema: str | None = None) -> None:
        if db is None:
            if path is None:
                raise TypeError("LocalRegistry needs a path for its SQLite database, or db= a PostgreSQL URL")
            check_local_filesystem(path, what="the local registry's database")  # SQLite WAL: local disk only
            path.mkdir(parents=True, exist_ok=True)
        self.path = path if db is None else None
        self._db = open_database(None if path is None else path / "registry.db", db, schema)
        self.location = self._db.location
        self._blobs = open_blobs(artifact_root)
        self.artifact_root = self._blobs.location

    @property
    def shared(self) -> bool:
        """Whether every node of a cluster can read this registry on its own: metadata on PostgreSQL and artifacts
        on an object store or other shared file system URI (``s3://``, ``gs://``, ...). False with SQLite or a
        local artifact directory (also a ``file://`` one: Loom cannot tell a shared mount from a local disk); Loom
        then ships the versions it serves to other nodes through Ray's object store."""
        return isinstance(self._db, PostgresDatabase) and bool(getattr(self._blobs, "shared", False))

    def __repr__(self) -> str:
        return f"LocalRegistry(metadata={self.location!r}, artifact_root={redact(self.artifact_root)!r})"

    # -- writing -----------------------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        artifacts: dict[str, bytes],
        *,
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        description: str = "",
        alias: str | None = None,
        run_id: str | None = None,
    ) -> ModelVersion:
        """Store a new version of ``name`` with the next version number, all artifacts or nothing.

        Everything is validated first, then the artifact blobs are stored, then one transaction allocates the
        number, records the version and points ``alias`` (if given) at it. ``run_id`` must name a run of this
        registry.
        """
        check_name(name, "model name")
        if alias is not None:
            check_alias(alias)
        if run_id is not None:
            check_run_id(run_id)
        payload = check_artifacts(artifacts)
        encoded = {
            "params": to_json(params, "params"),
            "metrics": to_json(metrics, "metrics"),
            "lineage": to_json(lineage, "lineage"),
            "tags": to_json(check_tags(tags), "tags"),
        }
        if not isinstance(description, str):
            raise TypeError(f"description must be a string, got {type(description).__name__}")

        manifest = {artifact: self._blobs.put(payload[artifact]) for artifact in sorted(payload)}
        with self._db.transaction(write=True) as conn:
            if run_id is not None:
                self._row(conn, run_id)
            conn.execute(
                "INSERT INTO models (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, time.time())
            )
            # The row lock this takes (all of SQLite; the model's row in PostgreSQL) is held until the commit, so
            # concurrent registrations get distinct numbers, and last_version only grows: none is ever reused.
            (version,) = conn.execute(
                "UPDATE models SET last_version = last_version + 1 WHERE name = ? RETURNING last_version", (name,)
            ).fetchone()
            created_at = time.time()  # taken under that lock, so it increases with the version number
            conn.execute(
                f"INSERT INTO versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, version, created_at, encoded["params"], encoded["metrics"], encoded["lineage"],
                 encoded["tags"], description, json.dumps(manifest, sort_keys=True), run_id),
            )
            if alias is not None:
                self._point_alias(conn, name, alias, version)
            registered = ModelVersion(
                name=name,
                version=version,
                created_at=created_at,
                aliases=(alias,) if alias is not None else (),
                params=json.loads(encoded["params"]),
                metrics=json.loads(encoded["metrics"]),
                lineage=json.loads(encoded["lineage"]),
                tags=json.loads(encoded["tags"]),
                description=description,
                artifacts=tuple(manifest),
                run_id=run_id,
            )
            self._before_commit(registered)
        return registered

    def _before_commit(self, version: ModelVersion) -> None:
        """Test seam: runs inside :meth:`register`'s transaction, after the blobs are stored and the rows written,
        just before the commit. The crash-safety test replaces it to kill a registration at its riskiest point."""

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` of ``name``, moving it if it pointed at another version."""
        check_name(name, "model name")
        check_alias(alias)
        with self._db.transaction(write=True) as conn:
            self._point_alias(conn, name, alias, self._resolve(conn, name, check_version(version)))

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias`` from ``name``; the version it pointed at is kept."""
        check_name(name, "model name")
        check_alias(alias)
        with self._db.transaction(write=True) as conn:
            self._resolve(conn, name, alias)
            conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))

    def delete_version(self, name: str, version: int) -> None:
        """Delete one version and every alias pointing at it. Its number is not reused; its blobs stay on disk
        (other versions may share them)."""
        check_name(name, "model name")
        with self._db.transaction(write=True) as conn:
            number = self._resolve(conn, name, check_version(version))
            conn.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, number))

    def set_tags(self, name: str, version: int, tags: dict[str, str]) -> None:
        """Replace the tags of one version (tags are the only metadata besides the description that may change
        after registration; params, metrics, lineage and artifacts are immutable)."""
        check_name(name, "model name")
        encoded = to_json(check_tags(tags), "tags")
        with self._db.transaction(write=True) as conn:
            number = self._resolve(conn, name, check_version(version))
            conn.execute("UPDATE versions SET tags = ? WHERE name = ? AND version = ?", (encoded, name, number))

    def set_description(self, name: str, version: int, description: str) -> None:
        """Replace the description of one version."""
        check_name(name, "model name")
        if not isinstance(description, str):
            raise TypeError(f"description must be a string, got {type(description).__name__}")
        with self._db.transaction(write=True) as conn:
            number = self._resolve(conn, name, check_version(version))
            conn.execute(
                "UPDATE versions SET description = ? WHERE name = ? AND version = ?", (description, name, number)
            )

    # -- reading -----------------------------------------------------------------------------------------------

    def get_version(self, name: str, ref: int | str) -> ModelVersion:
        """Look a version up by number (``3`` or ``"3"``) or alias (``"production"``)."""
        check_name(name, "model name")
        ref = parse_ref(ref)
        with self._db.transaction(write=False) as conn:
            if isinstance(ref, int):  # the common case in one query; a miss goes through _resolve for its error
                found = self._versions(conn, name, ref)
                if found:
                    return found[0]
            number = self._resolve(conn, name, ref)
            return self._versions(conn, name, number)[0]

    def list_models(self) -> list[str]:
        """Names of every registered model, sorted."""
        with self._db.transaction(write=False) as conn:
            return [row[0] for row in conn.execute("SELECT name FROM models ORDER BY name")]

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest (lowest number) first."""
        check_name(name, "model name")
        with self._db.transaction(write=False) as conn:
            self._require_model(conn, name)
            return self._versions(conn, name)

    def read_artifact(self, name: str, version: int, artifact: str) -> bytes:
        """Return one artifact's bytes, verified against the SHA-256 recorded at registration."""
        check_name(name, "model name")
        check_name(artifact, "artifact name")
        with self._db.transaction(write=False) as conn:
            number = self._resolve(conn, name, check_version(version))
            (manifest_json,) = conn.execute(
                "SELECT artifacts FROM versions WHERE name = ? AND version = ?", (name, number)
            ).fetchone()
        manifest: dict[str, str] = json.loads(manifest_json)
        if artifact not in manifest:
            raise NotFoundError(
                f"model {name!r} version {number} has no artifact {artifact!r} (artifacts: {listing(manifest)})"
            )
        return self._blobs.read(manifest[artifact], f"artifact {artifact!r} of model {name!r} version {number}")

    # -- helpers (all run inside a caller's transaction) -----------------------------------------------------

    @staticmethod
    def _point_alias(conn: Connection, name: str, alias: str, version: int) -> None:
        conn.execute(
            "INSERT INTO aliases (name, alias, version) VALUES (?, ?, ?) "
            "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
            (name, alias, version),
        )

    def _require_model(self, conn: Connection, name: str) -> None:
        """Check that ``name`` exists; in a write transaction, lock its row (PostgreSQL) until the commit, so
        writes to one model are serialised."""
        if conn.execute(f"SELECT 1 FROM models WHERE name = ?{conn.lock}", (name,)).fetchone() is None:
            models = [row[0] for row in conn.execute("SELECT name FROM models ORDER BY name")]
            raise NotFoundError(
                f"no model named {name!r} in the registry at {self.location} (models: {listing(models)})")

    def _resolve(self, conn: Connection, name: str, ref: int | str) -> int:
        """The version number ``ref`` (a number, an alias or ``latest``) names, or :class:`NotFoundError` saying
        what exists."""
        if conn.lock:  # a PostgreSQL write: lock the model's row first, so writes to one model are serialised
            self._require_model(conn, name)
        if ref == LATEST:
            row = conn.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
            if row[0] is not None:
                return int(row[0])
            self._require_model(conn, name)  # a miss: is it the model that is missing?
            raise NotFoundError(f"model {name!r} has no versions")
        if isinstance(ref, int):
            if conn.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, ref)).fetchone():
                return ref
            self._require_model(conn, name)
            numbers = [row[0] for row in conn.execute(
                "SELECT version FROM versions WHERE name = ? ORDER BY version", (name,))]
            raise NotFoundError(f"model {name!r} has no version {ref} (versions: {listing(numbers)})")
        row = conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, ref)).fetchone()
        if row is not None:
            return int(row[0])
        self._require_model(conn, name)
        aliases = [f"{alias} -> {version}" for alias, version in conn.execute(
            "SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", (name,))]
        raise NotFoundError(f"model {name!r} has no alias {ref!r} (aliases: {listing(aliases)})")

    @staticmethod
    def _versions(conn: Connection, name: str, version: int | None = None) -> list[ModelVersion]:
        """Versions of ``name`` (just ``version`` if given), ascending, with their aliases filled in."""
        where, args = ("name = ?", (name,)) if version is None else ("name = ? AND version = ?", (name, version))
        aliases: dict[int, list[str]] = {}
        for alias, number in conn.execute(f"SELECT alias, version FROM aliases WHERE {where} ORDER BY alias", args):
            aliases.setdefault(number, []).append(alias)
        rows = conn.execute(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE {where} ORDER BY version", args)
        return [
            ModelVersion(
                name=row[0],
                version=row[1],
                created_at=row[2],
                aliases=tuple(aliases.get(row[1], ())),
                params=json.loads(row[3]),
                metrics=json.loads(row[4]),
                lineage=json.loads(row[5]),
                tags=json.loads(row[6]),
                description=row[7],
                artifacts=tuple(json.loads(row[8])),
                run_id=row[9],
            )
            for row in rows
        ]
