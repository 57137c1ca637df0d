"""Capture of served traffic: a sampled in-memory window per model version for drift checks, and a capture store
that a background thread fills with every sampled request (Parquet, partitioned by model, version and date).

The request path only draws a random number and, for a sampled request, builds one tuple of its inputs and appends
it to two deques: no pandas, no I/O, no lock, nothing the garbage collector keeps walking. When the store's buffer
is full the sample is dropped and counted, so capture never slows or fails a request.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .protocol import Columns

log = logging.getLogger("loom.serving")

#: Columns the store and the window add next to a model's inputs.
META = ("request_id", "row", "ts", "version", "latency_ms", "prediction")


def new_request_id() -> str:
    return uuid.uuid4().hex


class Sample(NamedTuple):
    """One sampled request: its inputs, predicted labels and what the store records about it.

    A tuple of tuples, strings and numbers on purpose: once the collector has seen it, CPython stops tracking a
    tuple that holds only such values, so the thousands of samples a window and the store's buffer keep alive cost
    the garbage collector nothing. (Kept as the request's dict of lists, they made every full collection walk them;
    measured: capture on cost 15% of the throughput of 30-input requests, nearly all of it there.)"""

    model: str
    version: int
    request_id: str
    ts: float
    latency_ms: float
    names: tuple[str, ...]
    #: One entry per input: a numpy array (untracked by the collector, kept as the request decoded it), or, for a
    #: one-row request (the common case), the bare value; else a tuple of the values.
    values: tuple[Any, ...]
    predicted: tuple[Any, ...]


def _columns(samples: list[Sample]) -> dict[str, Any]:
    """Samples (of one model version) column by column: the :data:`META` columns and the inputs. One-row requests
    (the common case) take a path without per-sample repeats; arrays are concatenated once per column."""
    inputs = samples[0].names
    counts = [len(s.predicted) for s in samples]
    one_row = all(n == 1 for n in counts)

    def repeated(values: list[Any]) -> list[Any]:
        return values if one_row else [v for v, n in zip(values, counts) for _ in range(n)]

    out: dict[str, Any] = {
        "request_id": repeated([s.request_id for s in samples]),
        "row": [0] * len(samples) if one_row else [i for n in counts for i in range(n)],
        "ts": repeated([s.ts for s in samples]),
        "version": repeated([s.version for s in samples]),
        "latency_ms": repeated([s.latency_ms for s in samples]),
    }
    for c, values in zip(inputs, zip(*[s.values for s in samples])):  # transposed in C
        if type(values[0]) is np.ndarray:
            try:  # a numpy column, as decoded: joined in one call
                out[c] = np.concatenate(values)
                continue
            except (ValueError, TypeError):  # some requests sent this input as JSON (bare values or tuples)
                pass
        elif one_row:
            out[c] = list(values)
            continue
        # a one-row sample may hold its bare value
        parts = [v if type(v) is np.ndarray else (v,) if n == 1 else v for v, n in zip(values, counts)]
        out[c] = list(chain.from_iterable(v.tolist() if type(v) is np.ndarray else v for v in parts))
    out["prediction"] = list(chain.from_iterable(s.predicted for s in samples))
    return out


def frames(samples: list[Sample]) -> pd.DataFrame:
    """Samples (of one model version) as rows: the :data:`META` columns and the inputs."""
    if not samples:
        return pd.DataFrame(columns=list(META))
    frame = pd.DataFrame(_columns(samples))
    frame["ts"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    return frame


def _table(samples: list[Sample]) -> pa.Table:
    """Samples as an Arrow table for the store, without going through pandas (the same schema as :func:`frames`
    gives; a column Arrow cannot type on its own, e.g. mixed strings and numbers, goes through pandas)."""
    cols = _columns(samples)
    ts = np.asarray(cols.pop("ts"), dtype=np.float64)
    arrays = {"request_id": pa.array(cols.pop("request_id"), pa.string()), "row": pa.array(cols.pop("row"), pa.int64()),
              "ts": pa.array(np.round(ts * 1e6).astype(np.int64) * 1000, pa.timestamp("ns", tz="UTC"))}  # to the us
    for name, values in cols.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[name] = pa.Array.from_pandas(pd.Series(values))
    return pa.table(arrays)


class CaptureStore:
    """Writes sampled requests and feedback labels as Parquet files under ``root``:
    ``model=<m>/version=<v>/date=<YYYY-MM-DD>/part-*.parquet`` and ``feedback/model=<m>/date=<d>/part-*.parquet``.

    :meth:`offer` never blocks: above ``max_pending`` buffered requests it drops the sample and counts it. A daemon
    thread flushes every ``flush_s`` seconds; a failed write is logged and counted as dropped, never raised.
    """

    def __init__(self, root: Path, *, max_pending: int, flush_s: float, replica: str = "",
                 on_drop: Any = None, on_write: Any = None):
        self.root = root
        self.max_pending = max_pending
        self.flush_s = flush_s
        self.tag = (replica or "local")[:12] + "-" + uuid.uuid4().hex[:6]
        self.dropped = 0
        self.written = 0
        self._pending: deque[Sample] = deque()
        self._feedback: deque[tuple[str, pd.DataFrame]] = deque()
        self._on_drop = on_drop or (lambda n: None)
        self._on_write = on_write or (lambda n: None)
        self._seq = 0
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loom-capture", daemon=True)
        self._thread.start()

    def offer(self, sample: Sample) -> bool:
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            self._on_drop(1)
            return False
        self._pending.append(sample)
        return True

    def add_feedback(self, model: str, labels: pd.DataFrame) -> None:
        self._feedback.append((model, labels))
        self._wake.set()

    def flush(self) -> None:
        """Write what is buffered now (the background thread calls this; tests and shutdown may too)."""
        samples = [self._pending.popleft() for _ in range(len(self._pending))]
        groups: dict[tuple[str, int], list[Sample]] = {}
        for s in samples:
            groups.setdefault((s.model, s.version), []).append(s)
        for (model, version), group in groups.items():
            try:
                self._write(self.root / f"model={model}" / f"version={version}", _table(group))
                self.written += len(group)
                self._on_write(len(group))
            except Exception:  # noqa: BLE001 - capture must never take the replica down
                log.exception("capture store: could not write %d sampled requests of %s v%d", len(group), model,
                              version)
                self.dropped += len(group)
                self._on_drop(len(group))
        for _ in range(len(self._feedback)):
            model, labels = self._feedback.popleft()
            try:
                self._write(self.root / "feedback" / f"model={model}", labels)
            except Exception:  # noqa: BLE001
                log.exception("capture store: could not write %d feedback labels of %s", len(labels), model)

    def _write(self, base: Path, data: pd.DataFrame | pa.Table) -> None:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        path = base / f"date={day}"
        path.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        tmp = path / f".part-{self.tag}-{self._seq:08d}.tmp"
        if isinstance(data, pa.Table):
            pq.write_table(data, tmp)
        else:
            data.to_parquet(tmp, index=False)
        tmp.rename(path / f"part-{int(time.time() * 1000)}-{self.tag}-{self._seq:08d}.parquet")

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()


def read_captured(root: Path, model: str, version: int | None = None) -> pd.DataFrame:
    """Every captured row of ``model`` (one version, or all) from a capture store, oldest first."""
    base = root / f"model={model}"
    files = sorted((base / f"version={version}" if version is not None else base).glob("**/part-*.parquet"))
    if not files:
        return pd.DataFrame(columns=list(META))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values("ts", kind="stable")


def read_feedback(root: Path, model: str) -> pd.DataFrame:
    """Every feedback label of ``model``: ``request_id``, ``row``, ``label`` (the latest label per row wins)."""
    files = sorted((root / "feedback" / f"model={model}").glob("**/part-*.parquet"))
    if not files:
        return pd.DataFrame(columns=["request_id", "row", "label"])
    out = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return out.drop_duplicates(["request_id", "row"], keep="last").reset_index(drop=True)


class Capture:
    """A bounded, sampled window of one model version's served rows for drift checks, feeding the capture store.

    :meth:`add` is on the request path (see the module docstring). :meth:`frame` builds the DataFrame when a drift
    check asks for it.
    """

    def __init__(self, model: str, version: int, window: int, sample_rate: float, *,
                 store: CaptureStore | None = None, seed: int | None = None):
        self.model = model
        self.version = version
        self.window = window
        self.sample_rate = sample_rate
        self.store = store
        self._chunks: deque[Sample] = deque(maxlen=window)
        self._rng = random.Random(seed)
        self.captured = 0

    def add(self, cols: Columns, predicted: list[Any], *, request_id: str = "", latency_s: float = 0.0) -> None:
        if self.sample_rate <= 0 or (self.sample_rate < 1 and self._rng.random() >= self.sample_rate):
            return
        if len(predicted) == 1:
            values = tuple([v if type(v) is np.ndarray else v[0] for v in cols.values()])
        else:
            values = tuple([v if type(v) is np.ndarray else tuple(v) for v in cols.values()])
        sample = Sample(self.model, self.version, request_id or new_request_id(), time.time(),
                        round(latency_s * 1000, 3), tuple(cols), values, tuple(predicted))
        self._chunks.append(sample)  # atomic; the deque's maxlen bounds it (requests >= rows, trimmed in frame)
        self.captured += len(predicted)
        if self.store is not None:
            self.store.offer(sample)

    def frame(self, since_s: float | None = None) -> pd.DataFrame:
        """The captured rows (at most ``window``, newest last; only the last ``since_s`` seconds when given) with
        the :data:`META` columns."""
        chunks = list(self._chunks)
        if since_s is not None:
            cutoff = time.time() - since_s
            chunks = [c for c in chunks if c.ts >= cutoff]
        return frames(chunks).tail(self.window).reset_index(drop=True)
