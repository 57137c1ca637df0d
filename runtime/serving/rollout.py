"""Putting models on Ray Serve, and rolling versions out: deploy, canary, promote, rollback, scale to zero.

A project is one Serve application holding one ingress deployment; every replica holds every live model version
in-process (no hop between deployments at request time). The routing table (:mod:`.routing`) is the
deployment's ``user_config``: a rollout step reads the table from the running replicas, computes the next one and
redeploys with it. The deployment's code version is pinned to what the replicas run, so Serve applies the change as
a lightweight update: ``reconfigure()`` on the live replicas, which load new versions before switching. Nothing
restarts and no request is dropped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from importlib import resources
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig

from .._version import __version__
from ..cluster import project_runtime_env
from ..config import Project
from ..errors import LoomError, NotFoundError
from ..model import ModelBundle
from ..names import check_name
from ..plugins import get_plugins
from .app import LoomApp
from .client import ServingClient, serving_token, url_of
from .routing import RoutingTable
from .server import ModelServer

log = logging.getLogger("loom.serving")


@serve.ingress()
class LoomIngress:
    """A Serve replica: builds its own plugin manager; :meth:`reconfigure` loads the versions the table names."""

    def __init__(self, root: str, token: str | None):
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica (local testing mode)
            replica = ""
        self.server = ModelServer.from_project(root, token=token, replica=replica)
        self._loom_app = LoomApp(self.server)  # with the replica's drift checks and their schedule (`app` is Serve's)

    def __serve_build_asgi_app__(self) -> LoomApp:
        return self._loom_app

    async def reconfigure(self, config: dict) -> None:
        await self.server.reconfigure(RoutingTable.from_config(config))

    def routes(self) -> dict:
        """The routing table this replica serves (what rollout steps start from)."""
        return self.server.table.to_config()

    def check_health(self) -> None:
        if not self.server.ready:
            raise RuntimeError("no model loaded")


def app_name(project: Project) -> str:
    """The Serve application of a project."""
    return check_name(f"loom-{project.config.name}", "project name")


def _code_version(project: Project, token: str | None) -> str:
    """Changes when what a replica runs changes (Loom's code, the project, the token), not with the routing table."""
    h = hashlib.sha256(f"{__version__}\0{project.root}\0{token or ''}".encode())
    for module in sorted((f for f in resources.files(__package__).iterdir() if f.name.endswith(".py")),
                         key=lambda f: f.name):
        h.update(module.read_bytes())
    return h.hexdigest()[:16]


def _start_serve(host: str, port: int, proxy_location: str = "EveryNode") -> None:
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client()
    except Exception:  # noqa: BLE001 - Serve is not running yet
        client = None
    if client is None:
        serve.start(http_options={"host": host, "port": port}, proxy_location=proxy_location)
        return
    current = client.http_config
    if (current.host, current.port) != (host, port):
        raise LoomError(f"Ray Serve is already running on {current.host}:{current.port} in this cluster; "
                        f"cannot also bind {host}:{port} (use --port {current.port} or restart the cluster)")


def _quiet_serve_logs() -> None:
    # Serve logs every controller step at INFO in the driver; Loom shows its own progress instead.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def current_table(project: Project) -> RoutingTable:
    """The routing table the project's running application serves (empty when it is not running)."""
    try:
        handle = serve.get_app_handle(app_name(project))
    except Exception:  # noqa: BLE001 - Serve, or the application, is not running
        return RoutingTable()
    return RoutingTable.from_config(handle.routes.remote().result(timeout_s=60))


def deployment_options(project: Project, table: RoutingTable) -> dict[str, Any]:
    """The ingress deployment's Ray Serve options: the project's serving settings, and the routing table as
    ``user_config``."""
    cfg = project.config.serving
    options: dict[str, Any] = dict(
        name="ingress",
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=cfg.overload_status, retry_after_s=cfg.retry_after_s),
        ray_actor_options={"num_cpus": cfg.replica_cpus, "runtime_env": project_runtime_env(project)},
        health_check_period_s=cfg.health_check_period_s,
        health_check_timeout_s=cfg.health_check_timeout_s,
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
        user_config=table.to_config(),
    )
    if cfg.autoscaling is not None:
        options["autoscaling_config"] = cfg.autoscaling.model_dump()
    else:
        options["num_replicas"] = cfg.replicas
    return options


def _apply(project: Project, table: RoutingTable, *, timeout_s: float) -> str:
    """Deploy the application with ``table``: created if absent, else updated in place."""
    cfg = project.config.serving
    token = serving_token(project)
    _quiet_serve_logs()
    _start_serve(cfg.host, cfg.port, cfg.proxy_location)
    deployment = serve.deployment(LoomIngress).options(version=_code_version(project, token), _internal=True,
                                                       **deployment_options(project, table))
    serve.run(deployment.bind(str(project.root), token), name=app_name(project), route_prefix=cfg.route_prefix)
    url = url_of(project)
    _wait_serving(url, table, token, timeout_s)
    return url


def _wait_serving(url: str, table: RoutingTable, token: str | None, timeout_s: float) -> None:
    """Wait until the HTTP ingress answers with this table (HAProxy picks new replicas up within a reload)."""
    client = ServingClient(url, token, timeout_s=5)
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            if client.routes().get("generation") == table.generation:
                return
            last = "an older routing table"
        except LoomError as err:
            last = err
        time.sleep(0.2)
    raise LoomError(f"served app did not answer at {url} within {timeout_s:.0f}s ({last})")


def _check_version(project: Project, model: str, ref: int | str) -> int:
    """Resolve a reference to a version number and check that it builds, before any replica tries."""
    registry = _registry(project)
    mv = registry.get_version(model, ref)
    ModelBundle.from_registry(registry, model, mv.version).build()
    return mv.version


def _registry(project: Project):
    r = project.config.registry
    return get_plugins(modules=project.config.plugins).registry(r.kind, state_dir=project.state_dir,
                                                                options=r.options)


def _with_registry_aliases(project: Project, table: RoutingTable, model: str) -> RoutingTable:
    if model not in table.models:
        return table
    aliases = {a: mv.version for mv in _registry(project).list_versions(model) for a in mv.aliases}
    return table.with_aliases(model, aliases)


# -- rollout steps: each returns the served URL -------------------------------------------------------------------


def deploy(project: Project, model: str, ref: int | str, *, canary: int | None = None,
           timeout_s: float = 180) -> str:
    """Serve version ``ref`` of ``model``: with all traffic, or as a canary taking ``canary`` percent."""
    version = _check_version(project, model, ref)
    table = current_table(project).deploy(model, version, canary=canary)
    return _apply(project, _with_registry_aliases(project, table, model), timeout_s=timeout_s)


def set_canary(project: Project, model: str, percent: int, *, timeout_s: float = 180) -> str:
    """Change the traffic share of a running canary."""
    table = current_table(project).set_canary_percent(model, percent)
    return _apply(project, table, timeout_s=timeout_s)


def promote(project: Project, model: str, *, timeout_s: float = 180) -> int:
    """Give the canary all traffic and point the registry's serving alias (``registry.alias``) at it."""
    table, version = current_table(project).promote(model)
    _registry(project).set_alias(model, project.config.registry.alias, version)
    _apply(project, _with_registry_aliases(project, table, model), timeout_s=timeout_s)
    return version


def rollback(project: Project, model: str, *, timeout_s: float = 180) -> int:
    """Abort the canary, or go back to the previous version (the registry alias follows); returns the version
    that now takes all traffic."""
    before = current_table(project)
    table, version = before.rollback(model)
    if before.routes(model).canary is None:
        _registry(project).set_alias(model, project.config.registry.alias, version)
    _apply(project, _with_registry_aliases(project, table, model), timeout_s=timeout_s)
    return version


def scale_to_zero(project: Project, model: str, version: int | None = None, *, timeout_s: float = 180) -> None:
    """Unload a standby version, or stop serving a model (the whole application when it was the last one)."""
    current = current_table(project)
    table = current.scale_to_zero(model, version)
    if not table.models:
        shutdown(project)
        return
    _apply(project, _with_registry_aliases(project, table, model), timeout_s=timeout_s)


def shutdown(project: Project) -> None:
    """Remove the project's application (Serve itself keeps running for the cluster)."""
    try:
        serve.delete(app_name(project))
    except Exception as err:  # noqa: BLE001 - report, in Loom's words
        raise NotFoundError(f"no serving application {app_name(project)!r} to stop ({err})") from None

