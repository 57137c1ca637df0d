"""Prometheus metrics of a serving replica, per model and version: requests by protocol and status code, latency,
predicted rows, batch sizes and the capture store's writes and drops. Served at ``/metrics``; each replica answers with its own counts under its
``replica`` label, so scrape the replicas, or sum over the label."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

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
