"""The model server: loads model versions from the registry, answers predictions, captures served rows for the
drift monitor, and keeps Prometheus metrics. Framework-free; :mod:`runtime.serving.app` puts HTTP in front."""

from __future__ import annotations

import io
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..config import Project, load_project
from ..errors import LoomError
from ..model import CATEGORICAL_TYPES, ModelBundle, Predictor
from ..plugins import Plugins, get_plugins
from ..registry import parse_ref
from .protocol import RequestError

REFERENCE = "reference.parquet"


@dataclass
class Served:
    """One loaded model version."""

    name: str
    version: int
    predictor: Predictor
    reference: pd.DataFrame | None


class Capture:
    """A bounded, sampled window of served rows. Appending never blocks a request: one short lock, no I/O."""

    def __init__(self, window: int, sample_rate: float, seed: int = 0):
        self.window = window
        self.sample_rate = sample_rate
        self._chunks: deque[pd.DataFrame] = deque()
        self._rows = 0
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.captured = 0

    def add(self, cols: dict[str, np.ndarray], predicted: list[Any]) -> None:
        if self.sample_rate <= 0 or (self.sample_rate < 1 and self._rng.random() >= self.sample_rate):
            return
        chunk = pd.DataFrame({**cols, "prediction": predicted})
        with self._lock:
            self._chunks.append(chunk)
            self._rows += len(chunk)
            self.captured += len(chunk)
            while self._chunks and self._rows - len(self._chunks[0]) >= self.window:
                self._rows -= len(self._chunks.popleft())

    def frame(self) -> pd.DataFrame:
        with self._lock:
            chunks = list(self._chunks)
        if not chunks:
            return pd.DataFrame()
        return pd.concat(chunks, ignore_index=True).tail(self.window).reset_index(drop=True)


class ModelServer:
    """Everything a serving replica holds. Build it with :meth:`from_project`."""

    def __init__(self, project: Project, plugins: Plugins, models: dict[str, int | str], token: str | None = None):
        self.project = project
        self.plugins = plugins
        cfg = project.config
        self.registry = plugins.registry(cfg.registry.kind, state_dir=project.state_dir, options=cfg.registry.options)
        self.token = token
        self.models: dict[str, Served] = {}
        self.captures: dict[str, Capture] = {}
        for name, ref in models.items():
            self.models[name] = self._load(name, ref)
            self.captures[name] = Capture(cfg.monitoring.window, cfg.monitoring.sample_rate)
        self._monitor = None
        self.metrics = CollectorRegistry()
        self.requests = Counter("loom_requests", "Inference requests", ["model", "version", "protocol", "code"],
                                registry=self.metrics)
        self.latency = Histogram("loom_request_seconds", "Inference latency", ["model", "version", "protocol"],
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5),
                                 registry=self.metrics)
        self.rows = Counter("loom_predicted_rows", "Rows predicted", ["model", "version"], registry=self.metrics)

    @classmethod
    def from_project(cls, root: str, models: dict[str, int | str], token: str | None = None) -> ModelServer:
        project = load_project(root)
        return cls(project, get_plugins(modules=project.config.plugins), models, token)

    def _load(self, name: str, ref: int | str) -> Served:
        mv = self.registry.get_version(name, parse_ref(ref))
        arts = {a: self.registry.read_artifact(name, mv.version, a) for a in ("model.json", "model.safetensors")}
        reference = None
        if REFERENCE in mv.artifacts:
            reference = pd.read_parquet(io.BytesIO(self.registry.read_artifact(name, mv.version, REFERENCE)))
        return Served(name, mv.version, Predictor(ModelBundle.from_artifacts(arts)), reference)

    def get(self, name: str, version: str | None = None) -> Served:
        served = self.models.get(name)
        if served is None:
            raise RequestError(404, f"model {name!r} is not served (served: {', '.join(self.models) or 'none'})")
        if version is not None and version != str(served.version):
            raise RequestError(404, f"model {name!r} version {version!r} is not served "
                                    f"(served version: {served.version})")
        return served

    def predict(self, served: Served, cols: dict[str, np.ndarray]) -> tuple[list[Any], np.ndarray]:
        predicted, proba = served.predictor.predict(cols)
        self.rows.labels(served.name, str(served.version)).inc(len(predicted))
        self.captures[served.name].add(cols, predicted)
        return predicted, proba

    # -- monitoring --------------------------------------------------------------------------------------------

    def drift(self, name: str) -> dict[str, Any]:
        """Compare the captured window with the version's training reference using the drift-monitor plugin."""
        served = self.get(name)
        mon_cfg = self.project.config.monitoring
        if mon_cfg.monitor is None:
            raise RequestError(404, "monitoring is turned off for this project (monitoring.monitor is null)")
        if served.reference is None:
            raise RequestError(409, f"model {name!r} version {served.version} has no reference profile")
        current = self.captures[name].frame()
        if current.empty:
            raise RequestError(409, f"no served rows captured yet for model {name!r}")
        if self._monitor is None:
            self._monitor = self.plugins.drift_monitor(mon_cfg.monitor, options=mon_cfg.options)
        schema = served.predictor.inputs
        numerical = [c for c, s in schema.items() if s["type"] not in CATEGORICAL_TYPES]
        categorical = [c for c, s in schema.items() if s["type"] in CATEGORICAL_TYPES]
        started = time.perf_counter()
        try:
            report = self._monitor.check(served.reference[list(schema)], current[list(schema)],
                                         numerical=numerical, categorical=categorical)
        except LoomError as err:
            raise RequestError(409, str(err)) from None
        out = report.to_dict()
        out.update(model=name, version=served.version, seconds=round(time.perf_counter() - started, 4))
        if report.drifted:
            self.plugins.call("loom_drift_detected", project=self.project, model=name, version=served.version,
                              report=report)
        return out


