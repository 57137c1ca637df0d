"""One test (at least) per hook in runtime/hookspecs.py, named ``test_<hook>_...``, each showing what Loom does
with the hook: where it is called, with which arguments, and what its result or failure changes.
tests/test_docs.py fails when a hook has no test here.

Plugins here are objects passed to :func:`runtime.get_plugins`; discovery through installed entry points is tested
in tests/test_plugins.py and tests/test_plugin_packages.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from conftest import free_port, make_project

import runtime
from runtime import LoomError, Pipeline, PluginError, get_plugins, hookimpl, load_project


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart with its generated data, made once; tests work on copies."""
    return make_project(tmp_path_factory.mktemp("generated"), port=free_port())


@pytest.fixture
def project(generated: Path, tmp_path: Path):
    """A fresh copy of the quickstart; ``project(section={...})`` updates sections of its loom.yaml first."""

    def make(**sections: dict[str, Any]) -> runtime.Project:
        root = tmp_path / "project"
        shutil.copytree(generated, root, ignore=shutil.ignore_patterns(".loom"))
        cfg = yaml.safe_load((root / "loom.yaml").read_text())
        for section, values in sections.items():
            cfg.setdefault(section, {}).update(values)
        (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        return load_project(root)

    return make


def untrained(pipe: Pipeline, data, service) -> Any:
    """What :meth:`Pipeline.train` returns, without Ray: a real model bundle with initial weights."""
    from runtime.model import ModelBundle, Preprocessor, TabularMLP
    from runtime.pipeline import Trained

    cfg = pipe.project.config
    schema = {c: cfg.feature_definitions.columns[c] for c in service.features}
    pre = Preprocessor.fit(data.frame, schema)
    kwargs = {"in_features": pre.n_features, "hidden": [8], "out_features": 2, "dropout": 0.0}
    bundle = ModelBundle(architecture="runtime.model:TabularMLP", kwargs=kwargs, preprocessor=pre,
                         classes=[False, True], inputs={c: s.model_dump(exclude_none=True) for c, s in schema.items()},
                         label=cfg.data.label, state_dict=TabularMLP(**kwargs).state_dict())
    return Trained(artifacts=bundle.to_artifacts(), params={"hidden": [8]}, metrics={"val_auc": 0.5}, history=[],
                   train_rows=len(data.frame), seconds=0.0)


class Recorder:
    """Records the life-cycle hooks it sees, with the arguments it asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def seen(self, hook: str) -> list[dict[str, Any]]:
        return [args for name, args in self.calls if name == hook]

    @hookimpl
    def loom_before_training(self, project, train_rows, params):
        self.calls.append(("loom_before_training", {"project": project, "train_rows": train_rows, "params": params}))

    @hookimpl
    def loom_after_training(self, metrics, history):
        self.calls.append(("loom_after_training", {"metrics": metrics, "history": history}))

    @hookimpl
    def loom_model_registered(self, project, version):
        self.calls.append(("loom_model_registered", {"project": project, "version": version}))

    @hookimpl
    def loom_model_deployed(self, model, version, url):
        self.calls.append(("loom_model_deployed", {"model": model, "version": version, "url": url}))

    @hookimpl
    def loom_canary_judged(self, model, version, previous, verdict):
        self.calls.append(("loom_canary_judged", {"model": model, "version": version, "previous": previous,
                                                  "verdict": verdict}))

    @hookimpl
    def loom_on_error(self, stage, error):
        self.calls.append(("loom_on_error", {"stage": stage, "error": error}))


class Spy:
    """Wraps a built-in store or registry, recording which protocol methods the pipeline calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.called: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if callable(attr):
            def record(*args: Any, **kwargs: Any) -> Any:
                self.called.append(name)
                return attr(*args, **kwargs)
            return record
        return attr


# -- registration hooks ---------------------------------------------------------------------------------------


class MemorySource:
    """A data source serving a DataFrame held in memory."""

    def __init__(self, uri: str, frame: pd.DataFrame) -> None:
        self.uri, self.frame = uri, frame

    def read(self) -> pd.DataFrame:
        return self.frame.copy()

    def iter_batches(self, batch_size: int = 65_536):
        for start in range(0, len(self.frame), batch_size):
            yield self.frame.iloc[start:start + batch_size].reset_index(drop=True)

    def fingerprint(self) -> str:
        return runtime.hash_frame(self.frame)


def test_loom_register_data_sources_scheme_feeds_the_pipeline(project):
    proj = project(data={"source": "memory-table://customers", "options": {"rows": 300}})
    raw = pd.read_csv(proj.root / "data" / "customers.csv")
    opened: list[tuple[str, Path, dict]] = []

    class MemoryTables:
        @hookimpl
        def loom_register_data_sources(self, register):
            def factory(uri, *, base_dir, options):
                opened.append((uri, base_dir, options))
                return MemorySource(uri, raw.head(options["rows"]))

            register("memory-table", factory)

    data = Pipeline(proj, plugins=get_plugins([MemoryTables()])).ingest()
    assert opened and all(o == ("memory-table://customers", proj.root, {"rows": 300}) for o in opened)
    assert len(data.frame) == 300 and data.fingerprint == runtime.hash_frame(raw.head(300))
    assert str(data.frame["event_time"].dtype).startswith("datetime64")  # validated against loom.yaml's schema


def test_loom_register_feature_stores_store_gets_the_features(project):
    proj = project(features={"store": "spied", "options": {"tier": "hot"}})
    built: list[tuple[Path, dict]] = []
    stores: list[Spy] = []

    class SpiedStore:
        @hookimpl
        def loom_register_feature_stores(self, register):
            def factory(*, state_dir, options):
                built.append((state_dir, options))
                stores.append(Spy(get_plugins().feature_store("local", state_dir=state_dir, options={})))
                return stores[-1]

            register("spied", factory)

    pipe = Pipeline(proj, plugins=get_plugins([SpiedStore()]))
    service = pipe.write_features(pipe.ingest())
    assert built == [(proj.state_dir, {"tier": "hot"})]
    called = stores[0].called
    assert called.index("apply") < called.index("write") < called.index("materialize")
    keys = pd.read_csv(proj.root / "data" / "customers.csv")["customer_id"].unique()[:3].tolist()
    [view] = service.projections
    online = pipe.feature_store.get_online_features(view.name, keys, ["contract"])
    assert len(online) == 3 and online["contract"].notna().all()


def test_loom_register_registries_registry_stores_each_version(project):
    proj = project(registry={"kind": "audited", "options": {"bucket": "models"}})
    built: list[tuple[Path, dict]] = []
    registries: list[Spy] = []

    class Audited:
        @hookimpl
        def loom_register_registries(self, register):
            def factory(*, state_dir, options):
                built.append((state_dir, options))
                registries.append(Spy(get_plugins().registry("local", state_dir=state_dir, options={})))
                return registries[-1]

            register("audited", factory)

    pipe = Pipeline(proj, plugins=get_plugins([Audited()]))
    data = pipe.ingest()
    service = pipe.write_features(data)
    version = pipe.register(untrained(pipe, data, service), data, service)
    assert built == [(proj.state_dir, {"bucket": "models"})]
    assert registries[0].called == ["register"]
    assert pipe.registry.get_version("churn", "production").version == version.version
    assert version.lineage["data"]["fingerprint"] == data.fingerprint


def test_loom_register_commands_adds_a_command_to_the_cli(tmp_path):
    """The CLI discovers plugin commands through entry points: install a one-module distribution by hand (a
    module and its .dist-info) on PYTHONPATH and call its command."""
    (tmp_path / "loom_hello_cmd.py").write_text(
        "import click\nfrom runtime import hookimpl\n\n\n@hookimpl\ndef loom_register_commands(cli):\n"
        "    @cli.command()\n    @click.argument('who')\n    def hello(who):\n"
        "        '''Greet WHO.'''\n        click.echo(f'hello {who}')\n")
    info = tmp_path / "loom_hello_cmd-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: loom-hello-cmd\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[loom]\nhello_cmd = loom_hello_cmd\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("LOOM_PLUGINS", None)
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "hello", "world"], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello world\n"
    listing = subprocess.run([sys.executable, "-m", "runtime.cli", "--help"], capture_output=True, text=True, env=env)
    assert "Greet WHO." in listing.stdout


# -- life-cycle hooks ---------------------------------------------------------------------------------------------


def test_loom_before_training_sees_rows_and_params_and_can_stop_training(project):
    class Quota(Recorder):
        @hookimpl
        def loom_before_training(self, project, train_rows, params):
            super().loom_before_training(project, train_rows, params)
            raise LoomError(f"{train_rows} rows is over this team's quota")

    quota = Quota()
    pipe = Pipeline(project(training={"epochs": 3, "workers": 1}), plugins=get_plugins([quota]))
    data = pipe.ingest()
    view = pipe.write_features(data)
    with pytest.raises(PluginError, match=r"plugin 'Quota' failed in hook loom_before_training: \d+ rows is over"):
        pipe.train(data, view)
    [call] = quota.seen("loom_before_training")
    assert call["project"] is pipe.project
    assert 0 < call["train_rows"] < len(data.frame)  # the held-out validation rows are not counted
    assert (call["params"]["epochs"], call["params"]["workers"]) == (3, 1)


def test_loom_model_registered_gets_the_committed_version(project):
    recorder = Recorder()
    pipe = Pipeline(project(), plugins=get_plugins([recorder]))
    data = pipe.ingest()
    service = pipe.write_features(data)
    version = pipe.register(untrained(pipe, data, service), data, service)
    [call] = recorder.seen("loom_model_registered")
    assert call["project"] is pipe.project
    assert call["version"] == version == pipe.registry.get_version("churn", "production")


def test_loom_on_error_hears_the_failed_stage_and_cannot_mask_it(project, caplog):
    class Broken:
        @hookimpl
        def loom_register_data_sources(self, register):
            def factory(uri, *, base_dir, options):
                raise ConnectionError("warehouse unreachable")

            register("warehouse", factory)

    class FailingReporter:
        @hookimpl
        def loom_on_error(self, stage, error):
            raise RuntimeError("pager is down")

    recorder = Recorder()
    pipe = Pipeline(project(data={"source": "warehouse://sales"}),
                    plugins=get_plugins([Broken(), FailingReporter(), recorder]))
    with pytest.raises(PluginError, match="warehouse unreachable") as raised:
        pipe.ingest()
    [call] = recorder.seen("loom_on_error")
    assert call["stage"] == "ingest" and call["error"] is raised.value
    assert "plugin 'FailingReporter' failed in hook loom_on_error: RuntimeError: pager is down" in caplog.text


# -- hooks that need Ray Train and Ray Serve ------------------------------------------------------------------------

#: A plugin module in the project directory, named by ``plugins:`` in loom.yaml, so that the Serve replica loads it:
#: drift monitors and ``loom_drift_detected`` run there. It records drift events in the project's state directory.
PROBE = """
import json

from runtime import DriftReport, FeatureDrift, hookimpl


class MeanShift:
    '''Drift when a numerical column's mean moved by more than ``sigmas`` reference standard deviations.'''

    def __init__(self, sigmas):
        self.sigmas = sigmas

    def check(self, reference, current, *, numerical, categorical):
        features = []
        for col in numerical:
            ref, cur = reference[col].astype(float), current[col].astype(float)
            shift = abs(cur.mean() - ref.mean()) / (ref.std() or 1.0)
            features.append(FeatureDrift(col, bool(shift > self.sigmas), float(shift), "mean-shift", self.sigmas))
        share = sum(f.drifted for f in features) / len(features)
        return DriftReport("mean-shift", share > 0, share, len(reference), len(current), tuple(features))

    def html_report(self, reference, current, *, numerical, categorical):
        return "<p>mean shift</p>"


@hookimpl
def loom_register_drift_monitors(register):
    register("mean-shift", lambda *, options: MeanShift(**options))


@hookimpl
def loom_drift_detected(project, model, version, report):
    event = {"model": model, "version": version, "monitor": report.monitor, "n_current": report.n_current,
             "drifted": [f.column for f in report.features if f.drifted]}
    with open(project.state_dir / "drift-events.jsonl", "a") as f:
        f.write(json.dumps(event) + "\\n")
    return True
"""

FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "paperless_billing", "contract",
            "internet_service", "payment_method"]


@pytest.fixture(scope="module")
def deployed(ray_cluster, serve_port, generated, tmp_path_factory):
    """One short real run (1 worker, 1 epoch) through training, registration and deployment, with a recorder in
    the driver and the probe plugin in the Serve replica."""
    root = tmp_path_factory.mktemp("deployed") / "project"
    shutil.copytree(generated, root, ignore=shutil.ignore_patterns(".loom"))
    (root / "loom_probe.py").write_text(PROBE)
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["plugins"] = ["loom_probe"]
    cfg["training"].update(workers=1, epochs=1)
    cfg["serving"]["port"] = serve_port
    cfg["monitoring"].update(monitor="mean-shift", options={"sigmas": 1.0}, window=200)
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))  # as Ray's runtime_env does for Train workers and Serve replicas
        pipe = Pipeline(root, plugins=get_plugins([recorder]))
        result = pipe.up()
        client = httpx.Client(base_url=result.url, timeout=60)
        yield pipe, result, recorder, client
        client.close()
        from runtime.serving import shutdown

        shutdown(pipe.project)  # later modules deploy their own apps on the shared cluster


def drift_events(pipe: Pipeline) -> list[dict[str, Any]]:
    path = pipe.project.state_dir / "drift-events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def serve_rows(client: httpx.Client, rows: pd.DataFrame) -> None:
    r = client.post("/predict/churn", content=rows[FEATURES].to_json(orient="records"),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


@pytest.mark.slow
def test_loom_after_training_gets_the_final_metrics(deployed):
    pipe, result, recorder, _ = deployed
    [call] = recorder.seen("loom_after_training")
    assert [e["epoch"] for e in call["history"]] == [1]
    assert 0 <= call["metrics"]["val_auc"] <= 1
    assert call["metrics"] == pipe.registry.get_version("churn", result.version.version).metrics
    names = [name for name, _ in recorder.calls]
    assert names.index("loom_before_training") < names.index("loom_after_training") < names.index(
        "loom_model_registered")


@pytest.mark.slow
def test_loom_model_deployed_url_answers(deployed):
    _, result, recorder, client = deployed
    [call] = recorder.seen("loom_model_deployed")
    assert (call["model"], call["version"], call["url"]) == ("churn", result.version.version, result.url)
    assert client.get(f"{call['url']}/v2/models/churn/ready").json()["ready"] is True


@pytest.mark.slow
def test_loom_register_drift_monitors_monitor_checks_served_traffic(deployed, generated):
    """The replica builds the monitor named in loom.yaml, from a plugin, with ``monitoring.options``."""
    _, _, _, client = deployed
    serve_rows(client, pd.read_csv(generated / "data" / "customers.csv").head(200))
    report = client.get("/monitoring/churn/drift").json()
    assert (report["monitor"], report["n_current"]) == ("mean-shift", 200)
    assert {f["threshold"] for f in report["features"].values()} == {1.0}
    assert set(report["features"]) == {"tenure_months", "monthly_charges", "total_charges", "support_calls",
                                       "paperless_billing"}  # the numerical inputs


@pytest.mark.slow
def test_loom_drift_detected_runs_in_the_replica_only_on_drift(deployed, generated):
    pipe, result, _, client = deployed
    rows = pd.read_csv(generated / "data" / "customers.csv")
    serve_rows(client, rows.iloc[200:400])
    assert not client.get("/monitoring/churn/drift").json()["drifted"]
    assert drift_events(pipe) == []
    shifted = rows.iloc[400:600].assign(support_calls=lambda f: f["support_calls"] + 20)
    serve_rows(client, shifted)
    report = client.get("/monitoring/churn/drift").json()
    assert report["drifted"]
    assert drift_events(pipe) == [{"model": "churn", "version": result.version.version, "monitor": "mean-shift",
                                   "n_current": 200, "drifted": ["support_calls"]}]


@pytest.mark.slow
def test_loom_canary_judged_gets_the_verdict_of_a_real_canary(deployed, generated):
    """A second version serves as a 50% canary, its traffic is labelled, and the loop judges it: the hook gets the
    decision with its evidence, and serving, the tags and the decision agree."""
    from runtime.retrain_loop import RetrainLoop
    from runtime.serving import current_table, deploy
    from serving_models import register_version

    pipe, result, recorder, client = deployed
    old = result.version.version
    new = register_version(pipe.project.root, seed=5, alias=None)
    deploy(pipe.project, "churn", new, canary=50)
    rows = pd.read_csv(generated / "data" / "customers.csv").iloc[600:900]
    labels = []
    for start in range(0, len(rows), 50):
        part = rows.iloc[start:start + 50]
        r = client.post("/predict/churn", content=part[FEATURES].to_json(orient="records"),
                        headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        labels.append({"id": r.headers["x-loom-request-id"], "label": part["churned"].tolist()})
    assert client.post("/feedback/churn", json={"labels": labels}).status_code == 200
    loop = RetrainLoop(pipe.project, plugins=pipe.plugins)
    judged = min(len(rows), pipe.project.config.monitoring.window)  # the most recent labelled rows, one window
    deadline = time.monotonic() + 30
    while len(loop.labelled()) < judged and time.monotonic() < deadline:
        time.sleep(0.5)  # the replica's store flushes every flush_interval_s
    outcome = loop.judge({"phase": "canary", "version": new, "previous": old})

    [call] = recorder.seen("loom_canary_judged")
    verdict = call["verdict"]
    assert (call["model"], call["version"], call["previous"]) == ("churn", new, old)
    assert verdict["n"] == judged and verdict["test"] == "mcnemar-exact" and 0 <= verdict["p_value"] <= 1
    assert verdict["ci"][0] <= verdict["difference"] <= verdict["ci"][1]
    promoted = verdict["decision"] == "promote"
    assert outcome == f"{'promoted' if promoted else 'rolled back'} v{new}"
    routes = current_table(pipe.project).models["churn"]
    assert routes.canary is None and routes.primary == (new if promoted else old)
    tags = pipe.registry.get_version("churn", new).tags
    assert tags["loom.loop"] == ("promoted" if promoted else "rolled-back")
    assert float(tags["loom.judge.p_value"]) == pytest.approx(verdict["p_value"], rel=1e-2)


def test_loom_register_model_formats_format_loads_and_serves_a_version(tmp_path):
    import loom_local_registry
    import test_model_formats as formats  # its toy format (a module import: its suites are not collected twice)

    from runtime.config import ColumnSpec
    from runtime.formats import load_model
    from runtime.model import ModelBundle, Preprocessor

    plugins = get_plugins([formats.DoublingPlugin(), loom_local_registry], entrypoints=False)
    assert plugins.names("loom_register_model_formats") == {"double": "DoublingPlugin"}
    reg = plugins.registry("local", state_dir=tmp_path, options={})
    spec = formats.TestTorchFormat().spec({"model_format": "double"})
    spec["inputs"] = {"a": {"type": "float", "nullable": False}, "b": {"type": "float", "nullable": False}}
    spec["preprocessor"] = Preprocessor.passthrough({c: ColumnSpec(**s) for c, s in spec["inputs"].items()}).to_dict()
    spec["task"] = {"task": "regression", "mean": 0.0, "std": 1.0}
    reg.register("m", {"model.json": json.dumps(spec).encode(), "model.double": b'{"width": 2}'})
    loaded = load_model(reg, "m", 1, plugins=plugins)
    assert loaded.spec.format == "double"
    values, _ = loaded.predict({"a": [1.0, 2.5], "b": [0.0, 0.0]})
    assert values == [2.0, 5.0]  # regression takes the first output: a * 2
    with pytest.raises(LoomError, match="is a 'double' model"):  # the torch bundle reader says what it is
        ModelBundle.from_registry(reg, "m", 1)
