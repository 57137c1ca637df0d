"""The deployment monitor's intake: captured rows per second it takes from replicas, and what a drift check over
the resulting window costs, for the quickstart model.

Samples are made the way a replica makes them: one-row ``/predict`` requests through a :class:`ModelServer`
in-process, captured into its store's buffer. They are then handed to a :class:`DeploymentMonitor` as flushes of
``--flush`` samples each: once by direct calls (the monitor's own cost), once through a real Ray actor (``ingest.remote``
as the replicas call it: pickling, the object store and the actor's queue included). Goal (issue 16): >= 20,000
captured rows/s.

Usage: ``python bench/bench_monitor.py [--rows 20000] [--flush 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--flush", type=int, default=2_000, help="samples per flush (one call each)")
    args = parser.parse_args()

    root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root / "tests"), str(root)]
    from conftest import make_project
    from serving_models import data, records, register_version

    import ray
    from runtime import get_plugins, load_project
    from runtime.serving.monitor import DeploymentMonitor
    from runtime.serving.protocol import check_columns, rows_to_columns
    from runtime.serving.routing import RoutingTable
    from runtime.serving.server import ModelServer

    project_dir = make_project(Path(tempfile.mkdtemp()) / "qs", port=8000,
                               monitoring={"interval_s": None, "window": args.rows, "max_pending": args.rows * 2,
                                           "flush_interval_s": 3600})
    register_version(project_dir, seed=1)
    project = load_project(project_dir)
    table = RoutingTable().deploy("churn", 1)
    replica = ModelServer(project, get_plugins(modules=project.config.plugins))
    replica.apply(table)
    lv = replica.resolve("churn")
    frame = data(project_dir)

    one_rows = [check_columns(rows_to_columns(records(frame.iloc[i:i + 1]), lv.schema), lv.schema)
                for i in range(min(len(frame), 2000))]

    async def capture() -> None:
        for i in range(args.rows):
            await lv.predict(one_rows[i % len(one_rows)], f"r{i}")

    started = time.perf_counter()
    asyncio.run(capture())
    print(f"captured {args.rows} one-row requests in {time.perf_counter() - started:.1f} s (replica side)")
    samples = list(replica.store._pending)  # type: ignore[union-attr]
    flushes = [samples[i:i + args.flush] for i in range(0, len(samples), args.flush)]
    config = table.to_config()

    from runtime.serving.capture import _table

    layout = replica.store.layouts[("churn", 1)]  # type: ignore[union-attr]
    started = time.perf_counter()
    tables = [_table(batch, layout) for batch in flushes]  # what a replica's flush writes and sends
    table_s = time.perf_counter() - started

    monitor = DeploymentMonitor(str(project_dir), None, None)
    monitor.ingest(config, [])  # loads the version, as the first flush of a deployment does
    started = time.perf_counter()
    for batch in flushes:
        monitor.ingest(config, batch)
    direct = time.perf_counter() - started
    window = len(monitor.server.resolve("churn").capture.frame())
    started = time.perf_counter()
    report = monitor.call("check", "churn", None)
    check_s = time.perf_counter() - started
    assert report[0] == "ok" and report[1]["window_rows"] == window, report[:1]

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    actor = ray.remote(DeploymentMonitor).options(num_cpus=0).remote(str(project_dir), None, None)
    ray.get(actor.ingest.remote(config, []))
    started = time.perf_counter()
    ray.get([actor.ingest.remote(config, batch) for batch in flushes])
    via_ray = time.perf_counter() - started
    actor2 = ray.remote(DeploymentMonitor).options(num_cpus=0).remote(str(project_dir), None, None)
    ray.get(actor2.ingest_tables.remote(config, []))
    started = time.perf_counter()
    refs = [actor2.ingest_tables.remote(config, [("churn", 1, t)]) for t in tables]
    send_s = time.perf_counter() - started  # the replica's side: serialising the call
    ray.get(refs)
    via_tables = time.perf_counter() - started
    started = time.perf_counter()
    refs = [actor.ingest.remote(config, batch) for batch in flushes]
    send_samples_s = time.perf_counter() - started
    ray.get(refs)
    ray.shutdown()

    print(f"monitor intake, direct calls:   {args.rows / direct:>10,.0f} rows/s ({len(flushes)} flushes of "
          f"{args.flush})")
    print(f"monitor intake, via Ray actor:  {args.rows / via_ray:>10,.0f} rows/s (goal >= 20,000)")
    print(f"monitor intake, Arrow tables via Ray actor (what replicas send): {args.rows / via_tables:>10,.0f} rows/s")
    print(f"replica's cost to send a flush, per captured row: samples {send_samples_s / args.rows * 1e6:.1f} us, "
          f"Arrow table {(send_s + table_s) / args.rows * 1e6:.1f} us (of which building the table, which the store "
          f"write needs anyway, {table_s / args.rows * 1e6:.1f} us)")
    print(f"drift check over the {window}-row window in the monitor: {check_s:.2f} s")


if __name__ == "__main__":
    main()
