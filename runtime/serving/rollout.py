"""Putting models on Ray Serve, and rolling versions out: deploy, canary, shadow, promote, rollback, scale to zero.

A project is one Serve application holding one ingress deployment; every replica holds every live model version
in-process (no hop between deployments at request time). The routing table (:mod:`.routing`) is the
deployment's ``user_config``: a rollout step reads the table from the running replicas, computes the next one and
redeploys with it. The deployment's code version is pinned to what the replicas run, so Serve applies the change as
a lightweight update: ``reconfigure()`` on the live replicas, which load new versions before switching. Nothing
restarts and no request is dropped.

A step is transactional as far as two systems allow:

- it starts from the table it read (generation G) and, right before applying, checks that Serve's target table is
  still at G (:func:`_check_generation`), so two operators' steps never silently overwrite each other; a caller can
  also pin G (``expect_generation``, ``--expect-generation``);
- it never starts from a table it could not read (:func:`current_table` raises; only an application that is not
  running has the empty table), since a step from an empty table would unload the standby and canary versions;
- serving changes first and the registry alias follows only once the new table serves; when moving the alias fails,
  the previous table is applied again (as a newer generation) and the error says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig

from .._version import __version__
from ..cluster import project_runtime_env
from ..config import Project
from ..errors import LoomError, NotFoundError
from ..formats import LoadLimits, load_model
from ..names import check_name
from ..plugins import get_plugins
from .app import LoomApp
from .client import ServingClient, served_tokens, url_of
from .depot import is_shared, ship, stop_depot
from .metrics import RayExport
from .monitor import RemoteChecks, monitor_actor, stop_monitor
from .routing import RoutingTable
from .server import ModelServer, check_exposure

log = logging.getLogger("loom.serving")


@serve.ingress()
class LoomIngress:
    """A Serve replica: builds its own plugin manager; :meth:`reconfigure` loads the versions the table names."""

    def __init__(self, project: str | dict, token: str | None, operator_token: str | None = None,
                 shipped: bool = False):
        # ``project``: the driver's Project.spec(), so that no replica reads the driver's disk (a project directory
        # path is still taken); ``shipped``: versions come from the depot (a registry other nodes cannot read).
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica (local testing mode)
            replica = ""
        self.server = ModelServer.from_project(project, token=token, operator_token=operator_token, replica=replica,
                                               shipped=shipped)
        checks = None
        if self.server.store is not None and self.server.project.config.monitoring.monitor is not None:
            # every replica's traffic goes to the deployment's one monitor, which answers every replica's routes
            checks = RemoteChecks(self.server, monitor_actor(self.server.project, token, operator_token, shipped))
        self._loom_app = LoomApp(self.server, checks)  # (`app` is Serve's name)
        # every replica's metrics on its node's Ray metrics export port, which Prometheus scrapes
        self._ray_export = RayExport.in_ray_worker(self.server.metrics.registry)

    def __serve_build_asgi_app__(self) -> LoomApp:
        return self._loom_app

    async def reconfigure(self, config: dict) -> None:
        # Serve's user_config cannot be refused here (a raise fails the replica, not the step): stale tables are
        # refused driver-side, before they reach Serve (_check_generation). Generations only grow while the
        # application lives, so a step back is worth a line in the replica's log.
        table = RoutingTable.from_config(config)
        if 0 < table.generation < self.server.table.generation:
            log.warning("routing table generation %d replaces the newer %d", table.generation,
                        self.server.table.generation)
        await self.server.reconfigure(table)

    def routes(self) -> dict:
        """The routing table this replica serves (what rollout steps start from)."""
        return self.server.table.to_config()

    def check_health(self) -> None:
        if not self.server.ready:
            raise RuntimeError("no model loaded")


def app_name(project: Project) -> str:
    """The Serve application of a project."""
    return check_name(f"loom-{project.config.name}", "project name")


def _code_version(project: Project, token: str | None, operator_token: str | None = None) -> str:
    """Changes when what a replica runs changes (Loom's code, the project, the tokens), not with the routing
    table."""
    h = hashlib.sha256(f"{__version__}\0{project.root}\0{token or ''}\0{operator_token or ''}".encode())
    h.update(json.dumps(project.spec(), sort_keys=True, default=str).encode())  # replicas get the settings shipped
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


_handle_loop: Any = None
_handle_loop_lock = threading.Lock()


def _ask_ingress(app: str, method: str, timeout_s: float) -> Any:
    """Call a method of ``app``'s ingress through a Serve handle, on an event loop of this module's own (a daemon
    thread): with Loom's ingress settings in this process's environment (``RAY_SERVE_THROUGHPUT_OPTIMIZED``, read
    when Serve is first imported) a handle runs its router on the loop of its first call, so a blocking
    ``.result()`` outside a loop fails, and a loop that closes (``asyncio.run``) breaks the cached handle."""
    import asyncio

    global _handle_loop
    with _handle_loop_lock:
        if _handle_loop is None:
            _handle_loop = asyncio.new_event_loop()
            threading.Thread(target=_handle_loop.run_forever, name="loom-serve-handles", daemon=True).start()

    async def ask() -> Any:
        return await getattr(serve.get_app_handle(app), method).remote()

    return asyncio.run_coroutine_threadsafe(ask(), _handle_loop).result(timeout=timeout_s)


def current_table(project: Project) -> RoutingTable:
    """The routing table the project's running application serves: empty when the application is not running;
    any other failure to read it is a :class:`LoomError` (a step from an empty table would unload every standby
    and canary version)."""
    name = app_name(project)
    try:
        apps = serve.status().applications
    except Exception as err:  # noqa: BLE001 - in Loom's words
        raise LoomError(f"cannot ask Ray Serve whether {name!r} is running ({err!r})") from None
    if name not in apps:
        return RoutingTable()
    try:
        return RoutingTable.from_config(_ask_ingress(name, "routes", 60))
    except Exception as err:  # noqa: BLE001 - in Loom's words, never an empty table
        state = getattr(apps[name], "status", "unknown")
        raise LoomError(f"cannot read the routing table of the running application {name!r} (status {state}): "
                        f"{_short(err)}; nothing was changed (a rollout from an empty table would unload its "
                        "other versions)") from None


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:limit] + ("…" if len(text) > limit else "")


def _target_generation(project: Project) -> int:
    """The generation of the table Serve's controller holds as the ingress deployment's target ``user_config``:
    the newest one applied by anyone, even before every replica has it (0: the application is not running)."""
    from ray.serve.context import _get_global_client

    name = app_name(project)
    try:
        client = _get_global_client(raise_if_no_controller_running=False)
        details = {} if client is None else client.get_serve_details()
    except Exception as err:  # noqa: BLE001 - in Loom's words
        raise LoomError(f"cannot ask Ray Serve for the routing table of {name!r} ({err!r})") from None
    app = (details.get("applications") or {}).get(name)
    if app is None:
        return 0
    config = ((app.get("deployments") or {}).get("ingress") or {}).get("deployment_config") or {}
    if isinstance(config.get("user_config"), Mapping):
        return int(config["user_config"].get("generation", 0))
    return current_table(project).generation  # still deploying: what its replicas serve


def _check_generation(project: Project, expected: int, action: str) -> None:
    """Refuse to apply a step computed from generation ``expected`` when the table has moved on since."""
    now = _target_generation(project)
    if now != expected:
        raise LoomError(f"the routing table changed while {action} (generation {expected} -> {now}); nothing was "
                        "changed by this command: re-run it")


def _read(project: Project, expect_generation: int | None, action: str) -> RoutingTable:
    """The table a step starts from, at the generation the caller expects (when it pins one)."""
    table = current_table(project)
    if expect_generation is not None and table.generation != expect_generation:
        raise LoomError(f"the routing table is at generation {table.generation}, not {expect_generation} as "
                        f"expected for {action}; nothing was changed: check `loom routes` and re-run")
    return table


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
    if cfg.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = cfg.max_replicas_per_node
    if cfg.autoscaling is not None:
        options["autoscaling_config"] = cfg.autoscaling.model_dump()
    else:
        options["num_replicas"] = cfg.replicas
    return options


def _apply(project: Project, table: RoutingTable, *, expect: int, action: str, timeout_s: float) -> str:
    """Deploy the application with ``table``, computed from generation ``expect``: created if absent, else updated
    in place. Refused when the table moved on since ``expect`` was read."""
    cfg = project.config.serving
    token, operator = served_tokens(project)
    check_exposure(project, token, operator)  # here, before Serve binds anything, not in every replica
    _quiet_serve_logs()
    _start_serve(cfg.host, cfg.port, cfg.proxy_location)
    deployment = serve.deployment(LoomIngress).options(version=_code_version(project, token, operator),
                                                       _internal=True, **deployment_options(project, table))
    shipped = _ship_versions(project, table)
    app = deployment.bind(project.spec(), token, operator, shipped)
    _check_generation(project, expect, action)  # as late as possible: serve.run submits the table at once
    serve.run(app, name=app_name(project), route_prefix=cfg.route_prefix)
    url = url_of(project)
    _wait_serving(url, table, operator or token, timeout_s)
    return url


def _ship_versions(project: Project, table: RoutingTable) -> bool:
    """When the registry is one other nodes cannot read (``shared`` not set: SQLite, a local artifact directory),
    put the versions ``table`` serves into the project's depot, for replicas on any node; returns whether it did."""
    registry = _registry(project)
    if is_shared(registry):
        return False
    live = [(n, v) for n, r in table.models.items() for v in r.live]
    try:
        before = current_table(project)
        keep = [(n, v) for n, r in before.models.items() for v in r.live]
    except LoomError:
        keep = []
    ship(project, registry, live, keep)
    return True


def _wait_serving(url: str, table: RoutingTable, token: str | None, timeout_s: float) -> None:
    """Wait until the HTTP ingress answers with this table (HAProxy picks new replicas up within a reload).
    ``token`` is the operator token: ``/models`` is an operator route."""
    client = ServingClient(url, token, timeout_s=5)
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            served = client.routes().get("generation")
            if served == table.generation:
                return
            last = f"it serves generation {served}, not {table.generation}"
        except LoomError as err:
            last = err
        time.sleep(0.2)
    raise LoomError(f"served app did not answer at {url} within {timeout_s:.0f}s ({last})")


def _check_version(project: Project, model: str, ref: int | str) -> int:
    """Resolve a reference to a version number and check that it builds, before any replica tries."""
    registry = _registry(project)
    mv = registry.get_version(model, ref)
    load_model(registry, model, mv.version, plugins=get_plugins(modules=project.config.plugins),
               limits=LoadLimits.of(project))
    return mv.version


def _registry(project: Project):
    r = project.config.registry
    return get_plugins(modules=project.config.plugins).registry(r.kind, state_dir=project.state_dir,
                                                                options=r.options, storage=project.storage)


def _with_registry_aliases(project: Project, table: RoutingTable, model: str,
                           moving: Mapping[str, int] | None = None) -> RoutingTable:
    """``table`` with the registry's aliases of ``model``, and ``moving`` (alias -> version) as they will be once
    the step has moved them."""
    if model not in table.models:
        return table
    aliases = {a: mv.version for mv in _registry(project).list_versions(model) for a in mv.aliases}
    return table.with_aliases(model, {**aliases, **(moving or {})})


def _move_alias(project: Project, model: str, version: int, before: RoutingTable, applied: RoutingTable, *,
                action: str, timeout_s: float) -> None:
    """Point the registry's serving alias at ``version`` now that ``applied`` serves; if that fails, serve
    ``before`` again (as the next generation) so that serving and the registry agree, and say what happened."""
    alias = project.config.registry.alias
    try:
        _registry(project).set_alias(model, alias, version)
    except Exception as err:  # noqa: BLE001 - undo serving, then report in Loom's words
        restore = RoutingTable(models=dict(before.models), generation=applied.generation + 1)
        what = f"{action} {model} v{version} was served, but pointing alias {alias!r} at it failed ({_short(err)})"
        try:
            _apply(project, restore, expect=applied.generation, action=f"restoring the table before {action}",
                   timeout_s=timeout_s)
        except Exception as undo:  # noqa: BLE001
            raise LoomError(f"{what}; restoring the previous routing table failed too ({_short(undo)}): serving "
                            f"and the registry disagree, check `loom routes` and `loom models versions {model}`"
                            ) from None
        raise LoomError(f"{what}; the previous routing table is served again (generation {restore.generation}) "
                        f"and the alias is unchanged") from None


# -- rollout steps: each returns the served URL, and takes the generation it expects to start from -----------------


def deploy(project: Project, model: str, ref: int | str, *, canary: int | None = None,
           expect_generation: int | None = None, timeout_s: float = 180) -> str:
    """Serve version ``ref`` of ``model``: with all traffic, or as a canary taking ``canary`` percent."""
    version = _check_version(project, model, ref)
    action = f"deploying {model} v{version}"
    before = _read(project, expect_generation, action)
    table = before.deploy(model, version, canary=canary)
    return _apply(project, _with_registry_aliases(project, table, model), expect=before.generation, action=action,
                  timeout_s=timeout_s)


def set_canary(project: Project, model: str, percent: int, *, expect_generation: int | None = None,
               timeout_s: float = 180) -> str:
    """Change the traffic share of a running canary."""
    action = f"setting the canary share of {model}"
    before = _read(project, expect_generation, action)
    return _apply(project, before.set_canary_percent(model, percent), expect=before.generation, action=action,
                  timeout_s=timeout_s)


def shadow(project: Project, model: str, ref: int | str, *, expect_generation: int | None = None,
           timeout_s: float = 180) -> str:
    """Load version ``ref`` of ``model`` as the shadow of its primary: it scores every request the primary
    answers (to a route that names no version), off the request's path, and answers none; its agreement with the
    primary shows in ``/monitoring/{model}/traffic``. Refused while a canary runs."""
    version = _check_version(project, model, ref)
    action = f"shadowing {model} v{version}"
    before = _read(project, expect_generation, action)
    table = before.shadow(model, version)
    return _apply(project, _with_registry_aliases(project, table, model), expect=before.generation, action=action,
                  timeout_s=timeout_s)


def unshadow(project: Project, model: str, *, expect_generation: int | None = None, timeout_s: float = 180) -> str:
    """Stop the shadow of ``model`` (its version is unloaded)."""
    action = f"stopping the shadow of {model}"
    before = _read(project, expect_generation, action)
    table = before.unshadow(model)
    return _apply(project, _with_registry_aliases(project, table, model), expect=before.generation, action=action,
                  timeout_s=timeout_s)


def promote(project: Project, model: str, *, expect_generation: int | None = None, timeout_s: float = 180) -> int:
    """Give the canary all traffic, then point the registry's serving alias (``registry.alias``) at it."""
    action = f"promoting the canary of {model}"
    before = _read(project, expect_generation, action)
    table, version = before.promote(model)
    table = _with_registry_aliases(project, table, model, {project.config.registry.alias: version})
    _apply(project, table, expect=before.generation, action=action, timeout_s=timeout_s)
    _move_alias(project, model, version, before, table, action="promoting", timeout_s=timeout_s)
    return version


def rollback(project: Project, model: str, *, expect_generation: int | None = None, timeout_s: float = 180) -> int:
    """Abort the canary, or go back to the previous version (then the registry alias follows); returns the
    version that now takes all traffic."""
    action = f"rolling back {model}"
    before = _read(project, expect_generation, action)
    table, version = before.rollback(model)
    moves_alias = before.routes(model).canary is None
    moving = {project.config.registry.alias: version} if moves_alias else None
    table = _with_registry_aliases(project, table, model, moving)
    _apply(project, table, expect=before.generation, action=action, timeout_s=timeout_s)
    if moves_alias:
        _move_alias(project, model, version, before, table, action="rolling back to", timeout_s=timeout_s)
    return version


def scale_to_zero(project: Project, model: str, version: int | None = None, *,
                  expect_generation: int | None = None, timeout_s: float = 180) -> None:
    """Unload a standby version, or stop serving a model (the whole application when it was the last one)."""
    action = f"scaling {model}{f' v{version}' if version is not None else ''} to zero"
    before = _read(project, expect_generation, action)
    table = before.scale_to_zero(model, version)
    if not table.models:
        _check_generation(project, before.generation, action)
        shutdown(project)
        return
    _apply(project, _with_registry_aliases(project, table, model), expect=before.generation, action=action,
           timeout_s=timeout_s)


def shutdown(project: Project) -> None:
    """Remove the project's application, its monitor and its depot (Serve itself keeps running for the cluster)."""
    try:
        serve.delete(app_name(project))
    except Exception as err:  # noqa: BLE001 - report, in Loom's words
        raise NotFoundError(f"no serving application {app_name(project)!r} to stop ({err})") from None
    finally:
        from .controller import stop_controller

        stop_controller(project)
        stop_monitor(project)
        stop_depot(project)
