"""The one HTTP client of a served Loom application: drift checks and reports, check history, live traffic, routes
and feedback.

``loom monitor``, the retrain loop, rollouts and the Python API all go through :class:`ServingClient`, so every
caller sends the project's operator token (:func:`operator_token`) and turns every failure, including an HTML error
page from a proxy in front, an empty body or a reply that is not JSON, into a short :class:`~runtime.errors.LoomError`.
It needs no Ray: only the standard library.

Two tokens: the inference token (``serving.auth_token_env``) opens the inference routes; the operator token
(``serving.operator_token_env``, by default the inference token) opens ``/models``, ``/metrics``, monitoring,
feedback and admin routes, and inference too. ``LOOM_TOKEN`` in a client's environment overrides both on that
client's side; it never becomes a server's token.
"""

from __future__ import annotations

import http.client
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


#: A client-side override of the token sent (inference or operator); never a served application's own token.
TOKEN_ENV = "LOOM_TOKEN"


def _configured(project: Project, setting: str) -> str | None:
    """The value of the environment variable that ``serving.<setting>`` names (``None``: no variable configured).
    A configured variable that is unset or empty is an error, never a silently open server."""
    name = getattr(project.config.serving, setting)
    if not name:
        return None
    token = os.environ.get(name)
    if not token:
        raise LoomError(f"serving.{setting} is {name!r} but that environment variable is empty or unset")
    return token


def _override(project: Project) -> str | None:
    """``LOOM_TOKEN``, unless the project names it as one of its own token variables: then it is that setting's
    value and keeps that setting's place (``auth_token_env: LOOM_TOKEN`` must not hide the operator token)."""
    cfg = project.config.serving
    if TOKEN_ENV in (cfg.auth_token_env, cfg.operator_token_env):
        return None
    return os.environ.get(TOKEN_ENV) or None


def served_tokens(project: Project) -> tuple[str | None, str | None]:
    """What a served application is started with: the inference token and the operator token (``None``: the
    inference token is the operator's too), from the configured variables only (``LOOM_TOKEN`` plays no part)."""
    return _configured(project, "auth_token_env"), _configured(project, "operator_token_env")


def serving_token(project: Project) -> str | None:
    """The inference bearer token a client sends: ``LOOM_TOKEN`` when set, else the value of
    ``serving.auth_token_env`` (``None`` when no token is configured)."""
    return _override(project) or _configured(project, "auth_token_env")


def operator_token(project: Project) -> str | None:
    """The operator bearer token a client sends (``/models``, monitoring, feedback, metrics, admin): ``LOOM_TOKEN``
    when set, else the value of ``serving.operator_token_env``, else that of ``serving.auth_token_env``
    (``None`` when no token is configured)."""
    return _override(project) or _configured(project, "operator_token_env") or _configured(project, "auth_token_env")


class ServingClient:
    """Talks to one served application. Build it with :meth:`for_project`, or from a URL and an optional token."""

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 300):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    @classmethod
    def for_project(cls, project: Project, *, url: str | None = None, timeout_s: float = 300) -> ServingClient:
        """The client of a project's application: its URL (or ``url``) and its operator token."""
        return cls(url or url_of(project), operator_token(project), timeout_s=timeout_s)

    # -- the routes ------------------------------------------------------------------------------------------

    def routes(self) -> dict[str, Any]:
        """The routing table the application serves (``GET /models``)."""
        table = self._json("GET", "/models")
        if not isinstance(table, dict):
            raise LoomError(f"{self.url}/models answered no routing table; is this a Loom server?")
        return table

    def running_routes(self) -> dict[str, Any] | None:
        """:meth:`routes`, or ``None`` when no application answers at this URL (nothing listens, or the proxy
        knows no application there: 404). Any other failure is an error: it cannot tell what is served."""
        try:
            return self.routes()
        except _Unreachable:
            return None
        except _HTTPFailure as err:
            if err.status == 404:
                return None
            raise

    def drift(self, model: str, version: int | str | None = None) -> dict[str, Any]:
        """A drift check of ``model``'s captured traffic (its primary version by default), as the JSON report."""
        report = self._json("GET", f"/monitoring/{_segment(model)}/drift", query={"version": version})
        if not isinstance(report, dict) or "drifted" not in report:
            raise LoomError(f"{self.url}/monitoring/{model}/drift answered no drift report; is this a Loom server?")
        return report

    def report_html(self, model: str, version: int | str | None = None) -> str:
        """The drift monitor's HTML report of the same comparison as :meth:`drift`."""
        raw = self._request("GET", f"/monitoring/{_segment(model)}/report", query={"version": version})
        return raw.decode("utf-8", "replace")

    def history(self, model: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Summaries of past drift checks of ``model``, oldest first."""
        history = self._json("GET", f"/monitoring/{_segment(model)}/history", query={"limit": limit})
        if not isinstance(history, list):
            raise LoomError(f"{self.url}/monitoring/{model}/history answered no list of checks; is this a Loom server?")
        return history

    def traffic(self, model: str, window_s: float = 60) -> dict[str, Any]:
        """``model``'s requests, errors, rate and latency per version over the last ``window_s`` seconds, across
        replicas, and its shadow version's agreement with the primary (``GET /monitoring/{model}/traffic``)."""
        answer = self._json("GET", f"/monitoring/{_segment(model)}/traffic", query={"window_s": window_s})
        if not isinstance(answer, dict) or "versions" not in answer:
            raise LoomError(f"{self.url}/monitoring/{model}/traffic answered no traffic summary; is this a Loom "
                            "server?")
        return answer

    def summary(self) -> dict[str, Any]:
        """What the console's front page shows (``GET /ui/api/summary``): every served model's routes, production
        version, traffic over the last minute, last drift check and retrain loop phase."""
        answer = self._json("GET", "/ui/api/summary")
        if not isinstance(answer, dict) or not isinstance(answer.get("models"), list):
            raise LoomError(f"{self.url}/ui/api/summary answered no console summary; is this a Loom server?")
        return answer

    def feedback(self, model: str, labels: list[dict[str, Any]]) -> dict[str, Any]:
        """Send ground-truth labels for served request ids: ``[{"id": ..., "label": ...}, ...]``."""
        answer = self._json("POST", f"/feedback/{_segment(model)}", body={"labels": labels})
        if not isinstance(answer, dict):
            raise LoomError(f"{self.url}/feedback/{model} answered no JSON object; is this a Loom server?")
        return answer

    # -- transport -------------------------------------------------------------------------------------------

    def _json(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        raw = self._request(method, path, query=query, body=body)
        if not raw.strip():
            raise LoomError(f"{self.url}{path} answered an empty body; is this a Loom server?")
        try:
            return json.loads(raw)
        except ValueError:  # UnicodeDecodeError too
            raise LoomError(f"{self.url}{path} answered something that is not JSON "
                            f"({_excerpt(raw) or 'no text'}); is this a Loom server?") from None

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
            raise _HTTPFailure(err.code, f"{method} {path} failed ({err.code}): {_error_message(err)}") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, ConnectionRefusedError):
                raise _Unreachable(f"cannot reach the served app at {self.url}: {err.reason}") from None
            raise LoomError(f"cannot reach the served app at {self.url}: {err.reason}") from None
        except ConnectionRefusedError as err:
            raise _Unreachable(f"cannot reach the served app at {self.url}: {err}") from None
        except (TimeoutError, OSError) as err:
            raise LoomError(f"cannot reach the served app at {self.url}: {err}") from None
        except http.client.HTTPException as err:  # a connection closed mid-answer, a malformed status line
            raise LoomError(f"{method} {path} got a broken answer from {self.url}: {err!r}") from None
        except ValueError as err:  # a malformed URL
            raise LoomError(f"cannot ask {url}: {err}") from None


class _HTTPFailure(LoomError):
    """An HTTP error status from the served app (or a proxy in front of it)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Unreachable(LoomError):
    """Nothing listens at the served app's address."""


def _segment(name: str) -> str:
    return urllib.parse.quote(str(name), safe="@")


def _error_message(err: urllib.error.HTTPError) -> str:
    """The ``error`` of a Loom error body, else a short excerpt of whatever came back (an HTML page, say)."""
    try:
        raw = err.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        message = payload["error"]
        if err.code == 401:
            message += ("; set the token's environment variable (serving.operator_token_env, else "
                        f"serving.auth_token_env) or {TOKEN_ENV}")
        elif err.code == 403 and "operator" in message:
            message += f"; send it with {TOKEN_ENV} or the variable serving.operator_token_env names"
        return message
    return _excerpt(raw) or str(err.reason or "") or "an empty body"


def _excerpt(raw: bytes, limit: int = 120) -> str:
    import re

    text = re.sub(r"<[^>]*>", " ", raw.decode("utf-8", "replace"))
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")
