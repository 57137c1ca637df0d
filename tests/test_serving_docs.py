"""docs/serving.md stays true: its settings block is a valid serving section with the documented defaults, and the
commands and routes it lists exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from runtime import parse_config
from runtime.cli import cli
from runtime.cli.serving import COMMANDS

DOC = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()


def test_settings_block_is_valid_and_matches_the_defaults():
    block = re.search(r"## Settings\n\n```yaml\n(.*?)```", DOC, re.S).group(1)
    serving = yaml.safe_load(block)["serving"]
    cfg = {"name": "p", "model": {"name": "m"}, "serving": serving,
           "data": {"source": "csv://x.csv", "entity": "id", "timestamp": "t", "label": "y",
                    "columns": {"id": {"type": "int"}, "t": {"type": "timestamp"}, "y": {"type": "bool"},
                                "x": {"type": "float"}}}}
    parsed = parse_config(cfg).serving
    defaults = parse_config({**cfg, "serving": {}}).serving
    for key, value in serving.items():
        if key not in ("autoscaling",):
            assert getattr(defaults, key) == value, key
    assert parsed.autoscaling is not None


def test_listed_commands_exist():
    listed = set(re.findall(r"^\$ loom ([\w-]+)", DOC, re.M))
    assert listed == {c.name for c in COMMANDS} | {"deploy"}
    assert all(cli.get_command(None, name) is not None for name in listed)
