"""cluster.yaml is a valid Ray cluster launcher config (checked against Ray's own schema)."""

from __future__ import annotations

from pathlib import Path

import yaml


def test_cluster_yaml_matches_ray_launcher_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # fills provider defaults as `ray up` does, then checks every field
    assert config["head_node_type"] in config["available_node_types"]
    assert any("pip install" in c for c in config["setup_commands"])
