"""Experiment tracking for the local registry: runs, their params, metrics over time and artifacts, in the same
database and blob store as the model versions they produce (so a version's run link always resolves)."""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

from runtime import (
    LoomError,
    MetricPoint,
    NotFoundError,
    Run,
    check_artifact_name,
    check_metrics,
    check_name,
    check_run_id,
    check_run_status,
)

from ._blobs import Blobs
from ._db import Connection, _Database
from ._values import check_tags, listing, to_json

_RUN_COLUMNS = "id, experiment, name, status, started_at, ended_at, params, tags, artifacts"


class RunTracking:
    """The :class:`runtime.Tracker` half of :class:`LocalRegistry`; every write is one database transaction."""

    _db: _Database
    _blobs: Blobs

    def start_run(
        self, experiment: str, *, name: str = "", params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> Run:
        """Create a ``running`` run in ``experiment``; experiments exist as soon as they hold a run."""
        check_name(experiment, "experiment name")
        if not isinstance(name, str):
            raise TypeError(f"run name must be a string, got {type(name).__name__}")
        encoded_params = to_json(params, "params")
        for key in json.loads(encoded_params):
            check_name(key, "param name")
        encoded_tags = to_json(check_tags(tags), "tags")
        run_id = uuid.uuid4().hex
        with self._db.transaction(write=True) as conn:
            conn.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, 'running', ?, NULL, ?, ?, '{{}}')",
                (run_id, experiment, name or run_id[:8], time.time(), encoded_params, encoded_tags),
            )
            return self._run(conn, run_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Add params; a key already logged must keep its value."""
        check_run_id(run_id)
        new = json.loads(to_json(params, "params"))
        for key in new:
            check_name(key, "param name")
        with self._db.transaction(write=True) as conn:
            current = json.loads(self._row(conn, run_id)[6])
            changed = [f"{k}: {current[k]!r} -> {new[k]!r}" for k in sorted(new)
                       if k in current and current[k] != new[k]]
            if changed:
                raise LoomError(f"run {run_id} already has different values for params ({'; '.join(changed)}); "
                                "params are written once, so start a new run to change them")
            conn.execute("UPDATE runs SET params = ? WHERE id = ?",
                         (json.dumps({**current, **new}, sort_keys=True), run_id))

    def log_metrics(self, run_id: str, metrics: dict[str, float], *, step: int = 0) -> None:
        """Append one value per metric at ``step``."""
        check_run_id(run_id)
        values = check_metrics(metrics)
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {step!r}")
        now = time.time()
        with self._db.transaction(write=True) as conn:
            self._row(conn, run_id)
            conn.executemany(
                "INSERT INTO metrics (run_id, key, step, value, timestamp) VALUES (?, ?, ?, ?, ?)",
                [(run_id, key, step, None if math.isnan(v) else v, now) for key, v in values.items()],
            )

    def log_artifact(self, run_id: str, name: str, data: bytes) -> None:
        """Store ``data`` in the blob store, then record it with the run (replacing an artifact of that name)."""
        check_run_id(run_id)
        check_artifact_name(name)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"artifact {name!r} must be bytes, got {type(data).__name__}")
        digest = self._blobs.put(data)
        with self._db.transaction(write=True) as conn:
            manifest = json.loads(self._row(conn, run_id)[8])
            manifest[name] = digest
            conn.execute("UPDATE runs SET artifacts = ? WHERE id = ?", (json.dumps(manifest, sort_keys=True), run_id))

    def end_run(self, run_id: str, status: str = "finished") -> Run:
        """Mark the run ended now with ``status``."""
        check_run_id(run_id)
        check_run_status(status)
        with self._db.transaction(write=True) as conn:
            self._row(conn, run_id)
            conn.execute("UPDATE runs SET status = ?, ended_at = ? WHERE id = ?", (status, time.time(), run_id))
            return self._run(conn, run_id)

    def get_run(self, run_id: str) -> Run:
        check_run_id(run_id)
        with self._db.transaction(write=False) as conn:
            return self._run(conn, run_id)

    def list_runs(self, experiment: str | None = None) -> list[Run]:
        """Runs of ``experiment`` (all when ``None``), newest first."""
        where, args = ("", ()) if experiment is None else ("WHERE experiment = ?", (check_name(experiment,
                                                                                           "experiment name"),))
        with self._db.transaction(write=False) as conn:
            ids = [row[0] for row in conn.execute(
                f"SELECT id FROM runs {where} ORDER BY started_at DESC, rowid DESC", args)]
            return [self._run(conn, run_id) for run_id in ids]

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        check_run_id(run_id)
        check_name(key, "metric name")
        with self._db.transaction(write=False) as conn:
            self._row(conn, run_id)
            rows = conn.execute(
                "SELECT step, value, timestamp FROM metrics WHERE run_id = ? AND key = ? ORDER BY step, rowid",
                (run_id, key),
            ).fetchall()
        if not rows:
            raise NotFoundError(f"run {run_id} has no metric {key!r}")
        return [MetricPoint(step=s, value=math.nan if v is None else v, timestamp=t) for s, v, t in rows]

    def read_run_artifact(self, run_id: str, name: str) -> bytes:
        check_run_id(run_id)
        check_name(name, "artifact name")
        with self._db.transaction(write=False) as conn:
            manifest: dict[str, str] = json.loads(self._row(conn, run_id)[8])
        if name not in manifest:
            raise NotFoundError(f"run {run_id} has no artifact {name!r} (artifacts: {listing(manifest)})")
        return self._blobs.read(manifest[name], f"artifact {name!r} of run {run_id}")

    # -- helpers (inside a caller's transaction) ---------------------------------------------------------------

    @staticmethod
    def _row(conn: Connection, run_id: str) -> tuple[Any, ...]:
        """The run's row; in a write transaction, locked (PostgreSQL) until the commit, so read-modify-writes of
        its params and artifacts do not lose each other's updates."""
        row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?{conn.lock}", (run_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no run with id {run_id!r} in the local registry")
        return row

    def _run(self, conn: Connection, run_id: str) -> Run:
        row = self._row(conn, run_id)
        latest: dict[str, float] = {}
        for key, value in conn.execute(
            "SELECT key, value FROM metrics WHERE run_id = ? ORDER BY step, rowid", (run_id,)
        ):
            latest[key] = math.nan if value is None else value
        return Run(id=row[0], experiment=row[1], name=row[2], status=row[3], started_at=row[4], ended_at=row[5],
                   params=json.loads(row[6]), metrics=latest, tags=json.loads(row[7]),
                   artifacts=tuple(sorted(json.loads(row[8]))))
