"""Entities, feature views and feature services in loom.yaml: the schema, the pipeline's data path through them
(no Ray needed: ingest, write_features, training_frame) and the ``loom features`` commands."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from runtime import ConfigError, DataValidationError, Pipeline, load_project, parse_config
from runtime.cli import cli

PROJECT = {
    "name": "multi",
    "data": {
        "source": "csv://data/customers.csv",
        "entity": "customer_id",
        "timestamp": "event_time",
        "label": "churned",
        "columns": {
            "customer_id": {"type": "int", "nullable": False},
            "region": {"type": "string", "nullable": False},
            "event_time": {"type": "timestamp", "nullable": False},
            "spend": {"type": "float", "min": 0},
            "churned": {"type": "bool", "nullable": False},
        },
    },
    "features": {
        "store": "local",
        "entities": {"customer": {"join_key": "customer_id"}, "region": {"join_key": "region"}},
        "views": {
            "customer_spend": {"entity": "customer", "ttl_days": 30},
            "region_stats": {
                "entity": "region", "source": "sqlite:///data/regions.db", "options": {"table": "stats"},
                "timestamp": "ts",
                "columns": {"region": {"type": "string", "nullable": False},
                            "ts": {"type": "timestamp", "nullable": False}, "avg_income": {"type": "float"}},
            },
        },
        "services": {"churn": ["customer_spend", "region_stats:avg_income"]},
    },
    "model": {"name": "m"},
}

CUSTOMERS = """customer_id,region,event_time,spend,churned
1,eu,2025-01-02T00:00:00Z,10.0,false
2,us,2025-01-03T00:00:00Z,20.0,true
1,eu,2025-01-05T00:00:00Z,15.0,true
2,us,2025-03-01T00:00:00Z,25.0,false
"""


def make_project(tmp_path: Path, config: dict | None = None, customers: str = CUSTOMERS) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "customers.csv").write_text(customers)
    stats = pd.DataFrame({"region": ["eu", "eu", "us"],
                          "ts": ["2025-01-01 00:00:00", "2025-01-04 00:00:00", "2025-01-04 00:00:00"],
                          "avg_income": [100.0, 110.0, 200.0]})
    with sqlite3.connect(tmp_path / "data" / "regions.db") as conn:
        stats.to_sql("stats", conn, index=False, if_exists="replace")
    (tmp_path / "loom.yaml").write_text(yaml.safe_dump(config or PROJECT))
    return tmp_path


def edited(**features: object) -> dict:
    cfg = copy.deepcopy(PROJECT)
    cfg["features"].update(features)
    return cfg


# -- the schema ------------------------------------------------------------------------------------------------------


def test_long_form_resolves_entities_views_and_the_models_service() -> None:
    defs = parse_config(PROJECT).feature_definitions
    spend, stats = defs.views["customer_spend"], defs.views["region_stats"]
    assert (spend.entity, spend.timestamp, spend.features) == ("customer_id", "event_time", ("spend",))
    assert spend.ttl is not None and spend.ttl.days == 30 and spend.dtypes == {"customer_id": "int", "spend": "float"}
    assert (stats.entity, stats.timestamp, stats.features) == ("region", "ts", ("avg_income",))
    assert defs.sources["region_stats"].uri == "sqlite:///data/regions.db" and "customer_spend" not in defs.sources
    assert defs.service.name == "churn" and defs.service.features == ("spend", "avg_income")
    assert defs.service.join_keys == ("customer_id", "region")
    assert set(defs.columns) == {"spend", "avg_income"}


def test_short_form_is_one_view_and_one_service_named_after_it() -> None:
    cfg = copy.deepcopy(PROJECT)
    cfg["features"] = {"view": "everything", "ttl_days": 7}
    defs = parse_config(cfg).feature_definitions
    assert list(defs.views) == ["everything"] and defs.service.name == "everything"
    assert defs.views["everything"].features == ("region", "spend")  # no second entity: region is a feature


@pytest.mark.parametrize(
    "features, match",
    [({"view": "x"}, "either the short form"),
     ({"services": {"churn": ["nope"]}}, "names view 'nope'"),
     ({"services": {"churn": ["customer_spend:colour"]}}, "no feature 'colour'"),
     ({"services": {"a": ["customer_spend"], "b": ["region_stats"]}}, "features.service must name"),
     ({"service": "missing"}, "service 'missing' is not defined"),
     ({"entities": {"customer": {"join_key": "customer_id"}}}, "entity 'region' is not defined"),
     ({"views": {"v": {"source": "csv://x.csv", "timestamp": "t"}}}, "needs `timestamp` and `columns`"),
     ({"views": {"v": {"timestamp": "t"}}}, "set source too"),
     ({"views": {"v": {"features": ["churned"]}}, "services": {}}, "is the label"),
     ({"views": {"v": {"features": ["nope"]}}, "services": {}}, "not a declared column"),
     ({"views": {"../v": {}}}, "features name")],
)
def test_bad_definitions_are_config_errors(features: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(edited(**features))


def test_a_service_clash_of_feature_names_is_refused() -> None:
    cfg = edited(views={"a": {"entity": "customer", "features": ["spend"]},
                        "b": {"entity": "customer", "features": ["spend"]}},
                 services={"s": ["a", "b"]})
    with pytest.raises(ConfigError, match="feature 'spend' comes from both view 'a' and view 'b'"):
        parse_config(cfg)


def test_join_keys_of_the_models_service_must_be_in_the_data() -> None:
    cfg = edited(entities={"customer": {"join_key": "customer_id"}, "shop": {"join_key": "shop_id"}},
                 views={"customer_spend": {"entity": "customer"},
                        "shops": {"entity": "shop", "source": "csv://s.csv", "timestamp": "ts",
                                  "columns": {"shop_id": {"type": "int"}, "ts": {"type": "timestamp"},
                                              "size": {"type": "int"}}}},
                 services={"s": ["customer_spend", "shops"]})
    with pytest.raises(ConfigError, match="joins on shop_id, which data.columns does not declare"):
        parse_config(cfg)


# -- the pipeline's data path ------------------------------------------------------------------------------------------


def test_training_frame_joins_every_view_of_the_service_point_in_time(tmp_path: Path) -> None:
    pipe = Pipeline(make_project(tmp_path))
    data = pipe.ingest()
    service = pipe.write_features(data)
    frame = pipe.training_frame(data, service)
    assert list(frame.columns) == ["customer_id", "region", "event_time", "churned", "spend", "avg_income"]
    assert frame["spend"].tolist() == [10.0, 20.0, 15.0, 25.0]  # each label sees its own row's features
    assert frame["avg_income"].isna().tolist() == [False, True, False, False]  # us stats start after Jan 3
    assert frame["avg_income"].dropna().tolist() == [100.0, 110.0, 200.0]
    assert pipe.feature_store.list_services() == ["churn"]
    online = service.online(pipe.feature_store, {"customer_id": [2, 1], "region": ["us", "eu"]})
    assert online.to_dict("list") == {"spend": [25.0, 15.0], "avg_income": [200.0, 110.0]}
    pipe.feature_store.close()


def test_quarantine_policy_in_the_pipeline(tmp_path: Path) -> None:
    cfg = copy.deepcopy(PROJECT)
    cfg["data"]["bad_rows"] = {"policy": "quarantine", "path": "rejected", "max_fraction": 0.5}
    pipe = Pipeline(make_project(tmp_path, cfg, CUSTOMERS + "3,eu,2025-01-06T00:00:00Z,-4,false\n"))
    data = pipe.ingest()
    assert data.quarantined == 1 and data.frame["customer_id"].tolist() == [1, 2, 1, 2]
    [file] = (tmp_path / "rejected").glob("quarantine-*.csv")
    assert pd.read_csv(file)["_loom_problems"].tolist() == ["spend: value below min 0"]
    cfg["data"]["bad_rows"] = {"policy": "reject"}
    (tmp_path / "loom.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataValidationError, match=r"column 'spend': 1 value below min 0 \(e.g. row 4: -4.0\)"):
        Pipeline(tmp_path).ingest()


# -- loom features ---------------------------------------------------------------------------------------------------


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_features_commands(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    pipe = Pipeline(project)
    pipe.write_features(pipe.ingest())
    pipe.feature_store.close()

    code, output = run("features", "list", "-p", str(project))
    assert code == 0 and "region_stats" in output and "churn" in output

    code, output = run("features", "get", "-p", str(project), "--json", "customer_id=1,region=eu",
                       "customer_id=9,region=us")
    assert code == 0, output
    assert json.loads(output) == [{"customer_id": 1, "region": "eu", "spend": 15.0, "avg_income": 110.0},
                                  {"customer_id": 9, "region": "us", "spend": None, "avg_income": 200.0}]
    code, output = run("features", "get", "-p", str(project), "1")
    assert code == 1 and "customer_id=..." in output

    (tmp_path / "fresh.csv").write_text("customer_id,event_time,spend\n1,2026-01-01T00:00:00Z,99.5\n")
    code, output = run("features", "push", "-p", str(project), "--view", "customer_spend", str(tmp_path / "fresh.csv"))
    assert code == 0 and "1 rows pushed" in output
    code, output = run("features", "get", "-p", str(project), "--json", "customer_id=1,region=eu")
    assert json.loads(output)[0]["spend"] == 99.5

    code, output = run("features", "materialize", "-p", str(project), "--since", "2025-01-04")
    assert code == 0 and "customer_spend: " in output and "region_stats: " in output
    code, output = run("features", "materialize", "-p", str(project), "--view", "nope")
    assert code == 1 and "no feature view 'nope'" in output
    assert load_project(project).config.feature_definitions.service.name == "churn"
