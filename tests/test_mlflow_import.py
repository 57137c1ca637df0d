"""``loom models import NAME --from models:/...``: a model someone logged and registered with MLflow's own tools
(an ONNX flavor from ``mlflow.onnx.log_model``, safetensors weights logged as run artifacts) imports into a project
on the ``mlflow`` registry and answers as the torch module it came from; pickled flavors are refused, unpickled;
unknown models and versions are not found; a refused import registers nothing. Real MLflow (SQLite store, file
artifacts), no mocks."""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from conftest import make_project
from runtime import LoomError, NotFoundError, get_plugins, load_project
from runtime.cli import cli
from runtime.formats import LoadLimits, load_model
from runtime.model import TabularMLP
from serving_models import FEATURES, data, registry
from test_models_import import torch_proba  # the passthrough encoding, built independently

pytest.importorskip("onnx")
mlflow = pytest.importorskip("mlflow")
import mlflow.onnx  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_store import migrated_store, store_options  # noqa: E402

#: The quickstart's inputs as the passthrough encoding lays them out: 5 numbers, then 3 + 3 + 4 one-hot columns.
WIDTH = 15
TABULAR_MLP = "runtime.model:TabularMLP"


def loom(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def refused(*args: str) -> str:
    result = loom(*args, ok=False)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # messages on one line, as a terminal this wide shows them
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # Loom reads the store loom.yaml names, nothing else
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_store(tmp_path_factory.mktemp("mlflow-template"))


class Store:
    """The project's MLflow store as an MLflow user sees it: a client, and an experiment of their own."""

    def __init__(self, uri: str, artifacts: Path) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.experiment = self.client.create_experiment("notebooks", artifact_location=artifacts.as_uri())

    @contextlib.contextmanager
    def fluent(self) -> Iterator[None]:
        """MLflow's fluent API (``mlflow.start_run``, ``log_model``) on this store, for the block only."""
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", self.uri)
            mp.setenv("MLFLOW_REGISTRY_URI", self.uri)
            with mlflow.start_run(experiment_id=self.experiment) as run:
                self.run_id = run.info.run_id
                yield

    def log_onnx(self, net: torch.nn.Module, name: str, tmp: Path, width: int = WIDTH) -> str:
        """``net`` exported by ``torch.onnx.export``, logged with ``mlflow.onnx.log_model`` (its weights as external
        data, MLflow's default) and registered as ``name``; the run id."""
        import onnx

        path = tmp / f"{name}.onnx"
        torch.onnx.export(net, (torch.zeros(2, width),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        with self.fluent():
            mlflow.onnx.log_model(onnx.load(str(path)), name="model", registered_model_name=name, pip_requirements=[])
        return self.run_id

    def log_weights(self, net: torch.nn.Module, name: str, tmp: Path) -> str:
        """``net``'s weights saved with safetensors, logged as a run's artifacts and registered from there."""
        run = self.client.create_run(self.experiment)
        (tmp / "weights").mkdir(exist_ok=True)
        save_file(net.state_dict(), tmp / "weights" / "churn.safetensors")
        self.client.log_artifacts(run.info.run_id, str(tmp / "weights"), artifact_path="weights")
        self.register(name, f"runs:/{run.info.run_id}/weights", run.info.run_id)
        return run.info.run_id

    def log_folder(self, folder: Path, name: str) -> None:
        """Every file of ``folder`` logged as a run's ``model`` artifacts and registered from there."""
        run = self.client.create_run(self.experiment)
        self.client.log_artifacts(run.info.run_id, str(folder), artifact_path="model")
        self.register(name, f"runs:/{run.info.run_id}/model", run.info.run_id)

    def register(self, name: str, source: str, run_id: str) -> None:
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            self.client.create_registered_model(name)
        self.client.create_model_version(name, source, run_id=run_id)


@pytest.fixture
def project(tmp_path: Path, template: Path) -> Path:
    options = store_options(template, tmp_path)
    return make_project(tmp_path / "qs", port=8000, registry={"kind": "mlflow", "options": options})


@pytest.fixture
def store(project: Path, tmp_path: Path) -> Store:
    uri = load_project(project).config.registry.options["tracking_uri"]
    return Store(uri, tmp_path / "notebook-artifacts")


def module(seed: int = 0, width: int = WIDTH, out: int = 2, hidden: int = 16) -> TabularMLP:
    torch.manual_seed(seed)
    return TabularMLP(in_features=width, out_features=out, hidden=[hidden], dropout=0.0).eval()


def loaded(project: Path, ref: int | str):
    return load_model(registry(project), "churn", ref, plugins=get_plugins(),
                      limits=LoadLimits.of(load_project(project)))


def versions(project: Path) -> list[int]:
    reg = registry(project)
    return [v.version for v in reg.list_versions("churn")] if "churn" in reg.list_models() else []


def test_an_onnx_model_logged_with_mlflow_imports_by_uri_and_answers_as_torch(project, store, tmp_path):
    net = module(seed=1, hidden=64)  # weights over 1 KiB: mlflow.onnx keeps them as external data
    run_id = store.log_onnx(net, "churn-onnx", tmp_path)
    store.client.set_registered_model_alias("churn-onnx", "champion", "1")
    out = json.loads(loom("models", "import", "churn", "--from", "models:/churn-onnx/1", "-p", str(project),
                          "--json").output)
    assert out["version"] == 1 and out["aliases"] == ["production"]
    imported = out["lineage"]["imported"]
    assert imported["format"] == "onnx" and imported["signature"] == "loom.yaml"
    assert imported["file"] == "models:/churn-onnx/1/model.onnx"
    source = imported["source"]
    assert {k: source[k] for k in ("registry", "uri", "model", "version", "run_id", "file")} == {
        "registry": "mlflow", "uri": "models:/churn-onnx/1", "model": "churn-onnx", "version": 1, "run_id": run_id,
        "file": "model.onnx"}
    assert "onnx" in source["flavors"] and len(source["external_data"]) == 1  # inlined into model.onnx
    assert set(out["artifacts"]) == {"model.json", "model.onnx"}

    rows = data(project).tail(300)
    labels, proba = loaded(project, "production").predict(rows)
    np.testing.assert_allclose(proba, torch_proba(net, rows, project), atol=1e-5)
    assert labels == [bool(i) for i in proba.argmax(1)]

    by_alias = loom("models", "import", "churn", "--from", "models:/churn-onnx@champion", "--alias", "candidate",
                    "-p", str(project)).output
    assert "imported churn version 2 from models:/churn-onnx@champion (onnx" in " ".join(by_alias.split())
    second = registry(project).get_version("churn", "candidate").lineage["imported"]["source"]
    assert (second["uri"], second["version"]) == ("models:/churn-onnx@champion", 1)
    np.testing.assert_allclose(loaded(project, 2).outputs(rows), proba, atol=1e-6)
    assert "models:/churn-onnx/1/model.onnx" in " ".join(loom("models", "show", "churn", "1", "-p",
                                                              str(project)).output.split())
    listed = {m["name"]: m for m in json.loads(loom("models", "list", "-p", str(project), "--json").output)}
    assert (listed["churn"]["versions"], listed["churn-onnx"]["versions"]) == (2, 0)  # MLflow's own: not Loom's
    latest = json.loads(loom("models", "import", "churn", "--from", "models:/churn-onnx/latest", "--signature",
                             "graph", "-p", str(project), "--json").output)
    assert latest["lineage"]["imported"]["signature"] == "model graph"


def test_safetensors_weights_logged_as_artifacts_import_with_their_architecture(project, store, tmp_path):
    net = module(seed=2)
    run_id = store.log_weights(net, "churn-weights", tmp_path)
    message = refused("models", "import", "churn", "--from", "models:/churn-weights/1", "-p", str(project))
    assert ("models:/churn-weights/1 holds safetensors weights (models:/churn-weights/1/churn.safetensors): give "
            "--architecture MODULE:CLASS") in message
    message = refused("models", "import", "churn", "--from", "models:/churn-weights/1", "--architecture",
                      TABULAR_MLP, "--options", '{"hidden": [8]}', "-p", str(project))
    assert "the weights do not fit runtime.model:TabularMLP" in message
    assert versions(project) == []  # neither refusal registered anything

    out = json.loads(loom("models", "import", "churn", "--from", "models:/churn-weights/1", "--architecture",
                          TABULAR_MLP, "--options", '{"hidden": [16], "dropout": 0}', "-p", str(project),
                          "--json").output)
    imported = out["lineage"]["imported"]
    assert imported["format"] == "torch" and imported["architecture"] == TABULAR_MLP
    assert (imported["source"]["run_id"], imported["source"]["file"]) == (run_id, "churn.safetensors")
    assert imported["source"]["flavors"] == []
    rows = data(project).head(200)
    model = loaded(project, 1)
    np.testing.assert_allclose(model.outputs(rows), torch_proba(net, rows, project), atol=1e-5)
    assert model.spec.raw["kwargs"] == {"hidden": [16], "dropout": 0, "in_features": WIDTH, "out_features": 2}
    assert "--format onnx" in refused("models", "import", "churn", "--from", "models:/churn-weights/1",
                                      "--format", "onnx", "-p", str(project))


class Trap:
    """Unpickling this creates a file: the proof that a refused model was never unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_flavors_are_refused_naming_what_was_found_and_never_unpickled(project, store, tmp_path):
    import mlflow.pytorch
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    with store.fluent():
        mlflow.sklearn.log_model(LogisticRegression().fit(rng.normal(size=(20, 3)), np.arange(20) % 2), name="sk",
                                 registered_model_name="churn-sklearn", pip_requirements=[],
                                 serialization_format="cloudpickle")
    with store.fluent():
        mlflow.pytorch.log_model(module(), name="pt", registered_model_name="churn-pytorch", pip_requirements=[],
                                 serialization_format="pickle")
    marker = tmp_path / "unpickled"
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "python_model.pkl").write_bytes(pickle.dumps(Trap(marker)))
    (trap / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n"
                                  "    python_model: python_model.pkl\n")
    store.log_folder(trap, "churn-trap")

    message = refused("models", "import", "churn", "--from", "models:/churn-sklearn/1", "-p", str(project))
    assert ("models:/churn-sklearn/1 is an MLflow model of flavor(s) python_function, sklearn with pickled file(s) "
            "model.pkl, and no onnx flavor or safetensors weights") in message
    assert "never loads a pickle" in message and "mlflow.onnx.log_model" in message
    message = refused("models", "import", "churn", "--from", "models:/churn-pytorch/1", "-p", str(project))
    assert "flavor(s) python_function, pytorch with pickled file(s)" in message and "model.pth" in message
    message = refused("models", "import", "churn", "--from", "models:/churn-trap/1", "--format", "torch",
                      "--architecture", TABULAR_MLP, "-p", str(project))
    assert "flavor(s) python_function with pickled file(s) python_model.pkl" in message
    assert not marker.exists()
    assert versions(project) == []


def test_unknown_models_versions_and_uris_are_refused_clearly(project, store, tmp_path):
    store.log_onnx(module(), "churn-onnx", tmp_path)
    reg = registry(project)
    for uri, match in [("models:/nope/1", "no model named 'nope' in the MLflow registry"),
                       ("models:/churn-onnx/7", r"model 'churn-onnx' has no version 7 \(versions: 1\)"),
                       ("models:/churn-onnx@gone", r"model 'churn-onnx' has no alias 'gone' \(aliases: none\)")]:
        with pytest.raises(NotFoundError, match=match):
            reg.open_model_uri(uri)
        assert match.replace("\\", "") in refused("models", "import", "churn", "--from", uri, "-p", str(project))
    for uri, match in [("runs:/abc/model", "is not an MLflow model URI"),
                       ("models:/churn-onnx/Production", "stages are not supported"),
                       ("models:/churn-onnx/1/model.onnx", "a path inside a version is not supported"),
                       ("models:/a..b/1", "contains '..'"),
                       ("models:/m-0123abcd", "names a logged model")]:
        with pytest.raises(LoomError, match=match):
            reg.open_model_uri(uri)
    assert "give no --file" in refused("models", "import", "churn", "--from", "models:/churn-onnx/1", "--file",
                                       str(project / "loom.yaml"), "-p", str(project))
    assert "--architecture and --options go with safetensors weights" in refused(
        "models", "import", "churn", "--from", "models:/churn-onnx/1", "--architecture", TABULAR_MLP, "-p",
        str(project))
    assert versions(project) == []

    loom("models", "import", "churn", "--from", "models:/churn-onnx/1", "-p", str(project))
    assert "registered through Loom, so it is a Loom version already" in refused(
        "models", "import", "copy", "--from", "models:/churn/1", "-p", str(project))

    local = make_project(tmp_path / "local", port=8000, generate=False)
    assert "the 'local' registry cannot read models by URI" in refused(
        "models", "import", "churn", "--from", "models:/churn-onnx/1", "-p", str(local))


def test_an_import_that_fails_its_checks_registers_nothing(project, store, tmp_path):
    store.log_onnx(module(seed=3), "churn-onnx", tmp_path)
    loom("models", "import", "churn", "--from", "models:/churn-onnx/1", "-p", str(project))
    store.log_onnx(module(width=7), "narrow", tmp_path, width=7)
    message = refused("models", "import", "churn", "--from", "models:/narrow/1", "-p", str(project))
    assert "input 0 'x' is FP32 [N, 7]" in message and "FP32 [N, 15]" in message
    store.log_onnx(module(out=3), "three", tmp_path)
    assert "answers 3 values per row but the signature names 2 classes" in refused(
        "models", "import", "churn", "--from", "models:/three/1", "-p", str(project))
    assert versions(project) == [1]
    assert registry(project).get_version("churn", "production").version == 1  # the alias did not move
