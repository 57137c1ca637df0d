"""A Loom feature store backed by a real Feast repository (local provider, file offline store, SQLite online store).

Layout under ``path`` (option ``path``, default ``<state_dir>/feast``)::

    feature_store.yaml        the Feast repo config: `feast -c <path> ...` works on it
    registry.db               Feast's registry: entities, feature views, push sources, feature services
    online.db                 Feast's SQLite online store
    data/<view>/part-*.parquet    each view's offline data, the file source Feast reads
    loom_materialized.json    which parts have been materialised (Loom's incremental bookkeeping)

Every definition goes through ``FeatureStore.apply``; training data comes from ``get_historical_features``, serving
data from ``get_online_features``, materialisation from ``materialize`` and pushes from ``push`` (a ``PushSource`` per
view), all Feast's own API. Loom adds what its contract promises beyond Feast's defaults: results in input order
with Loom's dtypes, materialisation that also picks up rows written late with old timestamps, and pushes that never
replace a newer online value.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from runtime import (
    ColumnSpec,
    ConfigError,
    DataValidationError,
    FeatureService,
    FeatureView,
    NotFoundError,
    check_name,
    coerce_frame,
)

import feast
from feast.data_source import PushMode
from feast.errors import FeastObjectNotFoundException
from feast.types import Bool, Float64, Int64, String, UnixTimestamp

#: Options this store accepts in ``features.options``.
OPTIONS = ("path", "project")
_FEAST_TYPES = {"int": Int64, "float": Float64, "bool": Bool, "string": String, "category": String,
                "timestamp": UnixTimestamp}
_KEY_TYPES = {"int": feast.ValueType.INT64, "string": feast.ValueType.STRING, "category": feast.ValueType.STRING}
_ARROW = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "string": pa.string(),
          "category": pa.string(), "timestamp": pa.timestamp("us", tz="UTC")}
_OUTPUT = {"int": "Int64", "float": "float64", "bool": "boolean", "string": "string", "category": "string",
           "timestamp": "datetime64[ns]"}
_TAG = "loom.view"
_ROW = "__loom_row"
_EVENT = "event_timestamp"
_PROJECT = re.compile(r"^[A-Za-z0-9_]+$")

_CONFIG = """\
# Written by Loom (features.store: feast). Feast's own CLI works here: feast -c {path} feature-views list
project: {project}
provider: local
registry: registry.db
online_store:
  type: sqlite
  path: online.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""


def make_store(*, state_dir: Path | str, options: dict[str, Any]) -> FeastFeatureStore:
    """The ``feast`` factory: check ``options`` (``path``, ``project``) and open (creating) the Feast repo."""
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"feature store 'feast': unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    raw = opts.get("path")
    if raw is not None and (not isinstance(raw, (str, os.PathLike)) or not str(raw).strip()):
        raise ConfigError(f"feature store 'feast': option 'path' must be a non-empty path, got {raw!r}")
    path = Path(raw).expanduser() if raw is not None else Path("feast")
    project = opts.get("project", "loom")
    if not isinstance(project, str) or not _PROJECT.match(project):
        raise ConfigError(f"feature store 'feast': option 'project' must be letters, digits and '_', got {project!r}")
    return FeastFeatureStore(path if path.is_absolute() else Path(state_dir) / path, project=project)


def _utc(series: pd.Series) -> pd.Series:
    """Times as tz-aware UTC (naive values are UTC), the form Feast compares."""
    t = pd.to_datetime(series, utc=True) if not pd.api.types.is_datetime64_any_dtype(series.dtype) else series
    return t.dt.tz_convert("UTC") if t.dt.tz is not None else t.dt.tz_localize("UTC")


def _output(values: Any, loom_type: str | None) -> pd.Series:
    """A column from Feast in the dtype Loom hands back for ``loom_type``."""
    s = pd.Series(values, dtype=object) if not isinstance(values, pd.Series) else values
    if loom_type == "timestamp":
        return _utc(pd.to_datetime(s.astype(object), utc=True)).dt.tz_localize(None).astype("datetime64[ns]")
    target = _OUTPUT.get(loom_type or "", "object")
    if target == "string":
        return s.astype(object).where(s.notna(), None).astype("string")
    return s.astype(object).where(s.notna(), None).astype(target) if target != "float64" else s.astype("float64")


def _online_column(values: list[Any], loom_type: str | None) -> Any:
    """Looked-up values (plain Python, ``None`` for missing) straight into Loom's typed array: the serving hot
    path, so no per-column pandas round trips."""
    n = len(values)
    if loom_type in ("int", "bool"):
        mask = np.fromiter((v is None for v in values), dtype=bool, count=n)
        if loom_type == "int":
            data = np.fromiter((0 if v is None else v for v in values), dtype=np.int64, count=n)
            return pd.arrays.IntegerArray(data, mask)
        return pd.arrays.BooleanArray(np.fromiter((bool(v) for v in values), dtype=bool, count=n), mask)
    if loom_type == "float":
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if loom_type in ("string", "category"):
        return pd.array(values, dtype="string")
    return _output(values, loom_type).to_numpy()


class FeastFeatureStore:
    """A :class:`runtime.FeatureStore` whose storage and retrieval are Feast's."""

    def __init__(self, path: Path, *, project: str = "loom") -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        config = self.path / "feature_store.yaml"
        text = _CONFIG.format(path=self.path, project=project)
        if not config.exists() or config.read_text() != text:
            config.write_text(text)
        self.project = project
        self.feast = feast.FeatureStore(repo_path=str(self.path))
        self._views: dict[str, FeatureView] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FeastFeatureStore({str(self.path)!r})"

    # -- definitions ---------------------------------------------------------------------------------------------

    def apply(self, view: FeatureView) -> None:
        """Apply the view to Feast: its entity, a file source over ``data/<view>``, a push source and the view.

        Feast needs every column typed, so the entity and every feature must be declared in ``view.dtypes``."""
        check_name(view.name, "feature view name")
        for col in (view.entity, view.timestamp, *view.features):
            check_name(col, f"feature view {view.name!r}: column")
        if not view.features:
            raise ConfigError(f"feature view {view.name!r} has no features")
        untyped = [c for c in (view.entity, *view.features) if c not in view.dtypes]
        if untyped:
            raise ConfigError(f"feature view {view.name!r}: the feast store needs a declared type for "
                              f"{', '.join(untyped)} (FeatureView.dtypes)")
        key_type = view.dtypes[view.entity]
        if key_type not in _KEY_TYPES:
            raise ConfigError(f"feature view {view.name!r}: entity column {view.entity!r} must be int or string")
        unknown = [c for c in view.features if view.dtypes[c] not in _FEAST_TYPES]
        if unknown:
            raise ConfigError(f"feature view {view.name!r}: unknown type for {', '.join(unknown)}")
        (self._data(view.name)).mkdir(parents=True, exist_ok=True)
        entity = feast.Entity(name=view.entity, join_keys=[view.entity], value_type=_KEY_TYPES[key_type])
        batch = feast.FileSource(name=f"{view.name}__files", path=str(self._data(view.name)),
                                 timestamp_field=view.timestamp)
        push = feast.PushSource(name=f"{view.name}__push", batch_source=batch)
        definition = {"timestamp": view.timestamp, "dtypes": dict(view.dtypes)}
        fv = feast.FeatureView(
            name=view.name, entities=[entity], ttl=view.ttl or timedelta(0), source=push, online=True,
            schema=[feast.Field(name=view.entity, dtype=_FEAST_TYPES[key_type])]
            + [feast.Field(name=f, dtype=_FEAST_TYPES[view.dtypes[f]]) for f in view.features],
            tags={_TAG: json.dumps(definition, sort_keys=True)},
        )
        self.feast.apply([entity, push, fv])
        self._views[view.name] = view

    def apply_service(self, service: FeatureService) -> None:
        """Apply the service to Feast as a ``FeatureService`` of its views' projections."""
        check_name(service.name, "feature service name")
        projections = []
        for p in service.projections:
            view = self.get_view(p.name)
            missing = [f for f in p.features if f not in view.features]
            if missing:
                raise NotFoundError(f"feature view {p.name!r} has no feature {missing[0]!r} "
                                    f"(features: {', '.join(view.features)})")
            projections.append(self.feast.get_feature_view(p.name)[list(p.features)])
        self.feast.apply([feast.FeatureService(name=service.name, features=projections)])

    def get_view(self, name: str) -> FeatureView:
        """The Loom definition of view ``name``, as recorded in Feast's registry."""
        view = self._views.get(name)
        if view is not None:
            return view
        try:
            fv = self.feast.get_feature_view(check_name(name, "feature view name"))
        except FeastObjectNotFoundException:
            known = ", ".join(sorted(v.name for v in self.feast.list_feature_views())) or "none"
            raise NotFoundError(f"feature view {name!r} does not exist (known views: {known}); apply() it first")
        definition = json.loads(fv.tags.get(_TAG, "{}"))
        if not definition:
            raise NotFoundError(f"feature view {name!r} was not applied by Loom")
        view = FeatureView(name=name, entity=fv.entities[0], timestamp=definition["timestamp"],
                           features=tuple(f.name for f in fv.features), ttl=fv.ttl or None,
                           dtypes=definition["dtypes"])
        self._views[name] = view
        return view

    # -- offline data --------------------------------------------------------------------------------------------

    def _data(self, view: str) -> Path:
        return self.path / "data" / view

    def _parts(self, view: str) -> list[Path]:
        directory = self._data(view)
        return sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []

    def _prepare(self, view: FeatureView, df: pd.DataFrame, action: str) -> pd.DataFrame:
        """``df`` checked and coerced to the view's columns and types, times as UTC (entity and time non-null)."""
        source = f"{action} to feature view {view.name!r}"
        if not isinstance(df, pd.DataFrame):
            raise DataValidationError(source, [f"expected a pandas DataFrame, got {type(df).__name__}"])
        columns = [view.entity, view.timestamp, *view.features]
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataValidationError(source, [f"missing column(s): {', '.join(map(repr, missing))}"])
        specs = {view.entity: ColumnSpec(type=view.dtypes[view.entity], nullable=False),
                 view.timestamp: ColumnSpec(type="timestamp", nullable=False),
                 **{f: ColumnSpec(type=view.dtypes[f]) for f in view.features}}
        frame, problems, bad = coerce_frame(df[columns], specs, source=source, empty_columns=True)
        if problems:
            raise DataValidationError(source, problems)
        return frame

    def _append(self, view: FeatureView, frame: pd.DataFrame) -> Path:
        """Write ``frame`` as a new Parquet part of the view's file source (atomically: readers never see half)."""
        schema = pa.schema([pa.field(view.entity, _ARROW[view.dtypes[view.entity]]),
                            pa.field(view.timestamp, pa.timestamp("us", tz="UTC"))]
                           + [pa.field(f, _ARROW[view.dtypes[f]]) for f in view.features])
        data = {c: frame[c] for c in frame.columns}
        data[view.timestamp] = _utc(frame[view.timestamp])
        for f in view.features:
            if view.dtypes[f] == "timestamp":
                data[f] = _utc(frame[f])
        table = pa.Table.from_pandas(pd.DataFrame(data), schema=schema, preserve_index=False)
        directory = self._data(view.name)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=directory)
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    def write(self, view: str, df: pd.DataFrame) -> int:
        """Append rows to the view's offline data (a new Parquet part Feast's file source reads)."""
        v = self.get_view(view)
        frame = self._prepare(v, df, "write")
        if not len(frame):
            return 0
        self._append(v, frame)
        return len(frame)

    # -- materialisation and push --------------------------------------------------------------------------------

    def _done_file(self) -> Path:
        return self.path / "loom_materialized.json"

    def _done(self) -> dict[str, list[str]]:
        try:
            return json.loads(self._done_file().read_text())
        except FileNotFoundError:
            return {}

    def _mark_done(self, view: str, parts: Sequence[Path]) -> None:
        with self._lock:
            done = self._done()
            done[view] = sorted(set(done.get(view, [])) | {p.name for p in parts})
            tmp = self._done_file().with_suffix(".tmp")
            tmp.write_text(json.dumps(done, indent=1))
            os.replace(tmp, self._done_file())

    def materialize(self, view: str, since: Any = None) -> int:
        """Feast ``materialize`` over ``[start, latest time]``: ``start`` is ``since``, or (incremental) the oldest
        time in the parts not yet materialised, so rows written late with old timestamps are not missed. Each
        entity with a row in that window gets its latest value overall, the one Feast finds in the window.
        Returns how many entities had rows in the window."""
        v = self.get_view(view)
        parts = self._parts(view)
        todo = parts if since is not None else [p for p in parts if p.name not in set(self._done().get(view, []))]
        if not todo:
            return 0
        new = pq.read_table(todo, columns=[v.entity, v.timestamp]).to_pandas()
        if since is not None:
            start = pd.Timestamp(since)
            start = start.tz_convert("UTC") if start.tzinfo is not None else start.tz_localize("UTC")
            new = new[new[v.timestamp] > start]
        else:
            start = new[v.timestamp].min()
        if len(new):
            latest = pq.read_table(parts, columns=[v.timestamp]).column(0)
            end = pd.Timestamp(pc.max(latest).as_py()) + pd.Timedelta(seconds=1)
            self.feast.materialize(start_date=start.to_pydatetime(), end_date=end.to_pydatetime(),
                                   feature_views=[view])
        if since is None:
            self._mark_done(view, todo)
        return int(new[v.entity].nunique())

    def push(self, view: str, df: pd.DataFrame) -> int:
        """Append the rows offline, then push each entity's latest row online through the view's Feast
        ``PushSource``, skipping entities whose online value is newer."""
        v = self.get_view(view)
        frame = self._prepare(v, df, "push")
        if not len(frame):
            return 0
        part = self._append(v, frame)
        self._mark_done(view, [part])
        latest = frame.assign(**{v.timestamp: _utc(frame[v.timestamp])})
        latest = latest.sort_values(v.timestamp, kind="stable").drop_duplicates(v.entity, keep="last")
        keys = latest[v.entity].tolist()
        served = self.feast.get_online_features(features=[f"{view}:{v.features[0]}"], entity_rows={v.entity: keys})
        served_s = served.to_dict(include_event_timestamps=True)[f"{v.features[0]}__ts"]
        new_s = latest[v.timestamp].to_numpy(dtype="datetime64[s]").astype("int64")
        newer = latest[new_s >= np.asarray(served_s, dtype="int64")]
        if len(newer):
            self.feast.push(f"{view}__push", _feast_frame(v, newer), to=PushMode.ONLINE)
        return len(frame)

    # -- retrieval -----------------------------------------------------------------------------------------------

    @staticmethod
    def _features(view: FeatureView, features: Sequence[str] | None) -> list[str]:
        if features is None:
            return list(view.features)
        if isinstance(features, str):
            raise TypeError(f"features must be a list of names, not the string {features!r}")
        for f in features:
            if f not in view.features:
                raise NotFoundError(f"feature view {view.name!r} has no feature {f!r} "
                                    f"(features: {', '.join(view.features)})")
        return list(dict.fromkeys(features))

    def get_historical_features(self, entity_df: pd.DataFrame, view: str,
                                features: Sequence[str] | None = None) -> pd.DataFrame:
        """Point-in-time join through Feast's ``get_historical_features`` (its file offline store), returned in
        the input's order and index, with Loom's dtypes."""
        v = self.get_view(view)
        feats = self._features(v, features)
        source = f"entity_df for feature view {view!r}"
        missing = [c for c in (v.entity, v.timestamp) if c not in entity_df.columns]
        if missing:
            raise DataValidationError(source, [f"missing column(s): {', '.join(map(repr, missing))}"])
        out = entity_df.copy()
        n = len(out)
        keys = entity_df[v.entity].reset_index(drop=True)
        times = _utc(entity_df[v.timestamp].reset_index(drop=True))
        valid = (keys.notna() & times.notna()).to_numpy()
        joined = None
        group = np.full(n, -1)
        if valid.any() and self._parts(view):
            key_type = "Int64" if v.dtypes[v.entity] == "int" else "string"  # as Feast reads the Parquet keys
            pairs = pd.DataFrame({v.entity: keys[valid].astype(key_type), _EVENT: times[valid]})
            # Feast answers each (key, time) pair once: ask for distinct pairs, then map every row to its pair.
            group[valid] = pairs.groupby([v.entity, _EVENT], sort=False).ngroup().to_numpy()
            left = pairs.assign(**{_ROW: group[valid]}).drop_duplicates(_ROW).reset_index(drop=True)
            job = self.feast.get_historical_features(entity_df=left, features=[f"{view}:{f}" for f in feats])
            joined = job.to_df().set_index(_ROW)
        for f in feats:
            if joined is not None:
                col = joined[f].reindex(group).reset_index(drop=True)
            else:
                col = pd.Series([None] * n, dtype=object)
            out[f] = _output(col, v.dtypes.get(f)).set_axis(out.index)
        return out

    def get_online_features(self, view: str, entity_keys: Sequence[Any],
                            features: Sequence[str] | None = None) -> pd.DataFrame:
        """Latest values through Feast's ``get_online_features``; one row per key in order, nulls for unknown
        keys, Loom's dtypes."""
        v = self.get_view(view)
        feats = self._features(v, features)
        keys = [_key(k, v.dtypes[v.entity]) for k in entity_keys]
        asked = [k for k in keys if k is not None]
        found: dict[str, list[Any]] = {f: [] for f in feats}
        if asked:
            response = self.feast.get_online_features(features=[f"{view}:{f}" for f in feats],
                                                      entity_rows={v.entity: asked})
            found = response.to_dict()
        columns = {}
        for f in feats:
            it = iter(found[f])
            looked_up = found[f] if len(asked) == len(keys) else [next(it) if k is not None else None for k in keys]
            columns[f] = _online_column(looked_up, v.dtypes.get(f))
        return pd.DataFrame(columns, index=pd.RangeIndex(len(keys)), copy=False)

    def close(self) -> None:
        """Close Feast's SQLite online-store connection (Feast re-opens it on the next lookup)."""
        provider = getattr(self.feast, "_provider", None)
        online = getattr(provider, "online_store", None) if provider is not None else None
        conn = getattr(online, "_conn", None)
        if conn is not None:
            conn.close()
            online._conn = None


def _key(key: Any, key_type: str) -> Any:
    """An entity key as Feast's entity type wants it, or ``None`` when it cannot name a stored entity."""
    if key is None or isinstance(key, (bool, np.bool_)) or (isinstance(key, float) and key != key):
        return None
    if key_type == "int":
        if isinstance(key, (int, np.integer)):
            return int(key)
        if isinstance(key, (float, np.floating)) and float(key).is_integer():
            return int(key)
        if isinstance(key, str):
            try:
                return int(key)
            except ValueError:
                return None
        return None
    return str(key)


def _feast_frame(view: FeatureView, frame: pd.DataFrame) -> pd.DataFrame:
    """Rows as Feast's push takes them: plain Python-typed columns, times tz-aware UTC, nulls as ``None``."""
    out = {view.entity: frame[view.entity].astype(object).tolist(), view.timestamp: _utc(frame[view.timestamp])}
    for f in view.features:
        col = frame[f]
        if view.dtypes[f] == "timestamp":
            out[f] = _utc(col)
        else:
            out[f] = col.astype(object).where(col.notna(), None).tolist()
    return pd.DataFrame(out)

