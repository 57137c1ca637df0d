"""The model server of one replica: the live model versions and the routing table between them, dynamic batching,
online feature look-ups, a shadow version's scoring beside its primary, the capture of served rows (and the store
they are flushed to), and metrics.
Framework-free, and it knows nothing of drift: :mod:`.drift` checks what it captured, :mod:`.app` puts HTTP in
front of both, and :mod:`.rollout` puts them on Ray Serve."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import Project, load_project
from ..errors import ConfigError, LoomError
from ..formats import LoadedModel, LoadLimits, load_model, postprocess
from ..model import TENSOR_NUMPY, read_reference
from ..monitoring import TENSOR_STATS
from ..plugins import Plugins, get_plugins
from .batching import MicroBatcher
from .capture import Capture, CaptureStore
from .depot import DepotRegistry
from .encoding import FeatureEncoder
from .metrics import ServingMetrics, ShadowCounts, TrafficStats
from .oip import label_datatype
from .protocol import Columns, Limits, RequestError, Schema, check_columns
from .routing import ModelRoutes, RoutingTable

log = logging.getLogger("loom.serving")

#: Net allocations between collections of the youngest generation in a serving process (see ``_settle_heap``).
GEN0_THRESHOLD = 10_000
#: Shadow predictions pending (waiting or running) per replica; a request beyond them is not shadowed, and counted.
SHADOW_PENDING = 8


@dataclass
class Prediction:
    labels: list[Any]
    """The predictions: a class per row (classification) or a value per row (regression)."""
    proba: np.ndarray | None
    """Class probabilities ``[N, classes]`` (classification only)."""


def capture_schema(inputs: Schema) -> dict[str, Mapping[str, Any]]:
    """What capture keeps of a model's inputs: tabular columns as they are, each tensor input as its per-row
    summary statistics (float columns ``<input>.mean`` … ``.max``, see :func:`runtime.monitoring.tensor_summary`)."""
    out: dict[str, Mapping[str, Any]] = {}
    for name, spec in inputs.items():
        if spec.get("type") == "tensor":
            out.update({f"{name}.{stat}": {"type": "float"} for stat in TENSOR_STATS})
        else:
            out[name] = spec
    return out


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(project: Project, token: str | None, operator_token: str | None = None) -> None:
    """Refuse to serve on a non-loopback interface without a token: every route would be open to the network."""
    host = project.config.serving.host
    if not is_loopback(host) and not (token and (operator_token or token)):
        raise ConfigError(f"serving.host is {host!r}, reachable from other machines, but no token is configured: "
                          "set serving.auth_token_env (and serving.operator_token_env) to the name of an environment "
                          "variable holding a secret token, or bind 127.0.0.1 (docs/security.md)")


class LoadedVersion:
    """One model version, loaded: its input schema, task, encoder, network (in whichever format the version is,
    see :mod:`runtime.formats`), batcher and capture."""

    def __init__(self, name: str, version: int, loaded: LoadedModel, reference: pd.DataFrame | None,
                 capture: Capture):
        spec = loaded.spec
        self.name = name
        self.version = version
        self.label = str(version)
        self.format = spec.format
        self.schema: Schema = spec.inputs
        self.task = spec.task
        self.regression = self.task.name == "regression"
        self.classes = spec.classes
        self.label_type = "FP64" if self.regression else label_datatype(self.classes)
        self.encode = FeatureEncoder(spec.preprocessor)
        self.tabular = bool(spec.preprocessor.input_columns)
        self.tensors = {n: (tuple(s["shape"]), TENSOR_NUMPY[s.get("dtype") or "FP32"])
                        for n, s in spec.tensors.items()}
        self.model = loaded.network
        self.reference = reference
        self.capture = capture
        self.batcher: MicroBatcher | None = None

    @torch.inference_mode()
    def forward(self, x: tuple[np.ndarray, ...]) -> np.ndarray:
        """The task's outputs (class probabilities, or values) for the model's encoded inputs."""
        return postprocess(self.task, self.model(x))

    def warm_up(self) -> None:
        """One forward pass, so the first request does not pay for lazy initialisation."""
        x = (np.zeros((1, self.encode.width), dtype=np.float32),) if self.tabular else ()
        self.forward(x + tuple(np.zeros((1, *shape), dtype=dtype) for shape, dtype in self.tensors.values()))

    async def predict(self, cols: Columns, request_id: str = "", client_id: str = "") -> Prediction:
        assert self.batcher is not None
        started = time.perf_counter()
        numeric = self.encode.numeric_matrix(cols) if self.tabular else None
        x = (self.encode(cols, numeric),) if self.tabular else ()
        if self.tensors:
            # a binary tensor may be a read-only view of the request body; torch wants a writable array
            x += tuple(np.require(cols[n], dtype=dtype, requirements="W") for n, (_, dtype) in self.tensors.items())
        out = await self.batcher(x)
        finite = np.isfinite(out) if self.regression else np.isfinite(out).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise RequestError(400, f"row {row}: the model's output is not finite; numeric inputs are too large")
        labels = self.task.predictions(out)
        self.capture.add(cols, labels, matrix=numeric, request_id=request_id, client_id=client_id,
                         latency_s=time.perf_counter() - started)
        return Prediction(labels, None if self.regression else out)


@dataclass(frozen=True)
class _State:
    """What requests read: swapped as one object, so a request never sees half a rollout."""

    table: RoutingTable
    loaded: Mapping[tuple[str, int], LoadedVersion]


class ModelServer:
    """Everything a serving replica holds. Build it with :meth:`from_project`, then :meth:`apply` a table."""

    def __init__(self, project: Project, plugins: Plugins, *, token: str | None = None,
                 operator_token: str | None = None, replica: str = "", capture_store: bool = True,
                 shipped: bool = False):
        self.project = project
        self.plugins = plugins
        cfg = project.config

        def open_registry() -> Any:
            return plugins.registry(cfg.registry.kind, state_dir=project.state_dir, options=cfg.registry.options,
                                    storage=project.storage)

        #: Where versions are read from: the registry itself, or (``shipped``: a registry other nodes cannot read)
        #: the project's depot of versions shipped through Ray's object store (:mod:`.depot`).
        self.registry: Any = DepotRegistry(project, open_registry) if shipped else open_registry()
        #: The inference token, and the operator token (feedback, monitoring, metrics, admin); with no operator token
        #: of its own, the inference token is the operator's too.
        self.token = token
        self.operator_token = operator_token or token
        check_exposure(project, self.token, self.operator_token)
        #: What one request may carry.
        self.limits = Limits.of(cfg.serving)
        self.metrics = ServingMetrics(replica)
        self._state = _State(RoutingTable(), {})
        self._shadow_pending = 0
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        #: This replica's own traffic, for ``/monitoring/{model}/traffic`` when the deployment has no monitor.
        self._traffic = TrafficStats()
        self._store: Any = None
        self._service = cfg.feature_definitions.service
        mon = cfg.monitoring
        #: Where captured samples and feedback are flushed (``None`` with ``monitoring.store: memory``).
        self.store: CaptureStore | None = None
        if mon.store == "parquet" and capture_store:
            self.store = CaptureStore(project.capture_uri, max_pending=mon.max_pending, flush_s=mon.flush_interval_s,
                                      replica=replica, on_drop=self.metrics.capture_dropped.inc,
                                      on_write=self.metrics.capture_stored.inc)

    @classmethod
    def from_project(cls, root: str | Project | dict, *, token: str | None = None, operator_token: str | None = None,
                     replica: str = "", shipped: bool = False) -> ModelServer:
        """The server of a project: a directory (read here), a :class:`Project`, or a :meth:`Project.spec` (as a
        replica gets it, so that it reads nothing from the driver's disk)."""
        if isinstance(root, Project):
            project = root
        elif isinstance(root, dict):
            project = Project.from_spec(root)
        else:
            project = load_project(root)
        return cls(project, get_plugins(modules=project.config.plugins), token=token, operator_token=operator_token,
                   replica=replica, shipped=shipped)

    # -- the routing table -------------------------------------------------------------------------------------

    @property
    def table(self) -> RoutingTable:
        return self._state.table

    @property
    def loaded(self) -> Mapping[tuple[str, int], LoadedVersion]:
        """The loaded versions, by ``(model, version)``."""
        return self._state.loaded

    @property
    def ready(self) -> bool:
        return bool(self._state.table.models)

    def load(self, name: str, version: int) -> LoadedVersion:
        """Read a version from the registry and load it in its format (:func:`runtime.formats.load_model`), within
        what may be served (``serving.allowed_architectures``, ``serving.max_parameters``: checked before anything
        is imported or built)."""
        loaded = load_model(self.registry, name, version, plugins=self.plugins, limits=LoadLimits.of(self.project))
        mv = loaded.version
        reference = read_reference(self.registry, mv)
        mon = self.project.config.monitoring
        capture = Capture(name, mv.version, mon.window, mon.sample_rate, store=self.store,
                          schema=loaded.spec.inputs, numeric=tuple(loaded.spec.preprocessor.numeric))
        return LoadedVersion(name, mv.version, loaded, reference, capture)

    def _start(self, lv: LoadedVersion) -> LoadedVersion:
        cfg = self.project.config.serving
        lv.warm_up()
        lv.batcher = MicroBatcher(lv.forward, max_rows=cfg.max_batch_size, wait_s=cfg.batch_wait_ms / 1000,
                                  on_batch=self.metrics.batch_observer(lv.name, lv.version))
        return lv

    def _missing(self, table: RoutingTable) -> list[tuple[str, int]]:
        loaded = self._state.loaded
        return [(n, v) for n, r in table.models.items() for v in r.live if (n, v) not in loaded]

    def _swap(self, table: RoutingTable, new: Mapping[tuple[str, int], LoadedVersion]) -> None:
        loaded = {**self._state.loaded, **new}
        keep = {(n, v) for n, r in table.models.items() for v in r.live}
        self._state = _State(table, {k: lv for k, lv in loaded.items() if k in keep})
        self.metrics.keep_shadows({n: r.shadow for n, r in table.models.items() if r.shadow is not None})
        self._settle_heap()
        log.info("serving %s (generation %d)", ", ".join(
            f"{n} v{r.primary}" + (f" + canary v{r.canary} ({r.canary_percent}%)" if r.canary is not None else "")
            + (f" + shadow v{r.shadow}" if r.shadow is not None else "") for n, r in table.models.items())
            or "nothing", table.generation)

    @staticmethod
    def _settle_heap() -> None:
        """Take what is loaded now (libraries, models) out of the garbage collector's sight.

        Requests allocate; captured samples live for seconds, so they reach the oldest generation and trigger full
        collections, each of which walked every object of torch, pandas and the models: measured, capture on cost
        10% of in-process throughput, most of it there. ``gc.freeze()`` after loading leaves full collections only
        request-time objects. Versions this swap dropped are unfrozen and collected first, so unloading frees them.

        The youngest generation is collected every :data:`GEN0_THRESHOLD` net allocations instead of Python's 700:
        in a Serve replica a request leaves enough containers in flight that gen0 ran every ~10 requests (measured
        12 us of collector time per request); a collection costs about what is alive, not the threshold.
        """
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])

    def apply(self, table: RoutingTable) -> None:
        """Load what ``table`` needs, then switch to it in one step; versions it drops are unloaded."""
        new = {key: self._start(self.load(*key)) for key in self._missing(table)}
        self._swap(table, new)

    async def reconfigure(self, table: RoutingTable) -> None:
        """:meth:`apply` without blocking the event loop: loading runs on a thread while requests keep flowing."""
        loop = asyncio.get_running_loop()
        loaded = await asyncio.gather(*(loop.run_in_executor(None, self.load, *key) for key in self._missing(table)))
        new = {(lv.name, lv.version): lv for lv in loaded}
        await loop.run_in_executor(None, lambda: [self._start(lv) for lv in new.values()])
        self._swap(table, new)

    def resolve(self, name: str, version: str | None = None) -> LoadedVersion:
        """The version a request reaches: ``name`` (by traffic weight), ``name@alias``, or ``name`` + ``version``."""
        state = self._state
        model, _, alias = name.partition("@")
        routes = state.table.models.get(model)
        if routes is None:
            served = ", ".join(state.table.models) or "none"
            raise RequestError(404, f"model {model[:60]!r} is not served (served: {served})")
        if alias:
            if version is not None:
                raise RequestError(400, f"name an alias ({name!r}) or a version, not both")
            v = routes.aliases.get(alias)
            if v is None:
                raise RequestError(404, f"model {model[:60]!r} has no alias {alias[:60]!r} on a live version "
                                        f"(aliases: {', '.join(routes.aliases) or 'none'})")
        elif version is not None:
            v = int(version) if len(version) <= 18 and version.isascii() and version.isdigit() else -1
            if v not in routes.live:
                raise RequestError(404, f"model {model!r} version {version[:20]!r} is not served "
                                        f"(live versions: {', '.join(map(str, routes.live))})")
        else:
            v = routes.pick()
        return state.loaded[(model, v)]

    def routes(self, name: str) -> ModelRoutes:
        routes = self._state.table.models.get(name)
        if routes is None:
            raise RequestError(404, f"model {name[:60]!r} is not served (served: {', '.join(self.table.models) or 'none'})")
        return routes

    # -- the shadow ----------------------------------------------------------------------------------------------

    def shadow(self, lv: LoadedVersion, cols: Columns, labels: list[Any], request_id: str = "",
               client_id: str = "") -> None:
        """Score a request that named no version and that ``lv`` answered with the model's shadow version too,
        when ``lv`` is the primary and a shadow runs: as a task of the running event loop, after the answer (call
        this once it is sent). The shadow's predictions are compared with ``labels`` (the primary's) and captured
        under the shadow's version with the same ``request_id``; nothing of it reaches the client. Beyond
        :data:`SHADOW_PENDING` pending shadow predictions the request is skipped (and counted)."""
        state = self._state
        routes = state.table.models.get(lv.name)
        if routes is None or routes.shadow is None or routes.primary != lv.version:
            return
        shadow = state.loaded.get((lv.name, routes.shadow))
        if shadow is None:
            return
        counts = self.metrics.shadow_counts(lv.name, shadow.version, lv.regression)
        if self._shadow_pending >= SHADOW_PENDING:
            counts.skip()
            return
        self._shadow_pending += 1
        task = asyncio.get_running_loop().create_task(
            self._score_shadow(shadow, counts, cols, labels, request_id, client_id))
        self._shadow_tasks.add(task)  # (the loop keeps only weak references to its tasks)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _score_shadow(self, shadow: LoadedVersion, counts: ShadowCounts, cols: Columns, labels: list[Any],
                            request_id: str, client_id: str) -> None:
        try:
            if shadow.regression != counts.regression:
                raise LoomError(f"v{shadow.version} is not the same task as the primary")
            pred = await shadow.predict(cols, request_id, client_id)
            counts.compare(labels, pred.labels)
        except Exception as err:  # noqa: BLE001 - the shadow's failures are counted, never answered
            if not counts.errors:
                log.warning("shadow %s v%d failed to score a request (%s); further failures are counted only "
                            "(loom_shadow_errors_total)", shadow.name, shadow.version,
                            err.message if isinstance(err, RequestError) else repr(err)[:300])
            counts.error()
        finally:
            self._shadow_pending -= 1

    # -- traffic -------------------------------------------------------------------------------------------------

    def traffic(self, name: str, window_s: float = 60.0) -> dict[str, Any]:
        """This replica's own traffic of ``name`` over the last ``window_s`` seconds (see
        :meth:`~runtime.serving.metrics.TrafficStats.traffic`): what ``/monitoring/{model}/traffic`` answers when
        the deployment has no monitor. Its rate series is coarse: a snapshot is taken per call."""
        routes = self.routes(name)
        self._traffic.add(self.metrics.snapshot())
        return self._traffic.traffic(name, window_s, live=tuple(routes.traffic), shadow=routes.shadow)

    # -- inputs from the online feature store ------------------------------------------------------------------

    @property
    def join_keys(self) -> tuple[str, ...]:
        return self._service.join_keys

    def _online(self, entities: dict[str, list[Any]]) -> pd.DataFrame:
        if self._store is None:
            f = self.project.config.features
            self._store = self.plugins.feature_store(f.store, state_dir=self.project.state_dir, options=f.options,
                                                     storage=self.project.storage)
        return self._service.online(self._store, entities)

    async def entity_columns(self, lv: LoadedVersion, entities: dict[str, list[Any]]) -> Columns:
        """Look the model's inputs up in the online feature store, one row per entity."""
        store_name = self.project.config.features.store
        try:
            frame = await asyncio.get_running_loop().run_in_executor(None, self._online, entities)
        except LoomError as err:
            raise RequestError(503, f"feature store {store_name!r} failed: {err}") from None
        except Exception as err:  # noqa: BLE001 - a plugin's failure, named
            log.exception("online feature look-up failed")
            raise RequestError(503, f"feature store {store_name!r} failed ({type(err).__name__}); "
                                    "see the server log") from None
        missing = [c for c in lv.schema if c not in frame.columns]
        if missing:
            raise RequestError(409, f"model {lv.name!r} v{lv.version} needs input(s) {', '.join(missing)}, which "
                                    f"feature service {self._service.name!r} does not provide")
        frame = frame[list(lv.schema)]
        absent = frame.isna().all(axis=1).to_numpy()
        if absent.any():
            keys = [", ".join(f"{k}={entities[k][i]!r}" for k in entities) for i in np.flatnonzero(absent)[:5]]
            raise RequestError(404, f"no online features for entit{'y' if len(keys) == 1 else 'ies'} "
                                    f"{'; '.join(keys)} (feature service {self._service.name!r})")
        cols: dict[str, list[Any]] = {}
        for c in frame.columns:
            s = frame[c]
            if pd.api.types.is_datetime64_any_dtype(s):
                s = s.dt.strftime("%Y-%m-%dT%H:%M:%S")
            cols[c] = s.astype(object).where(s.notna(), None).tolist()
        return check_columns(cols, lv.schema, self.limits)
