"""What a replica sends its deployment's monitor: each flush's Arrow tables (as written to the store), which the
monitor turns into the same window the replica itself holds, without Ray in between."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest

from conftest import make_project
from runtime import get_plugins, load_project
from runtime.serving.monitor import DeploymentMonitor
from runtime.serving.protocol import check_columns, rows_to_columns
from runtime.serving.routing import RoutingTable
from runtime.serving.server import ModelServer
from serving_models import data, records, register_version


@pytest.fixture(scope="module")
def replica_and_monitor(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("intake") / "qs", port=8000,
                        monitoring={"interval_s": None, "window": 150, "flush_interval_s": 3600})
    register_version(root, seed=1)
    project = load_project(root)
    table = RoutingTable().deploy("churn", 1)
    replica = ModelServer(project, get_plugins(modules=project.config.plugins))
    replica.apply(table)
    monitor = DeploymentMonitor(project.spec(), None, None)
    return root, replica, monitor, table.to_config()


def _send(root, replica, n: int, start: int) -> None:
    lv = replica.resolve("churn")
    frame = data(root)

    async def go():
        for i in range(start, start + n):  # requests of 1 to 3 rows
            rows = frame.iloc[i:i + 1 + i % 3]
            await lv.predict(check_columns(rows_to_columns(records(rows), lv.schema), lv.schema), f"req-{i}")

    asyncio.run(go())


def test_the_monitor_window_equals_the_replicas_from_flushed_tables(replica_and_monitor):
    root, replica, monitor, config = replica_and_monitor
    sent: list[dict] = []
    replica.store.forward_tables = lambda tables: sent.append(tables) or monitor.ingest_tables(
        config, [(m, v, t) for (m, v), t in tables.items()])
    for batch in range(4):
        _send(root, replica, 30, batch * 30)
        replica.store.flush()
    assert len(sent) == 4 and all(list(t) == [("churn", 1)] for t in sent)
    mine = replica.resolve("churn").capture.frame()
    theirs = monitor.server.resolve("churn").capture.frame()
    assert len(theirs) == len(mine) == 150  # sized in rows: the window keeps the newest 150 of ~240
    columns = [c for c in mine.columns if c != "ts"]
    pd.testing.assert_frame_equal(theirs[columns].reset_index(drop=True), mine[columns].reset_index(drop=True),
                                  check_dtype=False)
    assert (theirs["ts"] - mine["ts"]).abs().max() < pd.Timedelta(milliseconds=1)
    assert monitor.call("check", "churn", None)[1]["window_rows"] == 150


def test_rows_read_back_from_the_store_are_not_counted_twice(replica_and_monitor):
    root, replica, monitor, config = replica_and_monitor
    before = monitor.rows
    sent: list = []
    replica.store.forward_tables = lambda tables: sent.append(tables)
    _send(root, replica, 5, 500)
    replica.store.flush()
    key = ("churn", 1)
    monitor._seed_ids[key] = set(sent[-1][key].column("request_id").to_pylist())  # as after a restart
    monitor.ingest_tables(config, [(m, v, t) for (m, v), t in sent[-1].items()])
    assert monitor.rows == before
