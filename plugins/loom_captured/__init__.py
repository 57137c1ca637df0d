"""Loom's ``captured://`` data source: served traffic with its feedback labels, as training data of the project.

A first-party plugin that uses only the public ``runtime`` API, exactly as a third-party plugin would.

``captured://MODEL`` reads the capture store (:func:`runtime.read_captured`: every sampled request a server of the
project answered for ``MODEL``, its inputs, the version that served it and when) and joins each captured row to its
ground-truth label posted to ``POST /feedback/MODEL`` (:func:`runtime.read_feedback`), on ``(request_id, row)``.
The result is shaped as the project's data (``data.entity``, ``data.timestamp``, ``data.label`` and
``data.columns`` of ``loom.yaml``), so it validates, trains and is fingerprinted like any other source:

* the label column holds the feedback label, coerced to its declared type (a bool label stored as ``"True"``,
  ``"false"`` or ``1`` becomes a bool); a label that cannot be coerced is left as it came, so validation reports
  its row under the project's bad-row policy instead of it turning silently into a null;
* the timestamp column is the request's own value of it when the request carried one, else the capture time, as
  tz-aware UTC instants (what the CSV source yields for ISO times with an offset; validation makes both naive UTC);
* the entity column is the request's value of it when it carried one, else a synthetic id (see
  :func:`synthetic_entity`);
* every other declared column comes from the captured inputs. One the traffic lacks is left out when it is
  nullable (validation then reports it missing, as it would for any source) and is an error otherwise;
* only declared columns come back. Where the rows came from is :attr:`CapturedSource.window`, filled by the
  first read.

A row captured twice (the same request answered by two versions, e.g. a mirrored canary) comes back once: the
earliest capture. Rows are in capture order. The store is read once, on the first :meth:`~CapturedSource.read`,
``iter_batches`` or ``fingerprint``; every later call describes the same rows, so a validated frame and its
recorded fingerprint always match even while traffic keeps arriving.

Options, from the URI's query (``captured://churn?window=24h&version=3``) and ``data.options`` (which win):

* ``window``: only rows captured in the last window before the read: ``30m``, ``24h``, ``7d`` (units ``s``, ``m``,
  ``h``, ``d``, ``w``) or a number of seconds;
* ``since``, ``until``: only rows captured at or after ``since`` and before ``until`` (ISO 8601 times, naive ones
  UTC, or Unix seconds); with ``window`` too, the later start wins;
* ``version``: only rows that version of the model served;
* ``store``: the capture store, a directory (relative to the project) or a file system URI; default the
  project's (:attr:`runtime.Project.capture_uri`: ``monitoring.store_path``, else ``<storage.url>/capture``);
* ``labelled`` (default true): only rows with a feedback label; false keeps every captured row, the label null
  where none was posted (for inspection: a non-nullable label then fails validation).

A store with no labelled rows in the window reads as an empty frame of the schema's columns, not an error. A store
that cannot be read is a :class:`runtime.ConfigError` naming it as :func:`runtime.redact` shows it; so is the
source's ``uri``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pandas as pd

import runtime
from runtime import (
    ColumnSpec,
    ConfigError,
    DataValidationError,
    InvalidNameError,
    LoomError,
    Project,
    Register,
    check_name,
    coerce_frame,
    hash_frame,
    hookimpl,
    load_project,
    redact,
    resolve_path,
    split_uri,
)

__all__ = ["CapturedSource", "OPTIONS", "loom_register_data_sources", "open_source", "synthetic_entity"]

SCHEME = "captured"
#: Options this source accepts.
OPTIONS = ("window", "since", "until", "version", "store", "labelled")
#: Seconds in each unit a ``window`` may be written in.
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
#: The range synthetic entity ids are drawn from: ``[ENTITY_MIN, ENTITY_MAX)``.
ENTITY_MIN = 10**15
ENTITY_MAX = 2**62
_WINDOW = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)", re.I)
_TRUE = {"true", "yes", "y", "t", "1", "on"}
_FALSE = {"false", "no", "n", "f", "0", "off"}
#: The feedback label while rows are joined: a name no captured input can have.
_LABEL = "\0label"


def synthetic_entity(request_id: str, row: int) -> int:
    """The entity id of a served row whose request did not carry one: the first 8 bytes of
    ``sha256(request_id, row)`` folded into ``[10**15, 2**62)``.

    Served requests usually carry the model's inputs only, not the entity key, yet every training row needs one:
    the feature store and the point-in-time join key rows by entity and time, and a shared null key would fold
    unrelated requests into one entity's history. Each served row is its own entity, then. The id is derived from
    the row's identity, so reading the same store again gives the same ids (and the same fingerprint). The range
    starts far above any sequential id a real table hands out (so it cannot collide with a real entity seen in
    training) and stays below ``2**62``: positive, int64 with room to spare, and never near its overflow.
    """
    digest = hashlib.sha256(f"{request_id}\0{row}".encode()).digest()
    return ENTITY_MIN + int.from_bytes(digest[:8], "big") % (ENTITY_MAX - ENTITY_MIN)


# -- options -------------------------------------------------------------------------------------------------------


def _duration(shown: str, value: Any) -> float:
    """A ``window`` option as seconds: a number, or digits with a unit (``30m``, ``24h``, ``7d``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"data source {shown}: option 'window' must be a duration like 30m, 24h or 7d, or a "
                          f"number of seconds, got {value!r}")
    if isinstance(value, str):
        found = _WINDOW.fullmatch(value.strip())
        if not found:
            raise ConfigError(f"data source {shown}: option 'window' {value!r} is not a duration; write a number "
                              f"with a unit ({', '.join(UNITS)}), e.g. 30m, 24h or 7d, or a number of seconds")
        seconds = float(found.group(1)) * UNITS[found.group(2).lower() or "s"]
    else:
        seconds = float(value)
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"data source {shown}: option 'window' must be a positive duration, got {value!r}")
    return seconds


def _instant(shown: str, key: str, value: Any) -> pd.Timestamp:
    """A ``since`` or ``until`` option as a UTC instant: an ISO 8601 time (naive means UTC) or Unix seconds."""
    bad = ConfigError(f"data source {shown}: option {key!r} must be an ISO 8601 time (2025-06-01T00:00:00Z) or "
                      f"Unix seconds, got {value!r}")
    if isinstance(value, bool):
        raise bad
    try:
        if isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d*)?\s*", value)):
            ts = pd.Timestamp(float(value), unit="s", tz="UTC")
        elif isinstance(value, str) and value.strip():
            ts = pd.Timestamp(value.strip())
        elif isinstance(value, pd.Timestamp) or hasattr(value, "isoformat"):  # a datetime from YAML
            ts = pd.Timestamp(value)
        else:
            raise bad
    except (TypeError, ValueError, OverflowError):
        raise bad from None
    if ts is pd.NaT:
        raise bad
    return ts.tz_convert("UTC") if ts.tzinfo is not None else ts.tz_localize("UTC")


def _version(shown: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"data source {shown}: option 'version' must be a model version number (1, 2, ...), "
                          f"got {value!r}")
    return value


def _flag(shown: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"data source {shown}: option {key!r} must be true or false, got {value!r}")


def _options(uri: str, shown: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The model ``uri`` names and the options of its query and ``options`` merged (``options`` win), checked."""
    rest = split_uri(uri)[1]
    name, _, query = rest.partition("?")
    name = name[:-1] if name.endswith("/") else name
    if not name:
        raise ConfigError(f"data source {shown} names no model; write captured://MODEL, e.g. captured://churn")
    try:
        check_name(name, "model name")
    except InvalidNameError as err:
        raise ConfigError(f"data source {shown}: {err}") from None
    merged: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigError(f"data source {shown}: its query is not key=value pairs joined by '&', e.g. "
                          "captured://churn?window=24h&version=3") from None
    for key, value in pairs:
        if key in merged:
            raise ConfigError(f"data source {shown}: option {key!r} is given twice in the URI")
        merged[key] = value
    merged.update(options)
    unknown = sorted(str(k) for k in set(merged) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"data source {shown}: unknown option(s) {', '.join(unknown)} "
                          f"(accepted: {', '.join(OPTIONS)})")
    checked: dict[str, Any] = {"labelled": _flag(shown, "labelled", merged.get("labelled", True))}
    if merged.get("window") is not None:
        checked["window"] = _duration(shown, merged["window"])
    for key in ("since", "until"):
        if merged.get(key) is not None:
            checked[key] = _instant(shown, key, merged[key])
    if "since" in checked and "until" in checked and checked["since"] >= checked["until"]:
        raise ConfigError(f"data source {shown}: option 'since' ({checked['since'].isoformat()}) must be before "
                          f"'until' ({checked['until'].isoformat()})")
    if merged.get("version") is not None:
        checked["version"] = _version(shown, merged["version"])
    if merged.get("store") is not None:
        store = merged["store"]
        if not isinstance(store, str) or not store.strip():
            raise ConfigError(f"data source {shown}: option 'store' must be a directory or a file system URI")
        checked["store"] = store.strip()
    return name, checked


# -- the source ----------------------------------------------------------------------------------------------------


def _coerced(raw: pd.Series, spec: ColumnSpec, shown: str) -> pd.Series:
    """``raw`` coerced to ``spec``'s type by validation's rules; values that cannot be are kept as they came (an
    object column then), so that validation reports them instead of finding nulls."""
    frame, _, _ = coerce_frame(raw.to_frame("value"), {"value": spec}, source=shown, empty_columns=True)
    out = frame["value"]
    out.index = raw.index
    present = raw.notna() & ~raw.astype(str).str.strip().eq("")
    failed = out.isna() & present
    if failed.any():
        out = out.astype(object)
        out[failed] = raw[failed]
    return out


class CapturedSource:
    """The labelled traffic of one model in a capture store, as the project's training data (a
    :class:`runtime.DataSource`)."""

    def __init__(self, uri: str, *, model: str, project: Project, store: str, options: dict[str, Any]) -> None:
        #: The URI as shown: credentials redacted.
        self.uri = uri
        self.model = model
        self.project = project
        #: Where the capture store is (may hold credentials: show it through :func:`runtime.redact`).
        self.store = store
        #: The checked options (``window`` in seconds, ``since``/``until`` as UTC timestamps).
        self.options = options
        #: Where the rows came from, set by the first read: ``start`` and ``end`` (ISO 8601, UTC: the bounds
        #: applied, else the first row's capture time and the time of the read), ``rows_captured`` (distinct rows
        #: captured between them), ``rows_labelled`` (those with a label: the rows returned when ``labelled``),
        #: ``feedback_rows`` (labels in the store for the model) and ``versions`` (model versions seen, sorted).
        self.window: dict[str, Any] | None = None
        self._frame: pd.DataFrame | None = None

    def read(self) -> pd.DataFrame:
        """Every labelled row captured in the window, one per ``(request_id, row)``, in the project's schema."""
        if self._frame is None:
            self._frame = self._load()
        return self._frame.copy()

    def iter_batches(self, batch_size: int = 65_536) -> Iterator[pd.DataFrame]:
        """:meth:`read` in slices of at most ``batch_size`` rows."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        frame = self.read()
        for start in range(0, len(frame), batch_size):
            yield frame.iloc[start:start + batch_size].reset_index(drop=True)

    def fingerprint(self) -> str:
        """:func:`runtime.hash_frame` of :meth:`read`: the same rows and values give the same fingerprint."""
        return hash_frame(self.read())

    # -- reading ---------------------------------------------------------------------------------------------

    def _read_store(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The model's captured rows (of ``version`` when set) and its feedback labels."""
        where = redact(self.store)
        try:
            rows = runtime.read_captured(self.store, self.model, self.options.get("version"))
            labels = runtime.read_feedback(self.store, self.model)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - OSError, ArrowInvalid, botocore's...: the store is unreadable
            text = redact(str(err)).strip().splitlines()
            reason = f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__
            raise ConfigError(f"data source {self.uri}: cannot read the capture store at {where} ({reason}); "
                              "check the store option (or monitoring.store_path) and its credentials") from None
        return rows, labels

    def _load(self) -> pd.DataFrame:
        now = pd.Timestamp.now(tz="UTC")
        bounds = [b for b in (self.options.get("since"),
                              now - pd.Timedelta(seconds=self.options["window"]) if "window" in self.options else None)
                  if b is not None]
        start, end = (max(bounds) if bounds else None), self.options.get("until")
        rows, labels = self._read_store()
        if len(rows):
            ts = pd.to_datetime(rows["ts"], utc=True)
            keep = pd.Series(True, index=rows.index)
            if start is not None:
                keep &= ts >= start
            if end is not None:
                keep &= ts < end
            rows = rows.assign(ts=ts)[keep]
        if len(rows):
            rows = (rows.assign(row=rows["row"].astype("int64"))
                    .sort_values(["ts", "version"], kind="stable")
                    .drop_duplicates(["request_id", "row"], keep="first"))
        labels = labels.assign(row=labels["row"].astype("int64")).rename(columns={"label": _LABEL})
        joined = rows.merge(labels[["request_id", "row", _LABEL]], on=["request_id", "row"],
                            how="inner" if self.options["labelled"] else "left") if len(rows) else rows.iloc[0:0]
        self.window = {
            "start": (start if start is not None else rows["ts"].min() if len(rows) else None),
            "end": end if end is not None else now,
            "rows_captured": len(rows),
            "rows_labelled": int(joined[_LABEL].notna().sum()) if len(joined) else 0,
            "feedback_rows": len(labels),
            "versions": sorted(int(v) for v in rows["version"].unique()) if len(rows) else [],
        }
        for key in ("start", "end"):
            if self.window[key] is not None:
                self.window[key] = self.window[key].isoformat()
        return self._shape(joined.reset_index(drop=True))

    def _shape(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Joined rows as the project's data: its declared columns, in declared order."""
        data = self.project.config.data
        columns = data.columns
        if not len(rows):  # typed as validation types them, so an empty read still has the schema's dtypes
            frame, _, _ = coerce_frame(pd.DataFrame(columns=list(columns)), columns, source=self.uri,
                                       empty_columns=True)
            frame[data.timestamp] = frame[data.timestamp].dt.tz_localize("UTC")
            return frame
        missing = [c for c in columns if c not in rows.columns and c not in (data.label, data.timestamp, data.entity)]
        required = [c for c in missing if not columns[c].nullable]
        if required:
            raise DataValidationError(self.uri, [
                f"{self.uri}: the captured traffic of model {self.model!r} has no column {c!r}, which "
                f"data.columns declares non-nullable (its requests do not send it)" for c in required])
        out: dict[str, pd.Series] = {}
        for name, spec in columns.items():
            if name == data.label:
                out[name] = _coerced(rows[_LABEL], spec, self.uri)
            elif name == data.timestamp:
                out[name] = self._timestamps(rows, name, spec)
            elif name == data.entity:
                out[name] = self._entities(rows, name, spec)
            elif name in rows.columns:
                out[name] = rows[name]
        return pd.DataFrame(out)

    def _timestamps(self, rows: pd.DataFrame, name: str, spec: ColumnSpec) -> pd.Series:
        """The request's own time where it sent one, else the capture time; tz-aware UTC."""
        captured = rows["ts"]
        if name not in rows.columns:
            return captured.astype("datetime64[ns, UTC]")
        sent = _coerced(rows[name], spec, self.uri)
        if sent.dtype == object:  # some value is not a time: kept as sent, for validation to report
            return sent.where(sent.notna(), captured)
        return sent.dt.tz_localize("UTC").fillna(captured).astype("datetime64[ns, UTC]")

    def _entities(self, rows: pd.DataFrame, name: str, spec: ColumnSpec) -> pd.Series:
        """The request's own entity where it sent one, else :func:`synthetic_entity` (as text for a string or
        category entity)."""
        sent = rows[name] if name in rows.columns else pd.Series(None, index=rows.index, dtype=object)
        absent = sent.isna()
        if not absent.any():
            return sent
        made = [synthetic_entity(r, int(n)) for r, n in zip(rows.loc[absent, "request_id"], rows.loc[absent, "row"])]
        filled = sent.astype(object)
        filled[absent] = [str(m) for m in made] if spec.type in ("string", "category") else made
        if spec.type == "int":
            try:
                return filled.astype("Int64")  # exact: ids above 2**53 never pass through a float
            except (TypeError, ValueError):  # an id sent as text: validation coerces (or reports) it
                pass
        return filled


# -- opening a URI -------------------------------------------------------------------------------------------------


def open_source(uri: str, *, base_dir: Path, options: Mapping[str, Any]) -> CapturedSource:
    """Open ``captured://MODEL`` as a :class:`CapturedSource` of the project at ``base_dir``; nothing is read yet."""
    shown = redact(uri)
    model, checked = _options(uri, shown, options)
    try:
        project = load_project(base_dir)
    except LoomError as err:
        raise ConfigError(f"data source {shown} shapes its rows by the project's data schema, but {err}") from None
    store = checked.pop("store", None)
    if store is None:
        store = project.capture_uri
    elif "://" not in store:  # a directory, relative to the project; URIs (file:// too) are opened as they are
        store = str(resolve_path(store, Path(base_dir)).resolve())
    return CapturedSource(shown, model=model, project=project, store=store, options=checked)


@hookimpl
def loom_register_data_sources(register: Register) -> None:
    """``captured://MODEL``: a model's served traffic joined to its feedback labels."""
    register(SCHEME, open_source)
