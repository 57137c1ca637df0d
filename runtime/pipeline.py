"""The life cycle, stage by stage: data -> validation -> features -> training -> registry -> serving.

The CLI, the Python API and the tests all drive this one class. Each stage is a method; :meth:`Pipeline.up` runs
them in order with a live display and per-stage timings. A failing stage calls ``loom_on_error`` and re-raises.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .config import ColumnSpec, Project, load_project
from .data import DataSource
from .features import FeatureService
from .plugins import Plugins, get_plugins
from .registry import ModelVersion
from .secrets import redact, redact_error
from .tracking import TrackedRun, Tracker
from .validation import ValidationReport, validate_batches


@dataclass
class Dataset:
    """Validated data and where it came from."""

    frame: pd.DataFrame
    uri: str
    """The data source's URI as shown and stored in lineage: passwords and credential parameters redacted
    (:func:`runtime.redact`)."""
    fingerprint: str
    quarantined: int = 0
    """Bad rows set aside in a quarantine file (``data.bad_rows.policy: quarantine``) rather than kept."""
    lineage_key: str | None = None
    """What training on this data would make, once computed (:meth:`Pipeline.lineage_key`)."""


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
    reused: bool = False
    """The version was registered before with the same lineage (data, settings, code), so nothing was trained."""


def _git_commit(path: Any) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


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
        #: The OS priority (nice value) of the training workers: a retrain round beside serving runs lower.
        self.training_nice = 0
        self._store = None
        self._registry = None

    # -- helpers ---------------------------------------------------------------------------------------------

    @property
    def feature_store(self):
        if self._store is None:
            f = self.project.config.features
            self._store = self.plugins.feature_store(f.store, state_dir=self.project.state_dir, options=f.options,
                                                     storage=self.project.storage)
        return self._store

    @property
    def registry(self):
        if self._registry is None:
            r = self.project.config.registry
            self._registry = self.plugins.registry(r.kind, state_dir=self.project.state_dir, options=r.options,
                                                  storage=self.project.storage)
        return self._registry

    @property
    def tracker(self) -> Tracker | None:
        """The registry, when it also tracks runs (training runs are then recorded and linked from versions)."""
        return self.registry if isinstance(self.registry, Tracker) else None

    @contextlib.contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        """Time a stage, show it, and report a failure to ``loom_on_error`` plugins. The message is shown, and a
        failure's message passed on, with secrets redacted (:func:`runtime.redact`)."""
        started = time.perf_counter()
        message = redact(message)
        try:
            with self.console.status(f"[bold]{message}…"):
                yield
        except BaseException as err:
            redact_error(err)  # a data source's or registry's error may echo a URI with its password
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
        uri = redact(source.uri)
        policy = d.bad_rows
        report = validate_batches(source.iter_batches(d.batch_rows), columns, source=uri, policy=policy.policy,
                                  quarantine_dir=self.project.quarantine_dir, max_fraction=policy.max_fraction,
                                  base_dir=self.project.root)
        if report.quarantined:
            self.console.print(f"[yellow]![/] {report.quarantined:,} of {report.rows:,} rows from {uri} failed "
                               f"validation and were quarantined to {report.quarantine_file}")
        return report, source.fingerprint()

    # -- stages ------------------------------------------------------------------------------------------------

    def generate_data(self) -> bool:
        """Run the project's ``data.generate`` script when its data source finds no data; return whether it ran.

        The script runs with this Python, in the project directory; a failure is reported with the end of its
        output."""
        from .errors import LoomError, NotFoundError

        d = self.project.config.data
        if not d.generate:
            return False
        try:
            self.open_source(d.source, d.options)
            return False
        except NotFoundError:
            pass
        except Exception:  # noqa: BLE001 - not missing data: the ingest stage opens it again and reports it
            return False
        script = self.project.path(d.generate)
        if not script.is_file():
            raise LoomError(f"data.generate names {d.generate!r}, which is not a file in {self.project.root}")
        with self.stage("generate", f"making the data with {d.generate} (data.generate)"):
            done = subprocess.run([sys.executable, str(script)], cwd=self.project.root, capture_output=True,
                                  text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise LoomError(f"data.generate {d.generate!r} failed with exit code {done.returncode}:\n{tail}")
        return True

    def ingest(self) -> Dataset:
        """Read the data source batch by batch, validating each batch against the declared schema (after making
        the data with ``data.generate`` when there is none yet)."""
        d = self.project.config.data
        self.generate_data()
        shown = redact(d.source)
        with self.stage("ingest", f"opening {shown}"):
            source = self.open_source(d.source, d.options)
        with self.stage("validate", f"reading {shown} and validating it against {len(d.columns)} columns"):
            report, fingerprint = self.validated(source, d.columns)
        return Dataset(frame=report.frame, uri=shown, fingerprint=fingerprint, quarantined=report.quarantined)

    def write_features(self, data: Dataset) -> FeatureService:
        """Apply the project's feature views and services, write each view's rows (from the data source or the
        view's own source) offline, and materialise the latest values online. Returns the model's service. A
        project whose model reads tensors only has no feature to write."""
        defs = self.project.config.feature_definitions
        if not defs.service.features:
            return defs.service
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
        """Labels (and tensor inputs, which come with them) joined point-in-time with the service's features from
        the feature store's offline data."""
        d = self.project.config.data
        labels = data.frame[list(dict.fromkeys([d.entity, *service.join_keys, d.timestamp, d.label,
                                                *d.tensor_columns]))]
        if not service.features:
            return labels
        return service.historical(self.feature_store, labels, timestamp=d.timestamp)

    def train(self, data: Dataset, view: FeatureService) -> Trained:
        """Train on the connected Ray cluster with Ray Train, showing per-epoch progress."""
        from .artifacts import REFERENCE, SPEC
        from .cluster import connect
        from .preparation import prepare, reference_sample

        cfg = self.project.config
        if cfg.model.task is None:
            from .tasks import infer_task

            label = cfg.data.label
            self.console.print(f"[dim]{infer_task(label, cfg.data.columns[label].type)[1]}[/]")
        prepared = prepare(self.project, self.training_frame(data, view), view)
        self.plugins.call("loom_before_training", project=self.project, train_rows=len(prepared.train),
                          params=dict(prepared.params))
        with self.stage("cluster", "connecting to Ray"):
            connect()
        run_name = f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = TrackedRun(self.tracker, cfg.name, name=run_name, params=prepared.params,
                         tags={"model": cfg.model.name})
        try:
            result = self._fit(prepared, run_name, on_epoch=run.epoch)
        except BaseException as err:
            redact_error(err)
            run.fail(err)
            self.plugins.call_quietly("loom_on_error", project=self.project, stage="train", error=err)
            raise
        bundle = prepared.bundle(self.project, result.state_dict)
        artifacts = bundle.to_artifacts()
        run.complete(result.history, {"use_gpu": result.use_gpu, "train_rows": len(prepared.train)},
                     {SPEC: artifacts[SPEC]})
        artifacts[REFERENCE] = reference_sample(self.project, prepared, bundle)
        final = {k: v for k, v in result.metrics.items() if k.startswith("val_") or k == "train_loss"}
        self.plugins.call("loom_after_training", project=self.project, metrics=final, history=result.history)
        return Trained(artifacts=artifacts, params={**prepared.params, "use_gpu": result.use_gpu}, metrics=final,
                       history=result.history, train_rows=len(prepared.train), seconds=result.seconds,
                       run_id=run.id)

    def _fit(self, prepared: Any, run_name: str, *, on_epoch: Callable[[dict[str, Any]], None]) -> Any:
        """Run Ray Train on the prepared arrays behind a progress bar of epochs; return its result."""
        from .cluster import project_runtime_env
        from .training import run_training

        t = self.project.config.training
        started = time.perf_counter()
        with Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                      transient=False) as progress:
            task = progress.add_task("train", total=t.epochs, info="starting Ray Train workers…")

            metric = prepared.task.metric

            def epoch_ended(mt: dict[str, Any]) -> None:
                info = f"loss {mt['train_loss']:.4f}  val_loss {mt['val_loss']:.4f}"
                if metric in mt:
                    info += f"  {metric} {mt[metric]:.3f}"
                progress.update(task, completed=mt["epoch"], info=info)
                on_epoch(mt)

            config = {**prepared.training_config(self.project), "nice": self.training_nice}
            result = run_training(config, prepared.arrays, workers=t.workers,
                                  use_gpu=t.use_gpu, storage_path=self.project.runs_uri, run_name=run_name,
                                  on_epoch=epoch_ended, max_failures=t.max_failures,
                                  runtime_env=project_runtime_env(self.project))
            progress.update(task, completed=t.epochs)
        self.timings["train"] = round(time.perf_counter() - started, 2)
        self.console.print(f"[green]✓[/] {'train':<9} {self.timings['train']:6.2f}s  {t.workers} Ray Train workers, "
                           f"{'GPU' if result.use_gpu else 'CPU'}, "
                           f"{metric} {result.metrics.get(metric, float('nan')):.3f}")
        return result

    def register(self, trained: Trained, data: Dataset, view: FeatureService, *, alias: str | None = None,
                 lineage: dict[str, Any] | None = None) -> ModelVersion:
        """Record the trained model as a new version with lineage (plus ``lineage``'s entries), and point ``alias``
        (default: the configured ``registry.alias``) at it."""
        from .artifacts import REFERENCE
        from .lineage import LINEAGE_KEY

        cfg = self.project.config
        key = self.lineage_key(data)
        with self.stage("register", f"registering {cfg.model.name!r} in the {cfg.registry.kind!r} registry"):
            record = {
                "data": {"source": redact(data.uri), "fingerprint": data.fingerprint, "rows": len(data.frame)},
                "features": ({"store": cfg.features.store, "view": view.name, "features": list(view.features),
                              "entity": view.entity, "timestamp": view.timestamp, "dtypes": dict(view.dtypes),
                              "ttl_days": cfg.features.ttl_days, "quarantined_rows": data.quarantined,
                              "views": {p.name: {"entity": p.entity, "timestamp": p.timestamp,
                                                 "features": list(p.features)} for p in view.projections}}
                             if view.features else {"store": None, "features": [],
                                                    "quarantined_rows": data.quarantined}),
                "tensors": {c: cfg.data.columns[c].model_dump(exclude_none=True) for c in cfg.data.tensor_columns},
                "training": {"run_id": trained.run_id, "experiment": cfg.name, "params": trained.params,
                             "history": trained.history, "train_rows": trained.train_rows,
                             "seconds": round(trained.seconds, 2)},
                "code": {"git_commit": _git_commit(self.project.root), "project": cfg.name},
                "packages": {"python": platform.python_version(),
                             **_versions("loom-mlops", "torch", "ray", "pandas", "numpy", "pyarrow", "safetensors",
                                         "evidently")},
                "reference_profile": REFERENCE,
                LINEAGE_KEY: key,
                **(lineage or {}),
            }
            version = self.registry.register(cfg.model.name, trained.artifacts, params=trained.params,
                                             metrics=trained.metrics, lineage=record,
                                             alias=alias or cfg.registry.alias,
                                             run_id=trained.run_id)
        self.plugins.call("loom_model_registered", project=self.project, version=version)
        return version

    def deploy(self, ref: int | str | None = None, *, canary: int | None = None) -> str:
        """Serve the model (the configured alias by default) with Ray Serve, with all traffic or as a canary taking
        ``canary`` percent next to the version already served; return the base URL."""
        from .cluster import connect
        from .serving import deploy

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

    def lineage_key(self, data: Dataset) -> str:
        """The key of what training on ``data`` would make: its fingerprints (the data source's and each feature
        view's own source's, by redacted URI), the settings that shape training and the code
        (:mod:`runtime.lineage`)."""
        from .lineage import lineage_key

        if data.lineage_key is None:  # once per dataset: the reuse check and register both need it
            fingerprints = {redact(data.uri): data.fingerprint}
            for own in self.project.config.feature_definitions.sources.values():
                fingerprints[redact(own.uri)] = self.open_source(own.uri, own.options).fingerprint()
            data.lineage_key = lineage_key(self.project, fingerprints)
        return data.lineage_key

    def reusable(self, data: Dataset) -> ModelVersion | None:
        """A registered version trained on the same data, settings and code as ``data`` would be, if any; the
        configured alias is pointed at it, as registering a new one would."""
        from .lineage import find_version

        cfg = self.project.config
        found = find_version(self.registry, cfg.model.name, self.lineage_key(data))
        if found is None:
            return None
        if cfg.registry.alias and cfg.registry.alias not in found.aliases:
            self.registry.set_alias(cfg.model.name, cfg.registry.alias, found.version)
            found = self.registry.get_version(cfg.model.name, found.version)
        self.console.print(f"[green]✓[/] {'reuse':<9} {cfg.model.name} v{found.version} was trained on the same "
                           "data, settings and code: nothing to train (`loom up --retrain` trains anyway)")
        return found

    def up(self, *, retrain: bool = False) -> UpResult:
        """The whole life cycle: ingest, validate, features, train, register, deploy. A version registered before
        with the same lineage is served again instead of training an identical one, unless ``retrain``."""
        started = time.perf_counter()
        data = self.ingest()
        version = None if retrain else self.reusable(data)
        reused = version is not None
        if version is None:
            view = self.write_features(data)
            trained = self.train(data, view)
            version = self.register(trained, data, view)
        url = self.deploy(version.version)
        self.timings["total"] = round(time.perf_counter() - started, 2)
        return UpResult(version=version, url=url, timings=dict(self.timings), reused=reused)
