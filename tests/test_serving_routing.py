"""The routing table and its rollout steps (pure functions), and the serving section of the project file."""

from __future__ import annotations

import random

import pytest

from runtime import ConfigError, LoomError, parse_config
from runtime.serving.routing import ModelRoutes, RoutingTable


def test_deploy_canary_promote_rollback_cycle():
    t = RoutingTable().deploy("churn", 1)
    assert t.routes("churn").traffic == {1: 100} and t.routes("churn").live == (1,)
    t = t.deploy("churn", 2, canary=10)
    r = t.routes("churn")
    assert (r.primary, r.canary, r.traffic) == (1, 2, {1: 90, 2: 10})
    t = t.set_canary_percent("churn", 70)
    assert t.routes("churn").primary == 1 and t.routes("churn").traffic == {1: 30, 2: 70}
    t, promoted = t.promote("churn")
    assert promoted == 2 and t.routes("churn").traffic == {2: 100} and t.routes("churn").standby == (1,)
    t, back = t.rollback("churn")
    assert back == 1 and t.routes("churn").traffic == {1: 100} and t.routes("churn").standby == (2,)
    t, forward = t.rollback("churn")
    assert forward == 2
    t = t.deploy("churn", 3, canary=5)
    t, kept = t.rollback("churn")  # aborting a canary keeps the primary and its standby
    assert kept == 2 and t.routes("churn").live == (1, 2)
    t = t.scale_to_zero("churn", 1)
    assert t.routes("churn").live == (2,)
    assert not t.scale_to_zero("churn").models


def test_generation_grows_and_config_round_trips():
    t = RoutingTable().deploy("churn", 1).deploy("churn", 2, canary=25).with_aliases("churn", {"production": 1,
                                                                                             "old": 9})
    assert t.generation == 3
    assert t.routes("churn").aliases == {"production": 1}  # aliases of versions not loaded are not routable
    again = RoutingTable.from_config(t.to_config())
    assert again == t and again.to_config() == t.to_config()


@pytest.mark.parametrize("step, message", [
    (lambda t: t.deploy("churn", 2, canary=0), "between 1 and 99"),
    (lambda t: t.deploy("churn", 1, canary=10), "already the primary"),
    (lambda t: t.deploy("other", 1, canary=10), "not being served yet"),
    (lambda t: t.promote("churn"), "no canary to promote"),
    (lambda t: t.rollback("churn"), "no previous version"),
    (lambda t: t.scale_to_zero("churn", 1), "still takes traffic"),
    (lambda t: t.scale_to_zero("churn", 7), "not loaded"),
    (lambda t: t.routes("nope"), "not being served"),
])
def test_impossible_steps_are_refused_with_a_reason(step, message):
    with pytest.raises(LoomError, match=message):
        step(RoutingTable().deploy("churn", 1))


def test_malformed_tables_are_refused():
    with pytest.raises(LoomError, match="malformed"):
        RoutingTable.from_config({"models": {"churn": {"canary": 2}}})
    with pytest.raises(LoomError, match="between 1 and 99"):
        RoutingTable.from_config({"models": {"churn": {"primary": 1, "canary": 2, "canary_percent": 100}}})
    with pytest.raises(LoomError):
        RoutingTable.from_config({"models": {"../etc": {"primary": 1}}})


def test_shadow_is_loaded_beside_the_primary_and_takes_no_traffic():
    t = RoutingTable().deploy("churn", 1).deploy("churn", 2).shadow("churn", 3)
    r = t.routes("churn")
    assert (r.primary, r.shadow, r.standby, r.traffic, r.live) == (2, 3, (1,), {2: 100}, (1, 2, 3))
    assert {r.pick() for _ in range(200)} == {2}
    again = RoutingTable.from_config(t.to_config())
    assert again == t and again.to_config()["models"]["churn"]["shadow"] == 3
    assert RoutingTable.from_config({"models": {"churn": {"primary": 1}}}).routes("churn").shadow is None
    moved = t.shadow("churn", 1)  # a standby version becomes the shadow: off standby
    assert (moved.routes("churn").shadow, moved.routes("churn").standby) == (1, ())
    assert t.unshadow("churn").routes("churn").live == (1, 2)
    assert t.scale_to_zero("churn", 3).routes("churn").shadow is None
    assert t.deploy("churn", 4).routes("churn").shadow is None  # a new primary drops the shadow
    assert t.with_aliases("churn", {"candidate": 3}).routes("churn").aliases == {"candidate": 3}


def test_the_shadow_becomes_the_canary_and_promote_and_rollback_clear_it():
    t = RoutingTable().deploy("churn", 1).shadow("churn", 2)
    canary = t.deploy("churn", 2, canary=20)
    r = canary.routes("churn")
    assert (r.primary, r.canary, r.canary_percent, r.shadow) == (1, 2, 20, None)
    promoted, version = canary.promote("churn")
    assert version == 2 and promoted.routes("churn").shadow is None
    back, version = t.deploy("churn", 3).shadow("churn", 4).rollback("churn")
    assert version == 1 and back.routes("churn").shadow is None and back.routes("churn").live == (1, 3)


@pytest.mark.parametrize("step, message", [
    (lambda t: t.shadow("churn", 1), "is the primary; nothing to shadow"),
    (lambda t: t.shadow("other", 2), "not being served"),
    (lambda t: t.deploy("churn", 2, canary=10).shadow("churn", 3), "has a canary running"),
    (lambda t: t.deploy("churn", 2, canary=10).shadow("churn", 2), "has a canary running"),
    (lambda t: t.shadow("churn", 2).deploy("churn", 3, canary=10), "has a shadow running"),
    (lambda t: t.unshadow("churn"), "no shadow running"),
])
def test_impossible_shadow_steps_are_refused(step, message):
    with pytest.raises(LoomError, match=message):
        step(RoutingTable().deploy("churn", 1))


def test_a_shadow_cannot_be_the_primary_or_run_with_a_canary():
    with pytest.raises(LoomError, match="both the primary and the shadow"):
        ModelRoutes(primary=1, shadow=1)
    with pytest.raises(LoomError, match="cannot run at once"):
        RoutingTable.from_config({"models": {"churn": {"primary": 1, "canary": 2, "canary_percent": 10,
                                                       "shadow": 3}}})


def test_canary_share_is_respected():
    random.seed(0)
    routes = ModelRoutes(primary=1, canary=2, canary_percent=20)
    picks = [routes.pick() for _ in range(20_000)]
    assert 0.18 < picks.count(2) / len(picks) < 0.22


def _config(**serving) -> dict:
    return {"name": "p", "data": {"source": "csv://x.csv", "entity": "id", "timestamp": "t", "label": "y",
                                  "columns": {"id": {"type": "int"}, "t": {"type": "timestamp"},
                                              "y": {"type": "bool"}, "x": {"type": "float"}}},
            "model": {"name": "m"}, "serving": serving}


def test_serving_config_defaults_and_checks():
    cfg = parse_config(_config()).serving
    assert (cfg.host, cfg.route_prefix, cfg.max_queued_requests, cfg.overload_status) == ("127.0.0.1", "/", 256, 503)
    auto = parse_config(_config(autoscaling={"min_replicas": 0, "max_replicas": 3})).serving.autoscaling
    assert auto is not None and auto.min_replicas == 0
    for bad, where in [({"route_prefix": "churn"}, "route_prefix"), ({"route_prefix": "/a/"}, "route_prefix"),
                       ({"overload_status": 500}, "overload_status"), ({"batch_wait_ms": -1}, "batch_wait_ms"),
                       ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas"),
                       ({"max_batch": 8}, "unknown key")]:
        with pytest.raises(ConfigError, match=where):
            parse_config(_config(**bad))
