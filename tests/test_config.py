"""Project-file validation: bad keys are reported with their location."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runtime import ConfigError, load_project

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"


def _write(tmp_path, data) -> Path:
    (tmp_path / "loom.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def _quickstart() -> dict:
    return yaml.safe_load((QUICKSTART / "loom.yaml").read_text())


def test_quickstart_project_loads():
    project = load_project(QUICKSTART)
    cfg = project.config
    assert cfg.model.name == "churn" and cfg.serving.host == "127.0.0.1"
    assert "customer_id" not in cfg.data.feature_columns and "churned" not in cfg.data.feature_columns
    assert "contract" in cfg.data.feature_columns


def test_unknown_key_is_named_with_its_location(tmp_path):
    data = _quickstart()
    data["training"]["epocs"] = 3
    with pytest.raises(ConfigError, match=r"training\.epocs: unknown key"):
        load_project(_write(tmp_path, data))


def test_missing_key_and_bad_type(tmp_path):
    data = _quickstart()
    del data["model"]["name"]
    data["serving"]["port"] = "eighty"
    with pytest.raises(ConfigError) as info:
        load_project(_write(tmp_path, data))
    assert "model.name: required key is missing" in str(info.value)
    assert "serving.port" in str(info.value)


def test_undeclared_label_column(tmp_path):
    data = _quickstart()
    data["data"]["label"] = "cancelled"
    with pytest.raises(ConfigError, match="data.label column 'cancelled' is not declared"):
        load_project(_write(tmp_path, data))


def test_unsafe_model_name(tmp_path):
    data = _quickstart()
    data["model"]["name"] = "../etc"
    with pytest.raises(ConfigError, match="model.name"):
        load_project(_write(tmp_path, data))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no loom.yaml found"):
        load_project(tmp_path)
    (tmp_path / "loom.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_project(tmp_path)
