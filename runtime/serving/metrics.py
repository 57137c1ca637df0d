"""Prometheus metrics of a serving replica, per model and version: requests by protocol and status code, latency,
predicted rows, batch sizes, the capture store's writes and drops, and a shadow version's comparison with its
primary. Served at ``/metrics``, where each replica answers with its own counts under its ``replica`` label, so a
scrape through the ingress sees one replica per scrape. :class:`RayExport` copies them (and the deployment
monitor's drift gauges) into Ray's metrics system, which every node serves on its metrics export port: that is what
Prometheus scrapes to see every replica (docs/monitoring.md, "Prometheus across the cluster").

:meth:`ServingMetrics.snapshot` is a replica's compact summary of the same counts (cumulative, per model and
version), sent with every capture flush to the deployment's monitor; :class:`TrafficStats` keeps those snapshots
and answers ``/monitoring/{model}/traffic``: requests, errors, rate and latency over the last minutes, deployment
wide."""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

log = logging.getLogger("loom.serving")

LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: The upper bounds of the latency histogram's buckets, ``+Inf`` last (what a snapshot's bucket counts are of).
BOUNDS = (*map(float, LATENCY_BUCKETS), math.inf)
#: A snapshot's per-version counts: requests, server errors (5xx), client errors (4xx), then the latency histogram's
#: cumulative bucket counts (one per :data:`BOUNDS`).
REQUESTS, ERRORS, CLIENT_ERRORS, BUCKETS = 0, 1, 2, 3
#: A regression shadow agrees with its primary on a row when ``|a - b| <= SHADOW_TOLERANCE * max(1, |a|)``.
SHADOW_TOLERANCE = 1e-6


class ShadowCounts:
    """One shadow version's comparison with its model's primary on this replica, since the shadow started here:
    requests scored, rows compared, rows that agree (the same class; for regression, values within
    :data:`SHADOW_TOLERANCE`, and the sum of absolute differences), failures and requests skipped (too many
    pending). Updated on the replica's event loop, off the request path."""

    def __init__(self, metrics: ServingMetrics, model: str, version: int, regression: bool):
        self.model = model
        self.version = version
        self.regression = regression
        self.requests = self.rows = self.agree_rows = self.errors = self.skipped = 0
        self.abs_diff = 0.0
        labels = (metrics.replica, model, str(version))
        self._requests = metrics.shadow_requests.labels(*labels)
        self._rows = metrics.shadow_rows.labels(*labels)
        self._agree = metrics.shadow_agree_rows.labels(*labels)
        self._errors = metrics.shadow_errors.labels(*labels)
        self._skipped = metrics.shadow_skipped.labels(*labels)

    def compare(self, primary: Sequence[Any], shadow: Sequence[Any]) -> None:
        """Count one request both versions answered: the primary's predictions against the shadow's."""
        if len(primary) != len(shadow):
            raise ValueError(f"the shadow answered {len(shadow)} rows for {len(primary)}")
        if self.regression:
            agree, diff = 0, 0.0
            for a, b in zip(primary, shadow):
                d = abs(float(a) - float(b))
                diff += d
                agree += d <= SHADOW_TOLERANCE * max(1.0, abs(float(a)))
            self.abs_diff += diff
        else:
            agree = sum(a == b for a, b in zip(primary, shadow))
        self.requests += 1
        self.rows += len(primary)
        self.agree_rows += agree
        self._requests.inc()
        self._rows.inc(len(primary))
        self._agree.inc(agree)

    def error(self) -> None:
        self.errors += 1
        self._errors.inc()

    def skip(self) -> None:
        self.skipped += 1
        self._skipped.inc()

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, "regression": self.regression, "requests": self.requests,
                "rows": self.rows, "agree_rows": self.agree_rows, "abs_diff": self.abs_diff, "errors": self.errors,
                "skipped": self.skipped}


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
        shadow = ["replica", "model", "version"]  # version: the shadow's
        self.shadow_requests = Counter("loom_shadow_requests", "Requests a shadow version scored beside its primary",
                                       shadow, registry=self.registry)
        self.shadow_rows = Counter("loom_shadow_rows", "Rows a shadow version scored beside its primary", shadow,
                                   registry=self.registry)
        self.shadow_agree_rows = Counter("loom_shadow_agree_rows", "Rows where a shadow version agreed with its "
                                         "primary", shadow, registry=self.registry)
        self.shadow_errors = Counter("loom_shadow_errors", "Requests a shadow version failed to score", shadow,
                                     registry=self.registry)
        self.shadow_skipped = Counter("loom_shadow_skipped", "Requests a shadow version skipped (too many pending)",
                                      shadow, registry=self.registry)
        self._requests: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}
        #: The running shadow comparisons, by model.
        self.shadows: dict[str, ShadowCounts] = {}
        #: This process's run of the counters: a snapshot's series (a restarted replica starts a new one from zero).
        self.incarnation = uuid.uuid4().hex
        self.started = time.time()
        self._snapshots = 0
        self._bucket = {b: i for i, b in enumerate(BOUNDS)}

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

    def shadow_counts(self, model: str, version: int, regression: bool) -> ShadowCounts:
        """The comparison of ``model``'s shadow ``version`` with its primary (new when the shadow changed)."""
        counts = self.shadows.get(model)
        if counts is None or counts.version != version:
            counts = self.shadows[model] = ShadowCounts(self, model, version, regression)
        return counts

    def keep_shadows(self, shadows: dict[str, int]) -> None:
        """Forget the comparisons of shadows that stopped or changed version (``shadows``: model -> the running
        shadow version), so that a shadow started again counts from zero."""
        for model, counts in list(self.shadows.items()):
            if shadows.get(model) != counts.version:
                del self.shadows[model]

    def snapshot(self) -> dict[str, Any]:
        """This replica's cumulative counts per model and version, and its shadow comparisons: what it sends the
        deployment's monitor with every capture flush (read from the metric families, never on the request path).

        ``{"replica", "incarnation", "started", "seq", "t", "versions": {model: {version: [requests, errors,
        client_errors, *cumulative latency bucket counts]}}, "shadow": {model: ShadowCounts.summary()}}``; ``seq``
        counts this run's snapshots from 1."""
        versions: dict[str, dict[str, list[int]]] = {}

        def counts(labels: dict[str, str]) -> list[int] | None:
            model = labels["model"]
            if not model:  # a request that reached no model
                return None
            per = versions.setdefault(model, {})
            entry = per.get(labels["version"])
            if entry is None:
                entry = per[labels["version"]] = [0] * (BUCKETS + len(BOUNDS))
            return entry

        for family in self.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and (entry := counts(sample.labels)) is not None:
                    code, n = int(sample.labels["code"]), int(sample.value)
                    entry[REQUESTS] += n
                    if code >= 500:
                        entry[ERRORS] += n
                    elif code >= 400:
                        entry[CLIENT_ERRORS] += n
        for family in self.latency.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket") and (entry := counts(sample.labels)) is not None:
                    entry[BUCKETS + self._bucket[float(sample.labels["le"])]] += int(sample.value)
        self._snapshots += 1
        return {"replica": self.replica, "incarnation": self.incarnation, "started": self.started,
                "seq": self._snapshots, "t": time.time(),
                "versions": versions, "shadow": {m: c.summary() for m, c in list(self.shadows.items())}}

    def render(self) -> bytes:
        return generate_latest(self.registry)


#: How long :class:`TrafficStats` keeps snapshots (and the longest window it answers).
TRAFFIC_RETAIN_S = 900.0
#: Snapshots of one replica closer together than this are merged (the newer one kept).
TRAFFIC_RESOLUTION_S = 1.0
#: The step of the ``series`` of :meth:`TrafficStats.traffic`.
SERIES_STEP_S = 5.0


class _Series:
    """The snapshots of one replica's run of its counters (one ``incarnation``), oldest first, on one clock."""

    def __init__(self, started: float, trimmed: bool = False):
        self.started = started
        self.at: list[float] = []
        self.snapshots: list[dict[str, Any]] = []
        #: Whether counts before the oldest snapshot kept are unknown (dropped, or never received), rather than zero.
        self.trimmed = trimmed

    def add(self, at: float, snapshot: dict[str, Any], cutoff: float) -> None:
        if self.at and at < self.at[-1]:
            return  # older than what is kept: a late arrival
        if len(self.at) > 1 and self.at[-1] - self.at[-2] < TRAFFIC_RESOLUTION_S:  # the newest one moves on
            self.at[-1], self.snapshots[-1] = at, snapshot
        else:
            self.at.append(at)
            self.snapshots.append(snapshot)
        drop = bisect.bisect_right(self.at, cutoff) - 1  # keep the newest one at or before the cutoff: a baseline
        if drop > 0:
            del self.at[:drop], self.snapshots[:drop]
            self.trimmed = True

    @property
    def origin(self) -> float:
        """Since when the counts are known: the run's start, else its oldest snapshot kept."""
        return self.at[0] if self.trimmed and self.at else self.started

    def at_time(self, t: float) -> dict[str, Any] | None:
        """The newest snapshot at or before ``t`` (the oldest kept, when older ones were dropped); ``None``: the
        counters were still at zero then."""
        i = bisect.bisect_right(self.at, t) - 1
        if i >= 0:
            return self.snapshots[i]
        return self.snapshots[0] if self.trimmed and self.snapshots else None


def _delta(end: Sequence[int], start: Sequence[int] | None) -> list[int]:
    if start is None or any(a < b for a, b in zip(end, start)):  # counted from zero (or reset)
        return list(end)
    return [a - b for a, b in zip(end, start)]


def quantile(q: float, cumulative: Sequence[float], bounds: Sequence[float] = BOUNDS) -> float | None:
    """The ``q`` quantile of a histogram's cumulative bucket counts, interpolated linearly inside its bucket (as
    Prometheus' ``histogram_quantile``; the highest finite bound when it falls in the ``+Inf`` bucket)."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    i = next(i for i, c in enumerate(cumulative) if c >= rank)
    if math.isinf(bounds[i]):
        return bounds[i - 1] if i > 0 else 0.0
    lower, below = (bounds[i - 1], cumulative[i - 1]) if i > 0 else (0.0, 0)
    inside = cumulative[i] - below
    return lower + (bounds[i] - lower) * ((rank - below) / inside if inside > 0 else 1.0)


class TrafficStats:
    """Every replica's :meth:`ServingMetrics.snapshot`, kept for :data:`TRAFFIC_RETAIN_S`, and the traffic they add
    up to. Snapshots are cumulative per replica run (``incarnation``), which counts from zero at its ``started``:
    a restarted replica is a new run, so counter resets need no guessing, and a replica that died keeps what it
    counted inside the window. A run first seen at a later snapshot (``seq`` > 1: the monitor restarted) counts
    from that snapshot on."""

    def __init__(self, retain_s: float = TRAFFIC_RETAIN_S):
        self.retain_s = retain_s
        self._series: dict[str, _Series] = {}
        self._lock = threading.Lock()

    def add(self, snapshot: dict[str, Any], at: float | None = None) -> None:
        """Keep one snapshot; ``at``: when it arrived on this process's clock (default: the snapshot's own ``t``),
        so that replicas on nodes whose clocks differ line up."""
        at = snapshot["t"] if at is None else at
        with self._lock:
            series = self._series.get(snapshot["incarnation"])
            if series is None:
                started = at - max(0.0, snapshot["t"] - snapshot["started"])
                # a run first seen after its first snapshot (this monitor restarted): what it counted before is
                # not in the window's deltas
                series = self._series[snapshot["incarnation"]] = _Series(started, snapshot.get("seq", 1) > 1)
            cutoff = at - self.retain_s
            series.add(at, snapshot, cutoff)
            for key, other in list(self._series.items()):  # replicas gone for longer than the retention
                if other.at and other.at[-1] < cutoff:
                    del self._series[key]

    def traffic(self, model: str, window_s: float = 60.0, *, live: Iterable[int] = (), shadow: int | None = None,
                shadow_since: float = 0.0, now: float | None = None) -> dict[str, Any]:
        """Per version of ``model`` over the last ``window_s`` seconds, every replica together: ``requests``,
        ``errors`` (5xx), ``client_errors`` (4xx), ``error_rate`` (5xx per request), ``rps`` (over the window, or
        since the first replica started when that is later), ``p50_ms`` and ``p99_ms`` (from the latency
        histogram's bucket deltas, interpolated inside a bucket; ``None`` without requests); the ``shadow``
        version's comparison since it started (``None`` when ``shadow`` is); and ``series``, requests per second
        per version, every :data:`SERIES_STEP_S` seconds. ``live``: versions listed even without requests."""
        now = time.time() if now is None else now
        window_s = min(float(window_s), self.retain_s)
        start = now - window_s
        with self._lock:
            series = list(self._series.values())
        totals: dict[str, list[int]] = {str(v): [0] * (BUCKETS + len(BOUNDS)) for v in live}
        for s in series:
            end = s.at_time(now)
            if end is None:
                continue
            before = s.at_time(start)
            begun = (before or {}).get("versions", {}).get(model, {})
            for version, counts in end["versions"].get(model, {}).items():
                acc = totals.setdefault(version, [0] * len(counts))
                for i, d in enumerate(_delta(counts, begun.get(version))):
                    acc[i] += d
        first = min((s.origin for s in series), default=now)
        span = max(1.0, min(window_s, now - first))
        versions: dict[str, dict[str, Any]] = {}
        for version in sorted(totals, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v)):
            counts = totals[version]
            requests = counts[REQUESTS]
            if not requests and version not in {str(v) for v in live}:
                continue
            buckets = counts[BUCKETS:]
            p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
            versions[version] = {
                "requests": requests, "errors": counts[ERRORS], "client_errors": counts[CLIENT_ERRORS],
                "error_rate": round(counts[ERRORS] / requests, 6) if requests else 0.0,
                "rps": round(requests / span, 3),
                "p50_ms": None if p50 is None else round(p50 * 1000, 3),
                "p99_ms": None if p99 is None else round(p99 * 1000, 3)}
        return {"model": model, "window_s": window_s, "versions": versions,
                "shadow": None if shadow is None else self._shadow(series, model, shadow, shadow_since),
                "series": self._rate_series(series, model, list(versions), start, now, window_s)}

    @staticmethod
    def _shadow(series: list[_Series], model: str, version: int, since: float) -> dict[str, Any]:
        """The shadow's comparison, summed over the latest snapshot of every replica run since it started."""
        out: dict[str, Any] = {"version": version, "requests": 0, "rows": 0, "agree_rows": 0, "errors": 0,
                               "skipped": 0}
        diff, regression = 0.0, False
        for s in series:
            if not s.at or s.at[-1] < since:
                continue
            counts = s.snapshots[-1].get("shadow", {}).get(model)
            if counts is None or counts["version"] != version:
                continue
            for key in ("requests", "rows", "agree_rows", "errors", "skipped"):
                out[key] += counts[key]
            diff += counts.get("abs_diff", 0.0)
            regression = regression or counts.get("regression", False)
        out["agreement"] = round(out["agree_rows"] / out["rows"], 6) if out["rows"] else None
        if regression:
            out["mean_abs_diff"] = diff / out["rows"] if out["rows"] else None
        return out

    @staticmethod
    def _rate_series(series: list[_Series], model: str, versions: list[str], start: float, now: float,
                     window_s: float) -> list[dict[str, Any]]:
        """Requests per second per version, one point per :data:`SERIES_STEP_S` (fewer for a short window),
        ending now."""
        step = SERIES_STEP_S if window_s >= 6 * SERIES_STEP_S else max(1.0, window_s / 6)
        n = max(1, int(window_s // step))
        times = [now - (n - k) * step for k in range(n + 1)]

        def counts_at(t: float) -> dict[str, list[int]]:
            out: dict[str, list[int]] = {}
            for s in series:
                snap = s.at_time(t)
                if snap is None:
                    continue
                for version, counts in snap["versions"].get(model, {}).items():
                    acc = out.setdefault(version, [0] * len(counts))
                    for i, c in enumerate(counts):
                        acc[i] += c
            return out

        totals = [counts_at(t) for t in times]
        points = []
        for k in range(1, n + 1):
            point: dict[str, Any] = {"t": round(times[k], 3), "p50_ms": {}, "p99_ms": {}, "error_rate": {}}
            for version in versions:
                d = _delta(totals[k].get(version, []), totals[k - 1].get(version)) if version in totals[k] else []
                requests = d[REQUESTS] if d else 0
                point[version] = round(requests / step, 3)
                if requests:  # latency and errors of the step's own requests
                    p50, p99 = quantile(0.5, d[BUCKETS:]), quantile(0.99, d[BUCKETS:])
                    point["p50_ms"][version] = None if p50 is None else round(p50 * 1000, 3)
                    point["p99_ms"][version] = None if p99 is None else round(p99 * 1000, 3)
                    point["error_rate"][version] = round(d[ERRORS] / requests, 6)
            points.append(point)
        return points


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
