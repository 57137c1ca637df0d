"""The HTTP surface: Open Inference Protocol v2, ``/predict``, health, metrics and monitoring, on FastAPI.

Every error is JSON ``{"error": "..."}`` with a 4xx status naming the problem; an unexpected failure is a 500 with
a generic message (logged server-side), never a stack trace.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..model import OIP_DATATYPES
from .protocol import RequestError, decode_oip, decode_records, encode_oip, output_metadata
from .server import ModelServer

log = logging.getLogger("loom.serving")

OPEN_PATHS = ("/v2/health/", "/metrics", "/docs", "/openapi.json")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(server: ModelServer) -> FastAPI:
    """Build the FastAPI app for a :class:`ModelServer`."""
    max_body = server.project.config.serving.max_body_bytes
    app = FastAPI(title="Loom", version=__version__,
                  description="Models served by Loom: Open Inference Protocol v2 and record-style prediction.")

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, err: RequestError) -> JSONResponse:
        return _error(err.status, err.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request")
        return _error(500, f"internal error ({type(err).__name__}); see the server log")

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if server.token and not path.startswith(OPEN_PATHS):
            supplied = request.headers.get("authorization", "")
            if not hmac.compare_digest(supplied.encode(), f"Bearer {server.token}".encode()):
                return _error(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            return _error(413, f"request body larger than {max_body} bytes")
        return await call_next(request)

    async def _json(request: Request):
        body = await request.body()
        if len(body) > max_body:
            raise RequestError(413, f"request body larger than {max_body} bytes")
        if not body:
            raise RequestError(400, "empty request body: send JSON")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(400, f"malformed JSON: {err}") from None

    def _observe(name: str, version: int, protocol: str, code: int, started: float) -> None:
        server.requests.labels(name, str(version), protocol, str(code)).inc()
        server.latency.labels(name, str(version), protocol).observe(time.perf_counter() - started)

    # -- Open Inference Protocol v2 --------------------------------------------------------------------------

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": bool(server.models)}

    @app.get("/v2")
    async def server_metadata():
        return {"name": "loom", "version": __version__, "extensions": []}

    def _model_metadata(name: str, version: str | None):
        served = server.get(name, version)
        schema = served.predictor.inputs
        return {
            "name": name,
            "versions": [str(served.version)],
            "platform": "loom-pytorch",
            "inputs": [{"name": c, "datatype": OIP_DATATYPES[s["type"]], "shape": [-1]} for c, s in schema.items()],
            "outputs": output_metadata(served.predictor.classes),
        }

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str):
        return _model_metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}")
    async def model_version_metadata(name: str, version: str):
        return _model_metadata(name, version)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str):
        served = server.get(name)
        return {"name": name, "ready": True, "version": str(served.version)}

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_version_ready(name: str, version: str):
        server.get(name, version)
        return {"name": name, "ready": True, "version": version}

    async def _infer(request: Request, name: str, version: str | None):
        started = time.perf_counter()
        served = server.get(name, version)
        try:
            cols, meta = decode_oip(await _json(request), served.predictor.inputs)
            predicted, proba = server.predict(served, cols)
            out = encode_oip(name, served.version, predicted, proba, served.predictor.classes, meta)
        except RequestError as err:
            _observe(name, served.version, "v2", err.status, started)
            raise
        _observe(name, served.version, "v2", 200, started)
        return out

    @app.post("/v2/models/{name}/infer")
    async def infer(request: Request, name: str):
        return await _infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(request: Request, name: str, version: str):
        return await _infer(request, name, version)

    # -- record-style prediction ---------------------------------------------------------------------------------

    @app.post("/predict/{name}")
    async def predict(request: Request, name: str):
        """Body: a list of records (``[{"col": value, ...}]``) or ``{"records": [...]}``."""
        started = time.perf_counter()
        served = server.get(name)
        try:
            cols = decode_records(await _json(request), served.predictor.inputs)
        except RequestError as err:
            _observe(name, served.version, "predict", err.status, started)
            raise
        predicted, proba = server.predict(served, cols)
        _observe(name, served.version, "predict", 200, started)
        return {"model": name, "version": served.version,
                "predictions": [p.item() if hasattr(p, "item") else p for p in predicted],
                "probabilities": proba.astype(float).round(6).tolist()}

    # -- operations --------------------------------------------------------------------------------------------

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(server.metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/monitoring/{name}/drift")
    async def drift(name: str):
        return await run_in_threadpool(server.drift, name)

    return app
