"""Prometheus metrics of a serving replica, per model and version: requests by protocol and status code, latency,
predicted rows, batch sizes and the capture store's writes and drops. Served at ``/metrics``, where each replica
answers with its own counts under its ``replica`` label, so a scrape through the ingress sees one replica per
scrape. :class:`RayExport` copies them (and the deployment monitor's drift gauges) into Ray's metrics system,
which every node serves on its metrics export port: that is what Prometheus scrapes to see every replica
(docs/monitoring.md, "Prometheus across the cluster")."""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

log = logging.getLogger("loom.serving")

LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    """The replica's metric families, in a registry of their own. Label values are model names and versions that
    are live (or empty for requests that named no live model), so cardinality stays bounded."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, replica: str = ""):
        self.replica = replica
        self.registry = CollectorRegistry()
        self.requests = Counter("loom_requests", "Inference requests by outcome",
                                ["replica", "model", "version", "protocol", "code"], registry=self.registry)
        self.latency = Histogram("loom_request_seconds", "Inference request latency inside the replica",
                                 ["replica", "model", "version", "protocol"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.rows = Counter("loom_predicted_rows", "Rows predicted", ["replica", "model", "version"],
                            registry=self.registry)
        self.batch_rows = Histogram("loom_batch_rows", "Rows per forward pass (dynamic batching)",
                                    ["replica", "model", "version"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.capture_dropped = Counter("loom_capture_dropped", "Sampled requests dropped instead of stored "
                                       "(overload or a failed write)", ["replica"],
                                       registry=self.registry).labels(replica)
        self.capture_stored = Counter("loom_capture_stored", "Sampled requests written to the capture store",
                                      ["replica"], registry=self.registry).labels(replica)
        self._requests: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, model: str, version: str, protocol: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (model, version, protocol, code)
        children = self._requests.get(key)
        if children is None:
            children = self._requests[key] = (self.requests.labels(self.replica, model, version, protocol, str(code)),
                                              self.latency.labels(self.replica, model, version, protocol))
        children[0].inc()
        children[1].observe(seconds)

    def batch_observer(self, model: str, version: int):
        """A callback for :class:`~runtime.serving.batching.MicroBatcher` counting rows per forward pass."""
        rows = self.rows.labels(self.replica, model, str(version))
        sizes = self.batch_rows.labels(self.replica, model, str(version))

        def observe(n: int) -> None:
            rows.inc(n)
            sizes.observe(n)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


#: How often a replica (and the deployment monitor) copies its metrics into Ray's metrics system.
EXPORT_INTERVAL_S = 5.0


def in_ray_worker() -> bool:
    """True in a Ray worker process (a Serve replica, an actor), false in a driver or without Ray."""
    try:
        import ray
    except ImportError:  # pragma: no cover - Ray is a dependency of serving
        return False
    return ray.is_initialized() and ray._private.worker.global_worker.mode == ray.WORKER_MODE


class RayExport:
    """Copies a prometheus_client registry into Ray's metrics (``ray.util.metrics``) every ``interval_s`` on a
    daemon thread, so that every node's Ray metrics export port (``ray start --metrics-export-port``, listed in
    Ray's Prometheus service-discovery file) serves every replica's metrics: a scrape of ``/metrics`` through
    the ingress reaches one replica at a time.

    Nothing here runs on the request path: requests update the prometheus_client children as before and the
    thread reads them. Ray prefixes every name with ``ray_``; the names come out as the replica's own
    ``/metrics`` has them:

    - a counter adds what it gained since the last pass (Ray's Counter, exported as ``ray_<name>_total``);
    - a gauge is set (``ray_<name>``), on every pass: Ray's agent drops a gauge that is not set again within
      two of its report intervals (``metrics_report_interval_ms``; a pass runs at least once per interval);
    - a histogram's cumulative ``_bucket`` (by ``le``), ``_sum`` and ``_count`` are set as gauges
      (``ray_<name>_bucket`` ...): Ray's Histogram only takes single observations (a copy would replay every
      request), and its Counter cannot export a zero, which would drop the empty buckets
      ``histogram_quantile`` interpolates from. ``rate()`` and ``histogram_quantile()`` work on these as on
      any histogram.

    Labels are the registry's (bounded: replica, model, version, protocol, code, ...); Ray adds its own
    (``NodeAddress``, ``SessionName``, ``Component``, ...).
    """

    def __init__(self, registry: CollectorRegistry, interval_s: float = EXPORT_INTERVAL_S):
        self.registry = registry
        self.interval_s = interval_s
        self._ray: dict[str, Any] = {}  # exported name -> the Ray metric
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}  # a counter's last exported total
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    @classmethod
    def in_ray_worker(cls, registry: CollectorRegistry, interval_s: float = EXPORT_INTERVAL_S) -> RayExport | None:
        """A started export inside a Ray worker process; ``None`` elsewhere (a server in a driver, in tests)."""
        if not in_ray_worker():
            return None
        import ray

        report_s = max(ray._config.metrics_report_interval_ms(), 1000) / 1000  # Ray's own floor
        return cls(registry, min(interval_s, report_s)).start()

    def start(self) -> RayExport:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="loom-ray-metrics", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.export()
            except Exception:  # noqa: BLE001 - a failed pass must not end the export (or the replica)
                if not self._failed:
                    log.exception("could not copy metrics to Ray's metrics export (further failures are quiet)")
                self._failed = True

    def series(self) -> list[tuple[str, str, str, dict[str, str], float]]:
        """``(kind, name, help, labels, value)`` of every series to export: ``kind`` is ``counter`` (a running
        total) or ``gauge``."""
        out = []
        for family in self.registry.collect():
            if family.type == "counter":
                wanted = {family.name + "_total": "counter"}
            elif family.type == "gauge":
                wanted = {family.name: "gauge"}
            elif family.type == "histogram":
                wanted = {family.name + suffix: "gauge" for suffix in ("_bucket", "_sum", "_count")}
            else:
                continue
            for sample in family.samples:
                kind = wanted.get(sample.name)
                if kind is not None:
                    out.append((kind, family.name if kind == "counter" else sample.name, family.documentation,
                                sample.labels, sample.value))
        return out

    def export(self) -> int:
        """One pass: the counters that grew since the last one, and every gauge; returns the number of series
        updated."""
        from ray.util.metrics import Counter as RayCounter
        from ray.util.metrics import Gauge as RayGauge

        updated = 0
        last = self._last
        for kind, name, doc, labels, value in self.series():
            if kind == "counter":
                key = (name, tuple(labels.items()))
                before = last.get(key)
                if before == value:
                    continue
                last[key] = value
                delta = value - before if before is not None and value >= before else value  # (or a reset)
                if delta <= 0:
                    continue
            metric = self._ray.get(name)
            if metric is None:
                metric = self._ray[name] = _ray_metric(RayCounter if kind == "counter" else RayGauge, name, doc,
                                                       tuple(labels))
            if kind == "counter":
                metric.inc(delta, tags=labels)
            else:
                metric.set(value, tags=labels)
            updated += 1
        return updated


#: Ray metrics by name, one per process (two exports of the same name in a process share it).
_RAY_METRICS: dict[str, Any] = {}
_RAY_METRICS_LOCK = threading.Lock()


def _ray_metric(cls: Any, name: str, doc: str, tag_keys: tuple[str, ...]) -> Any:
    with _RAY_METRICS_LOCK:
        metric = _RAY_METRICS.get(name)
        if metric is None:
            metric = _RAY_METRICS[name] = cls(name, description=doc, tag_keys=tag_keys)
        return metric
