"""The HTTP surface of a :class:`~runtime.serving.server.ModelServer`.

Inference routes (Open Inference Protocol v2, MLflow ``/invocations``, ``/predict``) and health probes are
dispatched by a small ASGI front, :class:`LoomApp`, without a web framework in the request path: at one-row requests
the framework is most of the cost. Everything else (metadata, ``/docs``, ``/openapi.json``, ``/metrics``, drift
and admin routes) is a FastAPI app behind it. Both answer errors as ``{"error": "..."}`` with a 4xx status naming
the problem; an unexpected failure is a 500 with a generic message (logged), never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from . import oip
from .openapi import build_openapi
from .protocol import RequestError
from .scoring import decode_mlflow, decode_predict
from .capture import new_request_id
from .drift import DriftChecks
from .server import LoadedVersion, ModelServer

log = logging.getLogger("loom.serving")

#: Paths that never need the bearer token: probes, and the documents describing the API.
OPEN_PATHS = ("/v2/health/", "/docs", "/openapi.json", "/metrics")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]


class _Disconnected(Exception):
    """The client went away before sending its whole body."""


class _Call:
    """One inference request as the handlers see it: the version it reached, and its request id (the client's
    ``X-Request-ID``, else an Open Inference Protocol ``id``, else a new one), echoed in ``X-Request-ID``."""

    __slots__ = ("target", "request_id")

    def __init__(self, supplied: bytes | None):
        self.target: LoadedVersion | None = None
        self.request_id = (supplied.decode("latin-1") if supplied and len(supplied) <= 128 and supplied.isascii()
                           and supplied.decode("latin-1").isprintable() else "")

    def id(self, protocol_id: str | None = None) -> str:
        if not self.request_id:
            self.request_id = str(protocol_id)[:128] if protocol_id else new_request_id()
        return self.request_id


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class LoomApp:
    """The ASGI application: auth, body limits and the inference routes; the rest goes to FastAPI."""

    def __init__(self, server: ModelServer, checks: DriftChecks | None = None):
        self.server = server
        #: Drift checks, feedback and their schedule over the server's captured traffic.
        self.checks = checks if checks is not None else DriftChecks.of(server)
        cfg = server.project.config
        self.max_body = cfg.serving.max_body_bytes
        self.default_model = cfg.model.name
        self._bearer = f"Bearer {server.token}".encode() if server.token else None
        self.api = metadata_api(server, self.checks)
        # In a Serve replica, Serve's request-id middleware puts an X-Request-ID on every request (the client's, or
        # a new one) and echoes it on the response; outside Serve this app does both itself.
        self._echo_request_id = not server.metrics.replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        headers = dict(scope["headers"])
        if self._bearer is not None and not path.startswith(OPEN_PATHS):
            supplied = headers.get(b"authorization", b"")
            if not hmac.compare_digest(supplied, self._bearer):
                await _respond(send, 401, _dumps({"error": "missing or wrong bearer token "
                                                           "(send 'Authorization: Bearer <token>')"}),
                               [*_JSON, (b"www-authenticate", b"Bearer")])
                return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _respond(send, 413, _dumps({"error": f"request body larger than {self.max_body} bytes"}), _JSON)
            return
        route = self._route(scope["method"], path)
        if route is None:
            await self.api(scope, receive, send)
            return
        await self._serve(route, headers, receive, send)

    # -- dispatch ----------------------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> tuple[str, Callable[..., Awaitable[Any]], tuple[str, ...]] | None:
        parts = path.strip("/").split("/")
        n = len(parts)
        if parts[0] == "v2":
            if n == 3 and parts[1] == "health" and method == "GET":
                return ("health", self._health, (parts[2],)) if parts[2] in ("live", "ready") else None
            if n == 4 and parts[1] == "models" and parts[3] == "infer":
                return self._post(method, "v2", self._infer, (parts[2], None))
            if n == 6 and parts[1] == "models" and parts[3] == "versions" and parts[5] == "infer":
                return self._post(method, "v2", self._infer, (parts[2], parts[4]))
            return None
        if n == 2 and parts[0] == "predict":
            return self._post(method, "predict", self._predict, (parts[1],))
        if n == 1 and parts[0] == "invocations":
            return self._post(method, "mlflow", self._invocations, (self.default_model,))
        if n == 3 and parts[0] == "models" and parts[2] == "invocations":
            return self._post(method, "mlflow", self._invocations, (parts[1],))
        return None

    def _post(self, method: str, protocol: str, handler: Callable[..., Awaitable[Any]],
              args: tuple[Any, ...]) -> tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]]:
        if method != "POST":
            return protocol, self._method_not_allowed, ()
        return protocol, handler, args

    async def _serve(self, route: tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]],
                     headers: dict[bytes, bytes], receive: Receive, send: Send) -> None:
        protocol, handler, args = route
        started = time.perf_counter()
        call = _Call(headers.get(b"x-request-id"))
        try:
            body = await self._body(receive) if protocol != "health" else b""
            status, payload, extra = await handler(body, headers, call, *args)
        except RequestError as err:
            status, payload = err.status, _dumps({"error": err.message})
            extra = [*_JSON, *((k.lower().encode(), v.encode()) for k, v in err.headers.items())]
        except _Disconnected:
            return
        except Exception as err:  # noqa: BLE001 - answered as a generic 500, logged with its traceback
            log.exception("unexpected error while serving a request")
            status, extra = 500, _JSON
            payload = _dumps({"error": f"internal error ({type(err).__name__}); see the server log"})
        if call.request_id and self._echo_request_id:
            extra = [*extra, (b"x-request-id", call.request_id.encode("latin-1"))]
        await _respond(send, status, payload, extra)
        if protocol != "health":
            lv = call.target
            self.server.metrics.observe(lv.name if lv else "", lv.label if lv else "", protocol, status,
                                        time.perf_counter() - started)

    async def _body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise RequestError(413, f"request body larger than {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- handlers: (body, headers, call, *args) -> (status, body, headers) ------------------------------------

    async def _method_not_allowed(self, body: bytes, headers: dict[bytes, bytes], call: _Call):
        raise RequestError(405, "use POST for inference", {"Allow": "POST"})

    async def _health(self, body: bytes, headers: dict[bytes, bytes], call: _Call, kind: str):
        if kind == "live":
            return 200, b'{"live":true}', _JSON
        ready = self.server.ready
        return (200 if ready else 503), _dumps({"ready": ready}), _JSON

    async def _infer(self, body: bytes, headers: dict[bytes, bytes], call: _Call, name: str,
                     version: str | None):
        lv = self.server.resolve(name, version)
        call.target = lv
        header_length = headers.get(b"inference-header-content-length")
        req = oip.decode_infer(body, header_length.decode() if header_length is not None else None, lv.schema,
                               oip.REGRESSION_OUTPUTS if lv.regression else oip.OUTPUTS)
        pred = await lv.predict(req.columns, call.id(req.id))
        out, content = oip.encode_infer(lv.name, lv.version, pred.labels, lv.label_type, pred.proba, req)
        return 200, out, [(k.encode(), v.encode()) for k, v in content.items()]

    async def _predict(self, body: bytes, headers: dict[bytes, bytes], call: _Call, name: str):
        lv = self.server.resolve(name)
        call.target = lv
        req = decode_predict(body, lv.schema, self.server.join_keys)
        cols = req.columns if req.columns is not None else await self.server.entity_columns(lv, req.entities or {})
        pred = await lv.predict(cols, call.id())
        if pred.proba is None:  # regression: values
            return 200, _dumps({"model": lv.name, "version": lv.version, "predictions": pred.labels}), _JSON
        return 200, _dumps({"model": lv.name, "version": lv.version, "predictions": pred.labels,
                            "probabilities": pred.proba.round(6).tolist(), "classes": lv.classes}), _JSON

    async def _invocations(self, body: bytes, headers: dict[bytes, bytes], call: _Call, name: str):
        lv = self.server.resolve(name)
        call.target = lv
        content_type = headers.get(b"content-type")
        cols = decode_mlflow(body, content_type.decode("latin-1") if content_type else None, lv.schema)
        pred = await lv.predict(cols, call.id())
        return 200, _dumps({"predictions": pred.labels}), _JSON


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def metadata_api(server: ModelServer, checks: DriftChecks) -> FastAPI:
    """Metadata, documentation, metrics, monitoring and admin routes."""
    api = FastAPI(title="Loom", version=__version__,
                  description="Models served by Loom: Open Inference Protocol v2, MLflow scoring and record-style "
                              "prediction. Inference routes take `name`, `name@alias` or "
                              "`name/versions/N`.",
                  responses={"default": {"model": ErrorBody, "description": "A client error (4xx), named"}})
    _error_handlers(api)
    api.openapi = _openapi_builder(api, server)  # type: ignore[method-assign]
    _health_routes(api, server)
    _oip_metadata_routes(api, server)
    _operations_routes(api, server)
    _monitoring_routes(api, checks)
    return api


def _error_handlers(api: FastAPI) -> None:
    """Every error as ``{"error": ...}``: Loom's own, FastAPI's 404/405/422, and a logged generic 500."""

    @api.exception_handler(RequestError)
    async def _request_error(_: Request, err: RequestError) -> JSONResponse:
        return _error(err.status, err.message, err.headers)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = str(err.detail)
        if err.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            message = f"{message.lower()}: {request.method} {request.url.path}"
        return _error(err.status_code, message, dict(err.headers or {}))

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request")
        return _error(500, f"internal error ({type(err).__name__}); see the server log")


def _openapi_builder(api: FastAPI, server: ModelServer) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document with each served model's request schema, rebuilt when the routing table changes."""

    def openapi() -> dict[str, Any]:
        table = server.table
        cached = getattr(api, "_loom_openapi", None)
        if cached is not None and cached[0] == table.generation:
            return cached[1]
        from fastapi.openapi.utils import get_openapi

        base = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        models = []
        for name, routes in table.models.items():
            lv = server.resolve(name, str(routes.primary))
            models.append((name, lv.schema, lv.classes))
        doc = build_openapi(base, models)
        api._loom_openapi = (table.generation, doc)  # type: ignore[attr-defined]
        return doc

    return openapi


def _health_routes(api: FastAPI, server: ModelServer) -> None:
    # Documented here; LoomApp answers them itself before FastAPI is reached.
    @api.get("/v2/health/live", tags=["health"], summary="Liveness probe")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready", tags=["health"], summary="Readiness probe: 200 once a model is loaded")
    async def ready() -> dict[str, bool]:
        return {"ready": server.ready}


def _oip_metadata_routes(api: FastAPI, server: ModelServer) -> None:
    """Open Inference Protocol v2 server and model metadata, and model readiness."""

    @api.get("/v2", tags=["Open Inference Protocol v2"], summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return oip.server_metadata(__version__)

    def _metadata(name: str, version: str | None) -> dict[str, Any]:
        lv = server.resolve(name, version)
        routes = server.routes(lv.name)
        versions = ([version or str(lv.version)] if version is not None or "@" in name
                    else [str(v) for v in routes.live])
        return oip.model_metadata(name, [int(v) for v in versions], lv.schema, lv.classes, lv.regression)

    @api.get("/v2/models/{name}", tags=["Open Inference Protocol v2"], summary="Model metadata")
    async def model_metadata(name: str) -> dict[str, Any]:
        return _metadata(name, None)

    @api.get("/v2/models/{name}/versions/{version}", tags=["Open Inference Protocol v2"],
             summary="Model version metadata")
    async def model_version_metadata(name: str, version: str) -> dict[str, Any]:
        return _metadata(name, version)

    @api.get("/v2/models/{name}/ready", tags=["Open Inference Protocol v2"], summary="Model readiness")
    async def model_ready(name: str) -> dict[str, Any]:
        lv = server.resolve(name, None if "@" in name else str(server.routes(name).primary))
        return {"name": name, "ready": True, "version": str(lv.version)}

    @api.get("/v2/models/{name}/versions/{version}/ready", tags=["Open Inference Protocol v2"],
             summary="Model version readiness")
    async def model_version_ready(name: str, version: str) -> dict[str, Any]:
        lv = server.resolve(name, version)
        return {"name": name, "ready": True, "version": str(lv.version)}


def _operations_routes(api: FastAPI, server: ModelServer) -> None:
    """The routing table and Prometheus metrics."""

    @api.get("/models", tags=["admin"], summary="Served models, their live versions, traffic and aliases")
    async def models() -> dict[str, Any]:
        return server.table.to_config()

    @api.get("/metrics", tags=["operations"], summary="Prometheus metrics of this replica",
             response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=server.metrics.content_type)


def _monitoring_routes(api: FastAPI, checks: DriftChecks) -> None:
    """Drift checks, the monitor's HTML report, check history and feedback labels."""

    @api.get("/monitoring/{name}/drift", tags=["operations"],
             summary="Drift of captured traffic against the training reference")
    async def drift(name: str, version: str | None = None) -> dict[str, Any]:
        return await run_in_threadpool(checks.check, name, version)

    @api.get("/monitoring/{name}/report", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/html": {}}, "description": "Evidently's HTML report"}},
             summary="The drift monitor's HTML report of captured traffic against the training reference")
    async def drift_report(name: str, version: str | None = None) -> Response:
        return HTMLResponse(await run_in_threadpool(checks.html, name, version))

    @api.get("/monitoring/{name}/history", tags=["operations"],
             summary="Summaries of past drift checks of this replica, oldest first")
    async def drift_history(name: str, limit: int | None = None) -> list[dict[str, Any]]:
        return checks.history(name, limit)

    @api.post("/feedback/{name}", tags=["operations"],
              summary='Ground-truth labels for served request ids: {"labels": [{"id": ..., "label": ...}]}')
    async def feedback(name: str, request: Request) -> dict[str, Any]:
        try:
            payload = json.loads(await request.body())
        except ValueError:
            raise RequestError(400, "the body is not valid JSON") from None
        return checks.feedback(name, payload)
