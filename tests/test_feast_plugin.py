"""The loom_feast plugin against real Feast: a local-provider repo with a file offline store and SQLite online store.

The feature-store contract runs against it, and Feast's own API, opened independently on the same repo, sees what
Loom applied and wrote.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

import runtime
from runtime import ConfigError, FeatureService, FeatureView
from runtime._contracts.features import FeatureStoreContract, day, rows, spend_view

feast = pytest.importorskip("feast")


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> runtime.Plugins:
    monkeypatch.setenv("LOOM_PLUGINS", "feast")
    return runtime.get_plugins()


class TestFeastContract(FeatureStoreContract):
    @pytest.fixture
    def store(self, plugins: runtime.Plugins, tmp_path: Path):
        s = plugins.feature_store("feast", state_dir=tmp_path, options={})
        yield s
        s.close()


def test_registered_and_options(plugins: runtime.Plugins, tmp_path: Path) -> None:
    assert plugins.names("loom_register_feature_stores") == {"feast": "feast"}
    store = plugins.feature_store("feast", state_dir=tmp_path, options={"path": "repo", "project": "churn"})
    assert (tmp_path / "repo" / "feature_store.yaml").read_text().count("project: churn") == 1
    with pytest.raises(ConfigError, match="'pth'|pth"):
        plugins.feature_store("feast", state_dir=tmp_path, options={"pth": "x"})
    with pytest.raises(ConfigError, match="project"):
        plugins.feature_store("feast", state_dir=tmp_path, options={"project": "no-dashes"})
    with pytest.raises(ConfigError, match="declared type"):
        store.apply(FeatureView(name="v", entity="cid", timestamp="ts", features=("a",)))
    store.close()


def test_definitions_and_data_are_feasts_own(plugins: runtime.Plugins, tmp_path: Path) -> None:
    """What Loom applied and wrote is visible to a separate Feast client on the same repo, through Feast's API."""
    store = plugins.feature_store("feast", state_dir=tmp_path, options={})
    view = spend_view(ttl=timedelta(days=30))
    store.apply(view)
    store.apply_service(FeatureService(name="churn", projections=(view,)))
    store.write("spend", rows((1, day(1), 1.0), (2, day(2), 2.0), (1, day(3), 3.0)))
    store.materialize("spend")
    store.close()

    fs = feast.FeatureStore(repo_path=str(tmp_path / "feast"))
    fv = fs.get_feature_view("spend")
    assert fv.ttl == timedelta(days=30) and [f.name for f in fv.features] == ["amount"]
    assert fs.get_entity("cid").join_key == "cid"
    service = fs.get_feature_service("churn")
    online = fs.get_online_features(features=service, entity_rows=[{"cid": 1}, {"cid": 2}]).to_dict()
    assert online["amount"] == [3.0, 2.0]
    entity_df = pd.DataFrame({"cid": pd.array([1, 1], dtype="Int64"), "event_timestamp": pd.to_datetime([day(2), day(4)], utc=True)})
    hist = fs.get_historical_features(entity_df=entity_df, features=service).to_df().sort_values("event_timestamp")
    assert hist["amount"].tolist() == [1.0, 3.0]


def test_late_rows_with_old_timestamps_are_materialised(plugins: runtime.Plugins, tmp_path: Path) -> None:
    """Feast's own materialize_incremental moves an event-time watermark and would miss these; Loom's does not."""
    store = plugins.feature_store("feast", state_dir=tmp_path, options={})
    store.apply(spend_view())
    store.write("spend", rows((1, day(5), 5.0)))
    assert store.materialize("spend") == 1
    store.write("spend", rows((2, day(1), 1.0), (1, day(2), 2.0)))  # arrive late, stamped before day 5
    assert store.materialize("spend") == 2
    online = store.get_online_features("spend", [1, 2], ["amount"])
    assert online["amount"].tolist() == [5.0, 1.0]  # entity 1 keeps its newer value
    assert store.materialize("spend") == 0
    store.close()
