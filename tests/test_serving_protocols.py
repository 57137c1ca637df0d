"""The served protocols with real clients over real HTTP: the Loom app on uvicorn in a thread, a real local
registry holding two trained versions and a real online feature store. No Ray here (the Serve path is covered by
tests/test_serving_rollout.py and tests/test_quickstart.py), so these run in seconds."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from runtime import Pipeline
from runtime.serving.app import LoomApp
from runtime.serving.protocol import check_columns
from runtime.serving.routing import RoutingTable
from runtime.serving.server import ModelServer
from serving_models import FEATURES, data, oip_inputs, records, register_version
from conftest import make_project


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """uvicorn serving an ASGI app from a background thread."""

    def __init__(self, app):
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                   lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("serving") / "qs", port=_free_port())
    register_version(root, seed=1)
    register_version(root, seed=2, alias="challenger")
    register_version(root, seed=3, name="upsell", hidden=(8,))
    pipe = Pipeline(root)
    pipe.write_features(pipe.ingest())
    return root


@pytest.fixture(scope="module")
def server(project_dir) -> ModelServer:
    server = ModelServer.from_project(str(project_dir))
    table = RoutingTable().deploy("churn", 2).deploy("churn", 1)  # v1 takes traffic, v2 on standby
    server.apply(table.with_aliases("churn", {"production": 1, "challenger": 2}))
    return server


@pytest.fixture(scope="module")
def url(server) -> str:
    with ThreadedServer(LoomApp(server)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def frame(project_dir) -> pd.DataFrame:
    return data(project_dir)


# -- Open Inference Protocol v2 with tritonclient -------------------------------------------------------------------


def _triton_inputs(df: pd.DataFrame, *, wide: bool, binary: bool):
    import tritonclient.http as tc

    types = {"tenure_months": ("INT64", np.int64) if wide else ("INT32", np.int32),
             "support_calls": ("INT64", np.int64) if wide else ("INT32", np.int32),
             "monthly_charges": ("FP64", np.float64) if wide else ("FP32", np.float32),
             "total_charges": ("FP64", np.float64) if wide else ("FP32", np.float32),
             "paperless_billing": ("BOOL", np.bool_)}
    inputs = []
    for c in FEATURES:
        datatype, dtype = types.get(c, ("BYTES", np.object_))
        values = df[c].to_numpy()
        arr = np.array([v.encode() for v in values], dtype=np.object_) if dtype is np.object_ else values.astype(dtype)
        inp = tc.InferInput(c, [len(df)], datatype)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return inputs


@pytest.mark.parametrize("wide", [True, False], ids=["INT64-FP64", "INT32-FP32"])
def test_tritonclient_defaults_use_binary_tensors(url, client, frame, wide):
    """tritonclient's defaults: binary inputs, and binary outputs since no outputs are named."""
    import tritonclient.http as tc

    df = frame.head(9)
    triton = tc.InferenceServerClient(url=url.removeprefix("http://"))
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("churn")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    meta = triton.get_model_metadata("churn")
    assert {i["name"] for i in meta["inputs"]} == set(FEATURES)
    result = triton.infer("churn", _triton_inputs(df, wide=wide, binary=True), request_id="tri-1")
    assert result.get_response()["id"] == "tri-1"
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    proba, predicted = result.as_numpy("probabilities"), result.as_numpy("predicted")
    assert proba.dtype == np.float32 and proba.reshape(-1, 2).shape == (9, 2)
    expected = client.post("/predict/churn", json=records(df)).json()
    assert predicted.tolist() == expected["predictions"]
    assert np.allclose(proba.reshape(-1, 2), expected["probabilities"], atol=1e-5)


def test_tritonclient_json_and_requested_outputs(url, frame):
    import tritonclient.http as tc

    df = frame.head(4)
    triton = tc.InferenceServerClient(url=url.removeprefix("http://"))
    outputs = [tc.InferRequestedOutput("predicted", binary_data=True),
               tc.InferRequestedOutput("probabilities", binary_data=False)]
    result = triton.infer("churn", _triton_inputs(df, wide=True, binary=False), outputs=outputs, model_version="2")
    response = result.get_response()
    assert response["model_version"] == "2"
    by_name = {o["name"]: o for o in response["outputs"]}
    assert "data" in by_name["probabilities"] and "binary_data_size" in by_name["predicted"]["parameters"]
    assert result.as_numpy("predicted").shape == (4,)
    only = triton.infer("churn", _triton_inputs(df, wide=True, binary=True),
                        outputs=[tc.InferRequestedOutput("probabilities")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["probabilities"]


def test_tritonclient_errors_are_raised_with_the_message(url, frame):
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    triton = tc.InferenceServerClient(url=url.removeprefix("http://"))
    inputs = _triton_inputs(frame.head(2), wide=True, binary=True)[:-1]
    with pytest.raises(InferenceServerException, match="missing input"):
        triton.infer("churn", inputs)
    with pytest.raises(InferenceServerException, match="not served"):
        triton.infer("nope", inputs)


def test_binary_body_is_checked(client, frame):
    """Hand-made binary bodies with wrong sizes are 400s naming the input."""
    df = frame.head(2)
    tensors = oip_inputs(df)
    raw = np.asarray(df["tenure_months"], dtype="<i8").tobytes()
    tensors[0] = {"name": "tenure_months", "datatype": "INT64", "shape": [2],
                  "parameters": {"binary_data_size": len(raw)}}
    head = json.dumps({"inputs": tensors}).encode()
    ok = client.post("/v2/models/churn/infer", content=head + raw,
                     headers={"Inference-Header-Content-Length": str(len(head))})
    assert ok.status_code == 200, ok.text
    short = client.post("/v2/models/churn/infer", content=head + raw[:-3],
                        headers={"Inference-Header-Content-Length": str(len(head))})
    assert short.status_code == 400 and "tenure_months" in short.json()["error"]
    extra = client.post("/v2/models/churn/infer", content=head + raw + b"xx",
                        headers={"Inference-Header-Content-Length": str(len(head))})
    assert extra.status_code == 400 and "binary bytes" in extra.json()["error"]
    bad_length = client.post("/v2/models/churn/infer", content=head + raw,
                             headers={"Inference-Header-Content-Length": "999999"})
    assert bad_length.status_code == 400 and "Inference-Header-Content-Length" in bad_length.json()["error"]


def test_versions_and_aliases_are_routable(client, frame):
    body = {"inputs": oip_inputs(frame.head(3))}
    assert client.post("/v2/models/churn/infer", json=body).json()["model_version"] == "1"
    assert client.post("/v2/models/churn/versions/2/infer", json=body).json()["model_version"] == "2"
    assert client.post("/v2/models/churn@challenger/infer", json=body).json()["model_version"] == "2"
    assert client.post("/predict/churn@production", json=records(frame.head(1))).json()["version"] == 1
    assert client.get("/v2/models/churn").json()["versions"] == ["1", "2"]
    assert client.get("/v2/models/churn@challenger").json()["versions"] == ["2"]
    assert client.get("/v2/models/churn/versions/2/ready").json()["ready"] is True
    missing = client.post("/v2/models/churn/versions/7/infer", json=body)
    assert missing.status_code == 404 and "live versions: 1, 2" in missing.json()["error"]
    no_alias = client.post("/v2/models/churn@staging/infer", json=body)
    assert no_alias.status_code == 404 and "staging" in no_alias.json()["error"]


def test_several_models_are_live_at_once(server, frame):
    both = ModelServer(server.project, server.plugins)
    both.apply(server.table.deploy("upsell", 1))

    async def run() -> None:
        transport = httpx.ASGITransport(app=LoomApp(both))
        async with httpx.AsyncClient(transport=transport, base_url="http://loom") as c:
            body = {"inputs": oip_inputs(frame.head(2))}
            assert (await c.post("/v2/models/upsell/infer", json=body)).json()["model_name"] == "upsell"
            assert (await c.post("/v2/models/churn/infer", json=body)).json()["model_version"] == "1"
            assert set((await c.get("/models")).json()["models"]) == {"churn", "upsell"}
            paths = (await c.get("/openapi.json")).json()["paths"]
            assert "/predict/upsell" in paths and "/predict/churn" in paths

    asyncio.run(run())


# -- MLflow scoring and /predict ----------------------------------------------------------------------------------


def test_mlflow_scoring_formats_agree(client, frame):
    df = frame.sample(6, random_state=3)
    recs = records(df)
    expected = client.post("/predict/churn", json=recs).json()["predictions"]
    split = json.loads(df[FEATURES].to_json(orient="split", index=False))
    bodies = [
        {"dataframe_split": {"columns": split["columns"], "data": split["data"]}},
        {"dataframe_records": recs},
        {"instances": recs},
        {"inputs": {c: [r[c] for r in recs] for c in FEATURES}},
        {"inputs": recs},
    ]
    for body in bodies:
        for path in ("/invocations", "/models/churn/invocations"):
            r = client.post(path, json=body)
            assert r.status_code == 200, (body, r.text)
            assert r.json() == {"predictions": expected}
    csv = client.post("/invocations", content=df[FEATURES].to_csv(index=False),
                      headers={"Content-Type": "text/csv; charset=utf-8"})
    assert csv.status_code == 200 and csv.json() == {"predictions": expected}


@pytest.mark.parametrize("body, content_type, status, fragment", [
    (b'{"dataframe_records": [], "instances": []}', "application/json", 400, "exactly one"),
    (b'{"records": []}', "application/json", 400, "unknown key"),
    (b'{"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}', "application/json", 400, "row 0"),
    (b'{"dataframe_records": [{"tenure_months": 1}]}', "application/json", 400, "missing column"),
    (b'{"dataframe_records": [1]}', "application/json", 400, "not an object"),
    (b'{"inputs": [], "params": {"k": 1}}', "application/json", 400, "params"),
    (b"tenure_months\nabc\n", "text/csv", 400, "tenure_months"),
    (b"a,b\n1,2\n", "text/csv", 400, "unknown CSV column"),
    (b"", "text/csv", 400, "empty CSV"),
    (b"tenure_months\n1\rx\n", "text/csv", 400, "'x' at row 1"),  # a bare CR ends a row (found by fuzzing: a 500)
    (b"tenure_months\n" + b"1" * 200_000 + b"\n", "text/csv", 400, "malformed CSV"),
    (b"<xml/>", "application/xml", 415, "application/xml"),
])
def test_mlflow_bad_requests(client, body, content_type, status, fragment):
    r = client.post("/invocations", content=body, headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_predict_looks_entities_up_in_the_online_store(client, frame):
    latest = frame.sort_values("event_time").groupby("customer_id").tail(1).set_index("customer_id")
    keys = latest.index[:4].tolist()
    by_key = client.post("/predict/churn", json={"entities": [{"customer_id": k} for k in keys]})
    assert by_key.status_code == 200, by_key.text
    by_value = client.post("/predict/churn", json=records(latest.loc[keys].reset_index()))
    assert by_key.json()["predictions"] == by_value.json()["predictions"]
    assert np.allclose(by_key.json()["probabilities"], by_value.json()["probabilities"], atol=1e-5)
    unknown = client.post("/predict/churn", json={"entities": [{"customer_id": 10_000_000}]})
    assert unknown.status_code == 404 and "customer_id=10000000" in unknown.json()["error"]
    wrong_key = client.post("/predict/churn", json={"entities": [{"user": 1}]})
    assert wrong_key.status_code == 400 and "customer_id" in wrong_key.json()["error"]


# -- bad input, limits and auth ---------------------------------------------------------------------------------


def _bad_cases(df: pd.DataFrame) -> list[tuple[str, object, int, str]]:
    inputs = oip_inputs(df)
    recs = records(df)
    nan_rec = [dict(recs[0], monthly_charges=float("nan"))]
    inf_rec = [dict(recs[0], monthly_charges=float("inf"))]
    return [
        ("/v2/models/churn/infer", b"{not json", 400, "malformed JSON"),
        ("/v2/models/churn/infer", b"", 400, "empty request body"),
        ("/v2/models/churn/infer", {"inputs": []}, 400, "non-empty list"),
        ("/v2/models/churn/infer", [1, 2], 400, "JSON object"),
        ("/v2/models/churn/infer", {"inputs": [dict(inputs[0], shape=[2, 2])] + inputs[1:]}, 400, "[N, 1]"),
        ("/v2/models/churn/infer", {"inputs": [dict(inputs[0], datatype="BYTES")] + inputs[1:]}, 400,
         "tenure_months"),
        ("/v2/models/churn/infer", {"inputs": [dict(inputs[0], data=[1.5, 2])] + inputs[1:]}, 400, "integer"),
        ("/v2/models/churn/infer", {"inputs": [dict(inputs[0], data=["x", 2])] + inputs[1:]}, 400, "integer"),
        ("/v2/models/churn/infer", {"inputs": [dict(inputs[0], shape=[0], data=[])]
                                    + [dict(i, shape=[0], data=[]) for i in inputs[1:]]}, 400, "empty input"),
        ("/v2/models/churn/infer", {"inputs": inputs, "outputs": [{"name": "logits"}]}, 400, "logits"),
        ("/v2/models/churn/infer", {"inputs": inputs, "id": 7}, 400, "'id'"),
        ("/v2/models/nope/infer", {"inputs": inputs}, 404, "'nope'"),
        ("/v2/models/churn/versions/x/infer", {"inputs": inputs}, 404, "'x'"),
        ("/predict/churn", nan_rec, 400, "non-finite"),
        ("/predict/churn", inf_rec, 400, "non-finite"),
        ("/predict/churn", [dict(recs[0], extra=1)], 400, "unknown column(s) extra"),
        ("/predict/churn", [dict(recs[0], contract=None)], 400, "not nullable"),
        ("/predict/churn", [dict(recs[0], paperless_billing="yes")], 400, "true/false"),
        ("/predict/churn", [], 400, "empty"),
        ("/predict/churn", {"rows": recs}, 400, "list of records"),
        ("/predict/churn", [dict(recs[0], tenure_months=2**70)], 400, "int64"),
        ("/predict/churn", [dict(recs[0], monthly_charges=1e308)], 400, "not finite"),
    ]


def test_bad_input_is_a_named_4xx(client, frame):
    for path, body, status, fragment in _bad_cases(frame.head(2)):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = client.post(path, content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == status, (path, body, r.text)
        assert r.headers["content-type"] == "application/json"
        assert fragment in r.json()["error"], (fragment, r.json())


def test_limits_and_methods(client):
    big = b"[" + b" " * (11 * 1024 * 1024) + b"]"
    r = client.post("/predict/churn", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    r = client.get("/predict/churn")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = client.get("/no/such/route")
    assert r.status_code == 404 and "/no/such/route" in r.json()["error"]


def test_token_auth_guards_inference_and_admin_not_probes(project_dir, server, monkeypatch, frame):
    token_server = ModelServer(server.project, server.plugins, token="s3cret")
    token_server.apply(server.table)

    async def run() -> None:
        transport = httpx.ASGITransport(app=LoomApp(token_server))
        async with httpx.AsyncClient(transport=transport, base_url="http://loom") as c:
            assert (await c.get("/v2/health/live")).status_code == 200
            assert (await c.get("/v2/health/ready")).status_code == 200
            denied = await c.post("/predict/churn", json=records(frame.head(1)))
            assert denied.status_code == 401 and "Bearer" in denied.json()["error"]
            assert (await c.get("/models")).status_code == 401
            wrong = await c.post("/predict/churn", json=records(frame.head(1)),
                                 headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await c.post("/predict/churn", json=records(frame.head(1)),
                              headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200

    asyncio.run(run())


# -- batching, encoding, metrics, documentation ---------------------------------------------------------------


def _batches(client) -> float:
    line = next(line for line in client.get("/metrics").text.splitlines()
                if line.startswith('loom_batch_rows_count{model="churn"') and 'version="1"' in line)
    return float(line.rsplit(" ", 1)[1])


def test_concurrent_requests_share_batches_and_get_their_own_rows(url, client, frame):
    dfs = [frame.iloc[i * 3:(i + 1) * 3] for i in range(40)]
    expected = [client.post("/predict/churn", json=records(d)).json()["probabilities"] for d in dfs]
    before = _batches(client)

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            return await asyncio.gather(*(c.post("/predict/churn", json=records(d)) for d in dfs))

    for response, want in zip(asyncio.run(burst()), expected):
        assert response.status_code == 200
        assert np.allclose(response.json()["probabilities"], want, atol=1e-6)
    assert _batches(client) - before < len(dfs)  # some forward passes served several requests


def test_encoder_matches_the_training_preprocessor(server, frame):
    """The request-path encoder computes exactly what the training preprocessor computes, nulls included."""
    from runtime.model import ModelBundle

    lv = server.resolve("churn", "1")
    df = frame.sample(300, random_state=5).reset_index(drop=True)
    df.loc[::7, "total_charges"] = None
    cols = check_columns({c: json.loads(df[c].to_json(orient="values")) for c in FEATURES}, lv.schema)
    bundle = ModelBundle.from_artifacts({a: server.registry.read_artifact("churn", 1, a)
                                         for a in ("model.json", "model.safetensors")})
    assert np.array_equal(lv.encode(cols), bundle.preprocessor.transform(df[FEATURES]))


def test_metrics_are_per_model_version_and_code(client, frame):
    client.post("/v2/models/churn/versions/2/infer", json={"inputs": oip_inputs(frame.head(1))})
    client.post("/v2/models/churn/infer", content=b"{", headers={"Content-Type": "application/json"})
    text = client.get("/metrics").text
    assert 'loom_requests_total{code="200",model="churn",protocol="v2",replica="",version="2"}' in text
    assert 'code="400",model="churn",protocol="v2"' in text
    assert "loom_request_seconds_bucket" in text and "loom_predicted_rows_total" in text


def test_openapi_describes_each_model_input(client):
    doc = client.get("/openapi.json").json()
    record = doc["components"]["schemas"]["churn.Record"]
    assert set(record["required"]) == set(FEATURES)
    assert record["properties"]["tenure_months"]["type"] == "integer"
    assert record["properties"]["contract"]["enum"] == ["month-to-month", "one-year", "two-year"]
    assert record["properties"]["total_charges"]["anyOf"][1] == {"type": "null"}
    assert {"/predict/churn", "/v2/models/churn/infer", "/models/churn/invocations", "/invocations",
            "/v2/models/{name}/versions/{version}/infer"} <= set(doc["paths"])
    assert client.get("/docs").status_code == 200


def test_schemathesis_fuzzing_finds_no_server_error(server):
    """Every documented operation, fuzzed from the OpenAPI document: no 5xx, and answers as documented."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", LoomApp(server))
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            case.call_and_validate(checks=checks)

        fuzz()
