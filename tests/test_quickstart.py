"""The whole life cycle on embedded Ray, end to end: data -> validation -> features -> Ray Train -> registry ->
Ray Serve, then real HTTP clients against the served model."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest

import runtime
from runtime import Pipeline, get_plugins, hookimpl
from runtime.serving import shutdown

pytestmark = pytest.mark.slow


class Recorder:
    """A plugin recording every life-cycle hook it sees."""

    def __init__(self):
        self.events: list[tuple[str, object]] = []

    @hookimpl
    def loom_before_training(self, train_rows, params):
        self.events.append(("before_training", train_rows))

    @hookimpl
    def loom_after_training(self, metrics, history):
        self.events.append(("after_training", len(history)))

    @hookimpl
    def loom_model_registered(self, version):
        self.events.append(("registered", version.version))

    @hookimpl
    def loom_model_deployed(self, model, version, url):
        self.events.append(("deployed", (model, version, url)))


@pytest.fixture(scope="module")
def served(ray_cluster, quickstart_dir):
    recorder = Recorder()
    pipe = Pipeline(quickstart_dir, plugins=get_plugins([recorder]))
    result = pipe.up()
    client = httpx.Client(base_url=result.url, timeout=30)
    data = pd.read_csv(quickstart_dir / "data" / "customers.csv")
    yield {"pipe": pipe, "result": result, "client": client, "recorder": recorder, "data": data}
    client.close()
    shutdown(pipe.project)  # later modules deploy their own apps on the shared cluster


FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "paperless_billing", "contract",
            "internet_service", "payment_method"]


def records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df[FEATURES].to_json(orient="records"))


def oip_inputs(df: pd.DataFrame) -> list[dict]:
    types = {"tenure_months": "INT64", "support_calls": "INT64", "monthly_charges": "FP64",
             "total_charges": "FP64", "paperless_billing": "BOOL"}
    out = []
    for c in FEATURES:
        values = json.loads(df[c].to_json(orient="values"))
        out.append({"name": c, "datatype": types.get(c, "BYTES"), "shape": [len(df)], "data": values})
    return out


def test_life_cycle_ran_every_stage_and_hook(served):
    result, recorder = served["result"], served["recorder"]
    assert {"ingest", "validate", "features", "train", "register", "deploy"} <= set(result.timings)
    kinds = [e[0] for e in recorder.events]
    assert kinds == ["before_training", "after_training", "registered", "deployed"]
    assert recorder.events[-1][1] == ("churn", result.version.version, result.url)


def test_registered_version_has_lineage_and_safetensors(served):
    pipe, result = served["pipe"], served["result"]
    mv = pipe.registry.get_version("churn", "production")
    assert mv.version == result.version.version
    assert mv.lineage["data"]["fingerprint"].startswith("sha256:")
    assert mv.lineage["features"]["view"] == "customer_features"
    assert len(mv.lineage["training"]["history"]) == 4
    assert set(mv.artifacts) >= {"model.safetensors", "model.json", "reference.parquet"}
    assert not any(a.endswith((".pkl", ".pt", ".pth")) for a in mv.artifacts)
    assert mv.metrics["val_auc"] > 0.7, mv.metrics  # the generated data is learnable


def test_features_are_online(served):
    store = served["pipe"].feature_store
    data = served["data"]
    latest = data.sort_values("event_time").groupby("customer_id").tail(1).set_index("customer_id")
    keys = latest.index[:5].tolist()
    online = store.get_online_features("customer_features", keys, ["tenure_months", "contract"])
    assert online["tenure_months"].tolist() == latest.loc[keys, "tenure_months"].tolist()
    assert online["contract"].tolist() == latest.loc[keys, "contract"].tolist()


def test_health_and_metadata(served):
    c = served["client"]
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v2/health/ready").json() == {"ready": True}
    meta = c.get("/v2/models/churn").json()
    assert meta["name"] == "churn" and meta["versions"] == [str(served["result"].version.version)]
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert set(inputs) == set(FEATURES)
    assert inputs["contract"]["datatype"] == "BYTES" and inputs["tenure_months"]["datatype"] == "INT64"
    assert all(i["shape"] == [-1] for i in meta["inputs"])
    assert {o["name"] for o in meta["outputs"]} == {"predicted", "probabilities"}
    assert c.get("/v2/models/churn/ready").json()["ready"] is True


def test_oip_infer_json(served):
    c, df = served["client"], served["data"].head(7)
    r = c.post("/v2/models/churn/infer", json={"id": "req-1", "inputs": oip_inputs(df)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and body["model_name"] == "churn"
    outs = {o["name"]: o for o in body["outputs"]}
    assert outs["predicted"]["shape"] == [7] and outs["predicted"]["datatype"] == "BOOL"
    proba = np.array(outs["probabilities"]["data"]).reshape(outs["probabilities"]["shape"])
    assert proba.shape == (7, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert outs["predicted"]["data"] == (proba[:, 1] > proba[:, 0]).tolist()
    only = c.post("/v2/models/churn/infer", json={"inputs": oip_inputs(df), "outputs": [{"name": "predicted"}]})
    assert [o["name"] for o in only.json()["outputs"]] == ["predicted"]


def test_predict_records_matches_oip(served):
    c, df = served["client"], served["data"].sample(20, random_state=1)
    r = c.post("/predict/churn", json=records(df))
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == 20 and len(body["probabilities"]) == 20
    oip = c.post("/v2/models/churn/infer", json={"inputs": oip_inputs(df)}).json()
    assert body["predictions"] == oip["outputs"][0]["data"]
    wrapped = c.post("/predict/churn", json={"records": records(df)}).json()
    assert wrapped["predictions"] == body["predictions"]


def test_tritonclient_json(served):
    """A real Open Inference Protocol client (tritonclient, JSON tensors)."""
    import tritonclient.http as tc

    df = served["data"].head(5)
    url = served["result"].url.removeprefix("http://")
    client = tc.InferenceServerClient(url=url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("churn")
    inputs = []
    for spec in oip_inputs(df):
        arr = np.array(spec["data"], dtype=object if spec["datatype"] == "BYTES" else None)
        if spec["datatype"] == "INT64":
            arr = arr.astype(np.int64)
        inp = tc.InferInput(spec["name"], [len(df)], spec["datatype"])
        inp.set_data_from_numpy(arr, binary_data=False)
        inputs.append(inp)
    outputs = [tc.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer("churn", inputs, outputs=outputs)
    proba = result.as_numpy("probabilities")
    assert proba.shape == (5, 2)


def test_tritonclient_binary_defaults_through_serve(served):
    """tritonclient's defaults (binary tensors both ways) through Ray Serve's ingress agree with /predict."""
    import tritonclient.http as tc

    df = served["data"].head(6)
    client = tc.InferenceServerClient(url=served["result"].url.removeprefix("http://"))
    inputs = []
    for spec in oip_inputs(df):
        if spec["datatype"] == "BYTES":
            arr = np.array([v.encode() for v in spec["data"]], dtype=object)
        else:
            arr = np.array(spec["data"], dtype={"INT64": np.int64, "FP64": np.float64, "BOOL": np.bool_}[
                spec["datatype"]])
        inp = tc.InferInput(spec["name"], [len(df)], spec["datatype"])
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    result = client.infer("churn", inputs)
    expected = served["client"].post("/predict/churn", json=records(df)).json()
    assert result.as_numpy("predicted").tolist() == expected["predictions"]
    assert np.allclose(result.as_numpy("probabilities").reshape(-1, 2), expected["probabilities"], atol=1e-5)


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "malformed JSON"),
    (b"", 400, "empty request body"),
    (b'{"inputs": []}', 400, "non-empty list"),
    (b'{"inputs": [{"name": "nope", "shape": [1], "datatype": "FP64", "data": [1]}]}', 400, "unknown input 'nope'"),
])
def test_bad_oip_requests_get_json_4xx(served, body, status, fragment):
    r = served["client"].post("/v2/models/churn/infer", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert fragment in r.json()["error"]


def test_bad_values_are_named(served):
    c, df = served["client"], served["data"].head(2)
    inputs = oip_inputs(df)
    wrong_type = [dict(i, datatype="FP32") if i["name"] == "contract" else i for i in inputs]
    r = c.post("/v2/models/churn/infer", json={"inputs": wrong_type})
    assert r.status_code == 400 and "contract" in r.json()["error"]
    missing = [i for i in inputs if i["name"] != "tenure_months"]
    r = c.post("/v2/models/churn/infer", json={"inputs": missing})
    assert r.status_code == 400 and "tenure_months" in r.json()["error"]
    bad_shape = [dict(i, shape=[3]) if i["name"] == "support_calls" else i for i in inputs]
    r = c.post("/v2/models/churn/infer", json={"inputs": bad_shape})
    assert r.status_code == 400 and "support_calls" in r.json()["error"]
    recs = records(df)
    recs[1]["contract"] = "lifetime"
    r = c.post("/predict/churn", json=recs)
    assert r.status_code == 400 and "unknown category 'lifetime'" in r.json()["error"]
    for bad in (float("nan"), float("inf")):
        recs = records(df)
        recs[0]["monthly_charges"] = bad  # json.dumps writes NaN / Infinity, which Python's parser accepts
        r = c.post("/predict/churn", content=json.dumps(recs), headers={"content-type": "application/json"})
        assert r.status_code == 400 and "monthly_charges" in r.json()["error"]
    r = c.post("/predict/churn", json=[])
    assert r.status_code == 400 and "empty" in r.json()["error"]


def test_unknown_model_and_version(served):
    c = served["client"]
    r = c.post("/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404 and "'nope'" in r.json()["error"]
    r = c.get("/v2/models/churn/versions/999")
    assert r.status_code == 404 and "999" in r.json()["error"]
    r = c.get("/no/such/route")
    assert r.status_code == 404 and "error" in r.json()


def test_body_limit(served):
    big = b"[" + b" " * (11 * 1024 * 1024) + b"]"
    r = served["client"].post("/predict/churn", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_metrics_count_requests(served):
    c, df = served["client"], served["data"].head(3)
    c.post("/predict/churn", json=records(df))
    text = c.get("/metrics").text
    assert 'loom_requests_total{code="200",model="churn",protocol="predict"' in text
    assert "loom_request_seconds_bucket" in text and "loom_predicted_rows_total" in text


def test_drift_monitor_sees_served_traffic(served):
    """The Evidently plugin compares captured traffic with the training reference."""
    c, df = served["client"], served["data"]
    for start in range(0, 600, 100):
        assert c.post("/predict/churn", json=records(df.iloc[start:start + 100])).status_code == 200
    calm = c.get("/monitoring/churn/drift", timeout=120).json()
    assert calm["monitor"] == "evidently" and calm["n_current"] >= 500
    assert set(calm["features"]) == set(FEATURES)
    shifted = df.iloc[:500].copy()
    shifted["monthly_charges"] = shifted["monthly_charges"] * 3 + 50
    shifted["support_calls"] = shifted["support_calls"] + 8
    shifted["contract"] = "month-to-month"
    assert c.post("/predict/churn", json=records(shifted)).status_code == 200
    hot = c.get("/monitoring/churn/drift", timeout=120).json()
    assert hot["features"]["monthly_charges"]["drifted"] and hot["features"]["support_calls"]["drifted"]
    assert hot["share_drifted"] > calm["share_drifted"]
