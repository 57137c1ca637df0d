"""The web console at ``/ui``: models and versions with lineage, routing, live traffic, drift over time, feedback
and the retrain loop's rounds, as server-rendered HTML with SVG charts and one small script, all shipped in the
package (no CDN, no build step; it renders with no network access).

It is an operator route. :class:`~runtime.serving.app.LoomApp` lets a request in with the operator token, as an
``Authorization`` header or as the console's session cookie, which the sign-in form sets: an HMAC of the token,
``HttpOnly`` and ``SameSite=Strict``, so the token itself never sits in a URL, a page or a script. Pages that are
refused redirect to the sign-in form; ``/ui/api/*`` answers 401 JSON like every other route.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ..protocol import RequestError
from . import pages, views

#: The session cookie's name.
COOKIE = "loom_console"
#: Paths of the console that need no token: the sign-in form and the static files (no data in them).
OPEN_PATHS = frozenset({"/ui/login"})
STATIC_PREFIX = "/ui/static/"
#: The longest form the sign-in accepts (bytes).
MAX_FORM = 4096
#: The console's pages: their own scripts and styles only, nothing from elsewhere, never framed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store"}
_STATIC = {"console.js": "text/javascript", "console.css": "text/css"}


def is_console(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


def is_open(path: str) -> bool:
    """Console paths that need no token."""
    return path in OPEN_PATHS or path.startswith(STATIC_PREFIX)


def session_value(operator_token: str) -> str:
    """The session cookie's value for an operator token: a keyed digest, so the cookie never holds the token and
    every replica checks it without shared state (changing the token signs everyone out)."""
    return hmac.new(operator_token.encode(), b"loom-console-session/1", hashlib.sha256).hexdigest()


def session_cookie(headers: dict[bytes, bytes]) -> bytes | None:
    """The console cookie of a request's ``Cookie`` header, if any."""
    raw = headers.get(b"cookie")
    if not raw:
        return None
    for part in raw.split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == COOKIE.encode():
            return value
    return None


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=_HEADERS)


def console_routes(api: FastAPI, server: Any, checks: Any, *, report_csp: str) -> None:
    """Add the console's routes to the metadata app (hidden from the OpenAPI document: they are pages).
    ``report_csp``: the policy the drift monitor's HTML report is served under (sandboxed: it shows served
    values)."""
    token = server.operator_token
    project = server.project.config.name

    def page(request: Request, template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
        signed_in = token is not None and template != "login.html"
        return _html(pages.render(template, base=_base(request), project=project, signed_in=signed_in, **context),
                     http_status)

    def missing(request: Request, what: str) -> HTMLResponse:
        return page(request, "error.html", 404, status=404, heading="Not served here",
                    message=f"No model or version {what!r} is served by this deployment.")

    async def viewed(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except views.NoSuchModel as err:
            return missing(request, str(err))

    @api.get("/ui", include_in_schema=False)
    async def index(request: Request) -> Response:
        view = await run_in_threadpool(views.summary, server, checks)
        return page(request, "index.html", view=view)

    @api.get("/ui/fragments/summary", include_in_schema=False)
    async def summary_fragment(request: Request) -> Response:
        view = await run_in_threadpool(views.summary, server, checks)
        return page(request, "_summary.html", view=view)

    @api.get("/ui/api/summary", include_in_schema=False)
    async def summary_json() -> Response:
        return JSONResponse(await run_in_threadpool(views.summary, server, checks), headers={"Cache-Control": "no-store"})

    @api.get("/ui/models/{name}", include_in_schema=False)
    async def model(request: Request, name: str, feature: str | None = None) -> Response:
        view = await viewed(request, views.model_detail, server, checks, name)
        if isinstance(view, Response):
            return view
        features = [*view["features"], *(["prediction"] if view["has_reference_predictions"] else [])]
        chosen = feature if feature in features else (features[0] if features else None)
        hist, why = (await run_in_threadpool(views.histograms, checks, name, chosen)) if chosen else (None, None)
        return page(request, "model.html", m=view, features=features, feature=chosen, hist=hist, hist_error=why,
                    hist_chart=pages.histogram_chart(hist),
                    charts={**pages.live_charts(view), **pages.drift_charts(view)}, now=time.time())

    @api.get("/ui/models/{name}/live", include_in_schema=False)
    async def live(request: Request, name: str) -> Response:
        view = await viewed(request, views.live, server, checks, name)
        if isinstance(view, Response):
            return view
        return page(request, "_live.html", m=view, charts=pages.live_charts(view), now=time.time())

    @api.get("/ui/models/{name}/histogram", include_in_schema=False)
    async def histogram(request: Request, name: str, feature: str) -> Response:
        if name not in server.table.models:
            return missing(request, name)
        hist, why = await run_in_threadpool(views.histograms, checks, name, feature)
        return page(request, "_histogram.html", hist=hist, hist_error=why, hist_chart=pages.histogram_chart(hist))

    @api.get("/ui/models/{name}/report", include_in_schema=False)
    async def report(request: Request, name: str) -> Response:
        if name not in server.table.models:
            return missing(request, name)
        try:
            text = await run_in_threadpool(checks.html, name, None)
        except RequestError as err:
            return page(request, "error.html", err.status, status=err.status, heading="No report yet",
                        message=err.message)
        return HTMLResponse(text, headers={"Content-Security-Policy": report_csp, "X-Content-Type-Options": "nosniff"})

    @api.get("/ui/models/{name}/versions/{version}", include_in_schema=False)
    async def version(request: Request, name: str, version: str) -> Response:
        if not version.isdigit():
            return missing(request, f"{name}/{version}")
        view = await viewed(request, views.version_detail, server, name, int(version))
        if isinstance(view, Response):
            return view
        return page(request, "version.html", v=view, history_charts=pages.history_charts(view))

    @api.get("/ui/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        if token is None:
            return RedirectResponse(f"{_base(request)}/ui", 303)
        return page(request, "login.html", error=None)

    @api.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        body = await request.body()
        if token is None:
            return RedirectResponse(f"{_base(request)}/ui", 303)
        form = parse_qs(body[:MAX_FORM].decode("utf-8", "replace"))
        supplied = (form.get("token") or [""])[0]
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            return page(request, "login.html", 401, error="That is not this deployment's operator token.")
        out = RedirectResponse(f"{_base(request)}/ui", 303)
        out.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", path=f"{_base(request)}/ui",
                       secure=request.url.scheme == "https")
        return out

    @api.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        out = RedirectResponse(f"{_base(request)}/ui/login", 303)
        out.delete_cookie(COOKIE, path=f"{_base(request)}/ui")
        return out

    @api.get("/ui/static/{file}", include_in_schema=False)
    async def static(file: str) -> Response:
        if file not in _STATIC:
            return JSONResponse({"error": f"no console file {quote(file[:60])!r}"}, status_code=404)
        return FileResponse(pages.STATIC / file, media_type=_STATIC[file],
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=300"})
