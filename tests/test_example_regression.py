"""`examples/regression` end to end, as `loom up` runs it: data made by `data.generate`, trained on Ray Train,
registered, served on Ray Serve, queried through tritonclient (binary tensors, its default), MLflow
`/invocations` and `/predict`, given feedback, and answering a drift check. (One module per example: each
serves at the session cluster's root prefix, released when the module ends.)"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest

from example_projects import copy_example as _copy
from example_projects import triton as _triton
from runtime import Pipeline
from runtime.model import ModelBundle, Predictor
from runtime.serving import shutdown
from runtime.tasks import regression_metrics

pytestmark = pytest.mark.slow

HOUSE_FEATURES = ["size_m2", "rooms", "age_years", "neighbourhood", "garage", "distance_km"]
OIP_TYPES = {"int": ("INT64", np.int64), "float": ("FP64", np.float64), "bool": ("BOOL", np.bool_),
             "category": ("BYTES", np.object_)}


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
    rid = pred.headers["x-loom-request-id"]  # labels name the server's id of the request
    ok = httpx.post(f"{url}/feedback/prices", json={"labels": [{"id": rid, "label": list(rows["price_k"][:5])}]},
                    timeout=30)
    assert ok.status_code == 200 and ok.json()["accepted"] == 5
    bad = httpx.post(f"{url}/feedback/prices", json={"labels": [{"id": rid, "label": "expensive"}]},
                     timeout=30)
    assert bad.status_code == 422 and "not a finite number" in bad.json()["error"]
    drift = httpx.get(f"{url}/monitoring/prices/drift", timeout=120)
    assert drift.status_code == 200, drift.text
    report = drift.json()
    assert set(HOUSE_FEATURES) <= set(report["features"])
    assert report["prediction_drift"]["method"]  # the predicted value, compared as a number
    assert report["performance"]["rows"] >= 1 and "rmse" in report["performance"]


