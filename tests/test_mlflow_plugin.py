"""The ``mlflow`` registry plugin against a real MLflow (SQLite tracking and registry store, file artifacts), seen
both through Loom and through MLflow's own client."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import runtime
from runtime import ConfigError, InvalidNameError, LoomError, ModelRegistry, Tracker

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_store import migrated_store, store_options  # noqa: E402

from runtime.artifacts import SPEC, WEIGHTS  # noqa: E402
PLUGINS = "mlflow"


@pytest.fixture(autouse=True)
def _only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_PLUGINS", PLUGINS)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_store(tmp_path_factory.mktemp("mlflow-template"))


def _open(state_dir: Path, **options: object) -> ModelRegistry:
    return runtime.get_plugins().registry("mlflow", state_dir=state_dir, options=options)


@pytest.fixture
def options(template: Path, tmp_path: Path) -> dict[str, str]:
    return store_options(template, tmp_path)


@pytest.fixture
def reg(tmp_path: Path, options: dict[str, str]) -> ModelRegistry:
    return _open(tmp_path, **options)


def _client(options: dict[str, str]) -> MlflowClient:
    return MlflowClient(tracking_uri=options["tracking_uri"], registry_uri=options["tracking_uri"])


# -- child-process bodies (module level so the spawn context can import them) ---------------------------------


def _register_one(state_dir: str, options: dict[str, str], i: int, start: multiprocessing.synchronize.Barrier) -> None:
    import os

    os.environ["LOOM_PLUGINS"] = PLUGINS
    reg = _open(Path(state_dir), **options)
    reg.client.search_experiments()  # connect before the start line, so registrations really overlap
    start.wait(300)
    run = reg.start_run("training", params={"worker": i})
    reg.end_run(run.id)
    reg.register("m", {WEIGHTS: f"w{i}".encode()}, params={"worker": i}, run_id=run.id)


def _register_and_hang(state_dir: str, options: dict[str, str], ready: multiprocessing.synchronize.Event) -> None:
    import os

    os.environ["LOOM_PLUGINS"] = PLUGINS
    reg = _open(Path(state_dir), **options)

    def hang(name: str) -> None:
        ready.set()
        time.sleep(120)  # the parent SIGKILLs us here, after the upload, before the version exists

    reg._before_create = hang  # type: ignore[attr-defined]
    reg.register("m", {WEIGHTS: b"never registered"}, alias="production")


# -- construction ---------------------------------------------------------------------------------------------


def test_core_never_imports_mlflow() -> None:
    code = ("import sys, runtime, runtime.pipeline, runtime.cli, runtime.cli.models; runtime.get_plugins(); "
            "assert 'mlflow' not in sys.modules, 'mlflow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={"LOOM_PLUGINS": "mlflow,local_registry",
                                                                  "PATH": ""})


def test_default_store_is_a_sqlite_database_in_the_state_dir(tmp_path: Path) -> None:
    reg = _open(tmp_path)
    assert isinstance(reg, ModelRegistry) and isinstance(reg, Tracker)
    assert reg.tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert reg.artifact_root == (tmp_path / "mlflow" / "artifacts").as_uri()
    relative = _open(tmp_path, tracking_uri="sqlite:///elsewhere/m.db", artifact_root="blobs")
    assert relative.tracking_uri == f"sqlite:///{tmp_path / 'elsewhere' / 'm.db'}"
    assert relative.artifact_root == (tmp_path / "blobs").as_uri()
    with pytest.raises(ConfigError, match="'colour'"):
        _open(tmp_path, colour="blue")


# -- what MLflow sees -----------------------------------------------------------------------------------------


def test_runs_versions_and_aliases_are_mlflow_entities(reg: ModelRegistry, options: dict[str, str],
                                                       tmp_path: Path) -> None:
    run = reg.start_run("churn", name="train-1", params={"lr": 0.003, "hidden": [64, 32], "optimizer": "adam"})
    for epoch, auc in enumerate([0.7, 0.8], start=1):
        reg.log_metrics(run.id, {"val_auc": auc}, step=epoch)
    reg.end_run(run.id)
    v = reg.register("churn", {WEIGHTS: b"weights", SPEC: b"{}"}, metrics={"val_auc": 0.8},
                     tags={"team": "growth"}, description="first", alias="production", run_id=run.id)

    client = _client(options)
    got = client.get_run(run.id)
    assert got.info.run_name == "train-1" and got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "churn"
    assert got.data.params == {"lr": "0.003", "hidden": "[64, 32]", "optimizer": "adam"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.id, "val_auc")] == [(1, 0.7), (2, 0.8)]
    mv = client.get_model_version_by_alias("churn", "production")
    assert (int(mv.version), mv.run_id, mv.description) == (v.version, run.id, "first")
    assert mv.tags["team"] == "growth"
    files = {f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run.id, mv.tags["loom.artifact_path"])}
    assert files == {WEIGHTS, SPEC, "loom-version.json"}  # no MLmodel, no pickle
    assert mv.source.startswith(got.info.artifact_uri)
    assert str(tmp_path / "mlflow-artifacts" / "churn") in mv.source


def test_a_version_registered_in_mlflow_directly_is_refused_clearly(reg: ModelRegistry,
                                                                     options: dict[str, str]) -> None:
    client = _client(options)
    client.create_registered_model("foreign")
    client.create_model_version("foreign", "file:///nowhere")
    with pytest.raises(LoomError, match="not registered through Loom"):
        reg.get_version("foreign", 1)


def test_the_retrain_loops_tags_round_trip_and_the_plugins_own_are_reserved(reg: ModelRegistry) -> None:
    """The retrain loop records each round in ``loom.*`` tags (``loom.loop``, ``loom.judge.reason``): they are a
    user's tags here, unlike the plugin's own bookkeeping (``loom.artifact_path``), which no caller may set."""
    reg.register("m", {WEIGHTS: b"w"}, tags={"loom.loop": "shadow"})
    reg.set_tags("m", 1, {"loom.loop": "promoted", "loom.judge.reason": "better", "team": "churn"})
    assert reg.get_version("m", 1).tags == {"loom.loop": "promoted", "loom.judge.reason": "better", "team": "churn"}
    for key in ("loom.artifact_path", "loom.artifact_holder", "mlflow.source.name"):
        with pytest.raises(InvalidNameError, match="reserved"):
            reg.set_tags("m", 1, {key: "x"})
    assert reg.read_artifact("m", 1, WEIGHTS) == b"w"  # its folder tag was never touched


def test_corrupted_artifact_is_detected(reg: ModelRegistry, options: dict[str, str]) -> None:
    reg.register("m", {WEIGHTS: b"good weights"})
    mv = _client(options).get_model_version("m", "1")
    path = Path(mv.source.removeprefix("file://")) / WEIGHTS
    path.write_bytes(b"bad weights!")
    with pytest.raises(LoomError, match="corrupt"):
        reg.read_artifact("m", 1, WEIGHTS)
    path.unlink()
    with pytest.raises(LoomError, match="could not be read"):
        reg.read_artifact("m", 1, WEIGHTS)


def test_long_params_are_refused_not_truncated(reg: ModelRegistry) -> None:
    run = reg.start_run("exp")
    with pytest.raises(LoomError, match="at most 6000"):
        reg.log_params(run.id, {"big": "x" * 7000})


# -- what is read back from MLflow -----------------------------------------------------------------------------


@pytest.mark.parametrize("value, reason", [
    ("../../etc/passwd", "'..'"),
    ("loom.models/m/../../../../etc", "'..'"),
    ("/etc/passwd", "absolute path"),
    ("C:/Windows/win.ini", "absolute path"),
    ("loom.models\\m\\x", "backslash"),
    ("loom.models/m/%2e%2e", "'%'"),
    ("loom.models//x", "non-empty"),
])
def test_a_tampered_artifact_path_tag_is_refused_naming_the_tag(value: str, reason: str, tmp_path: Path,
                                                                options: dict[str, str]) -> None:
    """The tag naming a version's folder becomes a download path: anyone who can write to the MLflow store can
    change it, so it is checked (relative, safe names, no '..', no backslash) before anything is read."""
    reg = _open(tmp_path, **options)
    reg.register("m", {WEIGHTS: b"w"}, alias="production")
    client = _client(options)
    good = client.get_model_version("m", "1").tags["loom.artifact_path"]
    client.set_model_version_tag("m", "1", "loom.artifact_path", value)
    for read in (lambda: reg.get_version("m", "production"), lambda: reg.read_artifact("m", 1, WEIGHTS),
                 lambda: _open(tmp_path, **options).list_versions("m")):
        with pytest.raises(LoomError, match="'loom.artifact_path' tag of model 'm' version 1") as err:
            read()
        assert reason in str(err.value) and repr(value) in str(err.value)
    client.set_model_version_tag("m", "1", "loom.artifact_path", good)
    assert reg.read_artifact("m", 1, WEIGHTS) == b"w"


def test_tampered_run_ids_and_artifact_names_are_refused(tmp_path: Path, options: dict[str, str]) -> None:
    import sqlite3

    reg = _open(tmp_path, **options)
    reg.register("m", {WEIGHTS: b"w"})
    reg.register("n", {WEIGHTS: b"w"})
    db = options["tracking_uri"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:  # what a write to MLflow's database can do
        conn.execute("UPDATE model_versions SET run_id = '../../elsewhere' WHERE name = 'm'")
    with pytest.raises(LoomError, match=r"the run id of model 'm' version 1 in MLflow '\.\./\.\./elsewhere'"):
        _open(tmp_path, **options).get_version("m", 1)

    [document] = [p for p in (tmp_path / "mlflow-artifacts").rglob("loom-version.json") if "/n/" in p.as_posix()]
    doc = json.loads(document.read_text())
    doc["artifacts"]["../../model.json"] = doc["artifacts"].pop(WEIGHTS)
    document.write_text(json.dumps(doc))
    with pytest.raises(LoomError, match=r"artifact name '\.\./\.\./model\.json' in the metadata of model 'n'"):
        _open(tmp_path, **options).get_version("n", 1)


def test_store_passwords_are_in_no_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """MLflow's own errors quote the tracking server's URL, user info and all: Loom's messages redact it."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    secret = "Pa55w0rd-xyzzy"
    caplog.set_level("INFO")
    reg = _open(tmp_path, tracking_uri=f"http://loom:{secret}@127.0.0.1:9/?token={secret}")
    assert secret not in repr(reg) and "loom:***@127.0.0.1:9" in repr(reg)
    for call in (reg.list_models, lambda: reg.get_version("m", 1), lambda: reg.get_run("abc123")):
        with pytest.raises(LoomError) as err:
            call()
        assert secret not in str(err.value) and "http://loom:***@127.0.0.1:9" in str(err.value), str(err.value)
    assert not [r for r in caplog.records if secret in r.getMessage()]
    with pytest.raises(ConfigError) as bad:
        _open(tmp_path, tracking_uri=12345)
    assert "12345" not in str(bad.value)


# -- concurrency and crashes -----------------------------------------------------------------------------------


def test_sixteen_concurrent_processes_get_distinct_consecutive_versions(reg: ModelRegistry, tmp_path: Path,
                                                                         options: dict[str, str]) -> None:
    """Sixteen training jobs finishing at once, against a store that has neither their experiment nor their model
    yet: all but one lose the race to create each, and every version creation contends for the database."""
    ctx = multiprocessing.get_context("forkserver")  # children fork from a clean server that imported MLflow once
    ctx.set_forkserver_preload(["loom_mlflow._registry", "mlflow.store.tracking.sqlalchemy_store",
                                "mlflow.store.model_registry.sqlalchemy_store", __name__])
    start = ctx.Barrier(17)  # passed once every child has connected: all sixteen then register at once
    procs = [ctx.Process(target=_register_one, args=(str(tmp_path), options, i, start)) for i in range(16)]
    for p in procs:
        p.start()
    start.wait(300)
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 16
    versions = reg.list_versions("m")
    assert [v.version for v in versions] == list(range(1, 17))
    assert sorted(v.params["worker"] for v in versions) == list(range(16))
    runs = {r.id: r for r in reg.list_runs("training")}
    for v in versions:
        assert reg.read_artifact("m", v.version, WEIGHTS) == f"w{v.params['worker']}".encode()
        assert runs[v.run_id].params == {"worker": v.params["worker"]}


def test_process_killed_mid_registration_leaves_no_version(reg: ModelRegistry, tmp_path: Path,
                                                            options: dict[str, str]) -> None:
    reg.register("m", {WEIGHTS: b"v1"}, alias="production")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_register_and_hang, args=(str(tmp_path), options, ready))
    child.start()
    try:
        assert ready.wait(90), "child never reached the point before the version is created"
    finally:
        child.kill()
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert [v.version for v in reg.list_versions("m")] == [1]
    assert reg.get_version("m", "production").version == 1
    assert reg.register("m", {WEIGHTS: b"v2"}).version == 2
    uploaded = list((tmp_path / "mlflow-artifacts").rglob(WEIGHTS))
    assert len(uploaded) == 3  # the killed registration's upload is left unreferenced, never half-visible


# -- the life cycle on MLflow -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_life_cycle_on_mlflow_tracks_training_and_serves_the_registered_version(
    ray_cluster: object, serve_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``registry: {kind: mlflow}`` is the only change: training becomes an MLflow run with per-epoch metrics, the
    version links to it with full lineage, and Ray Serve answers from the version MLflow holds."""
    from conftest import make_project

    from runtime import Pipeline
    from runtime.serving import shutdown

    monkeypatch.delenv("LOOM_PLUGINS")
    root = make_project(tmp_path / "proj", port=serve_port, training={"epochs": 2, "workers": 1},
                        registry={"kind": "mlflow"})
    pipe = Pipeline(root)
    try:
        result = pipe.up()
        _check_tracked_and_served(pipe, result, root)
    finally:
        with contextlib.suppress(LoomError):  # Serve has one HTTP port per cluster: leave it to the next test
            shutdown(pipe.project)


def _check_tracked_and_served(pipe: Any, result: Any, root: Path) -> None:
    import httpx
    import pandas as pd

    from runtime.model import ModelBundle, Predictor

    version = result.version
    uri = f"sqlite:///{root / '.loom' / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "churn-quickstart"
    assert json.loads(run.data.params["hidden"]) == [64, 32] and run.data.params["use_gpu"] in ("true", "false")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [1, 2]
    assert {f.path for f in client.list_artifacts(run.info.run_id)} >= {SPEC}
    mv = client.get_model_version_by_alias("churn", "production")
    assert (int(mv.version), mv.run_id) == (version.version, run.info.run_id)

    lineage = pipe.registry.get_version("churn", "production").lineage
    assert lineage["training"]["run_id"] == run.info.run_id
    assert [h["epoch"] for h in lineage["training"]["history"]] == [1, 2]
    assert lineage["data"]["fingerprint"] and lineage["data"]["source"].startswith("csv://")
    assert "git_commit" in lineage["code"] and {"python", "torch", "ray"} <= set(lineage["packages"])
    assert lineage["reference_profile"] in version.artifacts
    assert pipe.tracker.get_run(run.info.run_id).metrics["val_auc"] == version.metrics["val_auc"]

    df = pd.read_csv(root / "data" / "customers.csv").sample(16, random_state=3)
    features = list(lineage["features"]["features"])
    records = json.loads(df[features].to_json(orient="records"))
    response = httpx.post(f"{result.url}/predict/churn", json=records, timeout=30)
    assert response.status_code == 200, response.text
    bundle = ModelBundle.from_registry(pipe.registry, "churn", version.version)
    expected, _ = Predictor(bundle).predict({c: df[c].to_numpy() for c in features})
    assert response.json()["predictions"] == expected
