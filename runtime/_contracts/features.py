"""The feature-store contract: what every :class:`runtime.FeatureStore` must do, as a pytest suite.

Subclass :class:`FeatureStoreContract` in a test module and define a ``store`` fixture returning a fresh, empty
store; every ``test_*`` method then runs against it. The central promise is point-in-time correctness: a label at
time ``t`` only sees feature values stamped at or before ``t`` and within the view's TTL. Feature values in these
tests encode their own time (a value equals its day number), so any leak from the future shows as a value larger
than the label's day.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from ..errors import LoomError, NotFoundError
from ..features import FeatureService, FeatureStore, FeatureView

T0 = pd.Timestamp("2025-01-01")


def day(n: float) -> pd.Timestamp:
    """Midnight of day ``n`` after 2025-01-01 (naive: UTC)."""
    return T0 + pd.Timedelta(days=n)


def spend_view(ttl: timedelta | None = None) -> FeatureView:
    return FeatureView(name="spend", entity="cid", timestamp="ts", features=("amount",), ttl=ttl,
                       dtypes={"cid": "int", "amount": "float"})


def rows(*triples: tuple[int, pd.Timestamp, float | None]) -> pd.DataFrame:
    """A frame of (cid, ts, amount) rows."""
    return pd.DataFrame({"cid": [t[0] for t in triples], "ts": [t[1] for t in triples],
                         "amount": pd.array([t[2] for t in triples], dtype="float64")})


def values(series: pd.Series) -> list[object]:
    """A column as plain values with every kind of null as ``None``."""
    return [None if pd.isna(v) else v for v in series.tolist()]


class FeatureStoreContract:
    """Behaviour every feature store must show. Subclass it and define the ``store`` fixture::

        from runtime.testing import FeatureStoreContract

        class TestMyStore(FeatureStoreContract):
            @pytest.fixture
            def store(self, tmp_path):
                store = MyStore(tmp_path)
                yield store
                store.close()
    """

    @pytest.fixture
    def store(self) -> FeatureStore:
        pytest.fail(f"{type(self).__name__} must define a `store` fixture returning an empty FeatureStore")

    def test_satisfies_the_protocol(self, store: FeatureStore) -> None:
        assert isinstance(store, FeatureStore)

    def test_apply_is_idempotent(self, store: FeatureStore) -> None:
        store.apply(spend_view())
        store.apply(spend_view())
        assert store.write("spend", rows((1, day(1), 1.0))) == 1

    def test_unknown_view_is_not_found(self, store: FeatureStore) -> None:
        store.apply(spend_view())
        with pytest.raises(NotFoundError, match="nope"):
            store.get_online_features("nope", [1], ["amount"])
        with pytest.raises(NotFoundError, match="nope"):
            store.write("nope", rows((1, day(1), 1.0)))

    # -- offline: point-in-time joins -------------------------------------------------------------------------

    def test_historical_join_has_no_future_leakage(self, store: FeatureStore) -> None:
        store.apply(spend_view())
        store.write("spend", rows((1, day(1), 1.0), (1, day(3), 3.0), (1, day(5), 5.0), (2, day(10), 10.0)))
        labels = pd.DataFrame({
            "cid": [1, 1, 1, 1, 1, 2, 2],
            "ts": [day(0), day(1), day(2), day(5) - pd.Timedelta("1s"), day(6), day(5), day(10)],
            "label": [1, 0, 1, 0, 1, 0, 1],
        })
        out = store.get_historical_features(labels, "spend", ["amount"])
        assert values(out["amount"]) == [None, 1.0, 1.0, 3.0, 5.0, None, 10.0]
        label_days = (labels["ts"] - T0) / pd.Timedelta(days=1)
        seen = out["amount"].notna()
        assert (out["amount"][seen] <= label_days[seen]).all()

    def test_ttl_excludes_stale_values(self, store: FeatureStore) -> None:
        store.apply(spend_view(ttl=timedelta(days=2)))
        store.write("spend", rows((1, day(0), 0.0), (2, day(0), 0.0), (2, day(9), 9.0)))
        labels = pd.DataFrame({"cid": [1, 1, 2], "ts": [day(1), day(3), day(10)]})
        out = store.get_historical_features(labels, "spend", ["amount"])
        assert values(out["amount"]) == [0.0, None, 9.0]

    def test_historical_keeps_rows_order_index_and_other_columns(self, store: FeatureStore) -> None:
        store.apply(spend_view())
        store.write("spend", rows((1, day(1), 1.0), (2, day(2), 2.0), (3, day(3), 3.0)))
        labels = pd.DataFrame({"note": ["c", "a", "b", "x", "dup"], "ts": [day(4), day(2), day(9), day(9), day(2)],
                               "cid": [3, 2, 1, 99, 2]}, index=[50, 10, 40, 30, 20])
        out = store.get_historical_features(labels, "spend", ["amount"])
        assert list(out.index) == list(labels.index)
        pd.testing.assert_frame_equal(out[labels.columns], labels)
        assert values(out["amount"]) == [3.0, 2.0, 1.0, None, 2.0]

    def test_historical_with_random_data_matches_the_definition(self, store: FeatureStore) -> None:
        rng = np.random.default_rng(3)
        ttl = timedelta(days=3)
        store.apply(spend_view(ttl=ttl))
        n = 120
        feats = pd.DataFrame({"cid": rng.integers(0, 8, n),
                              "ts": T0 + pd.to_timedelta(rng.permutation(np.arange(n) * 53 + 7), "min"),
                              "amount": rng.normal(size=n).round(6)})
        store.write("spend", feats.iloc[: n // 2])
        store.write("spend", feats.iloc[n // 2 :])
        labels = pd.DataFrame({"cid": rng.integers(0, 9, 150),
                               "ts": T0 + pd.to_timedelta(rng.integers(-60, n * 53 + 900, 150), "min")})
        out = store.get_historical_features(labels, "spend", ["amount"])
        for i, (cid, t) in enumerate(zip(labels["cid"], labels["ts"])):
            ok = feats[(feats["cid"] == cid) & (feats["ts"] <= t) & (feats["ts"] >= t - ttl)]
            want = ok.loc[ok["ts"].idxmax(), "amount"] if len(ok) else None
            got = out["amount"].iloc[i]
            assert (want is None and pd.isna(got)) or got == pytest.approx(want), (i, cid, t, want, got)

    # -- online: materialise, look up, push ---------------------------------------------------------------------

    def test_online_result_shape(self, store: FeatureStore) -> None:
        store.apply(FeatureView(name="spend", entity="cid", timestamp="ts", features=("amount", "visits"),
                                dtypes={"cid": "int", "amount": "float", "visits": "int"}))
        store.write("spend", pd.DataFrame({"cid": [1, 2, 1], "ts": [day(1), day(1), day(2)],
                                           "amount": [1.0, 2.0, 1.5], "visits": [3, 4, 5]}))
        assert isinstance(store.materialize("spend"), int)
        out = store.get_online_features("spend", [2, 99, 1, 2], ["visits", "amount"])
        assert list(out.columns) == ["visits", "amount"]
        assert isinstance(out.index, pd.RangeIndex) and len(out) == 4
        assert values(out["amount"]) == [2.0, None, 1.5, 2.0]
        assert values(out["visits"]) == [4, None, 5, 4]
        assert len(store.get_online_features("spend", [], ["amount"])) == 0

    def test_materialize_picks_up_newer_writes(self, store: FeatureStore) -> None:
        store.apply(spend_view())
        store.write("spend", rows((1, day(1), 1.0), (2, day(1), 2.0)))
        store.materialize("spend")
        store.write("spend", rows((1, day(3), 3.0)))
        store.materialize("spend")
        assert values(store.get_online_features("spend", [1, 2], ["amount"])["amount"]) == [3.0, 2.0]

    def test_materialize_since_copies_only_newer_rows(self, store: FeatureStore) -> None:
        store.apply(spend_view())
        store.write("spend", rows((1, day(1), 1.0), (2, day(3), 3.0)))
        store.materialize("spend", since=day(2))
        assert values(store.get_online_features("spend", [1, 2], ["amount"])["amount"]) == [None, 3.0]

    def test_push_serves_at_once_and_feeds_training(self, store: FeatureStore) -> None:
        store.apply(spend_view())
        assert store.push("spend", rows((1, day(10), 10.0))) == 1
        assert values(store.get_online_features("spend", [1], ["amount"])["amount"]) == [10.0]
        store.push("spend", rows((1, day(9), 9.0)))  # older than what is served: must not replace it
        assert values(store.get_online_features("spend", [1], ["amount"])["amount"]) == [10.0]
        out = store.get_historical_features(pd.DataFrame({"cid": [1, 1], "ts": [day(9.5), day(11)]}), "spend",
                                            ["amount"])
        assert values(out["amount"]) == [9.0, 10.0]

    def test_types_round_trip_offline_and_online(self, store: FeatureStore) -> None:
        view = FeatureView(name="people", entity="user", timestamp="at",
                           features=("age", "score", "active", "plan", "seen"),
                           dtypes={"user": "string", "age": "int", "score": "float", "active": "bool",
                                   "plan": "string", "seen": "timestamp"})
        store.apply(view)
        store.write("people", pd.DataFrame({
            "user": ["ann", "bob"], "at": [day(1), day(1)], "age": pd.array([41, None], dtype="Int64"),
            "score": [0.25, None], "active": pd.array([True, None], dtype="boolean"), "plan": ["pro", None],
            "seen": [pd.Timestamp("2024-05-01 10:00"), pd.NaT]}))
        store.materialize("people")
        features = list(view.features)
        expected = ["Int64", "float64", "boolean", "string", "datetime64[ns]"]
        online = store.get_online_features("people", ["bob", "ann"], features)
        assert [str(t) for t in online.dtypes] == expected
        assert online.iloc[1].tolist() == [41, 0.25, True, "pro", pd.Timestamp("2024-05-01 10:00")]
        assert online.iloc[0].isna().all()
        hist = store.get_historical_features(pd.DataFrame({"user": ["ann"], "at": [day(2)]}), "people", features)
        assert [str(t) for t in hist[features].dtypes] == expected
        assert hist[features].iloc[0].tolist() == online.iloc[1].tolist()

    # -- feature services -----------------------------------------------------------------------------------------

    def test_services_join_views_of_several_entities(self, store: FeatureStore) -> None:
        region = FeatureView(name="region_stats", entity="region", timestamp="ts", features=("avg_amount", "shops"),
                             dtypes={"region": "string", "avg_amount": "float", "shops": "int"})
        store.apply(spend_view())
        store.apply(region)
        service = FeatureService.of("churn", [spend_view(), region],
                                    {"spend": None, "region_stats": ["avg_amount"]})
        store.apply_service(service)
        store.write("spend", rows((1, day(1), 1.0), (2, day(2), 2.0)))
        store.write("region_stats", pd.DataFrame({"region": ["eu", "eu", "us"], "ts": [day(0), day(2), day(1)],
                                                  "avg_amount": [10.0, 12.0, 20.0], "shops": [1, 2, 3]}))
        labels = pd.DataFrame({"cid": [1, 2, 2], "region": ["eu", "eu", "us"],
                               "event_time": [day(1.5), day(3), day(0.5)]})
        out = service.historical(store, labels, timestamp="event_time")
        assert list(out.columns) == ["cid", "region", "event_time", "amount", "avg_amount"]
        assert values(out["amount"]) == [1.0, 2.0, None]
        assert values(out["avg_amount"]) == [10.0, 12.0, None]
        for view in ("spend", "region_stats"):
            store.materialize(view)
        online = service.online(store, {"cid": [2, 1], "region": ["us", "eu"]})
        assert list(online.columns) == ["amount", "avg_amount"]
        assert values(online["amount"]) == [2.0, 1.0] and values(online["avg_amount"]) == [20.0, 12.0]

    def test_service_naming_an_unknown_feature_is_refused(self, store: FeatureStore) -> None:
        store.apply(spend_view())
        bad = FeatureService(name="bad", projections=(FeatureView(name="spend", entity="cid", timestamp="ts",
                                                                  features=("colour",)),))
        with pytest.raises(LoomError, match="colour"):
            store.apply_service(bad)

    def test_close_is_idempotent(self, store: FeatureStore) -> None:
        store.apply(spend_view())
        store.close()
        store.close()
