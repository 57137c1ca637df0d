"""Batch scoring: a registered version over a whole table, on Ray Data, with serving's checks and encoding.

``loom score NAME[@alias|/version] --input URI --output URI`` and :func:`score` read the input through the data-source
plugin its URI names, score it with ``map_batches`` on a pool of actors sized to the cluster (one per GPU when the
cluster has GPUs), and write one Parquet file: the input's key columns, ``prediction`` (``probabilities`` too, for
classification) and ``model_version``.

Each batch is checked as serving checks a request: every input the version declares, coerced by the project's
coercion rules (:mod:`runtime.validation`), nulls only where the column is nullable, categories among the declared
ones, and a finite output. ``min``/``max`` are not checked: serving answers such rows too. A bad row is never
dropped silently: it goes to a quarantine CSV (its values as read, its 0-based row number ``_loom_row`` and the
reasons ``_loom_problems``, as training's ingest writes them) and is counted; more than ``data.bad_rows.max_fraction``
bad rows fail the run. The input encodes with the version's preprocessor (what serving's encoder computes).

Nothing is half-written: the Parquet file is written to a hidden temporary beside the output and moved over it only
once every row is scored (:meth:`runtime.Location.write_file`), and an output that exists is refused unless
``overwrite``. Rows come out in no particular order; the key columns say which row is which.

The version reaches the actors through Ray's object store (its artifacts are read once, on the driver), so actors on
any node score it whichever registry the project uses; the input is read by one task on the driver's node, where
relative paths and the project's files are.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .artifacts import REFERENCE, SPEC
from .config import ColumnSpec, Project
from .errors import DataValidationError, InvalidNameError, LoomError, NotFoundError
from .filesystems import Location, is_uri, open_location
from .formats import LoadLimits, ModelSpec, TorchNetwork, load_model, postprocess
from .model import ModelBundle, tensor_array
from .names import check_name
from .pipeline import Pipeline
from .registry import LATEST, ModelVersion, parse_ref
from .secrets import redact
from .tasks import Task

#: Rows per batch: read from the source, validated, encoded and scored at a time.
BATCH_ROWS = 65_536
#: Output columns Loom adds beside the key columns.
PREDICTION, PROBABILITIES, VERSION = "prediction", "probabilities", "model_version"
#: Columns that travel with each scored batch from the actors to the writer, and never reach the output: the row's
#: 0-based position in the input, the reasons a bad row was set aside (null for a good one) and its values as read.
_ROW, _PROBLEMS, _RAW = "_loom_row", "_loom_problems", "_loom_raw"


@dataclass
class ScoreResult:
    """What :func:`score` did."""

    model: str
    version: int
    output: str
    """The Parquet file written, as :func:`runtime.redact` shows it."""
    rows: int
    """Rows read from the input."""
    scored: int
    """Rows written to the output."""
    quarantined: int
    """Rows that failed the checks, set aside in :attr:`quarantine_file` (never in the output)."""
    quarantine_file: Path | None
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


# -- the version: one seam for how its network loads -------------------------------------------------------------


class Network:
    """A version ready to score: its input ``schema`` (input -> declared spec), its ``task``, the ``encoder`` of its
    tabular inputs, and :meth:`forward` from the encoded inputs to the task's outputs, in whatever model format the
    version is (:func:`runtime.formats.load_model`)."""

    def __init__(self, spec: ModelSpec, network: Callable[[tuple[np.ndarray, ...]], np.ndarray],
                 device: str = "cpu"):
        self.spec = spec
        self.schema: dict[str, dict[str, Any]] = spec.inputs
        self.task: Task = spec.task
        self.encoder = spec.preprocessor
        self.tensors = spec.tensors
        self.device = device
        if device != "cpu" and isinstance(network, TorchNetwork):  # a torch network goes to the GPU it was given
            network = _OnDevice(network.module, device)
        self._network = network

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, device: str = "cpu") -> Network:
        """A torch bundle in memory (not yet registered), as its format would load it."""
        spec = ModelSpec.from_json(bundle.to_artifacts()[SPEC])
        return cls(spec, TorchNetwork(bundle.build()), device)

    def encode(self, cols: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        """The forward pass's arguments for validated columns: the encoded tabular matrix (what serving's encoder
        computes), then each tensor input as ``[N, *shape]``."""
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf; the output check names the row
            x = (self.encoder.transform(cols),) if self.encoder.input_columns else ()
        return x + tuple(tensor_array(cols[n], spec) for n, spec in self.tensors.items())

    def forward(self, x: tuple[np.ndarray, ...]) -> np.ndarray:
        """Class probabilities ``[N, classes]`` or values ``[N]``, as serving's forward pass returns them."""
        return postprocess(self.task, self._network(x))


class _OnDevice:
    """A torch module on a GPU as a network: numpy in, numpy out."""

    def __init__(self, module: Any, device: str):
        import torch

        self.device = torch.device(device)
        self.module = module.to(self.device)

    def __call__(self, x: tuple[np.ndarray, ...]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(*(torch.from_numpy(a).to(self.device) for a in x)).float().cpu().numpy()


def _load_network(project: Project, registry: Any, name: str, version: int, *, device: str = "cpu") -> Network:
    """Version ``version`` of ``name`` from ``registry``, built for scoring on ``device`` in its model format. What
    serving may load is checked first (``serving.architectures``, ``serving.max_parameters``)."""
    from .plugins import get_plugins

    loaded = load_model(registry, name, version, plugins=get_plugins(modules=project.config.plugins),
                        limits=LoadLimits.of(project))
    return Network(loaded.spec, loaded.network, device)


class _Shipped:
    """A version's artifacts (all but the reference sample), read once on the driver and handed to every actor
    through Ray's object store: a registry in the shape :func:`_load_network` reads, for that version only."""

    def __init__(self, name: str, version: int, artifacts: dict[str, bytes]):
        self.name, self.version, self.artifacts = name, version, artifacts

    @classmethod
    def read(cls, registry: Any, mv: ModelVersion) -> _Shipped:
        names = [a for a in mv.artifacts if a != REFERENCE]
        return cls(mv.name, mv.version, {a: registry.read_artifact(mv.name, mv.version, a) for a in names})

    def get_version(self, name: str, ref: int | str) -> ModelVersion:
        if (name, ref) != (self.name, self.version):
            raise NotFoundError(f"only {self.name} v{self.version} was shipped, not {name} {ref}")
        return ModelVersion(name=self.name, version=self.version, created_at=0.0, artifacts=tuple(self.artifacts))

    def read_artifact(self, name: str, version: int, artifact: str) -> bytes:
        if (name, version) != (self.name, self.version) or artifact not in self.artifacts:
            raise NotFoundError(f"{name} v{version} has no artifact {artifact!r} (shipped: {', '.join(self.artifacts)})")
        return self.artifacts[artifact]


def parse_model_ref(ref: str, default: str | None = None) -> tuple[str, int | str]:
    """``NAME`` (``default``, else the latest version), ``NAME@alias`` or ``NAME/3`` -> ``(name, version or alias)``.

    :raises InvalidNameError: an unsafe name or alias, or a version that is not a number.
    """
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return check_name(name, "model name"), parse_ref(alias)
    if "/" in ref:
        name, _, version = ref.partition("/")
        if not (version.isascii() and version.isdigit()) and version != LATEST:
            raise InvalidNameError(f"version {version!r} in {ref!r} is not a number (write NAME/3 or NAME@alias)")
        return check_name(name, "model name"), parse_ref(version)
    return check_name(ref, "model name"), default or LATEST


# -- checking and scoring one batch (runs in the actors; plain pandas, no Ray) ------------------------------------


def _scoring_columns(net: Network, keys: Mapping[str, ColumnSpec | None]) -> dict[str, ColumnSpec]:
    """What each batch is checked against: the version's inputs and the declared key columns, without min/max
    (serving does not check them)."""
    columns = {k: spec for k, spec in keys.items() if spec is not None}
    for name, spec in net.schema.items():
        columns[name] = ColumnSpec(**spec)
    return {k: s.model_copy(update={"min": None, "max": None}) if s.type in ("int", "float") else s
            for k, s in columns.items()}


class BatchScorer:
    """Checks, encodes and scores batches of one version; each batch becomes an Arrow table of the key columns,
    the predictions and the version, plus the writer's bookkeeping columns (see :data:`_ROW`)."""

    def __init__(self, net: Network, version: int, keys: Mapping[str, ColumnSpec | None], *, source: str = "input",
                 base_dir: Path | None = None):
        from .validation import BatchValidator  # the rules and per-row reasons of training's ingest

        self.net, self.version, self.keys, self.source, self.base_dir = net, version, dict(keys), source, base_dir
        self.columns = _scoring_columns(net, self.keys)
        self._validator = BatchValidator
        classes = list(net.task.classes)
        self.classes = classes
        self.label_type = pa.array(classes).type if classes else pa.float64()

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        batch = batch.reset_index(drop=True)
        rows = batch.pop(_ROW).to_numpy(np.int64) if _ROW in batch else np.arange(len(batch), dtype=np.int64)
        self._check_keys(batch)
        frame, bad, reasons = self._validator(self.columns, self.source, base_dir=self.base_dir).add(batch)
        self._check_columns(batch)
        out = self._outputs(frame, bad, reasons)
        return self._table(batch, frame, rows, bad, reasons, out)

    def _check_keys(self, batch: pd.DataFrame) -> None:
        missing = [k for k in self.keys if k not in batch.columns]
        if missing:
            raise DataValidationError(self.source, [f"{self.source}: key column {k!r} is missing" for k in missing])

    def _check_columns(self, batch: pd.DataFrame) -> None:
        """A missing or duplicated input is the whole input's problem, not a row's: it fails the run."""
        counts = Counter(batch.columns)
        problems = [f"{self.source}: column {c!r} " + ("is missing" if not counts[c] else f"appears {counts[c]} times")
                    for c in self.columns if counts[c] != 1]
        if problems:
            raise DataValidationError(self.source, problems)

    def _outputs(self, frame: pd.DataFrame, bad: np.ndarray, reasons: np.ndarray) -> np.ndarray | None:
        """The task's outputs for the good rows (``bad`` and ``reasons`` updated in place for rows whose output is
        not finite); ``None`` when no row is good."""
        good = np.flatnonzero(~bad)
        if not len(good):
            return None
        subset = frame if len(good) == len(frame) else frame.iloc[good]
        out = self.net.forward(self.net.encode(subset))
        finite = np.isfinite(out) if out.ndim == 1 else np.isfinite(out).all(axis=1)
        if not finite.all():
            lost = good[~finite]
            bad[lost] = True
            reasons[lost] = reasons[lost] + "; the model's output is not finite: numeric inputs are too large"
        full = np.zeros((len(frame), *out.shape[1:]), dtype=out.dtype)
        full[good] = out
        return full

    def _table(self, batch: pd.DataFrame, frame: pd.DataFrame, rows: np.ndarray, bad: np.ndarray,
               reasons: np.ndarray, out: np.ndarray | None) -> pa.Table:
        n = len(frame)
        mask = pa.array(bad)
        cols: dict[str, pa.Array] = {}
        for key, spec in self.keys.items():
            values = frame[key] if spec is not None else batch[key]
            cols[key] = pa.Array.from_pandas(values)
        outputs = np.zeros((n, len(self.classes)) if self.classes else n) if out is None else out
        labels = self.net.task.predictions(outputs)
        cols[PREDICTION] = pc.if_else(mask, pa.nulls(n, self.label_type), pa.array(labels, type=self.label_type))
        if self.classes:
            flat = pa.array(outputs.astype(np.float32).ravel())
            proba = pa.FixedSizeListArray.from_arrays(flat, len(self.classes))
            cols[PROBABILITIES] = pc.if_else(mask, pa.nulls(n, proba.type), proba)
        cols[VERSION] = pa.array(np.full(n, self.version, dtype=np.int64))
        cols[_ROW] = pa.array(rows)
        cols[_PROBLEMS] = (pa.array([r[2:] if b else None for r, b in zip(reasons, bad)], type=pa.string())
                           if bad.any() else pa.nulls(n, pa.string()))
        cols[_RAW] = self._raw(batch, bad)
        return pa.table(cols)

    def _raw(self, batch: pd.DataFrame, bad: np.ndarray) -> pa.Array:
        """Each bad row's values as read (the key columns and inputs), as JSON; null for good rows."""
        if not bad.any():
            return pa.nulls(len(batch), pa.string())
        names = list(dict.fromkeys([*self.keys, *self.columns]))
        raw = batch.loc[bad, ~batch.columns.duplicated()].reindex(columns=names)
        texts = iter(json.dumps(r, default=str) for r in raw.astype(object).where(raw.notna(), None).to_dict("records"))
        return pa.array([next(texts) if b else None for b in bad], type=pa.string())


# -- Ray Data: the input as a stream, the actors that score it -------------------------------------------------


def _source_datasource(spec: dict[str, Any], uri: str, options: dict[str, Any], batch_rows: int) -> Any:
    """A Ray Data datasource reading ``uri`` through its data-source plugin, in one task on the driver's node."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class PluginDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        @property
        def supports_distributed_reads(self) -> bool:
            return False  # relative paths, the project's files and data.generate's output are on the driver's node

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
            return [ReadTask(lambda: _read_source(spec, uri, options, batch_rows), meta)]

        def get_name(self) -> str:
            return "LoomSource"

    return PluginDatasource()


def _read_source(spec: dict[str, Any], uri: str, options: dict[str, Any], batch_rows: int) -> Iterator[pd.DataFrame]:
    """The input's batches, each with its rows' 0-based positions in :data:`_ROW`."""
    from .plugins import get_plugins

    project = Project.from_spec(spec)
    source = get_plugins(modules=project.config.plugins).data_source(uri, base_dir=project.root, options=options)
    offset = 0
    for frame in source.iter_batches(batch_rows):
        frame = frame.reset_index(drop=True)
        frame[_ROW] = np.arange(offset, offset + len(frame), dtype=np.int64)
        offset += len(frame)
        yield frame


class _ScoringActor:
    """One actor of the pool: builds the version from the shipped artifacts once, then scores batches."""

    def __init__(self, spec: dict[str, Any], shipped: list[Any], keys: dict[str, dict[str, Any] | None], device: str,
                 threads: int, source: str):
        import ray
        import torch

        torch.set_num_threads(threads)
        project = Project.from_spec(spec)
        version: _Shipped = shipped[0]
        net = _load_network(project, version, version.name, version.version, device=device)
        specs = {k: ColumnSpec(**s) if s is not None else None for k, s in keys.items()}
        self.score = BatchScorer(net, version.version, specs, source=source, base_dir=project.root)

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        return self.score(batch)


@dataclass(frozen=True)
class Pool:
    """The scoring actors: how many, what each reserves, and where the network runs."""

    actors: int
    cpus: float
    gpus: float
    device: str

    @classmethod
    def sized(cls, use_gpu: bool | Literal["auto"] = "auto", actors: int | None = None) -> Pool:
        """One actor per free GPU when the cluster has GPUs (or ``use_gpu``), else one per free CPU but the one
        the reading task takes; ``actors`` overrides the count."""
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)
        free = ray.available_resources()
        gpu = gpus >= 1 if use_gpu == "auto" else bool(use_gpu)
        if gpu and gpus < 1:
            raise LoomError("GPU scoring was asked for, but the Ray cluster has no GPU")
        if gpu:
            return cls(actors or max(1, int(free.get("GPU", 0))), 1, 1, "cuda")
        return cls(actors or max(1, int(free.get("CPU", 1)) - 1), 1, 0, "cpu")


# -- the output ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Output:
    """The Parquet file to write: its directory as a :class:`Location` and its name there."""

    location: Location
    name: str

    @classmethod
    def of(cls, uri: str | os.PathLike[str]) -> _Output:
        text = os.fspath(uri)
        head, sep, query = text.partition("?") if is_uri(text) else (text, "", "")
        directory, name = posixpath.split(head.rstrip("/")) if is_uri(text) else os.path.split(text)
        if head.endswith("/") or not name.lower().endswith((".parquet", ".pq")):
            raise LoomError(f"output {redact(text)} must name a Parquet file (…/scores.parquet)")
        location = open_location(directory + sep + query if is_uri(text) else (directory or "."), what="the output")
        return cls(location, name)

    @property
    def shown(self) -> str:
        return self.location.child(self.name).shown

    def check(self, overwrite: bool) -> None:
        """Refuse an output that exists (unless ``overwrite``) or that is a directory; make sure it is writable."""
        from pyarrow.fs import FileType

        self.location.check("the output")
        kind = self.location.fs.get_file_info(self.location.fs_path(self.name)).type
        if kind == FileType.Directory:
            raise LoomError(f"output {self.shown} is a directory; name a Parquet file")
        if kind != FileType.NotFound and not overwrite:
            raise LoomError(f"output {self.shown} exists; pass --overwrite (overwrite=True) to replace it")


class _Writer:
    """Splits scored batches: good rows into the Parquet file, bad rows into the quarantine CSV; counts both."""

    def __init__(self, f: Any, quarantine: Path, metadata: dict[bytes, bytes]):
        self.f, self.quarantine, self.metadata = f, quarantine, metadata
        #: Bad rows go here first; :meth:`finish` moves it to ``quarantine`` (or removes it).
        self.partial = quarantine.parent / f".{quarantine.name}.tmp"
        self.parquet: pq.ParquetWriter | None = None
        self.rows = self.scored = self.bad = 0
        self.reasons: Counter[str] = Counter()

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        problems = table.column(_PROBLEMS)
        bad = pc.is_valid(problems)
        n_bad = problems.length() - problems.null_count
        good = table.filter(pc.invert(bad)) if n_bad else table
        self._write(good.drop_columns([_ROW, _PROBLEMS, _RAW]))
        if n_bad:
            self._quarantine(table.filter(bad))

    def _write(self, table: pa.Table) -> None:
        if self.parquet is None:
            schema = table.schema.with_metadata(self.metadata)
            self.parquet = pq.ParquetWriter(self.f, schema)
        if table.num_rows:
            if table.schema != self.parquet.schema:
                try:
                    table = table.cast(self.parquet.schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
                    raise LoomError(f"the input's key columns change type between batches: {err}") from None
            self.parquet.write_table(table)
            self.scored += table.num_rows

    def _quarantine(self, table: pa.Table) -> None:
        records = [json.loads(r) for r in table.column(_RAW).to_pylist()]
        problems = table.column(_PROBLEMS).to_pylist()
        frame = pd.DataFrame.from_records(records)
        frame.insert(0, _ROW, table.column(_ROW).to_numpy())
        frame[_PROBLEMS] = problems
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(self.partial, mode="a", header=self.bad == 0, index=False)
        self.bad += len(frame)
        self.reasons.update(reason for p in problems for reason in p.split("; "))

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()

    def finish(self, keep: bool) -> None:
        """Put the quarantined rows in place (``keep``: the input was read to its end), else remove them."""
        if self.bad and keep:
            os.replace(self.partial, self.quarantine)
        else:
            self.partial.unlink(missing_ok=True)


# -- the run ---------------------------------------------------------------------------------------------------


def _keys(project: Project, columns: list[str], keys: list[str] | tuple[str, ...] | None,
          taken: set[str]) -> dict[str, ColumnSpec | None]:
    """The key columns (``keys``, else those of ``data.entity`` and ``data.timestamp`` the input has), each with its
    declared spec when ``data.columns`` declares it."""
    d = project.config.data
    if keys:
        chosen = list(dict.fromkeys(keys))
        missing = [k for k in chosen if k not in columns]
        if missing:
            raise LoomError(f"the input has no key column {', '.join(map(repr, missing))} "
                            f"(its columns: {', '.join(columns[:20])})")
    else:
        chosen = [k for k in (d.entity, d.timestamp) if k in columns]
        if not chosen:
            raise LoomError(f"the input has neither {d.entity!r} nor {d.timestamp!r}: name the columns that identify "
                            "a row with --key (keys=[...])")
    clash = [k for k in chosen if k in taken]
    if clash:
        raise LoomError(f"key column {clash[0]!r} has the name of an output column ({', '.join(sorted(taken))})")
    return {k: d.columns.get(k) for k in chosen}


def _first_rows(pipe: Pipeline, uri: str, options: dict[str, Any]) -> pd.DataFrame:
    """The input's first rows (the source opened on the driver, so that a missing or unreadable input fails here,
    before Ray starts)."""
    source = pipe.open_source(uri, options)
    batches = source.iter_batches(1024)
    try:
        first = next(iter(batches), None)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    if first is None:
        raise LoomError(f"the input {redact(uri)} has no rows: nothing to score")
    return first


def _unwrapped(err: BaseException) -> BaseException:
    """The Loom error a failed Ray task or actor raised (Ray Data wraps it), else ``err``."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, LoomError):
            return current
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return err


def _dataset(pipe: Pipeline, shipped: _Shipped, uri: str, options: dict[str, Any],
             keys: dict[str, ColumnSpec | None], pool: Pool, batch_rows: int, block_bytes: int) -> Any:
    """The scoring as a Ray Data dataset: the input read in one task, then ``map_batches`` on the actor pool."""
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    from .cluster import project_runtime_env

    project = pipe.project
    spec, env = project.spec(), project_runtime_env(project)
    # The reading task reserves no CPU: the pool takes the free ones but one, so it cannot starve the reader.
    read = ray.data.read_datasource(_source_datasource(spec, uri, options, batch_rows), override_num_blocks=1,
                                    num_cpus=0, runtime_env=env)
    ctx = read.context  # this dataset's own copy of Ray Data's settings
    ctx.target_max_block_size = block_bytes  # one block per batch read, so that every actor gets work at once
    ctx.enable_progress_bars = ctx.print_on_execution_start = False  # Loom's own bar shows rows/s
    key_specs = {k: s.model_dump(exclude_none=True) if s is not None else None for k, s in keys.items()}
    return read.map_batches(
        _ScoringActor, batch_format="pandas", batch_size=batch_rows, compute=ActorPoolStrategy(size=pool.actors),
        num_cpus=pool.cpus, num_gpus=pool.gpus, runtime_env=env,
        fn_constructor_kwargs={"spec": spec, "shipped": [shipped], "keys": key_specs,
                               "device": pool.device, "threads": max(1, int(pool.cpus)), "source": redact(uri)})


def _block_bytes(first: pd.DataFrame, batch_rows: int) -> int:
    """The Ray Data block size that makes each batch the reading task yields a block of its own: a batch's size as
    Ray Data measures it (from the input's first rows), less a quarter, since Ray Data emits a block once it is above
    the target and slices one above 1.5 times the target."""
    from ray.data.block import BlockAccessor

    per_row = BlockAccessor.for_block(first).size_bytes() / max(len(first), 1)
    return int(min(max(per_row * batch_rows * 0.75, 64 * 1024), 512 * 1024 * 1024))


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]scoring"), BarColumn(), TextColumn("{task.completed:,.0f} rows"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console, transient=False)


def _run(dataset: Any, writer: _Writer, console: Console) -> None:
    """Stream the scored batches into ``writer`` behind a progress bar of rows and rows/s."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.ERROR)  # Ray Data's notes on its own progress bars, which Loom's bar replaces
    started = time.perf_counter()
    try:
        with _progress(console) as progress, warnings.catch_warnings():
            # an input of fewer batches than actors leaves some idle: nothing to warn about
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
            task = progress.add_task("score", total=None, rate="starting Ray Data actors…")
            for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.add(table)
                rate = writer.rows / max(time.perf_counter() - started, 1e-9)
                progress.update(task, completed=writer.rows, rate=f"{rate:,.0f} rows/s")
    except Exception as err:  # noqa: BLE001 - a Loom error from a read task or an actor, without Ray's wrapping
        cause = _unwrapped(err)
        if cause is err:
            raise
        raise cause from None
    finally:
        logger.setLevel(level)


def _check_bad(writer: _Writer, source: str, max_fraction: float) -> None:
    """Fail (and write nothing) when the input has no rows, or more than ``max_fraction`` of them are bad."""
    if not writer.rows:
        raise LoomError(f"the input {source} has no rows: nothing to score")
    if writer.bad / writer.rows > max_fraction:
        common = [f"{n:,} rows: {reason}" for reason, n in writer.reasons.most_common(5)]
        raise DataValidationError(source, [*common, f"{writer.bad:,} of {writer.rows:,} rows have problems, more "
                                           f"than max_fraction {max_fraction:g} (bad rows kept in {writer.quarantine});"
                                           " nothing was written"])


def score(project: Project | Pipeline | str, ref: str, input: str, output: str | os.PathLike[str], *,
          overwrite: bool = False, keys: list[str] | tuple[str, ...] | None = None,
          options: dict[str, Any] | None = None, batch_rows: int = BATCH_ROWS, actors: int | None = None,
          use_gpu: bool | Literal["auto"] = "auto", max_bad_fraction: float | None = None,
          console: Console | None = None) -> ScoreResult:
    """Score the table at ``input`` with a registered version and write the predictions to ``output`` (a Parquet
    file, local or on any file system URI), on the connected Ray cluster (an embedded one when none is).

    :param ref: ``NAME`` (the project's ``registry.alias``), ``NAME@alias`` or ``NAME/3``.
    :param input: a data source URI (``csv://``, ``parquet://``, a path, ``sql://``, ``captured://``, ...), read by
        the plugin its scheme names, with ``options``.
    :param overwrite: replace an existing output (it is replaced only once the new one is complete).
    :param keys: the input columns that identify a row, copied to the output; default: ``data.entity`` and
        ``data.timestamp``, those the input has.
    :param actors: scoring actors (default: sized to the cluster's free CPUs, or one per GPU).
    :param use_gpu: score on GPUs; ``"auto"`` uses them when the cluster has any.
    :param max_bad_fraction: fail when more than this fraction of rows is bad (default ``data.bad_rows.max_fraction``).
    :raises LoomError: a bad reference, output or input; :class:`DataValidationError` for too many bad rows or a
        missing input column. Nothing is written then.
    """
    from .cluster import connect

    pipe = project if isinstance(project, Pipeline) else Pipeline(project, console=console)
    proj, shown = pipe.project, redact(input)
    name, wanted = parse_model_ref(ref, proj.config.registry.alias)
    target = _Output.of(output)
    target.check(overwrite)
    mv = pipe.registry.get_version(name, wanted)
    shipped = _Shipped.read(pipe.registry, mv)
    net = _load_network(proj, shipped, name, mv.version)  # what serving refuses fails here, before Ray starts
    taken = {PREDICTION, VERSION, *([PROBABILITIES] if net.task.classes else [])}
    first = _first_rows(pipe, input, options or {})
    key_specs = _keys(proj, [str(c) for c in first.columns], keys, taken)
    started = time.perf_counter()
    connect()
    pool = Pool.sized(use_gpu, actors)
    pipe.console.print(f"[dim]scoring {name} v{mv.version} with {pool.actors} Ray Data actor(s) on "
                       f"{pool.device.upper()}[/]")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{uuid.uuid4().hex[:6]}"  # runs in one second too
    quarantine = proj.quarantine_dir / f"score-{name}-v{mv.version}-{stamp}.csv"
    metadata = {b"loom.model": name.encode(), b"loom.version": str(mv.version).encode(),
                b"loom.classes": json.dumps(net.task.classes, default=str).encode()}
    dataset = _dataset(pipe, shipped, input, options or {}, key_specs, pool, batch_rows,
                       _block_bytes(first, batch_rows))
    limit = proj.config.data.bad_rows.max_fraction if max_bad_fraction is None else max_bad_fraction
    counts: dict[str, Any] = {}

    def fill(f: Any) -> None:
        writer = _Writer(f, quarantine, metadata)
        finished = False
        try:
            _run(dataset, writer, pipe.console)
            finished = True
        finally:
            writer.close()
            writer.finish(keep=finished)
            counts.update(rows=writer.rows, scored=writer.scored, bad=writer.bad)
        _check_bad(writer, shown, limit)

    target.location.write_file(target.name, fill)
    result = ScoreResult(model=name, version=mv.version, output=target.shown, rows=counts["rows"],
                         scored=counts["scored"], quarantined=counts["bad"],
                         quarantine_file=quarantine if counts["bad"] else None,
                         seconds=time.perf_counter() - started)
    if result.quarantined:
        pipe.console.print(f"[yellow]![/] {result.quarantined:,} of {result.rows:,} rows failed the checks and were "
                           f"quarantined to {quarantine}")
    return result
