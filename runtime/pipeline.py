"""The life cycle, stage by stage: data -> validation -> features -> training -> registry -> serving.

The CLI, the Python API and the tests all drive this one class. Each stage is a method; :meth:`Pipeline.up` runs
them in order with a live display and per-stage timings. A failing stage calls ``loom_on_error`` and re-raises.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .config import ColumnSpec, Project, load_project
from .data import DataSource
from .features import FeatureService
from .plugins import Plugins, get_plugins
from .registry import ModelVersion
from .tracking import Tracker
from .validation import ValidationReport, validate_batches

REFERENCE = "reference.parquet"


@dataclass
class Dataset:
    """Validated data and where it came from."""

    frame: pd.DataFrame
    uri: str
    fingerprint: str
    quarantined: int = 0
    """Bad rows set aside in a quarantine file (``data.bad_rows.policy: quarantine``) rather than kept."""


@dataclass
class Trained:
    """A training run's output, ready to register."""

    artifacts: dict[str, bytes]
    params: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    train_rows: int
    seconds: float
    run_id: str | None = None


@dataclass
class UpResult:
    version: ModelVersion
    url: str
    timings: dict[str, float] = field(default_factory=dict)


def _git_commit(path: Any) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _log_epoch(tracker: Tracker, run_id: str, metrics: dict[str, Any]) -> int:
    """Record one epoch's numeric metrics at step = epoch; return the epoch."""
    epoch = int(metrics["epoch"])
    values = {k: v for k, v in metrics.items() if k not in ("epoch", "timestamp") and isinstance(v, (int, float))
              and not isinstance(v, bool)}
    tracker.log_metrics(run_id, values, step=epoch)
    return epoch


def _versions(*dists: str) -> dict[str, str]:
    out = {}
    for d in dists:
        with contextlib.suppress(md.PackageNotFoundError):
            out[d] = md.version(d)
    return out


class Pipeline:
    """A project's life cycle. ``Pipeline("examples/quickstart").up()`` runs it all."""

    def __init__(self, project: Project | str, *, plugins: Plugins | None = None, console: Console | None = None):
        self.project = project if isinstance(project, Project) else load_project(project)
        cfg = self.project.config
        # Modules in the project directory (plugins named in `plugins:`, a custom architecture) import here as
        # they do on Ray workers, which get the project on PYTHONPATH (runtime.cluster.project_runtime_env).
        if str(self.project.root) not in sys.path:
            sys.path.insert(0, str(self.project.root))
        self.plugins = plugins or get_plugins(modules=cfg.plugins)
        self.console = console or Console(stderr=True)
        self.timings: dict[str, float] = {}
        self._store = None
        self._registry = None

    # -- helpers ---------------------------------------------------------------------------------------------

    @property
    def feature_store(self):
        if self._store is None:
            f = self.project.config.features
            self._store = self.plugins.feature_store(f.store, state_dir=self.project.state_dir, options=f.options)
        return self._store

    @property
    def registry(self):
        if self._registry is None:
            r = self.project.config.registry
            self._registry = self.plugins.registry(r.kind, state_dir=self.project.state_dir, options=r.options)
        return self._registry

    @property
    def tracker(self) -> Tracker | None:
        """The registry, when it also tracks runs (training runs are then recorded and linked from versions)."""
        return self.registry if isinstance(self.registry, Tracker) else None

    @contextlib.contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        """Time a stage, show it, and report a failure to ``loom_on_error`` plugins."""
        started = time.perf_counter()
        try:
            with self.console.status(f"[bold]{message}…"):
                yield
        except BaseException as err:
            self.console.print(f"[red]✗[/] {name} failed")
            self.plugins.call_quietly("loom_on_error", project=self.project, stage=name, error=err)
            raise
        finally:
            self.timings[name] = round(time.perf_counter() - started, 2)
        self.console.print(f"[green]✓[/] {name:<9} {self.timings[name]:6.2f}s  {message}")

    def open_source(self, uri: str, options: dict[str, Any]) -> DataSource:
        """A data source of the project, by the plugin its URI scheme names."""
        return self.plugins.data_source(uri, base_dir=self.project.root, options=options)

    def validated(self, source: DataSource, columns: dict[str, ColumnSpec]) -> tuple[ValidationReport, str]:
        """Stream a data source through validation, applying the project's bad-row policy; return the report
        and the source's fingerprint."""
        d = self.project.config.data
        uri = source.uri
        policy = d.bad_rows
        quarantine = self.project.path(policy.path) if policy.path else self.project.state_dir / "quarantine"
        report = validate_batches(source.iter_batches(d.batch_rows), columns, source=uri, policy=policy.policy,
                                  quarantine_dir=quarantine, max_fraction=policy.max_fraction)
        if report.quarantined:
            self.console.print(f"[yellow]![/] {report.quarantined:,} of {report.rows:,} rows from {uri} failed "
                               f"validation and were quarantined to {report.quarantine_file}")
        return report, source.fingerprint()

    # -- stages ------------------------------------------------------------------------------------------------

    def ingest(self) -> Dataset:
        """Read the data source batch by batch, validating each batch against the declared schema."""
        d = self.project.config.data
        with self.stage("ingest", f"opening {d.source}"):
            source = self.open_source(d.source, d.options)
        with self.stage("validate", f"reading {d.source} and validating it against {len(d.columns)} columns"):
            report, fingerprint = self.validated(source, d.columns)
        return Dataset(frame=report.frame, uri=d.source, fingerprint=fingerprint, quarantined=report.quarantined)

    def write_features(self, data: Dataset) -> FeatureService:
        """Apply the project's feature views and services, write each view's rows (from the data source or the
        view's own source) offline, and materialise the latest values online. Returns the model's service."""
        defs = self.project.config.feature_definitions
        with self.stage("features", f"writing {len(defs.views)} feature view(s): {', '.join(defs.views)}"):
            store = self.feature_store
            for view in defs.views.values():
                store.apply(view)
            for service in {**defs.services, defs.service.name: defs.service}.values():
                store.apply_service(service)
            for name, view in defs.views.items():
                own = defs.sources.get(name)
                frame = data.frame if own is None else self.validated(self.open_source(own.uri, own.options),
                                                                      own.columns)[0].frame
                store.write(name, frame[[view.entity, view.timestamp, *view.features]])
                store.materialize(name)
        return defs.service

    def training_frame(self, data: Dataset, service: FeatureService) -> pd.DataFrame:
        """Labels joined point-in-time with the service's features from the feature store's offline data."""
        d = self.project.config.data
        labels = data.frame[list(dict.fromkeys([d.entity, *service.join_keys, d.timestamp, d.label]))]
        return service.historical(self.feature_store, labels, timestamp=d.timestamp)

    def train(self, data: Dataset, view: FeatureService) -> Trained:
        """Train on the connected Ray cluster with Ray Train, showing per-epoch progress."""
        from .cluster import connect, project_runtime_env
        from .model import SPEC, ModelBundle, Predictor, Preprocessor
        from .training import run_training

        cfg = self.project.config
        d, t, m = cfg.data, cfg.training, cfg.model
        frame = self.training_frame(data, view).sort_values(d.timestamp, kind="stable").reset_index(drop=True)
        frame = frame[frame[d.label].notna()]
        n_val = max(1, int(len(frame) * t.validation_fraction))
        train_df, val_df = frame.iloc[:-n_val], frame.iloc[-n_val:]
        schema = {c: cfg.feature_definitions.columns[c] for c in view.features}
        pre = Preprocessor.fit(train_df, schema)
        classes = sorted(frame[d.label].dropna().unique().tolist())
        if len(classes) < 2:
            raise ValueError(f"label {d.label!r} has fewer than two classes; nothing to learn")
        index = {c: i for i, c in enumerate(classes)}
        arrays = {
            "x_train": pre.transform(train_df), "y_train": train_df[d.label].map(index).to_numpy(np.int64),
            "x_val": pre.transform(val_df), "y_val": val_df[d.label].map(index).to_numpy(np.int64),
        }
        kwargs = {"n_inputs": pre.n_features, "hidden": list(m.hidden), "n_classes": len(classes),
                  "dropout": m.dropout}
        params = {"architecture": m.architecture, **kwargs, "epochs": t.epochs, "batch_size": t.batch_size,
                  "learning_rate": t.learning_rate, "workers": t.workers, "seed": t.seed}
        self.plugins.call("loom_before_training", project=self.project, train_rows=len(train_df), params=dict(params))
        with self.stage("cluster", "connecting to Ray"):
            connect()
        run_name = f"{m.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tracker = self.tracker
        run = tracker.start_run(cfg.name, name=run_name, params=params, tags={"model": m.name}) if tracker else None
        logged: set[int] = set()
        started = time.perf_counter()
        with Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                      transient=False) as progress:
            task = progress.add_task("train", total=t.epochs, info="starting Ray Train workers…")

            def on_epoch(mt: dict[str, Any]) -> None:
                info = f"loss {mt['train_loss']:.4f}  val_loss {mt['val_loss']:.4f}"
                if "val_auc" in mt:
                    info += f"  val_auc {mt['val_auc']:.3f}"
                progress.update(task, completed=mt["epoch"], info=info)
                if run is not None:
                    with contextlib.suppress(Exception):  # retried from the final history below
                        logged.add(_log_epoch(tracker, run.id, mt))

            try:
                result = run_training(
                    {"architecture": m.architecture, "kwargs": kwargs, "epochs": t.epochs,
                     "batch_size": t.batch_size, "learning_rate": t.learning_rate, "seed": t.seed},
                    arrays, workers=t.workers, use_gpu=t.use_gpu, storage_path=self.project.state_dir / "runs",
                    run_name=run_name, on_epoch=on_epoch,
                    max_failures=t.max_failures, runtime_env=project_runtime_env(self.project))
            except BaseException as err:
                if run is not None:
                    with contextlib.suppress(Exception):
                        tracker.end_run(run.id, "killed" if isinstance(err, KeyboardInterrupt) else "failed")
                self.plugins.call_quietly("loom_on_error", project=self.project, stage="train", error=err)
                raise
            progress.update(task, completed=t.epochs)
        self.timings["train"] = round(time.perf_counter() - started, 2)
        self.console.print(f"[green]✓[/] {'train':<9} {self.timings['train']:6.2f}s  {t.workers} Ray Train workers, "
                           f"{'GPU' if result.use_gpu else 'CPU'}, val_auc {result.metrics.get('val_auc', float('nan')):.3f}")
        bundle = ModelBundle(architecture=m.architecture, kwargs=kwargs, preprocessor=pre, classes=classes,
                             inputs={c: s.model_dump(exclude_none=True) for c, s in schema.items()},
                             label=d.label, state_dict=result.state_dict)
        artifacts = bundle.to_artifacts()
        if run is not None:  # the live per-epoch log is best effort: fill in what it missed from the history
            for mt in result.history:
                if mt["epoch"] not in logged:
                    _log_epoch(tracker, run.id, mt)
            tracker.log_params(run.id, {"use_gpu": result.use_gpu, "train_rows": len(train_df)})
            tracker.log_artifact(run.id, SPEC, artifacts[SPEC])
            tracker.end_run(run.id)
        reference = train_df[list(view.features)].sample(min(len(train_df), cfg.monitoring.reference_rows),
                                                         random_state=t.seed)
        # The trained model's predictions on its reference rows: the baseline of prediction drift checks.
        reference = reference.assign(prediction=Predictor(bundle).predict(reference)[0])
        buf = io.BytesIO()
        reference.reset_index(drop=True).to_parquet(buf, index=False)
        artifacts[REFERENCE] = buf.getvalue()
        final = {k: v for k, v in result.metrics.items() if k.startswith("val_") or k == "train_loss"}
        self.plugins.call("loom_after_training", project=self.project, metrics=final, history=result.history)
        return Trained(artifacts=artifacts, params={**params, "use_gpu": result.use_gpu}, metrics=final,
                       history=result.history, train_rows=len(train_df), seconds=result.seconds,
                       run_id=run.id if run is not None else None)

    def register(self, trained: Trained, data: Dataset, view: FeatureService) -> ModelVersion:
        """Record the trained model as a new version with lineage, and point the configured alias at it."""
        cfg = self.project.config
        with self.stage("register", f"registering {cfg.model.name!r} in the {cfg.registry.kind!r} registry"):
            lineage = {
                "data": {"source": data.uri, "fingerprint": data.fingerprint, "rows": len(data.frame)},
                "features": {"store": cfg.features.store, "view": view.name, "features": list(view.features),
                             "entity": view.entity, "timestamp": view.timestamp, "dtypes": dict(view.dtypes),
                             "ttl_days": cfg.features.ttl_days, "quarantined_rows": data.quarantined,
                             "views": {p.name: {"entity": p.entity, "timestamp": p.timestamp,
                                                "features": list(p.features)} for p in view.projections}},
                "training": {"run_id": trained.run_id, "experiment": cfg.name, "params": trained.params,
                             "history": trained.history, "train_rows": trained.train_rows,
                             "seconds": round(trained.seconds, 2)},
                "code": {"git_commit": _git_commit(self.project.root), "project": cfg.name},
                "packages": {"python": platform.python_version(),
                             **_versions("loom-mlops", "torch", "ray", "pandas", "numpy", "pyarrow", "safetensors",
                                         "evidently")},
                "reference_profile": REFERENCE,
            }
            version = self.registry.register(cfg.model.name, trained.artifacts, params=trained.params,
                                             metrics=trained.metrics, lineage=lineage, alias=cfg.registry.alias,
                                             run_id=trained.run_id)
        self.plugins.call("loom_model_registered", project=self.project, version=version)
        return version

    def deploy(self, ref: int | str | None = None, *, canary: int | None = None) -> str:
        """Serve the model (the configured alias by default) with Ray Serve, with all traffic or as a canary taking
        ``canary`` percent next to the version already served; return the base URL."""
        from .cluster import connect
        from .serving.deploy import deploy

        cfg = self.project.config
        ref = ref if ref is not None else cfg.registry.alias
        version = self.registry.get_version(cfg.model.name, ref)
        share = f" as a {canary}% canary" if canary else ""
        with self.stage("deploy", f"serving {cfg.model.name} v{version.version}{share} with Ray Serve"):
            connect()
            url = deploy(self.project, cfg.model.name, version.version, canary=canary)
        self.plugins.call("loom_model_deployed", project=self.project, model=cfg.model.name,
                          version=version.version, url=url)
        return url

    def up(self) -> UpResult:
        """The whole life cycle: ingest, validate, features, train, register, deploy."""
        started = time.perf_counter()
        data = self.ingest()
        view = self.write_features(data)
        trained = self.train(data, view)
        version = self.register(trained, data, view)
        url = self.deploy(version.version)
        self.timings["total"] = round(time.perf_counter() - started, 2)
        return UpResult(version=version, url=url, timings=dict(self.timings))
