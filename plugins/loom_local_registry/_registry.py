"""``LocalRegistry``: model versions in SQLite, their artifacts in a content-addressed blob store."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runtime import InvalidNameError, ModelVersion, NotFoundError, check_artifact_name, check_name, parse_ref

from ._blobs import BlobStore
from ._db import Database

_VERSION_COLUMNS = "name, version, created_at, params, metrics, lineage, tags, description, artifacts"
#: How many names an error message lists before summarising the rest.
_LISTED = 20


def _listing(items: Iterable[object]) -> str:
    """``a, b, c`` (at most ``_LISTED`` items, then ``and N more``), or ``none``."""
    names = [str(i) for i in items]
    if not names:
        return "none"
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown} and {len(names) - _LISTED} more"


def _check_alias(alias: object) -> str:
    """An alias is a safe name that cannot be mistaken for a version number by :func:`runtime.parse_ref`."""
    alias = check_name(alias, "alias")
    if alias.isdigit():
        raise InvalidNameError(f"alias {alias!r} is all digits, so it would be read as a version number")
    return alias


def _check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be an int, got {version!r}")
    return version


def _to_json(value: Mapping[str, Any] | None, what: str) -> str:
    if value is None:
        return "{}"
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(dict(value), sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON-serialisable: {err}") from None


def _check_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    tags = dict(tags or {})
    for key, value in tags.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise TypeError(f"tags must map non-empty strings to strings, got {key!r}: {value!r}")
    return tags


def _check_artifacts(artifacts: Mapping[str, bytes]) -> dict[str, bytes | bytearray | memoryview]:
    """Validate every artifact name and payload before anything is written."""
    if not isinstance(artifacts, Mapping):
        raise TypeError(f"artifacts must be a dict of name -> bytes, got {type(artifacts).__name__}")
    for artifact, data in artifacts.items():
        check_artifact_name(artifact)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"artifact {artifact!r} must be bytes, got {type(data).__name__}")
    return dict(artifacts)


class LocalRegistry:
    """A :class:`runtime.ModelRegistry` on the local file system, safe for many processes at once.

    Metadata lives in ``<path>/registry.db`` (SQLite, WAL); artifacts in ``<artifact_root>/sha256/...``. A version
    becomes visible only when its single metadata transaction commits, after all its blobs are durably stored,
    so a crash at any point leaves either the whole version or none of it (plus, at worst, unreferenced blobs).
    Version numbers are allocated inside that transaction and never reused, even after :meth:`delete_version`.
    The object holds only paths (each call opens its own connection), so it can be pickled to other processes.
    """

    def __init__(self, path: Path, artifact_root: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.artifact_root = artifact_root
        self._db = Database(path / "registry.db")
        self._blobs = BlobStore(artifact_root)

    def __repr__(self) -> str:
        return f"LocalRegistry(path={str(self.path)!r}, artifact_root={str(self.artifact_root)!r})"

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
    ) -> ModelVersion:
        """Store a new version of ``name`` with the next version number, all artifacts or nothing.

        Everything is validated first, then the artifact blobs are stored, then one transaction allocates the
        number, records the version and points ``alias`` (if given) at it.
        """
        check_name(name, "model name")
        if alias is not None:
            _check_alias(alias)
        payload = _check_artifacts(artifacts)
        encoded = {
            "params": _to_json(params, "params"),
            "metrics": _to_json(metrics, "metrics"),
            "lineage": _to_json(lineage, "lineage"),
            "tags": _to_json(_check_tags(tags), "tags"),
        }
        if not isinstance(description, str):
            raise TypeError(f"description must be a string, got {type(description).__name__}")

        manifest = {artifact: self._blobs.put(payload[artifact]) for artifact in sorted(payload)}
        with self._db.transaction(write=True) as conn:
            created_at = time.time()  # taken under the write lock, so it increases with the version number
            conn.execute(
                "INSERT INTO models (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, created_at)
            )
            (version,) = conn.execute(
                "UPDATE models SET last_version = last_version + 1 WHERE name = ? RETURNING last_version", (name,)
            ).fetchone()
            conn.execute(
                f"INSERT INTO versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, version, created_at, encoded["params"], encoded["metrics"], encoded["lineage"],
                 encoded["tags"], description, json.dumps(manifest, sort_keys=True)),
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
            )
            self._before_commit(registered)
        return registered

    def _before_commit(self, version: ModelVersion) -> None:
        """Test seam: runs inside :meth:`register`'s transaction, after the blobs are stored and the rows written,
        just before the commit. The crash-safety test replaces it to kill a registration at its riskiest point."""

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` of ``name``, moving it if it pointed at another version."""
        check_name(name, "model name")
        _check_alias(alias)
        with self._db.transaction(write=True) as conn:
            self._point_alias(conn, name, alias, self._resolve(conn, name, _check_version(version)))

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias`` from ``name``; the version it pointed at is kept."""
        check_name(name, "model name")
        _check_alias(alias)
        with self._db.transaction(write=True) as conn:
            self._resolve(conn, name, alias)
            conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))

    def delete_version(self, name: str, version: int) -> None:
        """Delete one version and every alias pointing at it. Its number is not reused; its blobs stay on disk
        (other versions may share them)."""
        check_name(name, "model name")
        with self._db.transaction(write=True) as conn:
            number = self._resolve(conn, name, _check_version(version))
            conn.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, number))

    def set_tags(self, name: str, version: int, tags: dict[str, str]) -> None:
        """Replace the tags of one version (tags are the only metadata besides the description that may change
        after registration; params, metrics, lineage and artifacts are immutable)."""
        check_name(name, "model name")
        encoded = _to_json(_check_tags(tags), "tags")
        with self._db.transaction(write=True) as conn:
            number = self._resolve(conn, name, _check_version(version))
            conn.execute("UPDATE versions SET tags = ? WHERE name = ? AND version = ?", (encoded, name, number))

    def set_description(self, name: str, version: int, description: str) -> None:
        """Replace the description of one version."""
        check_name(name, "model name")
        if not isinstance(description, str):
            raise TypeError(f"description must be a string, got {type(description).__name__}")
        with self._db.transaction(write=True) as conn:
            number = self._resolve(conn, name, _check_version(version))
            conn.execute(
                "UPDATE versions SET description = ? WHERE name = ? AND version = ?", (description, name, number)
            )

    # -- reading -----------------------------------------------------------------------------------------------

    def get_version(self, name: str, ref: int | str) -> ModelVersion:
        """Look a version up by number (``3`` or ``"3"``) or alias (``"production"``)."""
        check_name(name, "model name")
        ref = parse_ref(ref)
        with self._db.transaction(write=False) as conn:
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
            number = self._resolve(conn, name, _check_version(version))
            (manifest_json,) = conn.execute(
                "SELECT artifacts FROM versions WHERE name = ? AND version = ?", (name, number)
            ).fetchone()
        manifest: dict[str, str] = json.loads(manifest_json)
        if artifact not in manifest:
            raise NotFoundError(
                f"model {name!r} version {number} has no artifact {artifact!r} (artifacts: {_listing(manifest)})"
            )
        return self._blobs.read(manifest[artifact], f"artifact {artifact!r} of model {name!r} version {number}")

    # -- helpers (all run inside a caller's transaction) -----------------------------------------------------

    @staticmethod
    def _point_alias(conn: sqlite3.Connection, name: str, alias: str, version: int) -> None:
        conn.execute(
            "INSERT INTO aliases (name, alias, version) VALUES (?, ?, ?) "
            "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
            (name, alias, version),
        )

    def _require_model(self, conn: sqlite3.Connection, name: str) -> None:
        if conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone() is None:
            models = [row[0] for row in conn.execute("SELECT name FROM models ORDER BY name")]
            raise NotFoundError(f"no model named {name!r} in the registry at {self.path} (models: {_listing(models)})")

    def _resolve(self, conn: sqlite3.Connection, name: str, ref: int | str) -> int:
        """The version number ``ref`` (a number or an alias) names, or :class:`NotFoundError` saying what exists."""
        self._require_model(conn, name)
        if isinstance(ref, int):
            if conn.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, ref)).fetchone():
                return ref
            numbers = [row[0] for row in conn.execute(
                "SELECT version FROM versions WHERE name = ? ORDER BY version", (name,))]
            raise NotFoundError(f"model {name!r} has no version {ref} (versions: {_listing(numbers)})")
        row = conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, ref)).fetchone()
        if row is not None:
            return int(row[0])
        aliases = [f"{alias} -> {version}" for alias, version in conn.execute(
            "SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", (name,))]
        raise NotFoundError(f"model {name!r} has no alias {ref!r} (aliases: {_listing(aliases)})")

    @staticmethod
    def _versions(conn: sqlite3.Connection, name: str, version: int | None = None) -> list[ModelVersion]:
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
            )
            for row in rows
        ]
