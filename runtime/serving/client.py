"""The one HTTP client of a served Loom application: drift checks and reports, check history, routes and feedback.

``loom monitor``, the retrain loop and the Python API all go through :class:`ServingClient`, so every caller sends
the bearer token the project configures (``serving.auth_token_env``) and turns every failure, including an HTML
error page from a proxy in front, into a short :class:`~runtime.errors.LoomError`. It needs no Ray: only the
standard library.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..config import Project
from ..errors import LoomError


def url_of(project: Project) -> str:
    """The base URL a project's served application answers on (loopback when it binds every interface)."""
    cfg = project.config.serving
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    return f"http://{host}:{cfg.port}{'' if cfg.route_prefix == '/' else cfg.route_prefix}"


def serving_token(project: Project) -> str | None:
    """The bearer token of a project's served application: the value of ``serving.auth_token_env`` (``None`` when
    no token is configured). A configured variable that is empty is an error, never a silently open server."""
    cfg = project.config.serving
    if not cfg.auth_token_env:
        return None
    token = os.environ.get(cfg.auth_token_env)
    if not token:
        raise LoomError(f"serving.auth_token_env is {cfg.auth_token_env!r} but that environment variable is empty")
    return token


class ServingClient:
    """Talks to one served application. Build it with :meth:`for_project`, or from a URL and an optional token."""

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 300):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    @classmethod
    def for_project(cls, project: Project, *, url: str | None = None, timeout_s: float = 300) -> ServingClient:
        """The client of a project's application: its URL (or ``url``) and its token."""
        return cls(url or url_of(project), serving_token(project), timeout_s=timeout_s)

    # -- the routes ------------------------------------------------------------------------------------------

    def routes(self) -> dict[str, Any]:
        """The routing table the application serves (``GET /models``)."""
        table = self._json("GET", "/models")
        if not isinstance(table, dict):
            raise LoomError(f"{self.url}/models answered no routing table; is this a Loom server?")
        return table

    def drift(self, model: str, version: int | str | None = None) -> dict[str, Any]:
        """A drift check of ``model``'s captured traffic (its primary version by default), as the JSON report."""
        return self._json("GET", f"/monitoring/{_segment(model)}/drift", query={"version": version})

    def report_html(self, model: str, version: int | str | None = None) -> str:
        """The drift monitor's HTML report of the same comparison as :meth:`drift`."""
        return self._request("GET", f"/monitoring/{_segment(model)}/report", query={"version": version}).decode()

    def history(self, model: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Summaries of past drift checks of ``model``, oldest first."""
        return self._json("GET", f"/monitoring/{_segment(model)}/history", query={"limit": limit})

    def feedback(self, model: str, labels: list[dict[str, Any]]) -> dict[str, Any]:
        """Send ground-truth labels for served request ids: ``[{"id": ..., "label": ...}, ...]``."""
        return self._json("POST", f"/feedback/{_segment(model)}", body={"labels": labels})

    # -- transport -------------------------------------------------------------------------------------------

    def _json(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        raw = self._request(method, path, query=query, body=body)
        try:
            return json.loads(raw)
        except ValueError:
            raise LoomError(f"{self.url}{path} answered something that is not JSON "
                            f"({_excerpt(raw)}); is this a Loom server?") from None

    def _request(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None) -> bytes:
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            raise LoomError(f"{method} {path} failed ({err.code}): {_error_message(err)}") from None
        except urllib.error.URLError as err:
            raise LoomError(f"cannot reach the served app at {self.url}: {err.reason}") from None
        except (TimeoutError, OSError) as err:
            raise LoomError(f"cannot reach the served app at {self.url}: {err}") from None


def _segment(name: str) -> str:
    return urllib.parse.quote(str(name), safe="@")


def _error_message(err: urllib.error.HTTPError) -> str:
    """The ``error`` of a Loom error body, else a short excerpt of whatever came back (an HTML page, say)."""
    try:
        raw = err.read()
    except OSError:
        raw = b""
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        message = payload["error"]
        if err.code == 401:
            message += "; set the token's environment variable (serving.auth_token_env)"
        return message
    return _excerpt(raw) or str(err.reason)


def _excerpt(raw: bytes, limit: int = 120) -> str:
    import re

    text = re.sub(r"<[^>]*>", " ", raw.decode("utf-8", "replace"))
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")
