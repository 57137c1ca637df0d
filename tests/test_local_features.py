"""Tests of the built-in ``local`` feature store (plugin ``loom_local_features``).

Real files, real Parquet, SQLite, PostgreSQL and S3 (moto), no mocks. Every store is built through the plugin
manager (``runtime.get_plugins().feature_store("local", ...)``), so the ``loom`` entry point and the registration
hook are exercised. ``LOOM_PLUGINS`` narrows discovery to this plugin so that these tests neither wait on nor break
because of other plugins' imports.

The ``store`` fixture, and so every behavioural test and the contract suite, runs on both storages: ``local``
(files and SQLite under ``tmp_path``) and ``shared`` (``storage.url`` on S3, ``storage.db`` on PostgreSQL; see
tests/test_features_shared.py, which also holds the sharing, concurrency, crash and start-up fault tests). Tests of
the local layout itself use ``local_store``.
"""

from __future__ import annotations

import pickle
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import runtime
from runtime import ConfigError, DataValidationError, FeatureView, InvalidNameError, NotFoundError
from runtime._contracts.features import FeatureStoreContract
from test_features_shared import (  # noqa: F401 - features_* are fixtures that shared_features uses
    STORAGES,
    features_bucket,
    features_database,
    open_store,
    shared_features,
    storage_for,
)

T0 = pd.Timestamp("2024-01-01")


def day(n: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=n)


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> runtime.Plugins:
    monkeypatch.setenv("LOOM_PLUGINS", "local_features")
    return runtime.get_plugins()


@pytest.fixture(params=STORAGES)
def store(request: pytest.FixtureRequest, plugins: runtime.Plugins, tmp_path: Path):
    """A fresh store on the local storage, then on the shared one (PostgreSQL + S3)."""
    s = open_store(tmp_path, storage_for(request, request.param))
    yield s
    s.close()


@pytest.fixture
def local_store(plugins: runtime.Plugins, tmp_path: Path):
    """A fresh store on the local storage only, for tests of its files."""
    s = plugins.feature_store("local", state_dir=tmp_path, options={})
    yield s
    s.close()


def spend_view(name: str = "spend", ttl: timedelta | None = None, **dtypes: str) -> FeatureView:
    return FeatureView(name=name, entity="cid", timestamp="ts", features=("amount",), ttl=ttl, dtypes=dtypes)


def rows(*triples: tuple[object, pd.Timestamp, object]) -> pd.DataFrame:
    return pd.DataFrame({"cid": [t[0] for t in triples], "ts": [t[1] for t in triples], "amount": [t[2] for t in triples]})


def online_amounts(store, keys: list[object], view: str = "spend") -> list[object]:
    out = store.get_online_features(view, keys, ["amount"])["amount"]
    return [None if pd.isna(v) else v for v in out]


# -- registration and options ------------------------------------------------------------------------------------


def test_registered_through_entry_point(plugins: runtime.Plugins, tmp_path: Path) -> None:
    assert plugins.names("loom_register_feature_stores") == {"local": "local_features"}
    store = plugins.feature_store("local", state_dir=tmp_path, options={})
    assert isinstance(store, runtime.FeatureStore)
    assert store.path == tmp_path / "features"
    assert (tmp_path / "features" / "online.db").exists()
    store.close()


def test_path_option(plugins: runtime.Plugins, tmp_path: Path) -> None:
    rel = plugins.feature_store("local", state_dir=tmp_path, options={"path": "fs"})
    assert rel.path == tmp_path / "fs"
    absolute = plugins.feature_store("local", state_dir=tmp_path, options={"path": str(tmp_path / "elsewhere")})
    assert absolute.path == tmp_path / "elsewhere"
    rel.close()
    absolute.close()


def test_unknown_option_is_a_config_error_naming_it(plugins: runtime.Plugins, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'pth'"):
        plugins.feature_store("local", state_dir=tmp_path, options={"pth": "x"})
    with pytest.raises(ConfigError, match="path"):
        plugins.feature_store("local", state_dir=tmp_path, options={"path": 3})


# -- view definitions ----------------------------------------------------------------------------------------------


def test_apply_is_idempotent_and_persisted(plugins: runtime.Plugins, local_store, tmp_path: Path) -> None:
    store = local_store
    view = spend_view(ttl=timedelta(days=3), amount="float")
    store.apply(view)
    file = store.path / "views" / "spend.json"
    before = (file.read_bytes(), file.stat().st_mtime_ns, file.stat().st_ino)
    store.apply(view)
    assert (file.read_bytes(), file.stat().st_mtime_ns, file.stat().st_ino) == before
    reopened = plugins.feature_store("local", state_dir=tmp_path, options={})
    assert reopened.get_view("spend") == view
    assert reopened.list_views() == ["spend"]
    reopened.close()


def test_invalid_names_are_rejected(store) -> None:
    with pytest.raises(InvalidNameError):
        store.apply(FeatureView(name="../evil", entity="cid", timestamp="ts", features=("a",)))
    with pytest.raises(InvalidNameError):
        store.apply(FeatureView(name="ok", entity="cid", timestamp="ts", features=('a" TEXT); DROP TABLE x; --',)))
    with pytest.raises(ConfigError, match="more than once"):
        store.apply(FeatureView(name="ok", entity="cid", timestamp="ts", features=("cid",)))
    with pytest.raises(ConfigError, match="unknown type"):
        store.apply(FeatureView(name="ok", entity="cid", timestamp="ts", features=("a",), dtypes={"a": "decimal"}))


def test_unknown_view_is_not_found_naming_it(store) -> None:
    df = rows((1, day(0), 1.0))
    for call in (
        lambda: store.write("nope", df),
        lambda: store.push("nope", df),
        lambda: store.materialize("nope"),
        lambda: store.get_historical_features(df, "nope", ["amount"]),
        lambda: store.get_online_features("nope", [1], ["amount"]),
        lambda: store.get_view("nope"),
    ):
        with pytest.raises(NotFoundError, match="'nope'"):
            call()


def test_unknown_feature_is_not_found(store) -> None:
    store.apply(spend_view())
    with pytest.raises(NotFoundError, match="'colour'"):
        store.get_online_features("spend", [1], ["colour"])
    with pytest.raises(NotFoundError, match="'colour'"):
        store.get_historical_features(rows((1, day(0), None)), "spend", ["colour"])


def test_type_of_stored_column_cannot_change(store) -> None:
    store.apply(spend_view(amount="float"))
    store.write("spend", rows((1, day(0), 1.5)))
    with pytest.raises(ConfigError, match="amount"):
        store.apply(spend_view(amount="string"))
    with pytest.raises(ConfigError, match="re-keyed"):
        store.apply(FeatureView(name="spend", entity="other", timestamp="ts", features=("amount",)))


def test_write_validation(store) -> None:
    store.apply(spend_view(amount="int"))
    with pytest.raises(DataValidationError, match="amount"):
        store.write("spend", rows((1, day(0), 1.5)))  # not an int
    with pytest.raises(DataValidationError, match="missing"):
        store.write("spend", rows((1, day(0), 1)).drop(columns=["amount"]))
    with pytest.raises(DataValidationError, match="null"):
        store.write("spend", rows((None, day(0), 1)))
    with pytest.raises(DataValidationError, match="timestamp"):
        store.write("spend", pd.DataFrame({"cid": [1], "ts": [1704067200], "amount": [1]}))
    assert store.write("spend", rows()) == 0
    assert store.write("spend", rows((1, day(0), 2.0))) == 1  # integral floats are fine for an int column


# -- point-in-time correctness -------------------------------------------------------------------------------------


def test_historical_join_has_no_future_leakage(store) -> None:
    """A label at time t sees only feature rows stamped <= t. Each feature value equals its own day number, so
    any leak of a later row would show up as a value greater than the label's day."""
    store.apply(spend_view())
    store.write("spend", rows((1, day(1), 1.0), (1, day(3), 3.0), (1, day(5), 5.0), (2, day(10), 10.0)))
    labels = pd.DataFrame(
        {
            "cid": [1, 1, 1, 1, 1, 2, 2],
            "ts": [day(0), day(1), day(2), day(5) - pd.Timedelta("1ns"), day(6), day(5), day(10)],
            "churned": [True, False, True, False, True, False, True],
        }
    )
    out = store.get_historical_features(labels, "spend", ["amount"])
    got = [None if pd.isna(v) else v for v in out["amount"]]
    assert got == [None, 1.0, 1.0, 3.0, 5.0, None, 10.0]
    # entity 2 only has a row after its first label's time: nulls, not the future value
    label_days = (labels["ts"] - T0) / pd.Timedelta(days=1)
    seen = out["amount"].notna()
    assert (out["amount"][seen] <= label_days[seen]).all()


def test_ttl_excludes_stale_values(store) -> None:
    store.apply(spend_view(ttl=timedelta(days=2)))
    store.write("spend", rows((1, day(0), 0.0), (2, day(0), 0.0), (2, day(9), 9.0)))
    labels = pd.DataFrame({"cid": [1, 1, 1, 2], "ts": [day(1), day(2), day(3), day(10)]})
    out = store.get_historical_features(labels, "spend", ["amount"])
    # day 2 is exactly the TTL (kept); day 3 is older than the TTL: null, not the stale value
    assert [None if pd.isna(v) else v for v in out["amount"]] == [0.0, 0.0, None, 9.0]


def test_historical_join_matches_brute_force_oracle(store) -> None:
    """Random data written in several parts, joined with a TTL, against a direct reading of the definition."""
    rng = np.random.default_rng(7)
    ttl = timedelta(days=3)
    store.apply(spend_view(ttl=ttl))
    n = 300
    feats = pd.DataFrame(
        {
            "cid": rng.integers(0, 20, n),
            "ts": T0 + pd.to_timedelta(rng.permutation(np.arange(n) * 37 + 1), "min"),  # unique times
            "amount": rng.normal(size=n),
        }
    )
    for idx in np.array_split(rng.permutation(n), 3):
        store.write("spend", feats.iloc[idx])
    labels = pd.DataFrame(
        {
            "cid": rng.integers(0, 22, 400),  # 20 and 21 have no features
            "ts": T0 + pd.to_timedelta(rng.integers(-60, n * 37 + 600, 400), "min"),
            "label": rng.integers(0, 2, 400),
        }
    )
    out = store.get_historical_features(labels, "spend", ["amount"])
    for i, (cid, t) in enumerate(zip(labels["cid"], labels["ts"])):
        ok = feats[(feats["cid"] == cid) & (feats["ts"] <= t) & (feats["ts"] >= t - ttl)]
        want = ok.loc[ok["ts"].idxmax(), "amount"] if len(ok) else None
        got = out["amount"].iloc[i]
        assert (want is None and pd.isna(got)) or got == want, (i, cid, t, want, got)


def test_historical_preserves_order_count_index_and_other_columns(store) -> None:
    store.apply(spend_view())
    store.write("spend", rows((1, day(1), 1.0), (2, day(2), 2.0), (3, day(3), 3.0)))
    labels = pd.DataFrame(
        {
            "note": ["c", "a", "b", "a2", "null-key", "dup"],
            "ts": [day(4), day(2), day(9), day(1.5), day(9), day(2)],
            "cid": [3, 2, 1, 2, None, 2],
            "label": [1, 0, 1, 0, 1, 0],
        },
        index=[50, 10, 40, 20, 30, 10],
    )
    out = store.get_historical_features(labels, "spend", ["amount"])
    assert list(out.index) == list(labels.index)
    assert list(out.columns) == ["note", "ts", "cid", "label", "amount"]
    pd.testing.assert_frame_equal(out[labels.columns], labels)
    assert [None if pd.isna(v) else v for v in out["amount"]] == [3.0, 2.0, 1.0, None, None, 2.0]
    assert "amount" not in labels.columns  # the input is not modified


def test_historical_timezones_and_replaced_columns(store) -> None:
    """Timestamps in entity_df use the view's column name; aware times are compared in UTC; a feature column
    already present in entity_df (e.g. today's value) is replaced by its point-in-time value."""
    store.apply(spend_view())
    store.write("spend", rows((1, pd.Timestamp("2024-01-01 12:00"), 1.0)))
    labels = pd.DataFrame(
        {
            "cid": [1, 1],
            "ts": pd.to_datetime(["2024-01-01 07:30", "2024-01-01 06:30"]).tz_localize("America/New_York"),
            "amount": [99.0, 99.0],
        }
    )
    out = store.get_historical_features(labels, "spend", ["amount"])
    assert out["amount"].iloc[0] == 1.0  # 12:30 UTC
    assert pd.isna(out["amount"].iloc[1])  # 11:30 UTC: before the feature row


def test_historical_ties_resolve_to_last_written(store) -> None:
    store.apply(spend_view())
    store.write("spend", rows((1, day(1), 1.0)))
    store.write("spend", rows((1, day(1), 2.0)))  # a correction with the same event time
    out = store.get_historical_features(pd.DataFrame({"cid": [1], "ts": [day(2)]}), "spend", ["amount"])
    assert out["amount"].iloc[0] == 2.0
    store.materialize("spend")
    assert online_amounts(store, [1]) == [2.0]


# -- online store ----------------------------------------------------------------------------------------------------


def test_incremental_materialize_never_goes_back_in_time(store) -> None:
    store.apply(spend_view())
    store.write("spend", rows((1, day(1), 1.0), (1, day(0), 0.5), (2, day(5), 5.0), (3, day(2), 2.0)))
    assert store.materialize("spend") == 3
    assert store.materialize("spend") == 0  # nothing new
    store.write(
        "spend",
        rows(
            (1, day(3), 3.0),  # newer: written
            (2, day(4), 4.0),  # older than the online value: must not overwrite it
            (4, day(0), 0.0),  # late-arriving row for a new entity, older than everything materialised
        ),
    )
    assert store.materialize("spend") == 2
    assert online_amounts(store, [1, 2, 3, 4]) == [3.0, 5.0, 2.0, 0.0]
    assert store.materialize("spend") == 0


def test_materialize_since(store) -> None:
    store.apply(spend_view())
    store.write("spend", rows((1, day(1), 1.0), (2, day(2), 2.0), (3, day(3), 3.0), (3, day(1), 0.0)))
    assert store.materialize("spend", since=day(2)) == 1  # only ts > since
    assert online_amounts(store, [1, 2, 3]) == [None, None, 3.0]
    assert store.materialize("spend", since="2023-12-31T00:00:00Z") == 2  # entities 1 and 2; 3 unchanged
    assert online_amounts(store, [1, 2, 3]) == [1.0, 2.0, 3.0]


def test_push_is_visible_online_immediately_and_offline(store) -> None:
    store.apply(spend_view())
    assert store.push("spend", rows((1, day(10), 10.0))) == 1
    assert online_amounts(store, [1]) == [10.0]
    assert store.push("spend", rows((1, day(9), 9.0))) == 1  # older: recorded offline, not served
    assert online_amounts(store, [1]) == [10.0]
    assert store.materialize("spend") == 0  # pushes are already online
    out = store.get_historical_features(pd.DataFrame({"cid": [1, 1], "ts": [day(9.5), day(11)]}), "spend", ["amount"])
    assert list(out["amount"]) == [9.0, 10.0]


def test_online_unknown_keys_give_nulls_in_input_order(store) -> None:
    store.apply(spend_view())
    assert online_amounts(store, [1, 2]) == [None, None]  # applied, no data yet
    store.push("spend", rows((1, day(1), 1.0), (2, day(1), 2.0)))
    keys: list[object] = [2, 99, 1, 2, None, "x", np.int64(1), "1"]
    out = store.get_online_features("spend", keys, ["amount"])
    assert list(out.index) == list(range(len(keys)))
    assert online_amounts(store, keys) == [2.0, None, 1.0, 2.0, None, None, 1.0, 1.0]
    assert len(store.get_online_features("spend", [], ["amount"])) == 0
    many = list(range(1200))  # more keys than one IN (...) query binds
    assert online_amounts(store, many)[:3] == [None, 1.0, 2.0]


def test_dtypes_round_trip_offline_and_online(store) -> None:
    view = FeatureView(
        name="people",
        entity="user",
        timestamp="at",
        features=("age", "score", "active", "plan", "signed_up"),
        dtypes={"age": "int", "score": "float", "active": "bool", "plan": "category", "signed_up": "timestamp"},
    )
    store.apply(view)
    df = pd.DataFrame(
        {
            "user": ["ann", "bob"],
            "at": [day(1), day(1)],
            "age": [41, None],
            "score": [0.25, None],
            "active": [True, None],
            "plan": ["pro", None],
            "signed_up": [pd.Timestamp("2020-05-01 10:00", tz="UTC"), None],
        }
    )
    store.push("people", df)
    features = list(view.features)
    online = store.get_online_features("people", ["bob", "ann", "zed"], features)
    expected_dtypes = ["Int64", "float64", "boolean", "string", "datetime64[ns]"]
    assert [str(t) for t in online.dtypes] == expected_dtypes
    assert online["age"].iloc[1] == 41
    assert online["score"].iloc[1] == 0.25
    assert online["active"].iloc[1] == True  # noqa: E712 - a numpy bool
    assert isinstance(online["plan"].iloc[1], str) and online["plan"].iloc[1] == "pro"
    assert online["signed_up"].iloc[1] == pd.Timestamp("2020-05-01 10:00")  # stored as naive UTC
    assert online.iloc[[0, 2]].isna().all().all()
    hist = store.get_historical_features(pd.DataFrame({"user": ["ann", "bob"], "at": [day(2), day(0)]}), "people", features)
    assert [str(t) for t in hist[features].dtypes] == expected_dtypes
    pd.testing.assert_frame_equal(hist[features].iloc[[0]], online[features].iloc[[1]].set_axis([0]))
    assert hist[features].iloc[1].isna().all()


def test_undeclared_types_are_inferred_and_kept(store) -> None:
    store.apply(FeatureView(name="v", entity="id", timestamp="ts", features=("n", "flag", "name")))
    store.write("v", pd.DataFrame({"id": [1], "ts": [day(0)], "n": [3], "flag": [False], "name": ["a"]}))
    store.materialize("v")
    out = store.get_online_features("v", [1], ["n", "flag", "name"])
    assert [str(t) for t in out.dtypes] == ["Int64", "boolean", "string"]
    assert out.iloc[0].tolist() == [3, False, "a"]
    with pytest.raises(DataValidationError, match="'n'"):
        store.write("v", pd.DataFrame({"id": [2], "ts": [day(0)], "n": ["three"], "flag": [True], "name": ["b"]}))


def test_adding_a_feature_keeps_old_data(store) -> None:
    store.apply(spend_view())
    store.write("spend", rows((1, day(1), 1.0)))
    store.materialize("spend")
    store.apply(FeatureView(name="spend", entity="cid", timestamp="ts", features=("amount", "visits")))
    store.write("spend", pd.DataFrame({"cid": [2], "ts": [day(2)], "amount": [2.0], "visits": [7]}))
    assert store.materialize("spend") == 1
    online = store.get_online_features("spend", [1, 2], ["amount", "visits"])
    assert online["amount"].tolist() == [1.0, 2.0]
    assert pd.isna(online["visits"].iloc[0]) and online["visits"].iloc[1] == 7
    hist = store.get_historical_features(pd.DataFrame({"cid": [1, 2], "ts": [day(3), day(3)]}), "spend", ["visits"])
    assert pd.isna(hist["visits"].iloc[0]) and hist["visits"].iloc[1] == 7


# -- durability and concurrency -----------------------------------------------------------------------------------------


def test_half_written_parts_are_invisible(local_store) -> None:
    store = local_store
    store.apply(spend_view())
    store.write("spend", rows((1, day(1), 1.0)))
    offline = store.path / "offline" / "spend"
    assert [p.name.startswith("part-") for p in offline.iterdir()] == [True]  # no temp files left behind
    # what a writer killed mid-write leaves: a truncated temporary file
    (offline / ".tmp-part-00000000000000000001-deadbeef.parquet").write_bytes(b"PAR1\x00truncated")
    assert store.materialize("spend") == 1
    out = store.get_historical_features(pd.DataFrame({"cid": [1], "ts": [day(2)]}), "spend", ["amount"])
    assert out["amount"].tolist() == [1.0]


def test_state_survives_reopen_and_pickling(plugins: runtime.Plugins, local_store, tmp_path: Path) -> None:
    store = local_store
    store.apply(spend_view())
    store.push("spend", rows((1, day(1), 1.0)))
    store.close()
    again = plugins.feature_store("local", state_dir=tmp_path, options={})
    assert online_amounts(again, [1]) == [1.0]
    clone = pickle.loads(pickle.dumps(again))
    assert online_amounts(clone, [1]) == [1.0]
    assert clone.materialize("spend") == 0
    again.close()
    clone.close()


def test_online_lookups_from_many_threads(store) -> None:
    store.apply(spend_view())
    store.push("spend", pd.DataFrame({"cid": range(100), "ts": [day(1)] * 100, "amount": np.arange(100.0)}))
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(50):
                k = (i * 7 + offset) % 100
                assert online_amounts(store, [k]) == [float(k)]
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(o,)) for o in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# -- the feature-store contract ----------------------------------------------------------------------------------------


class TestLocalStoreContract(FeatureStoreContract):
    """The contract on both storages."""

    @pytest.fixture(params=STORAGES)
    def store(self, request: pytest.FixtureRequest, plugins: runtime.Plugins, tmp_path: Path):
        s = open_store(tmp_path, storage_for(request, request.param))
        yield s
        s.close()


# -- network file systems ------------------------------------------------------------------------------------------


def test_online_store_refuses_a_network_file_system(plugins: runtime.Plugins, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime import storage_checks

    monkeypatch.setattr(storage_checks, "_statfs", lambda path: 0x65735546)  # FUSE: s3fs, gcsfuse, GlusterFS
    monkeypatch.delenv(storage_checks.ALLOW_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"(?s)features.*FUSE.*SQLite's locking is unsafe.*docs/registry.md"):
        plugins.feature_store("local", state_dir=tmp_path / "state", options={})
    assert not (tmp_path / "state").exists()
    monkeypatch.setenv(storage_checks.ALLOW_ENV, "1")
    plugins.feature_store("local", state_dir=tmp_path / "state", options={}).close()


def test_online_store_opens_on_a_local_directory(plugins: runtime.Plugins, tmp_path: Path) -> None:
    store = plugins.feature_store("local", state_dir=tmp_path / "new", options={})
    assert (tmp_path / "new" / "features" / "online.db").exists()
    store.close()
