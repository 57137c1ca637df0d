"""`examples/regression` and `examples/images` end to end, as `loom up` runs them: data made by `data.generate`,
trained on Ray Train, registered, served on Ray Serve, queried through tritonclient (binary tensors, its default),
MLflow `/invocations` and `/predict`, given feedback, and answering a drift check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from runtime import Pipeline
from runtime.model import ModelBundle, Predictor
from runtime.serving import shutdown
from runtime.tasks import regression_metrics

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HOUSE_FEATURES = ["size_m2", "rooms", "age_years", "neighbourhood", "garage", "distance_km"]
OIP_TYPES = {"int": ("INT64", np.int64), "float": ("FP64", np.float64), "bool": ("BOOL", np.bool_),
             "category": ("BYTES", np.object_)}


def _copy(name: str, dest: Path, port: int, **overrides) -> Path:
    root = dest / name
    shutil.copytree(EXAMPLES / name, root, ignore=shutil.ignore_patterns("data", ".loom", "__pycache__"))
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["serving"]["port"] = port
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def _triton(url: str):
    import tritonclient.http as tc

    return tc, tc.InferenceServerClient(url=url.removeprefix("http://"))


# -- regression ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prices(ray_cluster, serve_port, tmp_path_factory):
    root = _copy("regression", tmp_path_factory.mktemp("regression"), serve_port)
    pipe = Pipeline(root)
    result = pipe.up()
    data = pd.read_csv(root / "data" / "houses.csv")
    yield {"pipe": pipe, "result": result, "data": data, "url": result.url}
    shutdown(pipe.project)


def test_regression_trains_with_regression_metrics(prices):
    version = prices["result"].version
    assert version.params["task"] == "regression"
    assert {"val_rmse", "val_mae", "val_r2"} <= set(version.metrics)
    assert version.metrics["val_r2"] > 0.7
    spec = json.loads(prices["pipe"].registry.read_artifact("prices", version.version, "model.json"))
    assert spec["task"]["task"] == "regression" and spec["task"]["std"] > 1  # the scaling travels with the bundle


def test_regression_serves_values_to_tritonclient(prices):
    tc, triton = _triton(prices["url"])
    latest = prices["data"].sort_values("sold_at").tail(500)
    meta = triton.get_model_metadata("prices")
    assert meta["outputs"] == [{"name": "predicted", "datatype": "FP64", "shape": [-1]}]
    columns = prices["pipe"].project.config.data.columns
    inputs = []
    for c in HOUSE_FEATURES:
        datatype, dtype = OIP_TYPES[columns[c].type]
        values = latest[c].to_numpy()
        arr = np.array([str(v).encode() for v in values], dtype=object) if dtype is np.object_ else values.astype(dtype)
        inp = tc.InferInput(c, [len(latest)], datatype)
        inp.set_data_from_numpy(arr, binary_data=True)
        inputs.append(inp)
    served = triton.infer("prices", inputs).as_numpy("predicted")
    assert served.dtype == np.float64 and served.shape == (500,)
    # the values are the model's, restored to thousands: the same as the bundle predicts locally
    bundle = ModelBundle.from_registry(prices["pipe"].registry, "prices", prices["result"].version.version)
    local, _ = Predictor(bundle).predict({c: latest[c].to_numpy() for c in HOUSE_FEATURES})
    np.testing.assert_allclose(served, local, rtol=1e-4, atol=1e-3)
    r2 = regression_metrics(latest["price_k"].to_numpy(), served)["r2"]
    print(f"served R² on the latest 500 sales: {r2:.3f}")
    assert r2 > 0.8


def test_regression_invocations_predict_feedback_and_drift(prices):
    url = prices["url"]
    rows = prices["data"].tail(40)
    records = json.loads(rows[HOUSE_FEATURES].to_json(orient="records"))
    inv = httpx.post(f"{url}/invocations", json={"dataframe_records": records}, timeout=30)
    assert inv.status_code == 200, inv.text
    assert len(inv.json()["predictions"]) == 40 and all(isinstance(v, float) for v in inv.json()["predictions"])
    pred = httpx.post(f"{url}/predict/prices", json=records[:5], headers={"X-Request-ID": "houses-1"}, timeout=30)
    assert pred.status_code == 200 and set(pred.json()) == {"model", "version", "predictions"}
    ok = httpx.post(f"{url}/feedback/prices", json={"labels": [{"id": "houses-1", "label": list(rows["price_k"][:5])}]},
                    timeout=30)
    assert ok.status_code == 200 and ok.json()["accepted"] == 5
    bad = httpx.post(f"{url}/feedback/prices", json={"labels": [{"id": "houses-1", "label": "expensive"}]},
                     timeout=30)
    assert bad.status_code == 422 and "not a finite number" in bad.json()["error"]
    drift = httpx.get(f"{url}/monitoring/prices/drift", timeout=120)
    assert drift.status_code == 200, drift.text
    report = drift.json()
    assert set(HOUSE_FEATURES) <= set(report["features"])
    assert report["prediction_drift"]["method"]  # the predicted value, compared as a number
    assert report["performance"]["rows"] >= 1 and "rmse" in report["performance"]


# -- images ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(ray_cluster, serve_port, tmp_path_factory):
    root = _copy("images", tmp_path_factory.mktemp("images"), serve_port, training={"epochs": 4})
    pipe = Pipeline(root)
    result = pipe.up()
    yield {"pipe": pipe, "result": result, "url": result.url, "root": root}
    shutdown(pipe.project)


def _pictures(root: Path, n: int, drift: float = 0.0):
    import sys

    sys.path.insert(0, str(root))
    try:
        from generate_data import generate
    finally:
        sys.path.remove(str(root))
    frame = generate(n, seed=99, drift=drift)
    return np.stack(frame["image"].to_list()).reshape(n, 1, 28, 28).astype(np.float32), frame["shape"].tolist()


def test_images_serve_binary_tensors_to_tritonclient(shapes):
    tc, triton = _triton(shapes["url"])
    meta = triton.get_model_metadata("shapes")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    images, labels = _pictures(shapes["root"], 200)
    inp = tc.InferInput("image", list(images.shape), "FP32")
    inp.set_data_from_numpy(images, binary_data=True)
    result = triton.infer("shapes", [inp])
    predicted = [p.decode() if isinstance(p, bytes) else p for p in result.as_numpy("predicted").tolist()]
    accuracy = float(np.mean([p == y for p, y in zip(predicted, labels)]))
    print(f"served accuracy on 200 new pictures: {accuracy:.3f}")
    assert accuracy > 0.8
    assert result.as_numpy("probabilities").reshape(200, 4).sum(axis=1) == pytest.approx(np.ones(200), abs=1e-4)
    # JSON, nested, one picture: the same answer
    one = httpx.post(f"{shapes['url']}/v2/models/shapes/infer", timeout=30, json={"inputs": [
        {"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": images[:1].tolist()}]})
    assert one.status_code == 200, one.text
    assert one.json()["outputs"][0]["data"] == predicted[:1]


def test_images_reject_a_wrong_shape_with_a_clear_400(shapes):
    bad = httpx.post(f"{shapes['url']}/v2/models/shapes/infer", timeout=30, json={"inputs": [
        {"name": "image", "datatype": "FP32", "shape": [1, 28, 28], "data": [0.0] * 784}]})
    assert bad.status_code == 400
    assert bad.json() == {"error": "input 'image': shape [1, 28, 28] does not match [N, 1, 28, 28]"}


def test_images_answer_a_drift_check_on_summary_statistics(shapes):
    tc, triton = _triton(shapes["url"])
    images, _ = _pictures(shapes["root"], 150, drift=2.0)  # brighter, noisier pictures
    inp = tc.InferInput("image", list(images.shape), "FP32")
    inp.set_data_from_numpy(images, binary_data=True)
    triton.infer("shapes", [inp])
    drift = httpx.get(f"{shapes['url']}/monitoring/shapes/drift", timeout=120)
    assert drift.status_code == 200, drift.text
    report = drift.json()
    assert set(report["features"]) == {"image.mean", "image.std", "image.min", "image.max"}
    assert report["features"]["image.mean"]["drifted"] and report["drifted"]
