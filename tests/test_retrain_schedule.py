"""``retrain.every`` and ``retrain.window``: durations, and when a scheduled round is due (no cluster needed)."""

from __future__ import annotations

import time

import pytest

from conftest import edit_config, make_project
from runtime import ConfigError, load_project
from runtime.config import parse_duration
from runtime.retrain_loop import RetrainLoop


def test_durations_read_as_seconds_and_bad_ones_are_refused():
    assert parse_duration("90s") == 90 and parse_duration("30m") == 1800 and parse_duration("24h") == 86400
    assert parse_duration("7d") == 7 * 86400 and parse_duration(2.5) == 2.5 and parse_duration("1w") == 604800
    for bad in ("soon", "-1h", 0, "3 days", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_a_bad_schedule_in_the_project_file_is_a_config_error(tmp_path):
    root = make_project(tmp_path / "qs", port=8000, generate=False)
    edit_config(root, "monitoring", retrain={"enabled": True, "every": "daily"})
    with pytest.raises(ConfigError, match="every"):
        load_project(root)


def test_a_scheduled_round_is_due_every_period_after_the_last_one(tmp_path):
    root = make_project(tmp_path / "qs", port=8000, generate=False)
    edit_config(root, "monitoring", retrain={"enabled": True})
    assert not RetrainLoop(load_project(root)).schedule_due({})  # no schedule: drift or demand only
    edit_config(root, "monitoring", retrain={"enabled": True, "every": "1h", "window": "6h"})
    loop = RetrainLoop(load_project(root))
    assert loop.cfg.every_s == 3600 and loop.cfg.window_s == 6 * 3600
    assert not loop.schedule_due({})  # the loop has just started
    loop.started -= 3601
    assert loop.schedule_due({})
    assert not loop.schedule_due({"phase": "idle", "finished_at": time.time() - 60})
    assert loop.schedule_due({"phase": "idle", "finished_at": time.time() - 3700})
