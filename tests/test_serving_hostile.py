"""The serving app against hostile clients (issue 15): tokens on every route but the two probes, operator routes
behind the operator token, the Host allow-list, the content types a POST may have, the size, row, string and
nesting limits, and a hand-written corpus of malformed input on every POST route that must never get a 5xx. Then
schemathesis over every documented route, with the operator token, the inference token and none.

Most requests go straight into the ASGI app through :func:`call`, a hand-rolled ASGI client: it sends exactly the
path, headers and body chunks it is given (dot segments, non-ASCII header bytes, no Host header, chunked bodies),
which no HTTP client does. A few go over real HTTP (uvicorn in a thread) where the transport matters. No Ray."""

from __future__ import annotations

import asyncio
import json
import os
import traceback
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from runtime import Pipeline, get_plugins, load_project
from runtime.config import Project
from runtime.serving.app import LoomApp
from runtime.serving.routing import RoutingTable
from runtime.serving.server import ModelServer
from conftest import make_project
from serving_models import FEATURES, data, oip_inputs, records, register_version
from test_serving_protocols import ThreadedServer, _free_port

INFERENCE, OPERATOR = "inf", "op"
MAX_BODY, MAX_ROWS, MAX_STRING, MAX_DEPTH = 256 * 1024, 20, 64, 16
PROBES = ("/v2/health/live", "/v2/health/ready")
# Every route and the token it needs, with its path parameters filled in (`churn` version 1 is live).
OPERATOR_ROUTES = [("GET", "/models"), ("GET", "/metrics"), ("GET", "/monitoring/churn/drift"),
                   ("GET", "/monitoring/churn/report"), ("GET", "/monitoring/churn/history"),
                   ("POST", "/feedback/churn")]
INFERENCE_POSTS = ["/predict/churn", "/v2/models/churn/infer", "/v2/models/churn/versions/1/infer", "/invocations",
                   "/models/churn/invocations"]
INFERENCE_GETS = ["/v2", "/v2/models/churn", "/v2/models/churn/versions/1", "/v2/models/churn/ready",
                  "/v2/models/churn/versions/1/ready", "/docs", "/openapi.json"]
INFERENCE_ROUTES = [("POST", p) for p in INFERENCE_POSTS] + [("GET", p) for p in INFERENCE_GETS]
POST_ROUTES = [*INFERENCE_POSTS, "/feedback/churn"]
JSON_TYPE = [(b"content-type", b"application/json")]


# -- an ASGI client that sends exactly what it is told --------------------------------------------------------------


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes
    chunks_read: int

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return self.json()["error"]


def _header(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def call(app, method: str, path: str, *, body: bytes = b"", chunks: list[bytes] | None = None,
         headers: Iterable[tuple[str | bytes, str | bytes]] = (), token: str | None = None, query: bytes = b"",
         host: bytes | None = b"loom", content_type: str | bytes | None = None) -> Reply:
    """One request into the ASGI ``app``. ``chunks``: the body in several ``http.request`` messages with no
    Content-Length (as a server passes a chunked body on), else ``body`` in one with its Content-Length. An
    exception out of the app, or no response at all, is answered as a 500 (the app's server would send one)."""
    raw_headers = [(_header(k).lower(), _header(v)) for k, v in headers]
    if host is not None:
        raw_headers.insert(0, (b"host", host))
    if token is not None:
        raw_headers.append((b"authorization", f"Bearer {token}".encode()))
    if content_type is not None:
        raw_headers.append((b"content-type", _header(content_type)))
    if chunks is None:
        messages = [body]
        if not any(k == b"content-length" for k, _ in raw_headers):
            raw_headers.append((b"content-length", str(len(body)).encode()))
    else:
        messages = list(chunks) or [b""]
        raw_headers.append((b"transfer-encoding", b"chunked"))
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path,
             "raw_path": urllib.parse.quote(path.encode("utf-8", "surrogatepass"), safe="/%;@!$&'()*+,=:~").encode(),
             "root_path": "",
             "query_string": query, "headers": raw_headers, "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8000), "state": {}}

    async def run() -> Reply:
        done = asyncio.Event()
        read = 0
        start: dict[str, Any] = {}
        out: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal read
            if read < len(messages):
                read += 1
                return {"type": "http.request", "body": messages[read - 1], "more_body": read < len(messages)}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                out.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        try:
            await asyncio.wait_for(app(scope, receive, send), 120)
        except Exception:  # noqa: BLE001 - what the app let out, reported as the 500 its server would send
            return Reply(500, {}, traceback.format_exc().encode(), read)
        finally:
            done.set()
        if not start:
            return Reply(500, {}, b"no response started", read)
        for k, v in start.get("headers", []):
            if not isinstance(k, bytes) or not isinstance(v, bytes) or b"\r" in v or b"\n" in v:
                return Reply(500, {}, f"unsendable response header {k!r}: {v!r}".encode(), read)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", [])}
        return Reply(start["status"], headers, b"".join(out), read)

    return _LOOP.run_until_complete(run())


_LOOP = asyncio.new_event_loop()


@pytest.fixture(scope="module", autouse=True)
def _close_loop():
    yield
    _LOOP.close()


def assert_client_error(r: Reply, what: Any, *, status: int | tuple[int, ...] | None = None) -> None:
    """A named client error: 4xx (``status`` when given), a JSON ``{"error": ...}`` body."""
    assert r.status < 500, (what, r.status, r.body[:3000])
    allowed = (status,) if isinstance(status, int) else status
    if allowed is not None:
        assert r.status in allowed, (what, r.status, r.body[:500])
    else:
        assert 400 <= r.status < 500, (what, r.status, r.body[:500])
    assert r.headers.get("content-type", "").startswith("application/json"), (what, r.headers)
    assert isinstance(r.error, str) and r.error, (what, r.body[:500])


def assert_no_server_error(r: Reply, what: Any) -> None:
    assert r.status < 500, (what, r.status, r.body[:3000])
    if r.status >= 400:
        assert_client_error(r, what)


class Problems(list):
    """Every failed expectation of a corpus, reported together (one bug must not hide the next)."""

    def check(self, expectation, r: Reply, what: Any, **kwargs: Any) -> None:
        try:
            expectation(r, what, **kwargs)
        except AssertionError as err:
            tail = r.body.decode("utf-8", "replace").strip().splitlines()[-1:] if r.status >= 500 else []
            self.append(f"{str(what)[:160]} -> {r.status} {r.body[:160]!r} {tail[0][:200] if tail else ''}"
                        if r.status >= 500 else f"{str(err)[:400]}")

    def assert_none(self) -> None:
        assert not self, f"{len(self)} problem(s):\n" + "\n".join(self[:60])


# -- the project, its servers and apps ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory) -> Path:
    env = {"LOOM_HOSTILE_TOKEN": INFERENCE, "LOOM_HOSTILE_OPERATOR_TOKEN": OPERATOR}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    root = make_project(tmp_path_factory.mktemp("hostile") / "qs", port=_free_port(),
                        serving={"auth_token_env": "LOOM_HOSTILE_TOKEN",
                                 "operator_token_env": "LOOM_HOSTILE_OPERATOR_TOKEN",
                                 "max_body_bytes": MAX_BODY, "max_rows": MAX_ROWS,
                                 "max_string_length": MAX_STRING, "max_json_depth": MAX_DEPTH},
                        monitoring={"interval_s": None})
    register_version(root, seed=1)
    register_version(root, seed=2, alias="challenger")
    pipe = Pipeline(root)
    pipe.write_features(pipe.ingest())
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def project(project_dir) -> Project:
    return load_project(project_dir)


def variant(project: Project, **serving: Any) -> Project:
    """``project`` with some serving settings changed."""
    cfg = project.config
    return Project(root=project.root,
                   config=cfg.model_copy(update={"serving": cfg.serving.model_copy(update=serving)}))


def tokened_server(project: Project) -> ModelServer:
    server = ModelServer(project, get_plugins(modules=project.config.plugins), token=INFERENCE,
                         operator_token=OPERATOR)
    table = RoutingTable().deploy("churn", 2).deploy("churn", 1)  # v1 takes traffic, v2 on standby
    server.apply(table.with_aliases("churn", {"production": 1, "challenger": 2}))
    return server


@pytest.fixture(scope="module")
def server(project) -> ModelServer:
    return tokened_server(project)


@pytest.fixture(scope="module")
def app(server) -> LoomApp:
    return LoomApp(server)


@pytest.fixture(scope="module")
def frame(project_dir):
    return data(project_dir)


@pytest.fixture(scope="module")
def valid(frame) -> dict[str, tuple[bytes, str]]:
    """A valid body (and its content type) for each POST route."""
    df = frame.head(2)
    oip = json.dumps({"inputs": oip_inputs(df)}).encode()
    mlflow = json.dumps({"dataframe_records": records(df)}).encode()
    return {"/predict/churn": (json.dumps(records(df)).encode(), "application/json"),
            "/v2/models/churn/infer": (oip, "application/json"),
            "/v2/models/churn/versions/1/infer": (oip, "application/json"),
            "/invocations": (mlflow, "application/json"),
            "/models/churn/invocations": (mlflow, "application/json"),
            "/feedback/churn": (json.dumps({"labels": [{"id": "some-request", "label": True}]}).encode(),
                                "application/json")}


def request(app, method: str, path: str, valid: dict[str, tuple[bytes, str]], **kwargs: Any) -> Reply:
    """``method path``, with the route's valid body when it is a POST."""
    if method == "POST" and path in valid:
        body, content_type = valid[path]
        kwargs.setdefault("body", body)
        kwargs.setdefault("content_type", content_type)
    return call(app, method, path, **kwargs)


# -- tokens -------------------------------------------------------------------------------------------------------


def test_the_probes_are_open_and_nothing_else_is(app, valid):
    for path in PROBES:
        assert call(app, "GET", path).status == 200, path
        assert call(app, "GET", path, token="wrong").status == 200, path
    for method, path in [*OPERATOR_ROUTES, *INFERENCE_ROUTES, ("GET", "/no/such/route"), ("GET", "/redoc"),
                         ("GET", "/docs/oauth2-redirect"), ("GET", "/")]:
        kwargs = {"body": b"{}", "content_type": "application/json"} if method != "GET" else {}
        r = request(app, method, path, valid, **kwargs)
        assert_client_error(r, (method, path), status=401)
        assert r.headers.get("www-authenticate", "").startswith("Bearer"), (method, path, r.headers)


def test_only_get_probes_are_open(app):
    """The exception is GET on the two probe paths: another method on them needs the token like any route."""
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in PROBES:
            r = call(app, method, path, body=b"{}", content_type="application/json")
            assert_client_error(r, (method, path), status=401)


@pytest.mark.parametrize("path, query", [
    ("/v2/health/live/../../models", b""), ("/v2/health/ready/../../models", b""), ("/v2/health/../../models", b""),
    ("/v2/health/live/", b""), ("/v2/health/live/x", b""), ("/v2/health/liveX", b""), ("/v2/health/readyX", b""),
    ("/v2/health/", b""), ("/v2/health", b""), ("//v2/health/live", b""), ("/v2/health//live", b""),
    ("/v2/health/live;x", b""), ("/v2/health/live%00", b""), ("/v2/health/live\x00", b""),
    ("/v2/health/LIVE", b""), ("/V2/health/live", b""), ("/docsX", b""), ("/docs/", b""),
    ("/docs/../models", b""), ("/openapi.jsonX", b""), ("/openapi.json/", b""), ("/metrics/", b""),
    ("/metrics", b"x"), ("/metricsX", b""), ("/metrics/../models", b""),
])
def test_near_probe_paths_need_the_token(app, path, query):
    """Exact matches only: a path that starts like a probe (or a formerly open document) is not one."""
    r = call(app, "GET", path, query=query)
    assert_client_error(r, path, status=401)
    assert r.headers.get("www-authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("authorization", [
    b"Bearer nope", b"Bearer inf ", b"Bearer  inf", b"Bearer op\x00", b"Bearer opX", b"Bearer o", b"Bearer ",
    b"Bearer", b"Basic b3A6b3A=", b"op", b"Bearer \xff\xfe", b"Bearer " + b"o" * 100_000, b"Bearer op, Bearer op",
    "Bearer ó".encode(),
])
def test_wrong_tokens_are_401(app, valid, authorization):
    for method, path in [("POST", "/predict/churn"), ("GET", "/models"), ("GET", "/openapi.json"),
                         ("POST", "/feedback/churn")]:
        r = request(app, method, path, valid, headers=[(b"authorization", authorization)])
        assert_client_error(r, (path, authorization[:40]), status=401)
        assert r.headers.get("www-authenticate", "").startswith("Bearer")


def test_the_inference_token_is_refused_on_operator_routes(app, valid):
    for method, path in OPERATOR_ROUTES:
        r = request(app, method, path, valid, token=INFERENCE)
        assert_client_error(r, (method, path), status=403)


def test_the_inference_token_serves_inference_and_metadata(app, valid):
    for method, path in INFERENCE_ROUTES:
        r = request(app, method, path, valid, token=INFERENCE)
        assert r.status == 200, (method, path, r.status, r.body[:300])


def test_the_operator_token_opens_every_route(app, valid):
    for method, path in [*OPERATOR_ROUTES, *INFERENCE_ROUTES]:
        r = request(app, method, path, valid, token=OPERATOR)
        assert r.status not in (401, 403), (method, path, r.status, r.body[:300])
        assert_no_server_error(r, (method, path))
        if not path.startswith("/monitoring/"):  # drift needs captured rows: a 409 is an answer too
            assert r.status == 200, (method, path, r.status, r.body[:300])


def test_public_paths_open_exactly_those_paths(project, valid):
    app = LoomApp(tokened_server(variant(project, public_paths=["/metrics"])))
    r = call(app, "GET", "/metrics")
    assert r.status == 200 and "loom_" in r.body.decode()
    for path in ["/metrics/", "/metricsX", "/metrics/../models", "/models", "/metrics/x", "//metrics"]:
        assert_client_error(call(app, "GET", path), path, status=401)
    for path in PROBES:
        assert call(app, "GET", path).status == 200
    assert call(app, "POST", "/predict/churn", body=valid["/predict/churn"][0],
                content_type="application/json").status == 401


# -- hosts ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hosted(project) -> LoomApp:
    return LoomApp(tokened_server(variant(project, allowed_hosts=["loom.example", "*.internal.example"])))


@pytest.mark.parametrize("host", [b"loom.example", b"loom.example:8000", b"api.internal.example",
                                  b"a.b.internal.example:443"])
def test_allowed_hosts_are_served(hosted, host):
    r = call(hosted, "GET", "/v2/models/churn", token=OPERATOR, host=host)
    assert r.status == 200, (host, r.body[:300])


@pytest.mark.parametrize("host", [b"evil.example", b"loom.example.evil.example", b"evil-loom.example",
                                  b"internal.example.evil", b"evil.example:80", b"loom.example@evil.example",
                                  b"127.0.0.1", b"\xff\xfe", b"", b"loom.example/x"])
def test_other_hosts_are_400_naming_the_host(hosted, valid, host):
    for method, path in [("GET", "/v2/models/churn"), ("POST", "/predict/churn"), ("GET", "/models")]:
        r = request(hosted, method, path, valid, token=OPERATOR, host=host)
        assert_client_error(r, (host, path), status=400)
        if host and host.isascii():
            assert host.decode().split(":")[0] in r.error, (host, r.error)


def test_no_host_header_is_400_and_forwarded_hosts_do_not_count(hosted):
    assert_client_error(call(hosted, "GET", "/v2/models/churn", token=OPERATOR, host=None), "no Host", status=400)
    r = call(hosted, "GET", "/v2/models/churn", token=OPERATOR, host=b"evil.example",
             headers=[(b"x-forwarded-host", b"loom.example"), (b"forwarded", b"host=loom.example")])
    assert_client_error(r, "X-Forwarded-Host", status=400)


# -- content types --------------------------------------------------------------------------------------------------


REFUSED_TYPES = ["text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "text/html", "application/xml", "application/jsonx",
                 "application/json-seq", "json", "", "*/*", "application/*", "\xff/json"]


def _oip(path: str) -> bool:
    return path.startswith("/v2/")


@pytest.mark.parametrize("path", POST_ROUTES)
def test_posts_other_than_json_are_415(app, valid, path):
    """What a cross-site form or fetch without a preflight can send (text/plain, forms) is refused before the body
    is looked at, and so is no content type at all, except on the Open Inference Protocol routes: tritonclient
    sends none (a browser's cross-site request without one carries an Origin, refused below)."""
    body = valid[path][0]
    refused = [*REFUSED_TYPES, *(["text/csv"] if "invocations" not in path else [])]
    for content_type in [t for t in refused if not (_oip(path) and t == "")]:
        r = call(app, "POST", path, body=body, content_type=content_type, token=OPERATOR)
        assert_client_error(r, (path, content_type), status=415)
    r = call(app, "POST", path, body=body, token=OPERATOR)
    if _oip(path):
        assert r.status == 200, r.body[:300]
    else:
        assert_client_error(r, (path, "no content type"), status=415)


@pytest.mark.parametrize("path", POST_ROUTES)
def test_cross_origin_writes_are_refused(app, valid, path):
    body, content_type = valid[path]
    for origin in [b"http://evil.example", b"null", b"http://loom.evil.example", b"https://evil.example/loom",
                   b"http://loom@evil.example", b"\xff"]:
        for kind in [content_type, None] if _oip(path) else [content_type, "text/plain"]:
            r = call(app, "POST", path, body=body, content_type=kind, token=OPERATOR, headers=[(b"origin", origin)])
            assert_client_error(r, (path, origin, kind), status=403)
    same = call(app, "POST", path, body=body, content_type=content_type, token=OPERATOR,
                headers=[(b"origin", b"http://loom")])
    assert same.status == 200, same.body[:300]


@pytest.mark.parametrize("path", POST_ROUTES)
def test_json_media_types_and_parameters_are_accepted(app, valid, path):
    body = valid[path][0]
    for content_type in ["application/json", "application/json; charset=utf-8", "application/json;charset=UTF-8",
                         "application/vnd.loom.v1+json", "application/problem+json"]:
        r = call(app, "POST", path, body=body, content_type=content_type, token=OPERATOR)
        assert r.status == 200, (path, content_type, r.status, r.body[:300])


def test_csv_on_invocations_and_binary_oip(app, frame):
    csv = frame.head(3)[FEATURES].to_csv(index=False).encode()
    for path in ("/invocations", "/models/churn/invocations"):
        r = call(app, "POST", path, body=csv, content_type="text/csv; charset=utf-8", token=INFERENCE)
        assert r.status == 200, r.body
    head, raw = _binary_oip(frame.head(2))
    for content_type in ("application/octet-stream", "application/json"):
        r = call(app, "POST", "/v2/models/churn/infer", body=head + raw, content_type=content_type,
                 headers=[("inference-header-content-length", str(len(head)))], token=INFERENCE)
        assert r.status == 200, (content_type, r.body[:300])


def _binary_oip(df) -> tuple[bytes, bytes]:
    tensors = oip_inputs(df)
    raw = np.asarray(df["tenure_months"], dtype="<i8").tobytes()
    tensors[0] = {"name": "tenure_months", "datatype": "INT64", "shape": [len(df)],
                  "parameters": {"binary_data_size": len(raw)}}
    return json.dumps({"inputs": tensors}).encode(), raw


# -- limits ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", POST_ROUTES)
def test_a_body_over_max_body_bytes_is_413_declared_or_chunked(app, path):
    big = b"[" + b" " * MAX_BODY + b"]"
    r = call(app, "POST", path, body=big, content_type="application/json", token=OPERATOR)
    assert_client_error(r, (path, "declared"), status=413)
    chunks = [b" " * 8192] * (4 * MAX_BODY // 8192)
    r = call(app, "POST", path, chunks=chunks, content_type="application/json", token=OPERATOR)
    assert_client_error(r, (path, "chunked"), status=413)
    assert r.chunks_read < len(chunks), "the body was read to its end before it was refused"
    # A Content-Length that lies low does not let more through.
    r = call(app, "POST", path, chunks=chunks, content_type="application/json", token=OPERATOR,
             headers=[(b"content-length", b"10")])
    assert_client_error(r, (path, "lying Content-Length"), status=(400, 413))


@pytest.mark.parametrize("length", [b"abc", b"-1", b"1e3", b"\xd9\xa1", b"\xc2\xb2", b"1, 1", b"",
                                    b"99999999999999999999999999"])
def test_bad_content_length_headers_are_4xx(app, valid, length):
    body, content_type = valid["/predict/churn"]
    r = call(app, "POST", "/predict/churn", body=body, content_type=content_type, token=OPERATOR,
             headers=[(b"content-length", length)])
    assert_client_error(r, length)


def test_a_chunked_body_over_the_limit_is_413_over_http(server):
    with ThreadedServer(LoomApp(server)) as url, httpx.Client(base_url=url, timeout=30) as client:
        def body():
            for _ in range(2 * MAX_BODY // 8192):
                yield b" " * 8192

        r = client.post("/predict/churn", content=body(), headers={"Content-Type": "application/json",
                                                                    "Authorization": f"Bearer {OPERATOR}"})
        assert r.status_code == 413 and "larger than" in r.json()["error"]
        ok = client.post("/predict/churn", content=iter([b"[", b"]"]),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {OPERATOR}"})
        assert ok.status_code == 400  # an empty list, read whole from a chunked body


def test_rows_over_max_rows_are_413(app, frame):
    df = frame.head(MAX_ROWS + 1)
    recs = records(df)
    bodies = [("/predict/churn", json.dumps(recs), "application/json"),
              ("/predict/churn", json.dumps({"entities": [{"customer_id": 1}] * (MAX_ROWS + 1)}), "application/json"),
              ("/v2/models/churn/infer", json.dumps({"inputs": oip_inputs(df)}), "application/json"),
              ("/invocations", json.dumps({"dataframe_records": recs}), "application/json"),
              ("/invocations", json.dumps({"dataframe_split": json.loads(df[FEATURES].to_json(orient="split",
                                                                                             index=False))}),
               "application/json"),
              ("/invocations", json.dumps({"inputs": {c: [r[c] for r in recs] for c in FEATURES}}),
               "application/json"),
              ("/models/churn/invocations", json.dumps({"instances": recs}), "application/json"),
              ("/invocations", df[FEATURES].to_csv(index=False), "text/csv")]
    for path, body, content_type in bodies:
        r = call(app, "POST", path, body=body.encode(), content_type=content_type, token=INFERENCE)
        assert_client_error(r, (path, body[:60]), status=413)
        assert str(MAX_ROWS) in r.error, r.error
    fits = call(app, "POST", "/predict/churn", body=json.dumps(recs[:MAX_ROWS]).encode(),
                content_type="application/json", token=INFERENCE)
    assert fits.status == 200, fits.body[:300]


def test_strings_over_max_string_length_are_400(app, frame):
    rec = records(frame.head(1))[0]
    long = "x" * (MAX_STRING + 1)
    inputs = oip_inputs(frame.head(1))
    contract = next(i for i, t in enumerate(inputs) if t["name"] == "contract")
    inputs[contract] = dict(inputs[contract], data=[long])
    csv = frame.head(1)[FEATURES].assign(contract=long).to_csv(index=False)
    bodies = [("/predict/churn", json.dumps([dict(rec, contract=long)]), "application/json"),
              ("/v2/models/churn/infer", json.dumps({"inputs": inputs}), "application/json"),
              ("/invocations", json.dumps({"dataframe_records": [dict(rec, contract=long)]}), "application/json"),
              ("/invocations", csv, "text/csv"),
              ("/predict/churn", json.dumps({"entities": [{"customer_id": long}]}), "application/json")]
    for path, body, content_type in bodies:
        r = call(app, "POST", path, body=body.encode(), content_type=content_type, token=INFERENCE)
        assert_client_error(r, (path, body[:60]), status=400)
        assert str(MAX_STRING) in r.error, r.error


@pytest.mark.parametrize("path", POST_ROUTES)
def test_json_nested_over_max_json_depth_is_400_naming_depth(app, path):
    for body in [b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" *
                 (MAX_DEPTH + 1), b"[" * 100_000, b'{"labels": ' + b"[" * 50 + b"]" * 50 + b"}"]:
        r = call(app, "POST", path, body=body, content_type="application/json", token=OPERATOR)
        assert_client_error(r, (path, body[:30]), status=400)
        assert "depth" in r.error.lower(), r.error


def test_feedback_ids_over_128_characters_are_400(app):
    for rid in ["x" * 129, "é" * 129, "x" * 100_000]:
        r = call(app, "POST", "/feedback/churn", content_type="application/json", token=OPERATOR,
                 body=json.dumps({"labels": [{"id": rid, "label": True}]}).encode())
        assert_client_error(r, rid[:20], status=400)
        assert "128" in r.error, r.error
    ok = call(app, "POST", "/feedback/churn", content_type="application/json", token=OPERATOR,
              body=json.dumps({"labels": [{"id": "x" * 128, "label": True}]}).encode())
    assert ok.status == 200, ok.body[:300]


# -- the hostile corpus: no 5xx on any POST route -----------------------------------------------------------------

#: Bodies wrong for every POST route: each must be a named 4xx.
BAD_BODIES = [
    b"", b" ", b"\n\t ", b"null", b"true", b"false", b"0", b"-1", b"1e999", b"NaN", b"Infinity", b"-Infinity",
    b'"text"', b'"\\ud800"', b"[]", b"{}", b"[[]]", b"[null]", b"[1]", b'[""]', b"[{}]", b"[[{}]]", b"[true]",
    b'{"inputs": null}', b'{"inputs": {}}', b'{"inputs": [null]}', b'{"inputs": [[]]}', b'{"inputs": "x"}',
    b'{"labels": null}', b'{"labels": [null]}', b'{"labels": [{"id": null, "label": null}]}', b'{"labels": {}}',
    b'{"dataframe_split": null}', b'{"dataframe_split": {"columns": null, "data": null}}',
    b'{"dataframe_records": {}}', b'{"instances": "x"}', b'{"entities": [[]]}', b'{"entities": {}}',
    b"\xff\xfe\xfd", b'{"a": "\xff"}', b'["\xc3"]', b"\xef\xbb\xbf[]", b"\xff\xfe[\x00]\x00", b"\x00" * 64,
    b"{" * 10, b"[" * 10, b"]]]]", b"}", b'{"a":1,"a":2}', b'{"' + b"k" * 100_000 + b'": 1}',
    b"{" + b",".join(b'"k%d":1' % i for i in range(20_000)) + b"}", b"[" + b"1," * 50_000 + b"1]",
    b"9" * 5000, b"-" + b"9" * 5000, b"1" + b"0" * 400, b"[" * 100_000, b"[" * 50_000 + b"]" * 50_000,
    b'{"a":' * 30_000 + b"1" + b"}" * 30_000, b"[" * 10_000 + b"]" * 9_999, b'"' + b"\\" * 1001,
    b'{"inputs": [{"name": "tenure_months", "shape": [100000000000000000000], "datatype": "INT64", "data": [1]}]}',
    b'{"inputs": [{"name": "tenure_months", "shape": [-1], "datatype": "INT64", "data": [1]}]}',
    b'{"inputs": [{"name": "tenure_months", "shape": [1e300], "datatype": "INT64", "data": [1]}]}',
    b'{"inputs": [{"name": "tenure_months", "shape": [true], "datatype": "INT64", "data": [true]}]}',
    b'{"inputs": [{"name": "' + b"n" * 100_000 + b'", "shape": [1], "datatype": "INT64", "data": [1]}]}',
    b'{"inputs": [{"name": ["x"], "shape": [1], "datatype": ["INT64"], "data": [1]}]}',
]

#: Values put into one slot of a valid body (a number, a category, a request id, a label, a shape...).
SLOT_VALUES = [
    b"1" + b"0" * 400, b"-" + b"9" * 400, b"9" * 5000, b"1e999", b"-1e999", b"0.1e99999999999999999999", b"NaN",
    b"Infinity", b"-Infinity", b"-0", b"1e-999", b"1.5", b"true", b"null", b"{}", b"[]", b"[[[[]]]]", b"[1, [2]]",
    b'"\\ud800"', b'"\\udc00\\ud800"', b'"\\u0000"', b'"\xff"', b'"' + b"x" * 100_000 + b'"',
    b'"\\u2028</script><script>alert(1)</script>"', '"١٢"'.encode(), '"²"'.encode(), b'"1"', b'""',
    b'"\\r\\nSet-Cookie: a=b"', b"18446744073709551616", b"-9223372036854775809", b"9223372036854775807",
]
SLOT = "__SLOT__"


def _slotted(frame) -> dict[str, list[bytes]]:
    """Valid bodies of each POST route with one value replaced by :data:`SLOT`."""
    df = frame.head(1)
    rec = records(df)[0]
    split = json.loads(df[FEATURES].to_json(orient="split", index=False))
    oip = oip_inputs(df)

    def oip_with(i: int, **changes: Any) -> dict[str, Any]:
        return {"inputs": [dict(t, **changes) if j == i else t for j, t in enumerate(oip)]}

    contract = FEATURES.index("contract")
    oip_bodies = [oip_with(0, data=[SLOT]), oip_with(contract, data=[SLOT]), oip_with(0, shape=[SLOT]),
                  oip_with(0, shape=SLOT), oip_with(0, datatype=SLOT), oip_with(0, parameters=SLOT),
                  oip_with(0, parameters={"binary_data_size": SLOT}), {"inputs": oip, "id": SLOT},
                  {"inputs": oip, "parameters": SLOT}, {"inputs": oip, "outputs": SLOT},
                  {"inputs": oip, "outputs": [{"name": SLOT}]},
                  {"inputs": oip, "outputs": [{"name": "predicted", "parameters": {"binary_data": SLOT}}]},
                  {"inputs": oip, "parameters": {"binary_data_output": SLOT}}]
    mlflow_bodies = [{"dataframe_records": [dict(rec, tenure_months=SLOT)]},
                     {"dataframe_records": [dict(rec, contract=SLOT)]},
                     {"dataframe_split": {"columns": split["columns"], "data": [[SLOT, *split["data"][0][1:]]]}},
                     {"dataframe_split": {"columns": SLOT, "data": split["data"]}},
                     {"dataframe_split": {"columns": split["columns"], "data": SLOT}},
                     {"inputs": {c: [SLOT] if c == "monthly_charges" else [rec[c]] for c in FEATURES}},
                     {"instances": [dict(rec, paperless_billing=SLOT)]},
                     {"dataframe_records": [rec], "params": SLOT}]
    predict_bodies = [[dict(rec, tenure_months=SLOT)], [dict(rec, monthly_charges=SLOT)],
                      [dict(rec, total_charges=SLOT)], [dict(rec, contract=SLOT)], [dict(rec, paperless_billing=SLOT)],
                      {"records": [dict(rec, support_calls=SLOT)]}, {"entities": [{"customer_id": SLOT}]},
                      {"entities": SLOT}, {"records": SLOT}]
    feedback_bodies = [{"labels": [{"id": SLOT, "label": True}]}, {"labels": [{"id": "r", "label": SLOT}]},
                       {"labels": [{"id": "r", "label": [SLOT]}]}, {"labels": SLOT}, {"labels": [SLOT]}]

    def encoded(bodies: list[Any]) -> list[bytes]:
        return [json.dumps(b).encode() for b in bodies]

    return {"/predict/churn": encoded(predict_bodies), "/v2/models/churn/infer": encoded(oip_bodies),
            "/v2/models/churn/versions/1/infer": encoded(oip_bodies[:4]), "/invocations": encoded(mlflow_bodies),
            "/models/churn/invocations": encoded(mlflow_bodies[:3]), "/feedback/churn": encoded(feedback_bodies)}


@pytest.mark.parametrize("path", POST_ROUTES)
def test_bad_bodies_are_named_4xx(app, path):
    problems = Problems()
    for body in BAD_BODIES:
        r = call(app, "POST", path, body=body, content_type="application/json", token=OPERATOR)
        problems.check(assert_client_error, r, (path, body[:80]))
    problems.assert_none()


@pytest.mark.parametrize("path", POST_ROUTES)
def test_hostile_values_in_valid_bodies_get_no_5xx(app, frame, path):
    problems = Problems()
    for template in _slotted(frame)[path]:
        for value in SLOT_VALUES:
            body = template.replace(json.dumps(SLOT).encode(), value)
            r = call(app, "POST", path, body=body, content_type="application/json", token=OPERATOR)
            where = body.find(value)
            problems.check(assert_no_server_error, r, (path, body[max(0, where - 60):where + 60]))
    problems.assert_none()


@pytest.mark.parametrize("path", ["/invocations", "/models/churn/invocations"])
def test_hostile_csv_gets_no_5xx(app, frame, path):
    header = ",".join(FEATURES).encode()
    row = frame.head(1)[FEATURES].to_csv(index=False, header=False).strip().encode()
    cells = row.split(b",")
    bodies = [b"\xff\xfe", b"\xef\xbb\xbf" + header + b"\n" + row, header, header + b"\n", b"\n\n\n",
              b"," * 100_000, b'"unterminated', header + b"\n" + b'"' * 1001, b"\x00,\x00\n\x00,\x00",
              header + b"\n" + row + b"," * 1000, header + b"," + header + b"\n" + row + b"," + row]
    for value in [b"9" * 5000, b"nan", b"inf", b"-inf", b"1e999", b"NaN", "١٢".encode(), "²".encode(), b"1_000",
                  b"0x10", b" 1", b"=cmd|' /C calc'!A0", b"\xff", b'"a""b"', b"true", b"-0"]:
        for i in (0, FEATURES.index("paperless_billing"), FEATURES.index("contract")):
            bodies.append(header + b"\n" + b",".join(value if j == i else c for j, c in enumerate(cells)))
    problems = Problems()
    for body in bodies:
        r = call(app, "POST", path, body=body, content_type="text/csv", token=OPERATOR)
        problems.check(assert_no_server_error, r, (path, body[:120]))
    problems.assert_none()


@pytest.mark.parametrize("length", ["١٢".encode(), "²".encode(), "１".encode(), b"\xff", b"-1", b"-0", b"+10",
                                    b"1_0", b"0x10", b" 10", b"10 ", b"", b"1e2", b"99999999999999999999999999",
                                    b"9" * 5000, b"NaN", b"0"])
def test_bad_inference_header_content_length_is_400(app, frame, length):
    head, raw = _binary_oip(frame.head(2))
    for content_type in ("application/octet-stream", "application/json"):
        r = call(app, "POST", "/v2/models/churn/infer", body=head + raw, content_type=content_type, token=OPERATOR,
                 headers=[(b"inference-header-content-length", length)])
        assert_client_error(r, (length, content_type), status=400)


def test_inference_header_content_length_beyond_the_body_is_400(app, frame):
    head, raw = _binary_oip(frame.head(2))
    for n in (len(head) + len(raw) + 1, len(head) + len(raw) * 100, 2**63, 2**64 + 1):
        r = call(app, "POST", "/v2/models/churn/infer", body=head + raw, content_type="application/octet-stream",
                 token=OPERATOR, headers=[(b"inference-header-content-length", str(n).encode())])
        assert_client_error(r, n, status=400)


def test_hostile_binary_tensors_get_no_5xx(app, frame):
    df = frame.head(2)
    for size in [-1, 2**63, 1.5, True, "16", None, [16], 10**400]:
        tensors = oip_inputs(df)
        tensors[0] = {"name": "tenure_months", "datatype": "INT64", "shape": [2],
                      "parameters": {"binary_data_size": size}}
        head = json.dumps({"inputs": tensors}).encode()
        r = call(app, "POST", "/v2/models/churn/infer", body=head + b"\x00" * 16,
                 content_type="application/octet-stream", token=OPERATOR,
                 headers=[(b"inference-header-content-length", str(len(head)).encode())])
        assert_client_error(r, size)
    contract = FEATURES.index("contract")
    for raw in [b"\xff\xff\xff\xff", b"\x05\x00\x00\x00ab", b"\x02\x00\x00\x00\xff\xfe" * 2, b"\x01\x00",
                b"\x00\x00\x00\x80" + b"x" * 8]:
        tensors = oip_inputs(df)
        tensors[contract] = {"name": "contract", "datatype": "BYTES", "shape": [2],
                             "parameters": {"binary_data_size": len(raw)}}
        head = json.dumps({"inputs": tensors}).encode()
        r = call(app, "POST", "/v2/models/churn/infer", body=head + raw, content_type="application/octet-stream",
                 token=OPERATOR, headers=[(b"inference-header-content-length", str(len(head)).encode())])
        assert_client_error(r, raw)
    for head in [b"\xff\xfe{}", b"[]", b"", b"null", b'{"inputs": []}']:
        r = call(app, "POST", "/v2/models/churn/infer", body=head + b"\x00" * 8,
                 content_type="application/octet-stream", token=OPERATOR,
                 headers=[(b"inference-header-content-length", str(len(head)).encode())])
        assert_client_error(r, head)


UNICODE_DIGITS = ["²", "١", "１", "𝟙", "¹", "½", "Ⅰ", "٠", "1\u200b", "-1", "+1", " 1", "1 ", "1_0", "1e0", "1.0",
                  "0x1", "99999999999999999999999", "9" * 5000, "", "%", "..", "1/../1"]


def test_unicode_digits_and_odd_versions_in_paths_are_4xx(app, valid):
    """None is a version: 4xx, never a 5xx, and never served by version 1 (``01`` may be)."""
    body, content_type = valid["/v2/models/churn/infer"]
    problems = Problems()
    for version in UNICODE_DIGITS:
        r = call(app, "POST", f"/v2/models/churn/versions/{version}/infer", body=body, content_type=content_type,
                 token=OPERATOR)
        problems.check(assert_client_error, r, ("infer", version[:30]), status=(400, 404))
        for suffix in ("", "/ready"):
            r = call(app, "GET", f"/v2/models/churn/versions/{version}{suffix}", token=OPERATOR)
            problems.check(assert_client_error, r, ("metadata", version[:30], suffix), status=(400, 404))
        for query in (b"version=", b"limit="):
            for route in ("drift", "history", "report"):
                r = call(app, "GET", f"/monitoring/churn/{route}", token=OPERATOR,
                         query=query + urllib.parse.quote(version).encode())
                problems.check(assert_no_server_error, r, (route, query, version[:30]))
    problems.assert_none()


@pytest.mark.parametrize("name", ["", "@", "churn@", "@production", "churn@@production", "churn@" + "a" * 5000,
                                  "a" * 10_000, "churn\x00", "ch%urn", "churn ", "CHURN", "churn/../upsell",
                                  "²", "churn@١", "..", ".", "churn;x", "churn@\ud800", "\ud800"])
def test_odd_model_names_are_4xx(app, valid, name):
    """Names that are no served model (or alias) are 4xx; ``churn@`` and ``churn `` may read as ``churn``."""
    check = assert_no_server_error if name in ("churn@", "churn ") else assert_client_error
    body, content_type = valid["/predict/churn"]
    for path in [f"/predict/{name}", f"/models/{name}/invocations"]:
        body_for = valid["/models/churn/invocations"][0] if "invocations" in path else body
        check(call(app, "POST", path, body=body_for, content_type=content_type, token=OPERATOR), path[:80])
    oip = valid["/v2/models/churn/infer"][0]
    check(call(app, "POST", f"/v2/models/{name}/infer", body=oip, content_type=content_type, token=OPERATOR),
          name[:80])
    for path in [f"/v2/models/{name}", f"/v2/models/{name}/ready", f"/monitoring/{name}/drift",
                 f"/monitoring/{name}/history", f"/monitoring/{name}/report"]:
        check(call(app, "GET", path, token=OPERATOR), path[:80])
    fb = valid["/feedback/churn"][0]
    check(call(app, "POST", f"/feedback/{name}", body=fb, content_type=content_type, token=OPERATOR), name[:80])


@pytest.mark.parametrize("query", [b"limit=\xc2\xb2", b"limit=-1", b"limit=99999999999999999999999",
                                   b"limit=" + b"9" * 5000, b"limit=%00", b"limit=1&limit=2", b"limit=%ff",
                                   b"\xff=\xff", b"version=%ff", b"version=" + b"9" * 5000])
def test_odd_queries_get_no_5xx(app, query):
    for path in ("/monitoring/churn/history", "/monitoring/churn/drift", "/monitoring/churn/report"):
        assert_no_server_error(call(app, "GET", path, query=query, token=OPERATOR), (path, query))


@pytest.mark.parametrize("rid", [b"\xff\xfe", b"a" * 10_000, b"x\x00y", b"\xe2\x80\xa8", b"", b" ", b"\x7f",
                                 b"\xc3\xa9t\xc3\xa9", b"../../etc/passwd", b"a\tb"])
def test_hostile_request_ids_get_no_5xx(app, valid, rid):
    for path in INFERENCE_POSTS:
        body, content_type = valid[path]
        r = call(app, "POST", path, body=body, content_type=content_type, token=OPERATOR,
                 headers=[(b"x-request-id", rid)])
        assert r.status == 200, (path, rid[:20], r.status, r.body[:300])
        loom_id = r.headers.get("x-loom-request-id", "")
        assert loom_id and loom_id.isascii() and loom_id.isprintable(), r.headers


# -- request ids, capture and feedback ------------------------------------------------------------------------------


def test_responses_carry_a_server_request_id(app, valid):
    for path in INFERENCE_POSTS:
        body, content_type = valid[path]
        ids = set()
        for _ in range(2):
            r = call(app, "POST", path, body=body, content_type=content_type, token=INFERENCE,
                     headers=[(b"x-request-id", b"client-same")])
            assert r.status == 200, r.body[:300]
            ids.add(r.headers.get("x-loom-request-id"))
        assert None not in ids and "client-same" not in ids and len(ids) == 2, (path, ids)
        bad = call(app, "POST", path, body=b"{", content_type="application/json", token=INFERENCE)
        assert bad.status == 400 and bad.headers.get("x-loom-request-id"), (path, bad.headers)


def test_samples_are_keyed_by_the_server_id_and_feedback_joins_on_it(project, frame):
    server = tokened_server(project)  # a fresh capture window
    app = LoomApp(server)
    served: list[tuple[str, str]] = []
    for i, rec in enumerate(records(frame.head(40))):
        r = call(app, "POST", "/predict/churn", body=json.dumps([rec]).encode(), content_type="application/json",
                 token=INFERENCE, headers=[(b"x-request-id", f"client-{i}".encode())])
        assert r.status == 200, r.body[:300]
        served.append((r.headers["x-loom-request-id"], f"client-{i}"))
    oip = call(app, "POST", "/v2/models/churn/infer", content_type="application/json", token=INFERENCE,
               body=json.dumps({"inputs": oip_inputs(frame.head(1)), "id": "oip-7"}).encode())
    assert oip.status == 200 and oip.json()["id"] == "oip-7"
    oip_server_id = oip.headers["x-loom-request-id"]
    assert oip_server_id != "oip-7"

    window = server.resolve("churn", "1").capture.frame()
    assert "client_request_id" in window.columns, list(window.columns)
    by_id = dict(zip(window["request_id"], window["client_request_id"]))
    for server_id, client_id in served:
        assert by_id.get(server_id) == client_id, (server_id, client_id)
    assert not set(window["request_id"]) & {c for _, c in served}
    assert by_id.get(oip_server_id) == "oip-7"

    # Labels sent under the server's ids join; labels under the clients' ids do not.
    labels = [{"id": sid, "label": True} for sid, _ in served[:10]]
    labels += [{"id": cid, "label": True} for _, cid in served[10:20]]
    r = call(app, "POST", "/feedback/churn", body=json.dumps({"labels": labels}).encode(),
             content_type="application/json", token=OPERATOR)
    assert r.status == 200, r.body[:300]
    r = call(app, "GET", "/monitoring/churn/drift", token=OPERATOR)
    assert r.status == 200, r.body[:500]
    assert r.json()["performance"]["rows"] == 10, r.json()["performance"]

    report = call(app, "GET", "/monitoring/churn/report", token=OPERATOR)
    assert report.status == 200 and report.headers["content-type"].startswith("text/html"), report.body[:300]
    assert "sandbox" in report.headers.get("content-security-policy", ""), report.headers


# -- schemathesis over every route, with and without a token ------------------------------------------------------


def _operations(app) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {OPERATOR}"})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    return operations


def _fuzz(operation, check, examples: int = 15) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        check(case)

    fuzz()


def _is_operator(path: str) -> bool:
    return path in ("/models", "/metrics") or path.startswith(("/monitoring/", "/feedback/"))


def test_schemathesis_with_the_operator_token_finds_no_server_error(app):
    def check(case) -> None:
        response = case.call_and_validate(headers={"Authorization": f"Bearer {OPERATOR}"},
                                          checks=[not_a_server_error])
        assert response.status_code not in (401, 403), (case.method, case.formatted_path, response.text[:300])

    for operation in _operations(app):
        _fuzz(operation, check, 10 if operation.path.startswith("/monitoring/") else 20)


def test_schemathesis_with_the_inference_token(app):
    def check(case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {INFERENCE}"})
        assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
        if _is_operator(case.operation.path):
            assert response.status_code == 403, (case.method, case.formatted_path, response.status_code)
        else:
            assert response.status_code not in (401, 403), (case.method, case.formatted_path, response.text[:300])

    for operation in _operations(app):
        _fuzz(operation, check, 10)


def test_schemathesis_without_a_token_gets_401_everywhere_but_the_probes(app):
    def check(case) -> None:
        response = case.call()
        assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
        if case.operation.path in PROBES and case.method.upper() == "GET":
            return
        assert response.status_code == 401, (case.method, case.formatted_path, response.status_code)
        assert (response.headers.get("www-authenticate") or [""])[0].startswith("Bearer"), response.headers

    for operation in _operations(app):
        _fuzz(operation, check, 15)


# -- exposure and batching ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "models.example.com"])
def test_a_non_loopback_host_without_a_token_is_refused_naming_the_setting(project, host):
    from runtime.errors import ConfigError
    from runtime.serving.server import check_exposure, is_loopback

    exposed = Project(root=project.root, config=project.config.model_copy(
        update={"serving": project.config.serving.model_copy(update={"host": host})}))
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match=r"serving\.auth_token_env") as err:
        check_exposure(exposed, None)
    assert host in str(err.value)
    check_exposure(exposed, "a-token")  # with a token it may bind there
    with pytest.raises(ConfigError, match="serving.host"):
        ModelServer(exposed, get_plugins(modules=exposed.config.plugins))  # a replica refuses too


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_need_no_token(host):
    from runtime.serving.server import is_loopback

    assert is_loopback(host)


def test_a_request_larger_than_max_batch_size_is_split_into_forward_passes():
    """serving.max_rows bounds a request; within it, a request is cut into forward passes of max_batch_size rows,
    and the caller gets its rows back in order."""
    from runtime.serving.batching import MicroBatcher

    seen: list[int] = []

    def forward(x):
        seen.append(len(x[0]))
        return x[0] * 2

    async def run():
        batcher = MicroBatcher(forward, max_rows=64)
        x = np.arange(200, dtype=np.float32).reshape(200, 1)
        small = np.ones((3, 1), dtype=np.float32)
        big, other = await asyncio.gather(batcher((x,)), batcher((small,)))
        return x, big, other

    x, big, other = asyncio.run(run())
    assert np.array_equal(big, x * 2) and np.array_equal(other, np.full((3, 1), 2, dtype=np.float32))
    assert max(seen) <= 64 and sum(seen) == 203
