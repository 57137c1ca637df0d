"""``LocalFeatureStore``: view definitions in JSON files, history in :mod:`._offline`, latest values in :mod:`._online`
(SQLite) or :mod:`._postgres` (PostgreSQL).

The layout and the contract it keeps are described in the package docstring (:mod:`loom_local_features`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from runtime import (
    ConfigError,
    DataValidationError,
    FeatureService,
    FeatureView,
    Location,
    NotFoundError,
    check_local_filesystem,
    check_name,
    open_location,
    redact,
)

from ._offline import SEQ, OfflineStore, Part
from ._online import OnlineStore
from ._postgres import DEFAULT_SCHEMA, PostgresOnlineStore, is_postgres_url
from ._schema import (
    ENTITY_TYPES,
    ViewRecord,
    arrow_type,
    coerce_column,
    coerce_entity,
    infer_type,
    sqlite_values,
    timestamp_ns,
    to_output,
    to_utc_naive,
    validate_view,
    view_to_dict,
)

_TS = "__loom_ts"
_ROW = "__loom_row"
_NAT = np.iinfo(np.int64).min  # the int64 bit pattern of NaT
#: On an object store, how long a lookup may use a view definition before reading it again (a local view file is
#: checked with one ``stat`` per lookup instead). Writes, joins and definitions always read it afresh.
VIEW_CACHE_S = float(os.environ.get("LOOM_FEATURES_VIEW_CACHE_S", "1.0"))
#: Reads of a remote view file before a torn or failed one is reported (see ``LocalFeatureStore._read_record``).
_TORN_READ_ATTEMPTS = 5
#: What the store's files are called in errors.
_WHAT = "the feature store's files"
#: On S3 the reachability check at opening runs on a probe with shorter requests and fewer attempts than the store's
#: own (sized for big Parquet uploads), so an endpoint that accepts connections and never answers is reported in
#: seconds rather than minutes; a refused connection or a missing bucket in a second or two.
PROBE_REQUEST_TIMEOUT_S = 3.0
PROBE_ATTEMPTS = 2


def _probe(location: Location) -> Location:
    if location.uri.split("://", 1)[0].lower() in ("s3", "s3a"):
        return open_location(location.uri, what=_WHAT, request_timeout_s=PROBE_REQUEST_TIMEOUT_S,
                             attempts=PROBE_ATTEMPTS)
    return location


# -- per-view cached state ---------------------------------------------------------------------------------------------


@dataclass
class _LookupPlan:
    """Everything an online lookup of one (view, features) pair needs, computed once."""

    features: tuple[str, ...]
    fetch: Callable[[list[Any]], dict[Any, tuple[Any, ...]]]
    normalize: Callable[[Any], Any]
    converters: tuple[Callable[[list[Any]], Any], ...]
    #: Whether the types of the key and of every feature are known (else a newer view file may change the plan).
    complete: bool


@dataclass
class _ViewState:
    """A loaded view file, what it was read at (a local file's stat stamp, else its bytes and when they were
    read), and lookup plans derived from it."""

    record: ViewRecord
    file: str
    stamp: Any
    checked: float = 0.0
    table_ready: bool = False
    plans: dict[tuple[str, ...] | None, _LookupPlan] = field(default_factory=dict)

    @property
    def view(self) -> FeatureView:
        return self.record.view


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


# -- online value converters (raw SQLite values -> typed arrays) ----------------------------------------------------


def _conv_int(values: list[Any]) -> Any:
    mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    data = np.fromiter((0 if v is None else v for v in values), dtype=np.int64, count=len(values))
    return pd.arrays.IntegerArray(data, mask)


def _conv_float(values: list[Any]) -> Any:
    return np.array(values, dtype=np.float64)  # None -> NaN


def _conv_bool(values: list[Any]) -> Any:
    mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    data = np.fromiter((bool(v) for v in values), dtype=bool, count=len(values))
    return pd.arrays.BooleanArray(data, mask)


def _conv_object(values: list[Any]) -> Any:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _conv_string(values: list[Any]) -> Any:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return pd.arrays.StringArray(out)  # None -> <NA>


def _conv_timestamp(values: list[Any]) -> Any:
    ints = np.fromiter((_NAT if v is None else v for v in values), dtype=np.int64, count=len(values))
    return ints.view("datetime64[ns]")


_CONVERTERS: dict[str | None, Callable[[list[Any]], Any]] = {
    "int": _conv_int,
    "float": _conv_float,
    "bool": _conv_bool,
    "string": _conv_string,
    "category": _conv_string,
    "timestamp": _conv_timestamp,
    None: _conv_object,
}


def _norm_int_key(key: Any) -> int | None:
    """An entity key for an int-keyed view, or ``None`` when it cannot name any stored entity."""
    if type(key) is int:
        return key
    if key is None or isinstance(key, (bool, np.bool_)):
        return None
    if isinstance(key, (int, np.integer)):
        return int(key)
    if isinstance(key, (float, np.floating)):
        return int(key) if float(key).is_integer() else None
    if isinstance(key, str):
        try:
            return int(key)
        except ValueError:
            return None
    return None


def _norm_str_key(key: Any) -> str | None:
    """An entity key for a string-keyed view (ints are matched by their decimal text, as they are stored)."""
    if type(key) is str:
        return key
    if key is None or (isinstance(key, float) and key != key):
        return None
    return str(key)


def _no_key(key: Any) -> None:
    """Key normaliser while a view has no data (its key type is unknown, and no key can match)."""
    return None


# -- the store ------------------------------------------------------------------------------------------------------


class LocalFeatureStore:
    """A :class:`runtime.FeatureStore`: Parquet history offline (a local directory or any file system URI), latest
    values online (SQLite, or PostgreSQL shared by many hosts).

    Safe to share between threads (SQLite: one connection per thread; PostgreSQL: a connection pool) and between
    processes (atomic file writes; SQLite locking or PostgreSQL transactions; a lock around view-file updates: an
    ``flock`` next to the SQLite file, or a PostgreSQL advisory lock across hosts). Picklable: a copy sent to a Ray
    worker re-opens the same files and database.
    """

    def __init__(
        self,
        path: Path | str | Location,
        *,
        db: str | None = None,
        schema: str | None = None,
        local_dir: Path | str | None = None,
    ) -> None:
        """Open (creating if needed) the store whose files are at ``path`` (a directory, a file system URI or a
        :class:`runtime.Location`), with online rows in PostgreSQL at ``db`` (in ``schema``, default
        ``loom_features``) or, without ``db``, in SQLite at ``<local_dir>/online.db`` (``local_dir`` defaults to
        ``path``, which must then be a local directory). An unreachable bucket or database is a
        :class:`runtime.ConfigError` naming it (credentials redacted) within seconds."""
        self._config = {
            "path": path.uri if isinstance(path, Location) else os.fspath(path),
            "db": db,
            "schema": schema,
            "local_dir": None if local_dir is None else os.fspath(local_dir),
        }
        location = path if isinstance(path, Location) else open_location(path, what=_WHAT)
        if db is None:
            if schema is not None:
                raise ConfigError(
                    "feature store 'local': option 'schema' names a PostgreSQL schema; it needs storage.db set to "
                    "a postgresql:// URL"
                )
            if local_dir is None:
                if not location.local:
                    raise ConfigError(
                        f"feature store 'local' on {location.shown} keeps its online SQLite database on a local "
                        "disk: give local_dir (or set storage.db to a postgresql:// URL)"
                    )
                local_dir = location.path
            sqlite_dir = Path(local_dir)
            check_local_filesystem(sqlite_dir, what="the local feature store (online SQLite)")
        elif not is_postgres_url(db):
            raise ConfigError(
                f"feature store 'local' keeps online features in SQLite under the state directory (storage.db unset) "
                f"or in PostgreSQL (storage.db: postgresql://...), not in {redact(db)!r}"
            )
        if not location.local:
            _probe(location).check(_WHAT)  # no bucket, a dead or silent endpoint: a ConfigError within seconds
        #: Where the files are (a :class:`runtime.Location`), and their local directory when on the local disk.
        self.location = location
        self.path: Path | None = None
        if location.local:
            given = not isinstance(path, Location) and not os.fspath(path).startswith("file://")
            self.path = Path(path) if given else Path(location.path)  # type: ignore[arg-type]
        self.online: OnlineStore | PostgresOnlineStore
        if db is None:
            self.online = OnlineStore(sqlite_dir / "online.db")
        else:  # connects now: an unreachable server or a refused login is said before anything is made on disk
            self.online = PostgresOnlineStore(db, schema or DEFAULT_SCHEMA)
        if location.local:
            Path(location.path).mkdir(parents=True, exist_ok=True)
        self.offline = OfflineStore(location.child("offline"))
        self._views: dict[str, _ViewState] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"LocalFeatureStore({self.location.shown!r}, online={self.online.location!r})"

    # pickling: ship the configuration, not the open connections and locks
    def __getstate__(self) -> dict[str, Any]:
        return dict(self._config)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "path" in state and len(state) == 1:  # pickled by an older version
            state = {"path": state["path"], "db": None, "schema": None, "local_dir": None}
        self.__init__(state["path"], db=state["db"], schema=state["schema"], local_dir=state["local_dir"])  # type: ignore[misc]

    def close(self) -> None:
        """Close the database connections this object opened (in every thread). The store stays usable: a later
        call opens a fresh connection."""
        self.online.close()

    def __enter__(self) -> LocalFeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- view definitions --------------------------------------------------------------------------------------

    @staticmethod
    def _view_file(name: str) -> str:
        return f"views/{name}.json"

    @contextlib.contextmanager
    def _meta_lock(self) -> Iterator[None]:
        """Serialise view-file read-modify-write cycles across threads, processes and (on PostgreSQL) hosts."""
        with self._lock, self.online.meta_lock():
            yield

    def _read_record(self, name: str) -> tuple[ViewRecord, bytes] | None:
        """The view file's record and bytes (``None`` when there is none).

        On an object store a read that overlaps a rewrite can come back torn: pyarrow learns the size (HEAD), then
        fetches that many bytes (ranged GET), of what may by then be the new, longer version. A proper prefix of a
        JSON object never parses, so a torn read is always caught here, and read again."""
        file = self._view_file(name)
        attempts = 1 if self.location.local else _TORN_READ_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                data = self.location.read_bytes(file)
                return ViewRecord.from_json(data.decode("utf-8", "replace"), self.location.child(file).shown), data
            except FileNotFoundError:
                return None
            except (ConfigError, OSError):
                if attempt == attempts:
                    raise
                time.sleep(0.02 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _save_record(self, record: ViewRecord) -> None:
        self.location.write_bytes(self._view_file(record.view.name), record.to_json().encode("utf-8"))

    def _missing_view(self, name: str) -> NotFoundError:
        self._views.pop(name, None)
        known = ", ".join(self.list_views()) or "none"
        return NotFoundError(f"feature view {name!r} does not exist (known views: {known}); apply() it first")

    def _state(self, name: str, *, fresh: bool = False) -> _ViewState:
        """The cached state of view ``name``. A local view file is re-read when its ``stat`` changes (one call per
        lookup); a remote one when the cached copy is older than :data:`VIEW_CACHE_S` or ``fresh`` is asked."""
        cached = self._views.get(name)
        file = cached.file if cached is not None else self._view_file(check_name(name, "feature view name"))
        if self.location.local:
            try:
                stamp: Any = _stamp(os.stat(self.location.local_path(file)))
            except FileNotFoundError:
                raise self._missing_view(name) from None
            if cached is not None and cached.stamp == stamp:
                return cached
            loaded = self._read_record(name)
            if loaded is None:  # deleted between stat and read
                raise NotFoundError(f"feature view {name!r} does not exist; apply() it first")
            state = _ViewState(record=loaded[0], file=file, stamp=stamp)
        else:
            now = time.monotonic()
            if cached is not None and not fresh and now - cached.checked < VIEW_CACHE_S:
                return cached
            loaded = self._read_record(name)
            if loaded is None:
                raise self._missing_view(name)
            if cached is not None and cached.stamp == loaded[1]:
                cached.checked = now
                return cached
            state = _ViewState(record=loaded[0], file=file, stamp=loaded[1], checked=now)
        self._views[name] = state
        return state

    def _online_types(self, state: _ViewState) -> dict[str, str | None]:
        """The type of each feature's stored data (``None``: no data yet), for PostgreSQL's typed columns."""
        rec = state.record
        return {f: rec.types.get(f) for f in state.view.features}

    def _ensure_table(self, state: _ViewState) -> None:
        if not state.table_ready:
            self.online.ensure_table(state.view.name, state.view.features, self._online_types(state))
            state.table_ready = True

    def apply(self, view: FeatureView) -> None:
        """Create or update a feature view definition; applying the same definition again changes nothing.

        Names are validated (they become paths and SQL identifiers). Adding features is allowed (older rows give
        nulls for them); changing the entity or timestamp column of a view that has data, or the type of a column
        that already holds data, is a :class:`runtime.ConfigError`, since stored rows could no longer be read
        the same way."""
        view = validate_view(view)
        with self._meta_lock():
            loaded = self._read_record(view.name)
            existing = loaded[0] if loaded is not None else None
            if existing is not None and view_to_dict(existing.view) == view_to_dict(view):
                record = existing
            else:
                types: dict[str, str] = dict(existing.types) if existing is not None else {}
                if existing is not None:
                    old = existing.view
                    if (old.entity, old.timestamp) != (view.entity, view.timestamp) and self.offline.has_data(
                        view.name
                    ):
                        raise ConfigError(
                            f"feature view {view.name!r} already has data keyed by {old.entity!r} at "
                            f"{old.timestamp!r}; it cannot be re-keyed to {view.entity!r} at {view.timestamp!r} "
                            "(use a new view name)"
                        )
                    for col, typ in view.dtypes.items():
                        stored = types.get(col)
                        if stored is not None and _storage(stored) != _storage(typ):
                            raise ConfigError(
                                f"feature view {view.name!r}: column {col!r} already holds {stored} data and "
                                f"cannot be declared {typ} (use a new column or view name)"
                            )
                record = ViewRecord(view=view, types=types)
                self._save_record(record)
        self.online.ensure_table(view.name, view.features, {f: record.types.get(f) for f in view.features})
        self._views.pop(view.name, None)

    def apply_service(self, service: FeatureService) -> None:
        """Record a feature service (``services/<name>.json``) after checking that its views were applied and have
        the features it names; re-applying an unchanged service rewrites nothing."""
        name = check_name(service.name, "feature service name")
        selection = {}
        for projection in service.projections:
            self._check_features(self._state(projection.name, fresh=True), projection.features)
            selection[projection.name] = list(projection.features)
        data = json.dumps({"name": name, "views": selection}, indent=2).encode("utf-8")
        file = f"services/{name}.json"
        with self._meta_lock():
            try:
                same = self.location.read_bytes(file) == data
            except FileNotFoundError:
                same = False
            if not same:
                self.location.write_bytes(file, data)

    def _names(self, directory: str) -> list[str]:
        return sorted(
            rel[len(directory) + 1 : -len(".json")]
            for rel in self.location.files(directory, ".json")
            if "/" not in rel[len(directory) + 1 :]
        )

    def list_services(self) -> list[str]:
        """Names of all applied feature services, sorted."""
        return self._names("services")

    def get_view(self, name: str) -> FeatureView:
        """The definition of view ``name`` (:class:`runtime.NotFoundError` if it was never applied)."""
        return self._state(name, fresh=True).view

    def list_views(self) -> list[str]:
        """Names of all applied views, sorted."""
        return self._names("views")

    # -- writing -----------------------------------------------------------------------------------------------

    def _learn_types(self, state: _ViewState, df: pd.DataFrame, source: str) -> _ViewState:
        """Record the type of every column of the view that has none yet (declared, else inferred from ``df``),
        so that every later write and read uses the same one. Done under the metadata lock, re-reading the file,
        so two first writers cannot record different types. Nothing is recorded if any column is unusable."""
        view = state.view
        columns = [view.entity, *view.features]
        if all(c in state.record.types for c in columns):
            return state
        with self._meta_lock():
            loaded = self._read_record(view.name)
            if loaded is None:
                raise NotFoundError(f"feature view {view.name!r} was deleted")
            record = loaded[0]
            learned: dict[str, str] = {}
            for col in columns:
                if col in record.types:
                    continue
                typ = record.view.dtypes.get(col) or infer_type(df[col])
                if typ == "mixed":
                    raise DataValidationError(
                        source, [f"column {col!r} holds mixed or unsupported value types ({df[col].dtype}); "
                         "declare its type in FeatureView.dtypes"]
                    )
                if col == view.entity and typ not in ENTITY_TYPES:
                    raise DataValidationError(
                        source, [f"entity column {col!r} must hold ints or strings, got {df[col].dtype}"]
                    )
                if typ is not None:
                    learned[col] = typ
            if learned:
                record.types.update(learned)
                self._save_record(record)
        return self._state(view.name, fresh=True)

    def _prepare(self, view: str, df: pd.DataFrame, action: str) -> tuple[_ViewState, pd.DataFrame | None]:
        """Validate ``df`` against the view and return it in canonical form (entity, timestamp, features, with
        the view's column types; a fresh ``RangeIndex``; extra columns dropped), or ``None`` when it has no rows."""
        state = self._state(view, fresh=True)
        v = state.view
        source = f"{action} to feature view {view!r}"
        if not isinstance(df, pd.DataFrame):
            raise DataValidationError(source, [f"expected a pandas DataFrame, got {type(df).__name__}"])
        columns = [v.entity, v.timestamp, *v.features]
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataValidationError(source, [f"missing column(s): {', '.join(map(repr, missing))}"])
        if len(df) == 0:
            return state, None
        df = df[columns].reset_index(drop=True)
        # Reject rows without a key or a time before anything (types included) is recorded.
        nulls = int(df[v.entity].isna().sum())
        if nulls:
            raise DataValidationError(source, [f"entity column {v.entity!r} has {nulls} null value(s)"])
        ts = to_utc_naive(df[v.timestamp], source)
        if ts.isna().any():
            raise DataValidationError(source, [f"timestamp column {v.timestamp!r} has {int(ts.isna().sum())} null(s)"])
        state = self._learn_types(state, df, source)
        rec = state.record
        ent_type = rec.type_of(v.entity)
        assert ent_type is not None  # learned above: the entity column has no nulls
        frame = {v.entity: coerce_entity(df[v.entity], ent_type, v.entity, source), v.timestamp: ts}
        for f in v.features:
            frame[f] = coerce_column(df[f], rec.type_of(f), f, source)
        return state, pd.DataFrame(frame)

    @staticmethod
    def _arrow_schema(state: _ViewState, features: Sequence[str]) -> pa.Schema:
        v, rec = state.view, state.record
        fields = [pa.field(v.entity, arrow_type(rec.type_of(v.entity) or "int")), pa.field(v.timestamp, pa.timestamp("ns"))]
        fields += [pa.field(f, arrow_type(rec.type_of(f))) for f in features]
        return pa.schema(fields)

    def _append_offline(self, state: _ViewState, frame: pd.DataFrame) -> Part:
        schema = self._arrow_schema(state, state.view.features)
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        return self.offline.append(state.view.name, table)

    def write(self, view: str, df: pd.DataFrame) -> int:
        """Append rows (entity, timestamp, features; other columns are ignored) to the offline store as one new
        Parquet part, written atomically. Returns the number of rows written.

        Values are checked against the view's column types (:class:`runtime.DataValidationError` names the
        column); timestamps are stored as UTC (naive input is taken as UTC)."""
        state, frame = self._prepare(view, df, "write")
        if frame is None:
            return 0
        self._append_offline(state, frame)
        return len(frame)

    def push(self, view: str, df: pd.DataFrame) -> int:
        """Make fresh values servable now: append them offline (so training sees them later), then upsert the
        latest per entity online, where a value only replaces an older one. Returns the number of rows pushed.

        If the process dies between the two steps, the next :meth:`materialize` copies the rows online."""
        state, frame = self._prepare(view, df, "push")
        if frame is None:
            return 0
        part = self._append_offline(state, frame)
        frame[SEQ] = part.seq
        self._ensure_table(state)
        self.online.upsert(view, state.view.features, self._online_rows(state, frame), done_parts=[part.name],
                           types=self._online_types(state))
        return len(frame)

    def _online_rows(self, state: _ViewState, frame: pd.DataFrame) -> list[tuple[Any, ...]]:
        """(key, ts_ns, seq, *features) tuples for the latest row per entity of ``frame`` (ties: last row wins)."""
        v, rec = state.view, state.record
        latest = frame.sort_values([v.timestamp, SEQ], kind="mergesort").drop_duplicates(v.entity, keep="last")
        keys = latest[v.entity].tolist()
        ts = latest[v.timestamp].to_numpy(dtype="datetime64[ns]").view("int64").tolist()
        seq = latest[SEQ].to_numpy(dtype="int64").tolist()
        cols = [sqlite_values(latest[f], rec.type_of(f)) for f in v.features]
        return list(zip(keys, ts, seq, *cols))

    def materialize(self, view: str, since: Any = None) -> int:
        """Copy the latest value per entity from offline to online; return how many entities were written.

        Without ``since`` it is incremental: only parts not yet materialised are read (they are recorded in the
        online database in the same transaction as the rows, so nothing is lost or done twice across crashes, and
        late-arriving rows with old timestamps are still picked up). With ``since`` (a datetime or ISO string) all
        parts are read and only rows stamped strictly after it are considered; that does not move the incremental
        bookkeeping. Either way an online value is only replaced by a newer one, so re-running is harmless."""
        state = self._state(view, fresh=True)
        v = state.view
        self._ensure_table(state)
        parts = self.offline.parts(view)
        if since is None:
            done = self.online.done_parts(view)
            todo = [p for p in parts if p.name not in done]
        else:
            since_ns = timestamp_ns(since, f"materialize {view!r} since")
            todo = parts
        if not todo:
            return 0
        frame = self._read_offline(state, todo, v.features)
        if since is not None:
            frame = frame[frame[v.timestamp].to_numpy(dtype="datetime64[ns]").view("int64") > since_ns]
        rows = self._online_rows(state, frame) if len(frame) else []
        return self.online.upsert(view, v.features, rows, done_parts=[p.name for p in todo] if since is None else (),
                                  types=self._online_types(state))

    def _read_offline(self, state: _ViewState, parts: list[Part], features: Sequence[str]) -> pd.DataFrame:
        frame = self.offline.read(parts, self._arrow_schema(state, features))
        ent = state.view.entity
        if state.record.type_of(ent) == "int":
            frame[ent] = frame[ent].astype("int64")
        return frame

    # -- reading -----------------------------------------------------------------------------------------------

    @staticmethod
    def _check_features(state: _ViewState, features: Sequence[str] | None) -> tuple[str, ...]:
        v = state.view
        if features is None:
            return v.features
        if isinstance(features, str):
            raise TypeError(f"features must be a list of names, not the string {features!r}")
        known = set(v.features)
        for f in features:
            if f not in known:
                raise NotFoundError(
                    f"feature view {v.name!r} has no feature {f!r} (features: {', '.join(v.features)})"
                )
        return tuple(dict.fromkeys(features))

    def get_historical_features(
        self, entity_df: pd.DataFrame, view: str, features: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Point-in-time join for training data.

        For each row of ``entity_df`` (which needs the view's entity and timestamp columns, named as in the view),
        add each requested feature's latest value stamped at or before the row's timestamp, and no older than the
        view's TTL; nulls where none qualifies (also for rows with a null key or time). The result is a copy of
        ``entity_df``, same index, order, row count and other columns (labels included); a requested feature that
        ``entity_df`` already has is replaced by its point-in-time value. ``features=None`` means all of them.

        Implemented with ``pandas.merge_asof`` (``direction="backward"``, ``tolerance=ttl``) on time-sorted
        copies, then put back in the input order. Rows stamped identically for one entity resolve to the one
        written last."""
        state = self._state(view, fresh=True)
        feats = self._check_features(state, features)
        v, rec = state.view, state.record
        source = f"entity_df for feature view {view!r}"
        if not isinstance(entity_df, pd.DataFrame):
            raise DataValidationError(source, [f"expected a pandas DataFrame, got {type(entity_df).__name__}"])
        missing = [c for c in (v.entity, v.timestamp) if c not in entity_df.columns]
        if missing:
            raise DataValidationError(source, [f"missing column(s): {', '.join(map(repr, missing))}"])

        out = entity_df.copy()
        n = len(out)
        joined: pd.DataFrame | None = None
        ent_type = rec.type_of(v.entity)
        parts = self.offline.parts(view) if n and ent_type is not None else []
        if parts:
            keys = entity_df[v.entity].reset_index(drop=True)
            times = to_utc_naive(entity_df[v.timestamp].reset_index(drop=True), source)
            valid = (keys.notna() & times.notna()).to_numpy()
            left = pd.DataFrame(
                {
                    v.entity: coerce_entity(keys[valid], ent_type, v.entity, source).to_numpy(),
                    _TS: times[valid].to_numpy(),
                    _ROW: np.flatnonzero(valid),
                }
            )
            right = self._read_offline(state, parts, feats).drop(columns=[SEQ])
            right = right.rename(columns={v.timestamp: _TS})
            right = right[right[v.entity].isin(left[v.entity].unique())]
            if len(left) and len(right):
                # merge_asof needs both sides sorted on the time key; the stable sort keeps write order among
                # equal times, so the last-written row wins a tie.
                joined = pd.merge_asof(
                    left.sort_values(_TS, kind="mergesort"),
                    right.sort_values(_TS, kind="mergesort"),
                    on=_TS,
                    by=v.entity,
                    direction="backward",
                    allow_exact_matches=True,
                    tolerance=pd.Timedelta(v.ttl) if v.ttl is not None else None,
                )
                joined = joined.set_index(_ROW).sort_index()

        positions = pd.RangeIndex(n)
        for f in feats:
            if joined is not None:
                col = joined[f].reindex(positions)
            else:
                col = pd.Series([None] * n, index=positions, dtype=object)
            out[f] = to_output(col, rec.type_of(f)).set_axis(out.index)
        return out

    def _plan(self, state: _ViewState, features: Sequence[str] | None) -> _LookupPlan:
        """Validate ``features`` and precompute the query, key normaliser and value converters for a lookup."""
        feats = self._check_features(state, features)
        name, rec = state.view.name, state.record
        ent_type = rec.type_of(state.view.entity)
        normalize = {"int": _norm_int_key, "string": _norm_str_key, "category": _norm_str_key}.get(
            ent_type or "", _no_key
        )
        types = self._online_types(state)
        return _LookupPlan(
            features=feats,
            fetch=self.online.fetcher(name, feats, types),
            normalize=normalize,
            converters=tuple(_CONVERTERS[rec.type_of(f)] for f in feats),
            complete=ent_type is not None and all(types[f] is not None for f in feats),
        )

    def _lookup_plan(self, view: str, features: Sequence[str] | None) -> tuple[_ViewState, _LookupPlan]:
        state = self._state(view)
        cache_key = tuple(features) if features is not None else None
        plan = state.plans.get(cache_key)
        if plan is not None and (plan.complete or self.location.local):
            return state, plan
        if self.location.local:  # the stat in _state already saw any newer view file
            plan = state.plans[cache_key] = self._plan(state, features)
            return state, plan
        if plan is None:
            try:
                plan = self._plan(state, features)
            except NotFoundError:  # a feature the cached definition lacks: a newer one may have it
                pass
            else:
                state.plans[cache_key] = plan
                if plan.complete:
                    return state, plan
        # incomplete (a type not learned yet: until it is, lookups give nulls) or unknown: the remote view file may
        # be newer than the cached copy
        state = self._state(view, fresh=True)
        plan = state.plans.get(cache_key)
        if plan is None:
            plan = state.plans[cache_key] = self._plan(state, features)
        return state, plan

    def get_online_features(
        self, view: str, entity_keys: Sequence[Any], features: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Latest values of ``features`` for ``entity_keys`` from the online store, for serving.

        One row per key, in input order (duplicates repeated, a ``RangeIndex``); unknown keys give nulls. Columns
        are the requested features, typed as the view declares: ints ``Int64``, floats ``float64``, bools
        ``boolean``, strings ``string``, timestamps ``datetime64[ns]`` (the same dtypes as
        :meth:`get_historical_features`, so training and serving agree). Keys may be ints or strings (numpy
        scalars too). This is the hot path: per-view plans and queries are cached (statements stay prepared on
        SQLite's per-thread and PostgreSQL's pooled connections), a batch of keys is one query on PostgreSQL, and
        values go straight from database rows to typed arrays."""
        state, plan = self._lookup_plan(view, features)
        norm = plan.normalize
        keys = [norm(k) for k in entity_keys]
        try:
            found = plan.fetch(keys)
        except self.online.retry_errors:  # table dropped or missing a new column: (re)create it once and retry
            state.table_ready = False
            self._ensure_table(state)
            found = plan.fetch(keys)
        if not plan.features:
            return pd.DataFrame(index=pd.RangeIndex(len(keys)))
        rows = [found.get(k) for k in keys]
        columns = {}
        for i, (f, convert) in enumerate(zip(plan.features, plan.converters), start=1):
            columns[f] = convert([None if r is None else r[i] for r in rows])
        return pd.DataFrame(columns, index=pd.RangeIndex(len(keys)), copy=False)


def _storage(loom_type: str) -> str:
    """How a type is stored (``category`` and ``string`` share a representation)."""
    return "string" if loom_type == "category" else loom_type

