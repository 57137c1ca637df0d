"""Capture of served traffic: a sampled in-memory window per model version for drift checks, and a capture store
that a background thread fills with every sampled request (Parquet, partitioned by model, version and date).

The request path only draws a random number and, for a sampled request, builds one tuple of its inputs and appends
it to two deques: no pandas, no I/O, no lock, nothing the garbage collector keeps walking. When the store's buffer
is full the sample is dropped and counted, so capture never slows or fails a request.

The store is a local directory or any file system URI (``monitoring.store_path``, else ``<storage.url>/capture``:
see :attr:`runtime.Project.capture_uri`), opened through :func:`runtime.open_location`. Every part is written whole
(a hidden temporary moved into place on a disk, one upload under its final name on an object store), so readers
never see half of one. While the store cannot be written (a bucket gone, an endpoint down) serving goes on: the
rows of failed flushes are dropped and counted, and :meth:`CaptureStore.status` says since when and why.
"""

from __future__ import annotations

import logging
import os
import posixpath
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..filesystems import Location, open_location
from ..monitoring import TENSOR_STATS, tensor_summary
from ..secrets import redact
from .encoding import numeric_matrix
from .protocol import Columns

log = logging.getLogger("loom.serving")

#: Columns the store and the window add next to a model's inputs.
#: ``request_id`` is the server's own id of the request (``X-Loom-Request-ID``, what feedback names);
#: ``client_request_id`` the client's (``X-Request-ID`` or an Open Inference Protocol ``id``), null when none.
META = ("request_id", "client_request_id", "row", "ts", "version", "latency_ms", "prediction")


#: On an object store, how long a capture write waits for an answer (seconds without a byte) and how many attempts
#: it makes: a part is small, and a flush must not stall for minutes on an endpoint that stopped answering.
REQUEST_TIMEOUT_S = 5.0
ATTEMPTS = 2
#: While writes fail, a flush tries the store at most this often (and at least every flush interval); the flushes
#: in between drop their rows at once instead of each waiting for the store's timeouts.
RETRY_S = 5.0
#: Parts read at once from an object store.
READERS = 8
#: File systems where a file appears whole when its upload completes: written under the final name directly.
_OBJECT_STORES = ("s3", "gcs")


def new_request_id() -> str:
    return uuid.uuid4().hex


def capture_location(root: str | os.PathLike[str] | Location) -> Location:
    """The :class:`~runtime.Location` of a capture store: a directory or a file system URI (S3 with the capture
    store's short timeouts), or a location opened already."""
    if isinstance(root, Location):
        return root
    return open_location(root, what="the capture store", request_timeout_s=REQUEST_TIMEOUT_S, attempts=ATTEMPTS)


def put(location: Location, rel: str, data: Any) -> None:
    """Write ``data`` (bytes or a ``pyarrow.Buffer``) to ``rel`` under ``location`` so that readers, who skip hidden
    files, see all of it or nothing: a hidden temporary renamed into place on a disk (not fsynced: captured traffic
    is a sample, and a flush must stay cheap), one upload under the final name on an object store (it appears when
    complete), a temporary and a move elsewhere."""
    if location.local:
        path = location.local_path(rel)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            try:
                f = open(tmp, "wb")  # noqa: SIM115 - closed below
            except FileNotFoundError:  # the first part of a new partition (the directory is made once, not per write)
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(tmp, "wb")  # noqa: SIM115
            with f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    fs, full = location.fs, posixpath.join(location.path, rel)
    if fs.type_name in _OBJECT_STORES:  # no directories to make; the object is visible only once uploaded whole
        with fs.open_output_stream(full) as f:
            f.write(data)
        return
    fs.create_dir(posixpath.dirname(full), recursive=True)
    temp = posixpath.join(location.path, location.temporary(rel))  # hidden: readers skip it
    try:
        with fs.open_output_stream(temp) as f:
            f.write(data)
        fs.move(temp, full)
    except BaseException:
        try:
            fs.delete_file(temp)
        except Exception:  # noqa: BLE001 - the write's own error is the one to report
            pass
        raise


def short_error(err: BaseException) -> str:
    """An error in one redacted line: what a status or a log line shows of it."""
    text = redact(str(err)).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def _read_parts(location: Location, rel: str, prefix: str = "part-") -> list[pd.DataFrame]:
    """Every Parquet part under ``rel`` (oldest name first), read as DataFrames."""
    files = [f for f in location.files(rel, ".parquet") if posixpath.basename(f).startswith(prefix)]
    if location.local:
        return [pd.read_parquet(location.local_path(f)) for f in files]
    if not files:
        return []

    def one(f: str) -> pd.DataFrame:
        return pd.read_parquet(posixpath.join(location.path, f), filesystem=location.fs)

    with ThreadPoolExecutor(min(READERS, len(files)), thread_name_prefix="loom-capture-read") as pool:
        return list(pool.map(one, files))


class Layout(NamedTuple):
    """Where a model version's inputs are in its samples (one per :class:`Capture`, shared by its samples)."""

    #: Every input, in the model's schema order (the column order of the store and the window).
    inputs: tuple[str, ...]
    #: Inputs read back from the encoder's numeric matrix: ``(name, column in the matrix, "float" or "bool")``.
    #: Integers are not, so a value beyond 2**53 is stored exactly as it was sent.
    from_matrix: tuple[tuple[str, int, str], ...]
    #: The other inputs, kept per sample as the request decoded them.
    others: tuple[str, ...]
    #: The encoder's numeric matrix columns, in order.
    numeric: tuple[str, ...] = ()
    #: Tensor inputs: kept per sample as decoded, stored as their summary statistics (computed at flush, for a
    #: whole batch of samples at once, never on the request path).
    tensors: tuple[str, ...] = ()

    @classmethod
    def of(cls, inputs: Any, numeric: tuple[str, ...] = (), types: Mapping[str, str] | None = None) -> Layout:
        """``inputs`` in order; ``numeric`` the encoder's matrix columns; ``types`` each input's declared type."""
        types = types or {}
        from_matrix = tuple((c, j, types[c]) for j, c in enumerate(numeric) if types.get(c) in ("float", "bool"))
        taken = {c for c, _, _ in from_matrix}
        tensors = tuple(c for c in inputs if types.get(c) == "tensor")
        columns = tuple(chain.from_iterable((f"{c}.{stat}" for stat in TENSOR_STATS) if c in tensors else (c,)
                                            for c in inputs))
        return cls(columns, from_matrix, tuple(c for c in inputs if c not in taken), tuple(numeric), tensors)


#: One sampled request, a flat tuple: ``(model, version, request_id, client_id, ts, latency_s, rows, matrix,
#: predicted, *values)``. ``matrix`` is the encoder's numeric matrix (or None) and ``values`` are the :attr:`Layout.others`
#: inputs; for a one-row request (the common case) ``predicted`` and each value are bare, else tuples (or the
#: decoded numpy arrays). Flat and *plain* on purpose: CPython stops tracking a plain tuple of strings, numbers and
#: arrays the first time the collector sees it, so the thousands of samples the window and the store's buffer keep
#: alive cost the garbage collector nothing. A NamedTuple (a subclass) is never untracked, and a tuple holding
#: tuples only at a later collection; measured: with the request's columns kept as they were, every collection
#: walked them all and capture cost 15% of the throughput of 30-input requests.
Sample = tuple
_MODEL, _VERSION, _REQUEST_ID, _CLIENT_ID, _TS, _LATENCY_S, _ROWS, _MATRIX, _PREDICTED, _VALUES = range(10)


def _columns(samples: list[Sample], layout: Layout) -> dict[str, Any]:
    """Samples (of one model version) column by column: the :data:`META` columns and the inputs. The samples are
    transposed in one call; matrix columns are one concatenation; one-row requests (the common case) take a path
    without per-sample repeats."""
    fields = list(zip(*samples))  # transposed in C: one tuple per field
    counts = fields[_ROWS]
    one_row = all(n == 1 for n in counts)

    def repeated(values: tuple[Any, ...]) -> Any:
        return values if one_row else [v for v, n in zip(values, counts) for _ in range(n)]

    def flat(values: tuple[Any, ...]) -> list[Any]:
        """One input's (or the prediction's) values of every sample, row by row."""
        if one_row and type(values[0]) is not np.ndarray:
            return list(values)
        return list(chain.from_iterable(v.tolist() if type(v) is np.ndarray else (v,) if n == 1 else v
                                        for v, n in zip(values, counts)))

    out: dict[str, Any] = {
        "request_id": list(repeated(fields[_REQUEST_ID])),
        "client_request_id": [c or None for c in repeated(fields[_CLIENT_ID])],
        "row": [0] * len(samples) if one_row else [i for n in counts for i in range(n)],
        "ts": repeated(fields[_TS]),
        "version": list(repeated(fields[_VERSION])),
        "latency_ms": np.round(np.asarray(repeated(fields[_LATENCY_S]), dtype=np.float64) * 1000, 3),
    }
    inputs: dict[str, Any] = {}
    if layout.from_matrix:
        matrix = np.concatenate(fields[_MATRIX]).T  # one row per input column
        for name, j, kind in layout.from_matrix:
            col = np.ascontiguousarray(matrix[j])
            if kind == "bool":
                missing = np.isnan(col)
                col = col.astype(bool)
                if missing.any():
                    col = np.where(missing, None, col).astype(object)
            inputs[name] = col
    for c, values in zip(layout.others, fields[_VALUES:]):
        if c in layout.tensors:  # [rows, *shape] per sample -> per-row summary statistics, in one pass
            inputs.update(tensor_summary(c, np.concatenate(values)))  # decoded tensors are arrays, rows first
            continue
        if type(values[0]) is np.ndarray:
            try:  # a numpy column, as decoded: joined in one call
                inputs[c] = np.concatenate(values)
                continue
            except (ValueError, TypeError):  # some requests sent this input as JSON (bare values or tuples)
                pass
        inputs[c] = flat(values)
    for c in layout.inputs:
        out[c] = inputs[c]
    out["prediction"] = flat(fields[_PREDICTED])
    return out


def frames(samples: list[Sample], layout: Layout) -> pd.DataFrame:
    """Samples (at least one, of one model version) as rows: the :data:`META` columns and the inputs."""
    frame = pd.DataFrame(_columns(samples, layout))
    frame["ts"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    return frame


def _table(samples: list[Sample], layout: Layout) -> pa.Table:
    """Samples as an Arrow table for the store, without going through pandas (the same schema as :func:`frames`
    gives, missing values as nulls; a column Arrow cannot type on its own, e.g. mixed strings and numbers, goes
    through pandas)."""
    cols = _columns(samples, layout)
    ts = np.asarray(cols.pop("ts"), dtype=np.float64)
    arrays = {"request_id": pa.array(cols.pop("request_id"), pa.string()),
              "client_request_id": pa.array(cols.pop("client_request_id"), pa.string()),
              "row": pa.array(cols.pop("row"), pa.int64()),
              "ts": pa.array(np.round(ts * 1e6).astype(np.int64) * 1000, pa.timestamp("ns", tz="UTC"))}  # to the us
    for name, values in cols.items():
        try:
            arrays[name] = pa.array(values, from_pandas=True)  # NaN (a missing matrix value) -> null
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[name] = pa.Array.from_pandas(pd.Series(values))
    return pa.table(arrays)


class CaptureStore:
    """Writes sampled requests and feedback labels as Parquet files under ``root`` (a directory or a file system
    URI): ``model=<m>/version=<v>/date=<YYYY-MM-DD>/part-*.parquet`` and ``feedback/model=<m>/date=<d>/part-*.parquet``.

    :meth:`offer` never blocks: above ``max_pending`` buffered rows it drops the sample and counts it. A daemon
    thread flushes every ``flush_s`` seconds; a failed write is logged and counted as dropped, never raised. After a
    failed write the store is tried again at most every ``retry_s`` seconds (flushes in between drop at once), and
    :meth:`status` reports it not ok until a write succeeds again.
    """

    def __init__(self, root: str | os.PathLike[str] | Location, *, max_pending: int, flush_s: float,
                 replica: str = "", on_drop: Any = None, on_write: Any = None, forward: Any = None,
                 retry_s: float | None = None):
        self.root = root
        #: Where the parts go (see :func:`capture_location`).
        self.location = capture_location(root)
        self.max_pending = max_pending
        self.flush_s = flush_s
        self.retry_s = max(flush_s, RETRY_S) if retry_s is None else retry_s
        self.tag = (replica or "local")[:12] + "-" + uuid.uuid4().hex[:6]
        self.dropped = 0
        self.written = 0
        #: Feedback labels that could not be written (they still reach the drift checks in memory).
        self.feedback_dropped = 0
        self._pending: deque[Sample] = deque()
        # Rows offered (written by the request path only) and flushed (by the flush thread only): one writer each,
        # so no lock; their difference is what ``max_pending`` bounds.
        self._offered_rows = 0
        self._flushed_rows = 0
        self._feedback: deque[tuple[str, pd.DataFrame]] = deque()
        self._on_drop = on_drop or (lambda n: None)
        self._on_write = on_write or (lambda n: None)
        self._seq = 0
        # The store's state, as status() reports it: ok since when; the last failure; when to try again.
        self._state = threading.Lock()
        self._ok = True
        self._since = time.time()
        self._error: str | None = None
        self._retry_at = 0.0
        #: Called by every flush with the samples it took (possibly none): e.g. sending them to the deployment's
        #: monitor. Its failure is logged, never raised.
        self.forward = forward
        #: Like :attr:`forward`, with the flush's Arrow tables by ``(model, version)`` instead of its samples (what
        #: a replica sends its deployment's monitor); when set, :attr:`forward` is not called.
        self.forward_tables: Any = None
        self._flushing = threading.Lock()
        #: Each model version's :class:`Layout`, registered by its :class:`Capture`.
        self.layouts: dict[tuple[str, int], Layout] = {}
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loom-capture", daemon=True)
        self._thread.start()

    def offer(self, sample: Sample) -> bool:
        rows = sample[_ROWS]
        if self._offered_rows - self._flushed_rows + rows > self.max_pending:
            self.dropped += 1
            self._on_drop(1)
            return False
        self._offered_rows += rows
        self._pending.append(sample)
        return True

    @property
    def pending_rows(self) -> int:
        """Rows buffered for the next flush."""
        return self._offered_rows - self._flushed_rows

    def status(self) -> dict[str, Any]:
        """Whether the last write to the store succeeded (``ok``) and since when (``since``, UTC), the last failure
        (``error``, redacted), the store's URI (redacted), and the sampled requests ``written`` and ``dropped``
        (overload and failed writes), the feedback labels dropped and the rows waiting for the next flush."""
        with self._state:
            ok, since, error = self._ok, self._since, self._error
        return {"ok": ok, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)), "error": error,
                "uri": self.location.shown, "written": self.written, "dropped": self.dropped,
                "feedback_dropped": self.feedback_dropped, "pending_rows": self.pending_rows}

    def add_feedback(self, model: str, labels: pd.DataFrame) -> None:
        self._feedback.append((model, labels))
        self._wake.set()

    def flush(self) -> None:
        """Write what is buffered now (the background thread calls this; a drift check, tests and shutdown may
        too: one flush at a time)."""
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        samples = [self._pending.popleft() for _ in range(len(self._pending))]
        self._flushed_rows += sum(s[_ROWS] for s in samples)
        groups: dict[tuple[str, int], list[Sample]] = {}
        for s in samples:
            groups.setdefault((s[_MODEL], s[_VERSION]), []).append(s)
        tables: dict[tuple[str, int], pa.Table] = {}

        def table_of(key: tuple[str, int], group: list[Sample]) -> pa.Table:
            tables[key] = _table(group, self.layouts[key])
            return tables[key]

        for (model, version), group in groups.items():
            if self.forward_tables is not None:  # needed whether or not the store takes it
                try:
                    table_of((model, version), group)
                except Exception:  # noqa: BLE001 - a bad batch: _stored says so below
                    pass
            if self._stored(f"model={model}/version={version}",
                            lambda g=group, k=(model, version): tables[k] if k in tables else table_of(k, g),
                            f"{len(group)} sampled requests of {model} v{version}"):
                self.written += len(group)
                self._on_write(len(group))
            else:
                self.dropped += len(group)
                self._on_drop(len(group))
        if self.forward_tables is not None:
            try:  # the tables the store wrote (one Arrow buffer per version: 50x cheaper to send than samples)
                self.forward_tables({key: tables[key] for key in groups if key in tables})
            except Exception:  # noqa: BLE001 - capture must never take the replica down
                log.exception("capture: could not forward %d sampled requests", len(samples))
        elif self.forward is not None:
            try:
                self.forward(samples)
            except Exception:  # noqa: BLE001 - capture must never take the replica down
                log.exception("capture: could not forward %d sampled requests", len(samples))
        for _ in range(len(self._feedback)):
            model, labels = self._feedback.popleft()
            if not self._stored(f"feedback/model={model}", lambda lb=labels: pa.Table.from_pandas(
                    lb, preserve_index=False), f"{len(labels)} feedback labels of {model}"):
                self.feedback_dropped += len(labels)

    def _stored(self, base: str, table: Any, what: str) -> bool:
        """Write ``table()`` as a new part under ``base``; False (logged, and the store marked down if the write
        failed) when it was not written."""
        if not self._ok and time.monotonic() < self._retry_at:
            return False  # the store failed a moment ago: not waiting on it again yet
        try:
            data = table()
        except Exception:  # noqa: BLE001 - a bad batch, not a bad store: capture must never take the replica down
            log.exception("capture store: could not convert %s", what)
            return False
        try:
            self._write(base, data)
        except Exception as err:  # noqa: BLE001 - OSError, ArrowInvalid, botocore's...: the store is unusable now
            self._failed(err, what)
            return False
        self._recovered()
        return True

    def write_object(self, rel: str, data: bytes) -> None:
        """Write one small file ``rel`` (e.g. a drift check's record) to the store, as a part is written; raises
        when the store is failing (at once while it waits to try again), and the failure counts in :meth:`status`."""
        if not self._ok and time.monotonic() < self._retry_at:
            raise OSError(f"the capture store is unavailable ({self._error})")
        try:
            put(self.location, rel, data)
        except Exception as err:
            self._failed(err, rel)
            raise
        self._recovered()

    def _failed(self, err: BaseException, what: str) -> None:
        message = short_error(err)
        with self._state:
            first = self._ok
            if first:
                self._ok, self._since = False, time.time()
            self._error = message
            self._retry_at = time.monotonic() + self.retry_s
        if first:
            log.warning("capture store %s cannot be written (%s): dropping captured rows, and trying again every "
                        "%.0f s", self.location.shown, message, self.retry_s)
        log.debug("capture store: could not write %s: %s", what, message)

    def _recovered(self) -> None:
        if self._ok:
            return
        with self._state:
            down_s = time.time() - self._since
            self._ok, self._since, self._error = True, time.time(), None
        log.warning("capture store %s is writable again (after %.0f s)", self.location.shown, down_s)

    def _write(self, base: str, data: pa.Table) -> None:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        self._seq += 1
        # Dictionary-encode the repeating text columns (categories, labels) only: on unique values (request ids,
        # numbers) Parquet builds a dictionary and then gives it up, which measured as half the write's time.
        repeating = [f.name for f in data.schema if f.name not in ("request_id", "client_request_id")
                     and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
        buf = pa.BufferOutputStream()
        pq.write_table(data, buf, use_dictionary=repeating)
        put(self.location, f"{base}/date={day}/part-{int(time.time() * 1000)}-{self.tag}-{self._seq:08d}.parquet",
            buf.getvalue())

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()


def read_captured(root: str | os.PathLike[str] | Location, model: str, version: int | None = None) -> pd.DataFrame:
    """Every captured row of ``model`` (one version, or all) from a capture store (a directory or a file system
    URI), oldest first."""
    rel = f"model={model}" + (f"/version={version}" if version is not None else "")
    parts = _read_parts(capture_location(root), rel)
    if not parts:
        return pd.DataFrame(columns=list(META))
    return pd.concat(parts, ignore_index=True).sort_values("ts", kind="stable")


def read_feedback(root: str | os.PathLike[str] | Location, model: str) -> pd.DataFrame:
    """Every feedback label of ``model``: ``request_id``, ``row``, ``label`` (the latest label per row wins)."""
    parts = _read_parts(capture_location(root), f"feedback/model={model}")
    if not parts:
        return pd.DataFrame(columns=["request_id", "row", "label"])
    out = pd.concat(parts, ignore_index=True)
    return out.drop_duplicates(["request_id", "row"], keep="last").reset_index(drop=True)


class Capture:
    """A bounded, sampled window of one model version's served rows for drift checks, feeding the capture store.

    :meth:`add` is on the request path (see the module docstring). :meth:`frame` builds the DataFrame when a drift
    check asks for it. ``schema`` (the model's inputs and their declared types) and ``numeric`` (the encoder's
    numeric matrix columns) let :meth:`add` keep the matrix the encoder built instead of copying the values out of
    the request; without them every input is kept as decoded.
    """

    def __init__(self, model: str, version: int, window: int, sample_rate: float, *,
                 store: CaptureStore | None = None, seed: int | None = None,
                 schema: Mapping[str, Mapping[str, Any]] | None = None, numeric: tuple[str, ...] = ()):
        self.model = model
        self.version = version
        self.window = window
        self.sample_rate = sample_rate
        self.store = store
        self.layout: Layout | None = None
        if schema is not None:
            self._set_layout(Layout.of(schema, tuple(numeric), {c: s["type"] for c, s in schema.items()}))
        self._chunks: deque[Sample] = deque()
        self._window_rows = 0
        self._rng = random.Random(seed)
        self._seed: pd.DataFrame | None = None
        #: Rows another process captured, as frames (a replica's flushes, in the deployment's monitor).
        self._frames: deque[pd.DataFrame] = deque()
        self._frame_rows = 0
        self.captured = 0

    def _set_layout(self, layout: Layout) -> Layout:
        self.layout = layout
        if self.store is not None:
            self.store.layouts[(self.model, self.version)] = layout
        return layout

    def add(self, cols: Columns, predicted: list[Any], *, matrix: np.ndarray | None = None, request_id: str = "",
            client_id: str = "", latency_s: float = 0.0) -> None:
        """Sample one served request: its validated ``cols``, the ``predicted`` labels and, when the layout reads
        inputs from it, the encoder's numeric ``matrix`` of the same request."""
        if self.sample_rate <= 0 or (self.sample_rate < 1 and self._rng.random() >= self.sample_rate):
            return
        layout = self.layout or self._set_layout(Layout.of(cols))
        if layout.from_matrix and matrix is None:  # a caller without the encoder's matrix: built as it builds it
            matrix = numeric_matrix(cols, layout.numeric)
        rows, rid, kept = len(predicted), request_id or new_request_id(), matrix if layout.from_matrix else None
        if rows == 1:
            sample = (self.model, self.version, rid, client_id, time.time(), latency_s, 1, kept, predicted[0],
                      *[v if type(v) is np.ndarray else v[0] for v in map(cols.__getitem__, layout.others)])
        else:
            sample = (self.model, self.version, rid, client_id, time.time(), latency_s, rows, kept, tuple(predicted),
                      *[v if type(v) is np.ndarray else tuple(v) for v in map(cols.__getitem__, layout.others)])
        chunks = self._chunks
        chunks.append(sample)  # appends and poplefts are atomic: a drift check's thread may be copying the deque
        self._window_rows += rows
        while self._window_rows - chunks[0][_ROWS] >= self.window:  # sized in rows; the newest sample always stays
            self._window_rows -= chunks.popleft()[_ROWS]
        self.captured += rows
        if self.store is not None:
            self.store.offer(sample)

    def extend(self, samples: list[Sample]) -> None:
        """Add samples another process captured (a replica's, in the deployment's monitor): no sampling, no
        store; the window stays sized in rows."""
        chunks = self._chunks
        for sample in samples:
            chunks.append(sample)
            self._window_rows += sample[_ROWS]
            self.captured += sample[_ROWS]
        while chunks and self._window_rows - chunks[0][_ROWS] >= self.window:
            self._window_rows -= chunks.popleft()[_ROWS]

    def extend_rows(self, rows: pd.DataFrame) -> None:
        """Add rows another process captured and flushed (a replica's store table, in the deployment's monitor):
        no sampling, no store; the window stays sized in rows."""
        if not len(rows):
            return
        self._frames.append(rows)
        self._frame_rows += len(rows)
        self.captured += len(rows)
        while len(self._frames) > 1 and self._frame_rows - len(self._frames[0]) >= self.window:
            self._frame_rows -= len(self._frames.popleft())

    def seed(self, rows: pd.DataFrame) -> None:
        """Start the window from rows read back from the capture store (a restarted monitor's): they come before
        every sample added later."""
        self._seed = rows.tail(self.window).reset_index(drop=True)
        self.captured += len(self._seed)

    def frame(self, since_s: float | None = None) -> pd.DataFrame:
        """The captured rows (at most ``window``, newest last; only the last ``since_s`` seconds when given) with
        the :data:`META` columns."""
        chunks = list(self._chunks)
        cutoff = time.time() - since_s if since_s is not None else None
        if cutoff is not None:
            chunks = [c for c in chunks if c[_TS] >= cutoff]
        seed = self._seed
        if seed is not None and cutoff is not None:
            seed = seed[seed["ts"] >= pd.Timestamp(cutoff, unit="s", tz="UTC")]
        parts = [seed] if seed is not None and len(seed) else []
        for rows in list(self._frames):
            if cutoff is not None:
                rows = rows[rows["ts"] >= pd.Timestamp(cutoff, unit="s", tz="UTC")]
            if len(rows):
                parts.append(rows)
        if chunks:
            assert self.layout is not None  # set by the first add
            parts.append(frames(chunks, self.layout))
        if not parts:
            return pd.DataFrame(columns=list(META))
        frame = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
        return frame.tail(self.window).reset_index(drop=True)
