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
import math
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
from .protocol import RequestError, parse_json
from .scoring import decode_mlflow, decode_predict
from .capture import new_request_id
from .console import console_routes, is_console, is_open, session_cookie, session_value
from .drift import DriftChecks, with_store
from .server import LoadedVersion, ModelServer

log = logging.getLogger("loom.serving")

#: The only routes that never need a token: the liveness and readiness probes (exact paths).
PROBES = frozenset({"/v2/health/live", "/v2/health/ready"})
#: Route scopes: open (the probes, ``serving.public_paths``), inference (inference and the documents describing it;
#: the inference or the operator token), operator (everything else: feedback, monitoring, metrics, admin; the
#: operator token only). A path matching no route is an operator path, so an unknown path reveals nothing.
OPEN, INFERENCE, OPERATOR = "open", "inference", "operator"
_INFERENCE_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json", "/v2", "/invocations"})
#: Request methods that carry a body and change state: checked for their content type and origin.
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: What the HTML Loom serves may do: run its own inline scripts in an opaque origin (no cookies, storage or
#: same-origin requests), load nothing from the network.
HTML_CSP = ("sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src data:; font-src data:")


def route_scope(path: str) -> str:
    """The scope of a path (after the route prefix): :data:`OPEN` (for GET and HEAD), :data:`INFERENCE` or
    :data:`OPERATOR`."""
    if path in PROBES:
        return OPEN
    if path in _INFERENCE_PATHS:
        return INFERENCE
    parts = path.split("/")
    head = parts[1] if len(parts) > 1 else ""
    if head == "predict" or (head == "v2" and len(parts) > 2 and parts[2] == "models"):
        return INFERENCE
    if head == "models" and len(parts) == 4 and parts[3] == "invocations":
        return INFERENCE
    return OPERATOR


def _media_type(value: bytes | None) -> str:
    return value.split(b";", 1)[0].strip().lower().decode("latin-1") if value else ""


def _host_name(host: str) -> str:
    """``example.com:8000`` -> ``example.com``; ``[::1]:8000`` -> ``::1``."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]


class _Disconnected(Exception):
    """The client went away before sending its whole body."""


class _Call:
    """One inference request as the handlers see it: the version it reached, the server's id of the request (sent
    back in ``X-Loom-Request-ID``, what feedback names) and the client's own id (``X-Request-ID``, else an Open
    Inference Protocol ``id``), kept beside it."""

    __slots__ = ("target", "request_id", "client_id", "shadow")

    def __init__(self, supplied: bytes | None):
        self.target: LoadedVersion | None = None
        #: A request that named no version: its columns and the predictions, for the model's shadow version.
        self.shadow: tuple[Any, list[Any]] | None = None
        self.request_id = new_request_id()
        self.client_id = _client_id(supplied.decode("latin-1")) if supplied else ""

    def client(self, protocol_id: str | None = None) -> str:
        """The client's id of the request (the header's, else ``protocol_id``): printable ASCII of at most 128
        characters, else none (it is echoed in a header)."""
        if not self.client_id and protocol_id:
            self.client_id = _client_id(protocol_id)
        return self.client_id


def _client_id(value: str) -> str:
    return value if len(value) <= 128 and value.isascii() and value.isprintable() else ""


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class LoomApp:
    """The ASGI application: auth, body limits and the inference routes; the rest goes to FastAPI."""

    def __init__(self, server: ModelServer, checks: Any = None):
        self.server = server
        #: Drift checks, feedback and their schedule over the server's captured traffic: this replica's own
        #: (:class:`DriftChecks`), or the deployment monitor's (:class:`~runtime.serving.monitor.RemoteChecks`).
        self.checks = checks if checks is not None else DriftChecks.of(server)
        cfg = server.project.config
        self.max_body = cfg.serving.max_body_bytes
        self.limits = server.limits
        self.default_model = cfg.model.name
        self.public_paths = frozenset(cfg.serving.public_paths)
        self.allowed_hosts = tuple(h.lower() for h in cfg.serving.allowed_hosts)
        self._inference = f"Bearer {server.token}".encode() if server.token else None
        self._operator = f"Bearer {server.operator_token}".encode() if server.operator_token else None
        #: The console's session cookie (an HMAC of the operator token) and where to sign in.
        self._session = session_value(server.operator_token).encode() if server.operator_token else b""
        self._login = f"{cfg.serving.route_prefix.rstrip('/')}/ui/login".encode()
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
        method = scope["method"]
        refused = self._guard(method, path, headers)
        if refused is not None:
            status, message, extra = refused
            await _respond(send, status, _dumps({"error": message}), [*_JSON, *extra])
            return
        route = self._route(method, path)
        if route is None:
            if method in _WRITES:  # read here, under the body limit, and handed to FastAPI whole
                try:
                    body = await self._body(receive)
                except RequestError as err:
                    await _respond(send, err.status, _dumps({"error": err.message}), _JSON)
                    return
                except _Disconnected:
                    return
                receive = _replay(body, receive)
            await self.api(scope, receive, send)
            return
        await self._serve(route, headers, receive, send)

    def _guard(self, method: str, path: str, headers: dict[bytes, bytes]) -> tuple[int, str, list] | None:
        """The answer to a request refused before routing (host, token, content type, origin, length), or None."""
        probe = path in PROBES and method in ("GET", "HEAD")
        if self.allowed_hosts and not probe:  # a kubelet probes by the pod's IP
            host = headers.get(b"host", b"").decode("latin-1")
            name = _host_name(host).lower()
            if not any(name == h or h == "*" or (h.startswith("*.") and name.endswith(h[1:]))
                       for h in self.allowed_hosts):
                return 400, f"host {host[:80]!r} is not served here (serving.allowed_hosts)", []
        scope = OPEN if probe or path in self.public_paths else route_scope(path)
        if scope == OPEN and path in PROBES and not probe:
            scope = OPERATOR
        console = is_console(path)
        if console and is_open(path):
            scope = OPEN
        if console and scope != OPEN and self._operator is not None:
            if not (hmac.compare_digest(session_cookie(headers) or b"", self._session)
                    or hmac.compare_digest(headers.get(b"authorization", b""), self._operator)):
                if path.startswith("/ui/api/") or method not in ("GET", "HEAD"):
                    return 401, "sign in to the console (POST /ui/login) or send the operator token", []
                return 303, "sign in to the console at /ui/login", [(b"location", self._login)]
        elif scope != OPEN:
            needed = self._operator if scope == OPERATOR else self._inference
            if needed is not None:
                supplied = headers.get(b"authorization", b"")
                if not (hmac.compare_digest(supplied, self._operator or b"")
                        or scope == INFERENCE and hmac.compare_digest(supplied, needed)):
                    if (scope == OPERATOR and self._inference is not None
                            and hmac.compare_digest(supplied, self._inference)):
                        return 403, "this route needs the operator token (serving.operator_token_env)", []
                    return (401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                            [(b"www-authenticate", b"Bearer")])
        if method in _WRITES:
            problem = self._write_problem(path, headers)
            if problem is not None:
                return problem
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return 400, "the Content-Length header is not a byte count", []
            if int(length) > self.max_body:
                return 413, f"request body larger than {self.max_body} bytes (serving.max_body_bytes)", []
        return None

    def _write_problem(self, path: str, headers: dict[bytes, bytes]) -> tuple[int, str, list] | None:
        """A request that writes must come from this origin (browsers send Origin on cross-site requests) and say
        it carries JSON, CSV (MLflow scoring) or binary tensors (Open Inference Protocol)."""
        origin = headers.get(b"origin")
        if origin is not None:
            netloc = origin.decode("latin-1").partition("://")[2].rstrip("/")
            if netloc.lower() != headers.get(b"host", b"").decode("latin-1").lower():
                return 403, f"cross-origin request from {origin.decode('latin-1')[:80]!r} refused", []
        kind = _media_type(headers.get(b"content-type"))
        if kind == "application/json" or kind.endswith("+json"):
            return None
        if kind == "application/x-www-form-urlencoded" and path in ("/ui/login", "/ui/logout"):
            return None  # the console's sign-in form (same origin only, checked above)
        infer = path.startswith("/v2/models/") and path.endswith("/infer")
        if infer and (kind in ("", "application/octet-stream")):
            return None  # tritonclient sends no content type, JSON or binary
        if kind == "text/csv" and (path == "/invocations" or path.startswith("/models/")):
            return None
        accepted = "application/json" + (", text/csv" if "invocations" in path else "") + (
            " or application/octet-stream (binary tensors)" if infer else "")
        return 415, f"unsupported content type {kind[:60] or '(none)'!r}: send {accepted}", []

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
        if protocol != "health":
            extra = [*extra, (b"x-loom-request-id", call.request_id.encode())]
            if self._echo_request_id:
                extra.append((b"x-request-id", (call.client_id or call.request_id).encode("latin-1")))
        await _respond(send, status, payload, extra)
        if protocol != "health":
            lv = call.target
            self.server.metrics.observe(lv.name if lv else "", lv.label if lv else "", protocol, status,
                                        time.perf_counter() - started)
            if call.shadow is not None and status == 200 and lv is not None:  # answered: now the shadow's turn
                self.server.shadow(lv, *call.shadow, call.request_id, call.client_id)

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
        req = oip.decode_infer(body, header_length.decode("latin-1") if header_length is not None else None,
                               lv.schema, oip.REGRESSION_OUTPUTS if lv.regression else oip.OUTPUTS, self.limits)
        pred = await lv.predict(req.columns, call.request_id, call.client(req.id))
        if version is None and "@" not in name:
            call.shadow = (req.columns, pred.labels)
        out, content = oip.encode_infer(lv.name, lv.version, pred.labels, lv.label_type, pred.proba, req)
        return 200, out, [(k.encode(), v.encode()) for k, v in content.items()]

    async def _predict(self, body: bytes, headers: dict[bytes, bytes], call: _Call, name: str):
        lv = self.server.resolve(name)
        call.target = lv
        req = decode_predict(body, lv.schema, self.server.join_keys, self.limits)
        cols = req.columns if req.columns is not None else await self.server.entity_columns(lv, req.entities or {})
        pred = await lv.predict(cols, call.request_id, call.client_id)
        if "@" not in name:
            call.shadow = (cols, pred.labels)
        if pred.proba is None:  # regression: values
            return 200, _dumps({"model": lv.name, "version": lv.version, "predictions": pred.labels}), _JSON
        return 200, _dumps({"model": lv.name, "version": lv.version, "predictions": pred.labels,
                            "probabilities": pred.proba.round(6).tolist(), "classes": lv.classes}), _JSON

    async def _invocations(self, body: bytes, headers: dict[bytes, bytes], call: _Call, name: str):
        lv = self.server.resolve(name)
        call.target = lv
        content_type = headers.get(b"content-type")
        cols = decode_mlflow(body, content_type.decode("latin-1") if content_type else None, lv.schema, self.limits)
        pred = await lv.predict(cols, call.request_id, call.client_id)
        if "@" not in name:
            call.shadow = (cols, pred.labels)
        return 200, _dumps({"predictions": pred.labels}), _JSON


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over an already read body, then waits on the connection as before."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def metadata_api(server: ModelServer, checks: Any) -> FastAPI:
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
    _operations_routes(api, server, checks)
    _monitoring_routes(api, checks)
    console_routes(api, server, checks, report_csp=HTML_CSP)
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


def _operations_routes(api: FastAPI, server: ModelServer, checks: Any) -> None:
    """The routing table and Prometheus metrics."""

    @api.get("/models", tags=["admin"], summary="Served models, their live versions, traffic and aliases")
    async def models() -> dict[str, Any]:
        return server.table.to_config()

    @api.get("/metrics", tags=["operations"], summary="Prometheus metrics of this replica",
             response_class=PlainTextResponse)
    async def metrics() -> Response:
        text = server.metrics.render()
        deployment = getattr(checks, "deployment_metrics", None)  # the deployment monitor's drift gauges
        if deployment is not None:
            text += await run_in_threadpool(deployment)
        return Response(text, media_type=server.metrics.content_type)


#: The longest window ``/monitoring/{model}/traffic`` answers (what the monitor keeps of each replica's counts).
MAX_TRAFFIC_WINDOW_S = 900


def traffic_window(value: str | None) -> float:
    """The ``window_s`` of a traffic request: seconds, 1 to :data:`MAX_TRAFFIC_WINDOW_S` (default 60)."""
    if value is None:
        return 60.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 1 <= seconds <= MAX_TRAFFIC_WINDOW_S:  # NaN too
        raise RequestError(400, f"window_s must be a number of seconds from 1 to {MAX_TRAFFIC_WINDOW_S}, "
                                f"not {value[:40]!r}")
    return seconds


def _monitoring_routes(api: FastAPI, checks: Any) -> None:
    """Drift checks, the monitor's HTML report, check history, live traffic and feedback labels."""

    @api.get("/monitoring/{name}/drift", tags=["operations"],
             summary="Drift of captured traffic against the training reference")
    async def drift(name: str, version: str | None = None) -> dict[str, Any]:
        return with_store(await run_in_threadpool(checks.check, name, version), checks.server)

    @api.get("/monitoring/{name}/report", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/html": {}}, "description": "Evidently's HTML report"}},
             summary="The drift monitor's HTML report of captured traffic against the training reference")
    async def drift_report(name: str, version: str | None = None) -> Response:
        # The report shows served values: it runs sandboxed (no cookies, storage, same-origin or network access).
        return HTMLResponse(await run_in_threadpool(checks.html, name, version),
                            headers={"Content-Security-Policy": HTML_CSP, "X-Content-Type-Options": "nosniff"})

    @api.get("/monitoring/{name}/history", tags=["operations"],
             summary="Summaries of past drift checks, oldest first")
    async def drift_history(name: str, limit: int | None = None) -> list[dict[str, Any]]:
        return checks.history(name, limit)

    @api.get("/monitoring/{name}/traffic", tags=["operations"],
             summary="Requests, errors, rate and latency per version over the last window_s seconds (every "
                     "replica's, with a deployment monitor), and the shadow version's agreement with the primary")
    async def traffic(name: str, window_s: str | None = None) -> dict[str, Any]:
        checks.server.routes(name)
        seconds = traffic_window(window_s)
        deployment = getattr(checks, "traffic", None)  # the deployment monitor's view, else this replica's own
        if deployment is not None:
            return await run_in_threadpool(deployment, name, seconds)
        return checks.server.traffic(name, seconds)

    @api.post("/feedback/{name}", tags=["operations"],
              summary='Ground-truth labels for served request ids: {"labels": [{"id": ..., "label": ...}]}')
    async def feedback(name: str, request: Request) -> dict[str, Any]:
        payload = parse_json(await request.body(), checks.server.limits,
                             'send {"labels": [{"id": "<X-Loom-Request-ID>", "label": ...}]}')
        return checks.feedback(name, payload)
