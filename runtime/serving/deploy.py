"""Putting a :class:`ModelServer` on Ray Serve: one FastAPI ingress deployment per project."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

from ray import serve

from ..config import Project
from ..errors import LoomError
from .app import create_app
from .server import ModelServer

APP_NAME = "loom"


@serve.ingress()
class LoomIngress:
    """A Serve replica: builds its own plugin manager and loads the models from the registry."""

    def __init__(self, root: str, models: dict[str, int | str], token: str | None):
        self.server = ModelServer.from_project(root, models, token)

    def __serve_build_asgi_app__(self):
        return create_app(self.server)

    def check_health(self) -> None:
        if not self.server.models:
            raise RuntimeError("no model loaded")


def _start_serve(host: str, port: int) -> None:
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client()
    except Exception:  # noqa: BLE001 - Serve is not running yet
        client = None
    if client is None:
        serve.start(http_options={"host": host, "port": port})
        return
    current = client.http_config
    if (current.host, current.port) != (host, port):
        raise LoomError(f"Ray Serve is already running on {current.host}:{current.port} in this cluster; "
                        f"cannot also bind {host}:{port} (use --port {current.port} or restart the cluster)")


def _quiet_serve_logs() -> None:
    # Serve logs every controller step at INFO in the driver; Loom shows its own progress instead.
    import logging

    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def deploy(project: Project, models: dict[str, int | str], *, timeout_s: float = 120) -> str:
    """Deploy (or update in place) the project's Serve application and wait until it answers; returns its URL."""
    cfg = project.config.serving
    token = os.environ.get(cfg.auth_token_env) if cfg.auth_token_env else None
    if cfg.auth_token_env and not token:
        raise LoomError(f"serving.auth_token_env is {cfg.auth_token_env!r} but that environment variable is empty")
    _quiet_serve_logs()
    _start_serve(cfg.host, cfg.port)
    deployment = serve.deployment(
        LoomIngress,
        name=f"{project.config.name}-ingress",
        num_replicas=cfg.replicas,
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.replica_cpus},
        health_check_period_s=5,
    )
    serve.run(deployment.bind(str(project.root), models, token), name=APP_NAME, route_prefix="/")
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    url = f"http://{host}:{cfg.port}"
    _wait_ready(url, timeout_s)
    return url


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as err:
            last = err
        time.sleep(0.2)
    raise LoomError(f"served app did not become ready at {url} within {timeout_s:.0f}s ({last})")


def shutdown() -> None:
    """Remove Loom's application (Serve itself keeps running for the cluster)."""
    serve.delete(APP_NAME)
