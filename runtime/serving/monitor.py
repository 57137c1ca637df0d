"""One monitor per deployment: the drift checks, history, feedback labels and check schedule over the traffic of
every replica, not one replica's share.

Each replica's capture store sends the samples of every flush (every ``monitoring.flush_interval_s``, and before a
drift check the replica answers) to the deployment's :class:`DeploymentMonitor`, a Ray actor that Ray restarts if
it dies. The monitor keeps the windows (sized in rows, as in a replica) and runs the checks; every replica answers
``/monitoring/...`` by asking it, so the answer no longer depends on which replica took the request. Feedback is
checked and stored by the replica that receives it, and handed to the monitor. A restarted monitor rebuilds its
windows and labels from the capture store.

Each flush also carries the replica's cumulative request counts, latency histogram and shadow comparison
(:meth:`~runtime.serving.metrics.ServingMetrics.snapshot`): the monitor keeps them for a quarter of an hour and
answers ``/monitoring/{model}/traffic`` for the whole deployment (:meth:`DeploymentMonitor.traffic`).

Nothing on the request path talks to the monitor: samples travel on the capture store's flush thread, in one call
per flush. Without a capture store (``monitoring.store: null``), without a drift monitor (``monitoring.monitor:
null``) or outside Ray Serve, checks and traffic stay per replica.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import ray
from prometheus_client import CollectorRegistry, generate_latest

from ..cluster import project_runtime_env
from ..config import Project, load_project
from ..plugins import get_plugins
from .capture import read_captured, read_feedback
from .drift import DriftChecks
from .metrics import RayExport, TrafficStats
from .protocol import RequestError
from .routing import RoutingTable
from .server import ModelServer

log = logging.getLogger("loom.serving")

#: The Ray namespace of every deployment's monitor actor.
NAMESPACE = "loom"
#: How long a replica waits for the monitor to answer a check or a report.
CALL_TIMEOUT_S = 120


def monitor_name(project: Project) -> str:
    """The monitor actor of a project: one per project directory (two projects may share a name)."""
    digest = hashlib.sha256(str(project.root).encode()).hexdigest()[:10]
    return f"loom-monitor-{project.config.name}-{digest}"


class DeploymentMonitor:
    """The deployment's monitor (run as a Ray actor by :func:`monitor_actor`)."""

    def __init__(self, project: str | dict, token: str | None, operator_token: str | None, shipped: bool = False):
        # ``project``: a Project.spec() (or a project directory); ``shipped``: versions come from the depot
        project = Project.from_spec(project) if isinstance(project, dict) else load_project(project)
        self.server = ModelServer(project, get_plugins(modules=project.config.plugins), token=token,
                                  operator_token=operator_token, replica="monitor", capture_store=False,
                                  shipped=shipped)
        self.registry = CollectorRegistry()
        self.checks = DriftChecks(self.server, registry=self.registry)  # the deployment's one schedule
        self.export = RayExport.in_ray_worker(self.registry)  # the drift gauges, to Ray's metrics: one per deployment
        self.generation = -1
        self.rows = 0
        self._seeded: set[tuple[str, int]] = set()
        self._seed_ids: dict[tuple[str, int], set[str]] = {}
        self._labels_seeded: set[str] = set()
        #: Every replica's counts, as their flushes bring them.
        self.stats = TrafficStats()
        #: When each model's current shadow started, on this clock (when this monitor first saw it).
        self._shadow_since: dict[str, tuple[int, float]] = {}

    # -- what the replicas send ------------------------------------------------------------------------------

    def ingest(self, table: dict[str, Any] | None, samples: list[tuple]) -> int:
        """Samples a replica captured, with the routing table it serves (the newest generation wins)."""
        if table is not None and table.get("generation", -1) > self.generation:
            self._adopt(RoutingTable.from_config(table))
        loaded = self.server.loaded
        for sample in samples:
            key = (sample[0], sample[1])
            lv = loaded.get(key)
            seeded = self._seed_ids.get(key)
            if lv is None or (seeded and sample[2] in seeded):  # read back from the store already
                continue
            lv.capture.extend([sample])
            self.rows += sample[6]
        return self.rows

    def ingest_tables(self, table: dict[str, Any] | None, parts: list[tuple[str, int, Any]],
                      stats: dict[str, Any] | None = None) -> int:
        """A replica's flush as it wrote it to the store: ``(model, version, Arrow table)`` per version, with the
        routing table it serves (the newest generation wins) and its counts (``stats``: a
        :meth:`~runtime.serving.metrics.ServingMetrics.snapshot`)."""
        if table is not None and table.get("generation", -1) > self.generation:
            self._adopt(RoutingTable.from_config(table))
        if stats is not None:
            self.stats.add(stats, at=time.time())
        loaded = self.server.loaded
        for model, version, data in parts:
            key = (model, int(version))
            lv = loaded.get(key)
            if lv is None:
                continue
            rows = data.to_pandas()
            seeded = self._seed_ids.get(key)
            if seeded:  # read back from the store already
                rows = rows[~rows["request_id"].isin(seeded)].reset_index(drop=True)
            lv.capture.extend_rows(rows)
            self.rows += len(rows)
        return self.rows

    def _adopt(self, table: RoutingTable) -> None:
        self.server.apply(table)
        self.generation = table.generation
        for name in set(self._shadow_since) - set(table.models):
            del self._shadow_since[name]
        for name, routes in table.models.items():
            if routes.shadow is None:
                self._shadow_since.pop(name, None)
            elif self._shadow_since.get(name, (None,))[0] != routes.shadow:
                self._shadow_since[name] = (routes.shadow, time.time())
        capture_uri = self.server.project.capture_uri
        window = self.server.project.config.monitoring.window
        for key, lv in self.server.loaded.items():
            if key in self._seeded:
                continue
            self._seeded.add(key)
            try:  # a restarted monitor: the window as the store has it
                rows = read_captured(capture_uri, *key).tail(window)
                if len(rows):
                    lv.capture.seed(rows)
                    # a replica writes a flush to the store before it sends it here: not twice
                    self._seed_ids[key] = set(rows["request_id"])
            except Exception:  # noqa: BLE001 - a window without history is still a window
                log.exception("monitor: could not read back the captured rows of %s v%d", *key)
        for name in table.models:
            if name not in self._labels_seeded:
                self._labels_seeded.add(name)
                self._seed_labels(name)

    def _seed_labels(self, name: str) -> None:
        try:  # a restarted monitor: the history of checks as the store has it
            self.checks.seed_history(name)
        except Exception:  # noqa: BLE001 - checks without their past are still checks
            log.exception("monitor: could not read back the drift history of %s", name)
        try:
            stored = read_feedback(self.server.project.capture_uri, name)
            lv = self.server.resolve(name, str(self.server.routes(name).primary))
        except Exception:  # noqa: BLE001
            log.exception("monitor: could not read back the feedback of %s", name)
            return
        rows = []
        for rid, row, label in zip(stored["request_id"], stored["row"], stored["label"]):
            try:
                rows.append((rid, int(row), lv.task.check_label(label)))
            except ValueError:
                continue
        self.checks.add_labels(name, rows)

    def labels(self, model: str, rows: list[tuple[str, int, Any]]) -> int:
        """Checked feedback labels a replica received (and stored)."""
        self.checks.add_labels(model, rows)
        self.checks.metrics.feedback.labels(self.checks.metrics.replica, model).inc(len(rows))
        return len(rows)

    # -- what the replicas ask -------------------------------------------------------------------------------

    def call(self, method: str, *args: Any) -> tuple:
        """``check``, ``html``, ``history`` or ``histograms`` of the deployment's checks: ``("ok", value)`` or
        ``("error", status, message)``, so a client error crosses the process boundary as it is."""
        try:
            return "ok", getattr(self.checks, method)(*args)
        except RequestError as err:
            return "error", err.status, err.message

    def traffic(self, model: str, window_s: float = 60.0) -> dict[str, Any]:
        """``model``'s traffic over the last ``window_s`` seconds, every replica together (see
        :meth:`~runtime.serving.metrics.TrafficStats.traffic`): requests, errors, rate and latency per version,
        and the shadow's comparison with the primary since the shadow started."""
        routes = self.server.table.models.get(model)
        shadow, since = self._shadow_since.get(model, (None, 0.0)) if routes is not None else (None, 0.0)
        return self.stats.traffic(model, window_s, live=tuple(routes.traffic) if routes is not None else (),
                                  shadow=shadow, shadow_since=since)

    def metrics(self) -> bytes:
        """The deployment-level drift gauges, in Prometheus text format."""
        return generate_latest(self.registry)

    def status(self) -> dict[str, Any]:
        return {"generation": self.generation, "rows": self.rows,
                "windows": {f"{n} v{v}": len(lv.capture.frame()) for (n, v), lv in self.server.loaded.items()}}


def monitor_actor(project: Project, token: str | None, operator_token: str | None, shipped: bool = False) -> Any:
    """The handle of the project's monitor, started on first use: detached (it outlives the process that started
    it; :func:`stop_monitor` ends it with the application) and restarted by Ray whenever it dies."""
    actor = ray.remote(DeploymentMonitor).options(
        name=monitor_name(project), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        max_restarts=-1, max_task_retries=-1, num_cpus=0,  # one call at a time: a replica's samples arrive in order
        runtime_env=project_runtime_env(project))
    return actor.remote(project.spec(), token, operator_token, shipped)


def stop_monitor(project: Project) -> None:
    """End the project's monitor, if it runs."""
    try:
        ray.kill(ray.get_actor(monitor_name(project), namespace=NAMESPACE), no_restart=True)
    except ValueError:
        pass  # none running


class RemoteChecks:
    """What a replica's routes call instead of its own :class:`DriftChecks` when the deployment has a monitor:
    the same methods, answered by the monitor; feedback is checked and stored here, then handed over."""

    def __init__(self, server: ModelServer, handle: Any):
        self.server = server
        self.handle = handle
        #: Checks feedback and writes it to the store; its own gauges stay out of ``/metrics`` (the monitor's
        #: are served instead) and it schedules nothing.
        self.local = DriftChecks(server, schedule=False, registry=CollectorRegistry())
        self._metrics: tuple[float, bytes] = (0.0, b"")
        server.store.forward_tables = self._forward  # type: ignore[union-attr]

    def _forward(self, tables: dict[tuple[str, int], Any]) -> None:
        # on the flush thread: the counts go with the rows, in the same call
        self.handle.ingest_tables.remote(self.server.table.to_config(),
                                         [(m, v, t) for (m, v), t in tables.items()], self.server.metrics.snapshot())

    def _ask(self, method: str, *args: Any, direct: bool = False) -> Any:
        """``method`` of the deployment's checks (``direct``: of the monitor itself, whose answer is returned as
        it is)."""
        self.server.store.flush()  # type: ignore[union-attr]  # this replica's latest rows go first
        try:
            call = getattr(self.handle, method).remote(*args) if direct else self.handle.call.remote(method, *args)
            answer = ray.get(call, timeout=CALL_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - the monitor is down or restarting: say so
            raise RequestError(503, f"the deployment's monitor is unavailable ({type(err).__name__}); "
                                    "retry shortly") from None
        if direct:
            return answer
        if answer[0] == "error":
            raise RequestError(answer[1], answer[2])
        return answer[1]

    def check(self, name: str, version: str | None = None) -> dict[str, Any]:
        self.server.routes(name)
        return self._ask("check", name, version)

    def html(self, name: str, version: str | None = None) -> str:
        self.server.routes(name)
        return self._ask("html", name, version)

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        self.server.routes(name)
        return self._ask("history", name, limit)

    def histograms(self, name: str, feature: str, version: str | None = None) -> dict[str, Any]:
        self.server.routes(name)
        return self._ask("histograms", name, feature, version)

    def traffic(self, name: str, window_s: float = 60.0) -> dict[str, Any]:
        """The deployment's traffic of ``name`` (this replica's latest counts sent first)."""
        self.server.routes(name)
        return self._ask("traffic", name, window_s, direct=True)

    def feedback(self, model: str, payload: Any) -> dict[str, Any]:
        rows = self.local.parse_feedback(model, payload)  # checked and stored here
        self.local.store_labels(model, rows)
        out = {"model": model, "accepted": len(rows)}
        try:
            ray.get(self.handle.labels.remote(model, rows), timeout=CALL_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - stored already: a restarted monitor reads them back
            log.warning("feedback for %s stored but not handed to the monitor: %s", model, type(err).__name__)
        return out

    def deployment_metrics(self) -> bytes:
        """The monitor's drift gauges, fetched at most every 5 s (empty while it is unavailable)."""
        at, text = self._metrics
        if time.monotonic() - at > 5:
            try:
                text = ray.get(self.handle.metrics.remote(), timeout=2)
            except Exception:  # noqa: BLE001
                text = b""
            self._metrics = (time.monotonic(), text)
        return text
