"""The behaviour every model registry and experiment tracker must have, as pytest test classes.

A plugin author subclasses the classes and supplies a fresh, empty store per test::

    import pytest
    from runtime.testing import RegistryContract, TrackerContract

    class TestMyRegistry(RegistryContract, TrackerContract):
        @pytest.fixture
        def registry(self, tmp_path):
            return MyRegistry(tmp_path)

``TrackerContract`` runs against the ``tracker`` fixture, which is the ``registry`` unless overridden. Loom runs
these same classes against its ``local`` and ``mlflow`` plugins.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import pytest

from ..artifacts import SPEC, WEIGHTS
from ..errors import InvalidNameError, LoomError, NotFoundError
from ..registry import FORBIDDEN_ARTIFACT_SUFFIXES, LATEST, ModelRegistry
from ..tracking import Tracker, compare_runs


#: Names that must never reach a path, a URL or a query: traversal, separators, encodings, control characters.
UNSAFE_NAMES = ("..", "../etc", "a/b", "a\\b", "%2e%2e", "a%2Fb", "a\x00b", "new\nline", "\x1b[31m", "", " lead")
RESERVED_ALIASES = ("2", "v2", "V10", LATEST)


def _versions(registry: ModelRegistry, name: str) -> list[int]:
    return [v.version for v in registry.list_versions(name)]


class RegistryContract:
    """Tests a :class:`runtime.ModelRegistry`. Needs a ``registry`` fixture returning an empty registry."""

    @pytest.fixture
    def registry(self) -> ModelRegistry:
        raise NotImplementedError("define a `registry` fixture returning a fresh, empty registry")

    def test_is_a_model_registry(self, registry: ModelRegistry) -> None:
        assert isinstance(registry, ModelRegistry)
        assert registry.list_models() == []

    def test_register_and_get_round_trip(self, registry: ModelRegistry) -> None:
        params = {"lr": 0.003, "layers": [64, 32], "nested": {"a": None, "b": True}, "optimizer": "adam", "n": "3"}
        lineage = {"data": {"source": "csv://data.csv", "fingerprint": "ab" * 32},
                   "training": {"history": [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]}}
        weights = bytes(range(256)) * 4
        v = registry.register(
            "churn", {WEIGHTS: weights, SPEC: b'{"format": "loom-model/1"}'}, params=params,
            metrics={"val_auc": 0.91, "val_loss": 0.3}, lineage=lineage, tags={"team": "growth"},
            description="first", alias="production",
        )
        assert (v.name, v.version, v.aliases, v.run_id) == ("churn", 1, ("production",), None)
        assert sorted(v.artifacts) == [SPEC, WEIGHTS]
        for ref in (1, "1", "production", LATEST):
            got = registry.get_version("churn", ref)
            assert (got.name, got.version, got.aliases) == ("churn", 1, ("production",))
        got = registry.get_version("churn", 1)
        assert (got.params, got.metrics, got.lineage, got.tags, got.description) == (
            params, {"val_auc": 0.91, "val_loss": 0.3}, lineage, {"team": "growth"}, "first")
        assert sorted(got.artifacts) == [SPEC, WEIGHTS]
        assert abs(got.created_at - v.created_at) < 1
        assert registry.read_artifact("churn", 1, WEIGHTS) == weights
        assert registry.read_artifact("churn", 1, SPEC) == b'{"format": "loom-model/1"}'
        assert registry.list_models() == ["churn"]

    def test_large_binary_artifact_round_trips_exactly(self, registry: ModelRegistry) -> None:
        data = os.urandom(3 * 1024 * 1024)
        registry.register("m", {WEIGHTS: data})
        assert registry.read_artifact("m", 1, WEIGHTS) == data

    def test_versions_are_consecutive_and_listed_oldest_first(self, registry: ModelRegistry) -> None:
        for i in range(3):
            assert registry.register("m", {WEIGHTS: b"same bytes"}, metrics={"i": i}).version == i + 1
        registry.register("a", {WEIGHTS: b"other"})
        assert _versions(registry, "m") == [1, 2, 3]
        assert [v.metrics["i"] for v in registry.list_versions("m")] == [0, 1, 2]
        assert registry.get_version("m", LATEST).version == 3
        assert registry.list_models() == ["a", "m"]
        assert _versions(registry, "a") == [1]

    def test_aliases_move_and_can_be_deleted(self, registry: ModelRegistry) -> None:
        registry.register("m", {WEIGHTS: b"1"}, alias="production")
        registry.register("m", {WEIGHTS: b"2"}, alias="staging")
        registry.set_alias("m", "production", 2)
        assert registry.get_version("m", "production").version == 2
        assert sorted(registry.get_version("m", 2).aliases) == ["production", "staging"]
        assert registry.get_version("m", 1).aliases == ()
        registry.register("m", {WEIGHTS: b"3"}, alias="production")  # registering with an alias moves it too
        assert [sorted(v.aliases) for v in registry.list_versions("m")] == [[], ["staging"], ["production"]]
        registry.delete_alias("m", "staging")
        with pytest.raises(NotFoundError, match="staging"):
            registry.get_version("m", "staging")
        assert registry.get_version("m", 2).aliases == ()
        with pytest.raises(NotFoundError):
            registry.delete_alias("m", "staging")

    def test_deleted_version_takes_its_aliases_and_its_number_is_never_reused(self, registry: ModelRegistry) -> None:
        registry.register("m", {WEIGHTS: b"1"})
        registry.register("m", {WEIGHTS: b"2"}, alias="production")
        registry.delete_version("m", 2)
        assert _versions(registry, "m") == [1]
        with pytest.raises(NotFoundError):
            registry.get_version("m", 2)
        with pytest.raises(NotFoundError):
            registry.get_version("m", "production")
        assert registry.get_version("m", LATEST).version == 1
        assert registry.register("m", {WEIGHTS: b"3"}).version == 3
        assert _versions(registry, "m") == [1, 3]
        assert registry.read_artifact("m", 1, WEIGHTS) == b"1"
        with pytest.raises(NotFoundError):
            registry.delete_version("m", 2)

    def test_tags_and_description_can_change(self, registry: ModelRegistry) -> None:
        registry.register("m", {WEIGHTS: b"1"}, params={"p": 1}, metrics={"auc": 0.5}, tags={"a": "1"},
                          description="old")
        registry.set_tags("m", 1, {"b": "2", "owner": "ml-team"})
        registry.set_description("m", 1, "new")
        v = registry.get_version("m", 1)
        assert (v.tags, v.description, v.params, v.metrics) == ({"b": "2", "owner": "ml-team"}, "new", {"p": 1},
                                                                {"auc": 0.5})
        registry.set_tags("m", 1, {})
        assert registry.get_version("m", 1).tags == {}

    def test_missing_things_raise_not_found(self, registry: ModelRegistry) -> None:
        registry.register("m", {WEIGHTS: b"1"}, alias="production")
        registry.register("m", {WEIGHTS: b"2"})
        with pytest.raises(NotFoundError, match="nope"):
            registry.get_version("nope", 1)
        with pytest.raises(NotFoundError, match="nope"):
            registry.list_versions("nope")
        with pytest.raises(NotFoundError, match="7"):
            registry.get_version("m", 7)
        with pytest.raises(NotFoundError, match="prod"):
            registry.get_version("m", "prod")
        with pytest.raises(NotFoundError, match="x.onnx"):
            registry.read_artifact("m", 1, "x.onnx")
        with pytest.raises(NotFoundError):
            registry.read_artifact("m", 9, WEIGHTS)
        with pytest.raises(NotFoundError):
            registry.set_alias("m", "production", 9)
        with pytest.raises(NotFoundError):
            registry.set_tags("m", 9, {"a": "b"})
        with pytest.raises(NotFoundError):
            registry.set_description("nope", 1, "x")
        assert registry.get_version("m", "production").version == 1

    @pytest.mark.parametrize("bad", UNSAFE_NAMES)
    def test_unsafe_names_are_rejected_before_anything_is_written(self, registry: ModelRegistry, bad: str) -> None:
        with pytest.raises(InvalidNameError):
            registry.register(bad, {WEIGHTS: b"w"})
        with pytest.raises(InvalidNameError):
            registry.register("m", {WEIGHTS: b"w"}, alias=bad)
        with pytest.raises(InvalidNameError):
            registry.register("m", {WEIGHTS: b"w", bad: b"x"})
        with pytest.raises(InvalidNameError):
            registry.get_version("m", bad)
        assert registry.list_models() == []
        registry.register("m", {WEIGHTS: b"w"})
        with pytest.raises(InvalidNameError):
            registry.set_alias("m", bad, 1)
        with pytest.raises(InvalidNameError):
            registry.read_artifact("m", 1, bad)
        with pytest.raises(InvalidNameError):
            registry.list_versions(bad)
        assert _versions(registry, "m") == [1]

    @pytest.mark.parametrize("alias", RESERVED_ALIASES)
    def test_aliases_that_read_as_versions_are_rejected(self, registry: ModelRegistry, alias: str) -> None:
        with pytest.raises(InvalidNameError, match="reserved"):
            registry.register("m", {WEIGHTS: b"w"}, alias=alias)
        registry.register("m", {WEIGHTS: b"w"})
        with pytest.raises(InvalidNameError, match="reserved"):
            registry.set_alias("m", alias, 1)
        assert _versions(registry, "m") == [1]

    @pytest.mark.parametrize("suffix", FORBIDDEN_ARTIFACT_SUFFIXES)
    def test_pickle_artifacts_are_rejected(self, registry: ModelRegistry, suffix: str) -> None:
        with pytest.raises(InvalidNameError, match="pickle"):
            registry.register("m", {WEIGHTS: b"fine", f"model{suffix.upper()}": b"evil"})
        assert registry.list_models() == []

    def test_concurrent_registrations_get_distinct_consecutive_versions(self, registry: ModelRegistry) -> None:
        n = 8
        barrier = threading.Barrier(n)
        results: dict[int, Any] = {}

        def register(i: int) -> None:
            barrier.wait()
            try:
                results[i] = registry.register("m", {WEIGHTS: f"w{i}".encode()}, params={"worker": i})
            except BaseException as err:  # noqa: BLE001 - reported below
                results[i] = err

        threads = [threading.Thread(target=register, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        errors = [r for r in results.values() if isinstance(r, BaseException)]
        assert not errors, errors
        assert sorted(r.version for r in results.values()) == list(range(1, n + 1))
        versions = registry.list_versions("m")
        assert [v.version for v in versions] == list(range(1, n + 1))
        for v in versions:
            assert registry.read_artifact("m", v.version, WEIGHTS) == f"w{v.params['worker']}".encode()

    def test_version_links_to_the_run_that_trained_it(self, registry: ModelRegistry) -> None:
        if not isinstance(registry, Tracker):
            pytest.skip("this registry does not track runs")
        run = registry.start_run("exp", name="train", params={"lr": 0.1})
        registry.log_metrics(run.id, {"val_auc": 0.8}, step=1)
        registry.end_run(run.id)
        v = registry.register("m", {WEIGHTS: b"w"}, lineage={"training": {"run_id": run.id}}, run_id=run.id)
        assert v.run_id == run.id
        got = registry.get_version("m", 1)
        assert got.run_id == run.id and got.lineage == {"training": {"run_id": run.id}}
        linked = registry.get_run(got.run_id)
        assert (linked.params, linked.metrics) == ({"lr": 0.1}, {"val_auc": 0.8})
        with pytest.raises(NotFoundError):
            registry.register("m", {WEIGHTS: b"w"}, run_id="0" * 32)
        assert _versions(registry, "m") == [1]


class TrackerContract:
    """Tests a :class:`runtime.Tracker`. Needs a ``registry`` fixture (or a ``tracker`` fixture overriding it)."""

    @pytest.fixture
    def tracker(self, registry: Any) -> Tracker:
        return registry

    def test_is_a_tracker(self, tracker: Tracker) -> None:
        assert isinstance(tracker, Tracker)
        assert tracker.list_runs() == []

    def test_run_life_cycle(self, tracker: Tracker) -> None:
        run = tracker.start_run("churn", name="first", params={"lr": 0.01}, tags={"model": "churn"})
        assert (run.experiment, run.name, run.status, run.ended_at, run.duration) == (
            "churn", "first", "running", None, None)
        assert (run.params, run.tags, run.metrics, run.artifacts) == ({"lr": 0.01}, {"model": "churn"}, {}, ())
        for epoch, loss in enumerate([0.9, 0.5, 0.25], start=1):
            tracker.log_metrics(run.id, {"loss": loss, "auc": 0.5 + epoch / 10}, step=epoch)
        assert tracker.get_run(run.id).status == "running"
        ended = tracker.end_run(run.id)
        assert ended.status == "finished" and ended.ended_at is not None
        assert ended.duration is not None and 0 <= ended.duration < 600
        assert ended.metrics == {"loss": 0.25, "auc": 0.8}
        history = tracker.metric_history(run.id, "loss")
        assert [(p.step, p.value) for p in history] == [(1, 0.9), (2, 0.5), (3, 0.25)]
        assert all(p.timestamp > 0 for p in history)
        assert tracker.get_run(run.id) == ended

    @pytest.mark.parametrize("status", ["failed", "killed"])
    def test_runs_end_failed_or_killed(self, tracker: Tracker, status: str) -> None:
        run = tracker.start_run("exp")
        assert tracker.end_run(run.id, status).status == status
        assert tracker.get_run(run.id).status == status
        with pytest.raises(InvalidNameError):
            tracker.end_run(tracker.start_run("exp").id, "exploded")

    def test_params_are_json_values_written_once(self, tracker: Tracker) -> None:
        params = {"lr": 0.1, "hidden": [64, 32], "optimizer": "adam", "three": "3", "flag": True, "none": None,
                  "quoted": '"x"', "workers": 2}
        run = tracker.start_run("exp", params=params)
        assert tracker.get_run(run.id).params == params
        tracker.log_params(run.id, {"lr": 0.1, "seed": 7})
        assert tracker.get_run(run.id).params == {**params, "seed": 7}
        with pytest.raises(LoomError, match="lr"):
            tracker.log_params(run.id, {"lr": 0.2})
        assert tracker.get_run(run.id).params["lr"] == 0.1

    def test_metric_values(self, tracker: Tracker) -> None:
        run = tracker.start_run("exp")
        tracker.log_metrics(run.id, {"x": 1, "nan": float("nan")})
        got = tracker.get_run(run.id).metrics
        assert got["x"] == 1.0 and math.isnan(got["nan"])
        with pytest.raises(TypeError):
            tracker.log_metrics(run.id, {"x": "high"})  # type: ignore[dict-item]
        with pytest.raises(NotFoundError):
            tracker.metric_history(run.id, "absent")

    def test_artifacts(self, tracker: Tracker) -> None:
        run = tracker.start_run("exp")
        tracker.log_artifact(run.id, "history.json", b"[1, 2]")
        tracker.log_artifact(run.id, "weights.safetensors", b"\x00\xff")
        tracker.log_artifact(run.id, "history.json", b"[1, 2, 3]")
        assert tracker.get_run(run.id).artifacts == ("history.json", "weights.safetensors")
        assert tracker.read_run_artifact(run.id, "history.json") == b"[1, 2, 3]"
        assert tracker.read_run_artifact(run.id, "weights.safetensors") == b"\x00\xff"
        with pytest.raises(NotFoundError):
            tracker.read_run_artifact(run.id, "absent.json")
        with pytest.raises(InvalidNameError, match="pickle"):
            tracker.log_artifact(run.id, "model.pkl", b"evil")
        with pytest.raises(InvalidNameError):
            tracker.log_artifact(run.id, "../escape.json", b"{}")

    def test_runs_are_listed_newest_first_by_experiment(self, tracker: Tracker) -> None:
        a1 = tracker.start_run("a", name="a1")
        b1 = tracker.start_run("b", name="b1")
        a2 = tracker.start_run("a", name="a2")
        assert [r.id for r in tracker.list_runs("a")] == [a2.id, a1.id]
        assert [r.id for r in tracker.list_runs("b")] == [b1.id]
        assert {r.id for r in tracker.list_runs()} == {a1.id, a2.id, b1.id}
        assert tracker.list_runs("never-used") == []

    def test_unknown_and_unsafe_run_ids(self, tracker: Tracker) -> None:
        with pytest.raises(NotFoundError):
            tracker.get_run("0" * 32)
        with pytest.raises(NotFoundError):
            tracker.log_metrics("0" * 32, {"x": 1.0})
        for bad in ("../x", "a/b", "%2e%2e"):
            with pytest.raises(InvalidNameError):
                tracker.get_run(bad)
        with pytest.raises(InvalidNameError):
            tracker.start_run("../exp")

    def test_runs_compare(self, tracker: Tracker) -> None:
        runs = []
        for lr, auc in ((0.1, 0.7), (0.01, 0.9)):
            run = tracker.start_run("exp", params={"lr": lr, "epochs": 5})
            tracker.log_metrics(run.id, {"auc": auc}, step=5)
            runs.append(tracker.end_run(run.id))
        cmp = compare_runs(tracker.get_run(r.id) for r in runs)
        assert cmp.params == {"epochs": (5, 5), "lr": (0.1, 0.01)}
        assert cmp.differing_params == ["lr"]
        assert cmp.metrics == {"auc": (0.7, 0.9)}
        assert cmp.best("auc").id == runs[1].id
        assert cmp.best("auc", higher_is_better=False).id == runs[0].id
