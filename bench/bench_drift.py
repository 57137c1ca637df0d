"""Drift check on a large window: Loom's check (the stored reference sample, the window sampled down to
``monitoring.check_rows``) against Evidently's default ``DataDriftPreset`` on the full data, side by side in one run.

For a 100k-row x 20-column reference and window, once undrifted and once with 12 of 20 columns shifted, prints both
verdicts (dataset and per column: they must agree) and the ratio of times. Also prints the false-alarm rate of
Loom's check over 50 undrifted windows of ``monitoring.window`` rows, and the detection delay in requests (one row
each) after traffic shifts.

Then serving throughput with capture on (every request sampled into the window and the Parquet store) against
capture off, in-process through the ASGI app (no network, so the capture's share of a request is not diluted),
interleaved rounds (order alternating) of one-row ``/predict`` requests, 32 in flight.

Usage: ``python bench/bench_drift.py [--rows 100000] [--windows 50] [--requests 4000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from plugins.loom_evidently import EvidentlyMonitor
from runtime.config import MonitoringConfig

NUMERICAL = [f"n{i}" for i in range(10)]
CATEGORICAL = [f"c{i}" for i in range(10)]
SHIFTED = [*NUMERICAL[:6], *CATEGORICAL[:6]]


def frame(rows: int, seed: int, *, drift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {}
    for i, c in enumerate(NUMERICAL):
        shift = drift if c in SHIFTED else 0.0
        cols[c] = rng.normal(10 * i + shift, 1 + i / 5, rows)
    for i, c in enumerate(CATEGORICAL):
        p = np.array([0.5, 0.3, 0.15, 0.05])
        if c in SHIFTED and drift:
            p = np.array([0.2, 0.3, 0.2, 0.3])
        cols[c] = rng.choice(np.array(["a", "b", "c", "d"]), rows, p=p)
    return pd.DataFrame(cols)


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


async def _throughput(app, bodies: list[bytes], concurrency: int = 32) -> float:
    async def one(body: bytes) -> None:
        scope = {"type": "http", "method": "POST", "path": "/predict/churn", "root_path": "",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        sent = False

        async def receive():
            nonlocal sent
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = []

        async def send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        assert status == [200], status

    queue = list(bodies)

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(bodies) / (time.perf_counter() - started)


def capture_throughput(requests: int, rounds: int = 9) -> None:
    root = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(root / "tests")]
    from conftest import make_project
    from serving_models import data, records, register_version

    from runtime import get_plugins, load_project
    from runtime.serving.app import LoomApp
    from runtime.serving.routing import RoutingTable
    from runtime.serving.server import ModelServer

    project_dir = make_project(Path(tempfile.mkdtemp()) / "qs", port=8000, monitoring={"interval_s": None})
    register_version(project_dir, seed=1)
    base = load_project(project_dir)
    apps = {}
    for name, rate in (("on", 1.0), ("off", 0.0)):
        mon = base.config.monitoring.model_copy(update={"sample_rate": rate})
        project = base.model_copy(update={"config": base.config.model_copy(update={"monitoring": mon})})
        server = ModelServer(project, get_plugins(modules=project.config.plugins))
        server.apply(RoutingTable().deploy("churn", 1))
        apps[name] = LoomApp(server)
    rows = records(data(project_dir).head(requests))
    bodies = [json.dumps([r]).encode() for r in rows]
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(rounds):
        for name in (("off", "on") if i % 2 else ("on", "off")):
            rates[name].append(asyncio.run(_throughput(apps[name], bodies)))
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    paired = statistics.median(a / b for a, b in zip(rates["on"], rates["off"]))
    dropped = apps["on"].server.store.dropped
    print(f"serving throughput, one-row /predict, 32 in flight, {rounds} interleaved rounds of {requests}: capture off "
          f"{off:,.0f} req/s, capture on {on:,.0f} req/s (medians) -> {on / off:.3f}x; median paired ratio "
          f"{paired:.3f}x (samples dropped: {dropped})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--windows", type=int, default=50)
    ap.add_argument("--requests", type=int, default=4000)
    args = ap.parse_args()
    capture_throughput(args.requests)
    cfg = MonitoringConfig()
    monitor = EvidentlyMonitor()
    kw = {"numerical": NUMERICAL, "categorical": CATEGORICAL}
    reference = frame(args.rows, 1)
    stored = reference.sample(cfg.reference_rows, random_state=0)  # what training stores with the version
    monitor.check(stored.head(200), frame(200, 9), **kw)  # import and warm Evidently outside the timings
    print(f"reference {args.rows:,} rows x {len(reference.columns)} columns; Loom: stored reference "
          f"{cfg.reference_rows:,} rows, window sampled to {cfg.check_rows:,} rows")
    for name, drift in (("undrifted", 0.0), ("drifted", 0.6)):
        current = frame(args.rows, 2, drift=drift)
        full, t_full = timed(lambda: monitor.check(reference, current, **kw))
        fast, t_fast = timed(lambda: monitor.check(stored, current.sample(cfg.check_rows, random_state=0), **kw))
        same = full.drifted == fast.drifted and all(a.drifted == b.drifted for a, b in zip(full.features, fast.features))
        print(f"{name:<10} evidently full: drift={full.drifted} ({full.share_drifted:.0%}) {t_full:6.2f}s | loom: "
              f"drift={fast.drifted} ({fast.share_drifted:.0%}) {t_fast:6.2f}s | same verdicts: {same} | "
              f"speed-up {t_full / t_fast:.1f}x")
    alarms = 0
    for w in range(args.windows):
        alarms += monitor.check(stored, frame(cfg.window, 100 + w), **kw).drifted
    print(f"false alarms: {alarms}/{args.windows} undrifted windows of {cfg.window} rows "
          f"({alarms / args.windows:.0%})")
    calm, hot = frame(cfg.window, 7), frame(cfg.window, 8, drift=0.6)
    for delay in range(cfg.min_rows, cfg.window + 1, cfg.min_rows):
        window = pd.concat([calm.iloc[delay:], hot.iloc[:delay]], ignore_index=True)
        if monitor.check(stored, window, **kw).drifted:
            print(f"detection delay: drift flagged after {delay} shifted requests (checks every "
                  f"{cfg.min_rows} new rows, window {cfg.window})")
            break
    else:
        print("detection delay: not flagged within one window")


if __name__ == "__main__":
    main()
