"""``loom models import``: a model Loom did not train (an ONNX file exported from torch, torch weights with their
architecture) registered with a signature, lineage and an optional drift reference; refused with a clear error
and nothing written when it is not what it claims; then served on every route like a trained version (slow)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from conftest import edit_config, make_project
from runtime import get_plugins, load_project
from runtime.cli import cli
from runtime.formats import LoadLimits, load_model
from runtime.model import Preprocessor, TabularMLP
from runtime.serving import shutdown
from serving_models import FEATURES, data, oip_inputs, records, registry

#: The quickstart's inputs as the passthrough encoding lays them out: 5 numbers, then 3 + 3 + 4 one-hot columns.
WIDTH = 15


def loom(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def refused(*args: str) -> str:
    result = loom(*args, ok=False)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # messages on one line, as a terminal this wide shows them


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "qs", port=8000)


def module(seed: int = 0, width: int = WIDTH, out: int = 2) -> TabularMLP:
    torch.manual_seed(seed)
    return TabularMLP(in_features=width, out_features=out, hidden=[16], dropout=0.0).eval()


def export_onnx(net: torch.nn.Module, path: Path, width: int = WIDTH) -> Path:
    torch.onnx.export(net, (torch.zeros(2, width),), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def encoded(frame: pd.DataFrame, project: Path) -> np.ndarray:
    """The quickstart rows as an imported model receives them (the passthrough encoding), independently built."""
    cols = load_project(project).config.data.columns
    numeric = [c for c in FEATURES if cols[c].type in ("int", "float", "bool")]
    parts = [frame[numeric].astype("float64").to_numpy()]
    for c in FEATURES:
        if cols[c].type == "category":
            parts.append((frame[c].to_numpy()[:, None] == np.array(cols[c].categories)[None, :]).astype(float))
    return np.concatenate(parts, axis=1).astype(np.float32)


def torch_proba(net: torch.nn.Module, frame: pd.DataFrame, project: Path) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(net(torch.from_numpy(encoded(frame, project))), dim=-1).numpy()


def versions(project: Path) -> list[int]:
    reg = registry(project)
    return [v.version for v in reg.list_versions("churn")] if "churn" in reg.list_models() else []


def test_an_onnx_export_imports_with_lineage_and_answers_as_torch(project, tmp_path):
    net = module()
    path = export_onnx(net, tmp_path / "churn.onnx")
    data(project).head(800).to_parquet(tmp_path / "ref.parquet")
    out = loom("models", "import", "churn", "--format", "onnx", "--file", str(path), "--reference",
               str(tmp_path / "ref.parquet"), "-p", str(project), "--json").output
    version = json.loads(out)
    assert version["aliases"] == ["production"]  # registry.alias, as for a trained version
    imported = version["lineage"]["imported"]
    assert imported["format"] == "onnx" and imported["signature"] == "loom.yaml"
    assert imported["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert imported["reference"] == {"file": "ref.parquet", "rows": 800}
    assert set(version["artifacts"]) == {"model.json", "model.onnx", "reference.parquet"}
    reg = registry(project)
    assert reg.read_artifact("churn", 1, "model.onnx") == path.read_bytes()
    loaded = load_model(reg, "churn", "production", plugins=get_plugins(), limits=LoadLimits.of(load_project(project)))
    rows = data(project).tail(300)
    labels, proba = loaded.predict(rows)
    np.testing.assert_allclose(proba, torch_proba(net, rows, project), atol=1e-5)
    assert labels == [bool(i) for i in proba.argmax(1)]  # classes from the bool label: [False, True]
    reference = pd.read_parquet(io.BytesIO(reg.read_artifact("churn", 1, "reference.parquet")))
    assert len(reference) == 800 and set(reference.columns) == {*FEATURES, "prediction"}
    expected = torch_proba(net, data(project).head(800), project).argmax(1).astype(bool)
    assert sorted(reference["prediction"]) == sorted(expected)  # the model's own predictions on the rows
    shown = loom("models", "show", "churn", "-p", str(project)).output
    assert "onnx churn.onnx" in shown


def test_an_imported_onnx_model_scores_in_batch_as_torch(project, tmp_path):
    """Batch scoring (runtime.batch) loads a version through its format too: an ONNX version's scored rows equal
    the torch module's answers."""
    from runtime.batch import PROBABILITIES, BatchScorer, _load_network

    net = module(seed=3)
    loom("models", "import", "churn", "--format", "onnx", "--file", str(export_onnx(net, tmp_path / "m.onnx")),
         "-p", str(project))
    scoring = _load_network(load_project(project), registry(project), "churn", 1)
    assert scoring.spec.format == "onnx"
    rows = data(project).head(500).reset_index(drop=True)
    table = BatchScorer(scoring, 1, {"customer_id": None})(rows.assign(_loom_row=np.arange(len(rows))))
    good = np.array([p is None for p in table.column("_loom_problems").to_pylist()])
    assert good.sum() > 400  # the quickstart's data holds a few invalid rows on purpose: those are set aside
    scored = np.stack([p for p, ok in zip(table.column(PROBABILITIES).to_pylist(), good) if ok])
    np.testing.assert_allclose(scored, torch_proba(net, rows[good], project), atol=1e-5)


def test_a_torch_import_answers_as_the_module(project, tmp_path):
    net = module(seed=4)
    save_file(net.state_dict(), tmp_path / "w.safetensors")
    out = loom("models", "import", "churn", "--format", "torch", "--weights", str(tmp_path / "w.safetensors"),
               "--architecture", "runtime.model:TabularMLP", "--options", '{"hidden": [16], "dropout": 0}',
               "-p", str(project)).output
    assert "imported churn version 1 (torch" in out
    loaded = load_model(registry(project), "churn", 1, plugins=get_plugins(),
                        limits=LoadLimits.of(load_project(project)))
    rows = data(project).head(100)
    np.testing.assert_allclose(loaded.outputs(rows), torch_proba(net, rows, project), atol=1e-6)
    assert loaded.spec.raw["kwargs"] == {"hidden": [16], "dropout": 0, "in_features": WIDTH, "out_features": 2}


def test_a_file_not_in_the_declared_format_writes_nothing(project, tmp_path):
    save_file(module().state_dict(), tmp_path / "w.safetensors")
    onnx_file = export_onnx(module(), tmp_path / "m.onnx")
    message = refused("models", "import", "churn", "--format", "onnx", "--file", str(tmp_path / "w.safetensors"),
                      "-p", str(project))
    assert "w.safetensors is not in the 'onnx' format" in message
    message = refused("models", "import", "churn", "--format", "torch", "--weights", str(onnx_file),
                      "--architecture", "runtime.model:TabularMLP", "-p", str(project))
    assert "not a safetensors file" in message
    assert versions(project) == []


def test_an_onnx_model_whose_inputs_do_not_match_writes_nothing(project, tmp_path):
    loom("models", "import", "churn", "--format", "onnx", "--file", str(export_onnx(module(), tmp_path / "ok.onnx")),
         "-p", str(project))
    narrow = export_onnx(module(width=7), tmp_path / "narrow.onnx", width=7)
    message = refused("models", "import", "churn", "--format", "onnx", "--file", str(narrow), "-p", str(project))
    assert "input 0 'x' is FP32 [N, 7]" in message and "FP32 [N, 15]" in message
    three = export_onnx(module(out=3), tmp_path / "three.onnx")
    message = refused("models", "import", "churn", "--format", "onnx", "--file", str(three), "-p", str(project))
    assert "answers 3 values per row but the signature names 2 classes" in message
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(module(), (torch.zeros(4, WIDTH),), str(fixed), input_names=["x"], dynamo=False)
    message = refused("models", "import", "churn", "--format", "onnx", "--file", str(fixed), "-p", str(project))
    assert "fixed batch size of 4" in message and "dynamic_axes" in message
    assert versions(project) == [1]  # only the good one; the registry is as it was


def test_pickles_are_refused_by_name_and_by_content(project, tmp_path):
    torch.save(module().state_dict(), tmp_path / "model.pt")
    (tmp_path / "sneaky.safetensors").write_bytes(pickle.dumps({"w": [1.0]}))
    for path in ("model.pt", "sneaky.safetensors"):
        message = refused("models", "import", "churn", "--format", "torch", "--weights", str(tmp_path / path),
                          "--architecture", "runtime.model:TabularMLP", "-p", str(project))
        assert "refuses pickled models" in message
    assert versions(project) == []


def test_signatures_from_the_graph_and_from_a_file(project, tmp_path):
    net = module(seed=2)
    path = export_onnx(net, tmp_path / "m.onnx")
    out = json.loads(loom("models", "import", "churn", "--format", "onnx", "--file", str(path), "--signature",
                          "graph", "-p", str(project), "--json").output)
    spec = json.loads(registry(project).read_artifact("churn", out["version"], "model.json"))
    assert spec["inputs"] == {"x": {"type": "tensor", "nullable": True, "dtype": "FP32", "shape": [WIDTH]}}
    assert out["lineage"]["imported"]["signature"] == "model graph"
    x = np.random.default_rng(0).normal(size=(9, WIDTH)).astype(np.float32)
    loaded = load_model(registry(project), "churn", out["version"], plugins=get_plugins())
    with torch.inference_mode():
        expected = torch.softmax(net(torch.from_numpy(x)), -1).numpy()
    np.testing.assert_allclose(loaded.outputs({"x": x}), expected, atol=1e-5)

    regression = TabularMLP(in_features=3, out_features=1, hidden=[4], dropout=0.0).eval()
    sig = tmp_path / "inputs.yaml"
    sig.write_text(yaml.safe_dump({"inputs": {"a": {"type": "float"}, "b": {"type": "int"}, "c": {"type": "bool"}},
                                   "label": "price", "task": "regression"}))
    out = json.loads(loom("models", "import", "prices", "--format", "onnx", "--file",
                          str(export_onnx(regression, tmp_path / "r.onnx", width=3)), "--signature", str(sig),
                          "-p", str(project), "--json").output)
    loaded = load_model(registry(project), "prices", out["version"], plugins=get_plugins())
    values, _ = loaded.predict({"a": [0.5, 1.0], "b": [1, 2], "c": [True, False]})
    with torch.inference_mode():
        expected = regression(torch.tensor([[0.5, 1, 1], [1, 2, 0]])).reshape(-1).tolist()
    np.testing.assert_allclose(values, expected, atol=1e-5)  # the value as the model answers it: no scaling
    sig.write_text(yaml.safe_dump({"inputs": {"a": {"type": "string"}}}))
    message = refused("models", "import", "prices", "--format", "onnx", "--file", str(tmp_path / "r.onnx"),
                      "--signature", str(sig), "-p", str(project))
    assert "input 'a' (string) cannot be encoded for an imported model" in message


def test_serving_limits_apply_to_imported_torch_models(project, tmp_path):
    save_file(module().state_dict(), tmp_path / "w.safetensors")
    args = ["models", "import", "churn", "--format", "torch", "--weights", str(tmp_path / "w.safetensors"),
            "--architecture", "runtime.model:TabularMLP", "--options", '{"hidden": [16]}', "-p", str(project)]
    edit_config(project, "serving", allowed_architectures=["mymodels:Net"])
    assert "serving.allowed_architectures" in refused(*args)
    edit_config(project, "serving", allowed_architectures=None, max_parameters=100)
    assert "serving.max_parameters" in refused(*args)
    assert versions(project) == []


def test_usage_errors_name_the_options(project, tmp_path):
    onnx_file = export_onnx(module(), tmp_path / "m.onnx")
    assert "not --file" in refused("models", "import", "churn", "--format", "torch", "--file", str(onnx_file),
                                   "-p", str(project))
    assert "--architecture" in refused("models", "import", "churn", "--format", "torch", "--weights",
                                       str(onnx_file), "-p", str(project))
    assert "go with --format torch" in refused("models", "import", "churn", "--format", "onnx", "--file",
                                               str(onnx_file), "--architecture", "x:Y", "-p", str(project))
    assert "available: onnx, torch" in refused("models", "import", "churn", "--format", "tflite", "--file",
                                               str(onnx_file), "-p", str(project))
    assert "must be a JSON object" in refused("models", "import", "churn", "--format", "torch", "--weights",
                                              str(onnx_file), "--architecture", "runtime.model:TabularMLP",
                                              "--options", "[1]", "-p", str(project))


# -- served -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(ray_cluster, serve_port, tmp_path_factory):
    """The quickstart with two imported versions, v1 ONNX (production) and v2 torch, deployed at /imported."""
    tmp = tmp_path_factory.mktemp("imported")
    root = make_project(tmp / "qs", port=serve_port, serving={"route_prefix": "/imported"},
                        monitoring={"window": 200})
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["name"] = "imported-test"
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    onnx_net, torch_net = module(seed=11), module(seed=12)
    data(root).head(500).to_parquet(tmp / "ref.parquet")
    loom("models", "import", "churn", "--format", "onnx", "--file", str(export_onnx(onnx_net, tmp / "m.onnx")),
         "--reference", str(tmp / "ref.parquet"), "-p", str(root))
    save_file(torch_net.state_dict(), tmp / "w.safetensors")
    loom("models", "import", "churn", "--format", "torch", "--weights", str(tmp / "w.safetensors"),
         "--architecture", "runtime.model:TabularMLP", "--options", '{"hidden": [16], "dropout": 0}',
         "--alias", "candidate", "-p", str(root))
    url = loom("deploy", str(root), "--version", "production", "--detach").output.strip().splitlines()[-1]
    yield {"root": root, "url": url, "onnx": onnx_net, "torch": torch_net}
    shutdown(load_project(root))


@pytest.mark.slow
def test_an_imported_onnx_model_answers_on_every_route(served):
    root, url = served["root"], served["url"]
    rows = data(root).tail(40).reset_index(drop=True)
    expected = torch_proba(served["onnx"], rows, root)
    with httpx.Client(base_url=url, timeout=60) as c:
        infer = c.post("/v2/models/churn/infer", json={"inputs": oip_inputs(rows)})
        assert infer.status_code == 200, infer.text
        body = infer.json()
        assert body["model_version"] == "1"
        proba = {o["name"]: o for o in body["outputs"]}["probabilities"]
        np.testing.assert_allclose(np.array(proba["data"]).reshape(len(rows), 2), expected, atol=1e-5)
        inv = c.post("/invocations", json={"dataframe_records": records(rows)})
        assert inv.status_code == 200, inv.text
        assert inv.json()["predictions"] == [bool(i) for i in expected.argmax(1)]
        pred = c.post("/predict/churn", json=records(rows.head(5)))
        assert pred.status_code == 200 and pred.json()["version"] == 1
        bad = c.post("/predict/churn", json=[{**records(rows.head(1))[0], "contract": 3}])
        assert bad.status_code in (400, 422) and "error" in bad.json()
        for _ in range(5):
            assert c.post("/predict/churn", json=records(rows)).status_code == 200
        drift = c.get("/monitoring/churn/drift")
        assert drift.status_code == 200, drift.text
        assert set(FEATURES) <= set(drift.json()["features"])  # checked against the imported reference
        assert drift.json()["prediction_drift"].get("method")


@pytest.mark.slow
def test_an_imported_torch_model_serves_as_the_canary(served):
    root, url = served["root"], served["url"]
    loom("deploy", str(root), "--version", "candidate", "--canary", "50")
    rows = data(root).tail(10).reset_index(drop=True)
    with httpx.Client(base_url=url, timeout=60) as c:
        seen = set()
        for _ in range(40):
            r = c.post("/predict/churn", json=records(rows))
            assert r.status_code == 200, r.text
            seen.add(r.json()["version"])
        assert seen == {1, 2}
        infer = c.post("/v2/models/churn/versions/2/infer", json={"inputs": oip_inputs(rows)})
        assert infer.status_code == 200, infer.text
        proba = {o["name"]: o for o in infer.json()["outputs"]}["probabilities"]
        np.testing.assert_allclose(np.array(proba["data"]).reshape(len(rows), 2),
                                   torch_proba(served["torch"], rows, root), atol=1e-5)
