"""Connecting to Ray: an embedded local cluster by default, or an existing one via ``RAY_ADDRESS``."""

from __future__ import annotations

import logging
import os
from typing import Any

from ..secrets import redact_error
from .ingress import configure_environment
from .ports import free_port


def connect(address: str | None = None, *, num_cpus: int | None = None) -> dict[str, Any]:
    """Connect this process to Ray once; return the cluster's resources.

    With no address (and no ``RAY_ADDRESS``) Loom starts an embedded single-node cluster bound to 127.0.0.1, its
    dashboard on loopback too. Its logical CPU count is at least 4: logical CPUs are scheduling slots, and two training workers plus
    a serving replica must fit on a 2-core laptop.
    """
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
        # Ray Train's controller polls its workers every 2 s by default, and each epoch's report waits for a poll:
        # for short epochs that dominates the run. Propagated by Ray Train to its controller and workers.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
        address = address or os.environ.get("RAY_ADDRESS")
        # Worker logs stay in Ray's session logs unless LOOM_RAY_LOGS=1; failures still reach the driver as errors.
        common: dict[str, Any] = {"namespace": "loom", "logging_level": logging.WARNING,
                                  "log_to_driver": os.environ.get("LOOM_RAY_LOGS", "") not in ("", "0")}
        if address:
            try:
                ray.init(address=address, **common)
            except Exception as err:  # noqa: BLE001 - Ray's messages quote the address, which may hold credentials
                redact_error(err)
                raise
        else:
            configure_environment()  # HAProxy ingress for Ray Serve; read by every process of the cluster
            # Ray 2.60 turns token authentication on for every new local cluster and warns about it on each start;
            # it is what Loom wants (README: security), so the embedded cluster starts quietly.
            _quiet_token_auth_notice()
            # The dashboard (bound to loopback) backs Ray's state and jobs APIs, which Ray Train uses.
            # address="local": always a new cluster, never one a `ray start` on this host left in
            # /tmp/ray/ray_current_cluster (plain ray.init() would join that one, or fail if it is gone).
            # Ray's state API (which Ray Train's controller and its placement-group cleaner call from inside the
            # cluster) finds its server through RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else the last `ray start`
            # cluster recorded in /tmp/ray/ray_current_cluster, which may be gone or another cluster: each call then
            # waits out a 10 s timeout (12 s added to every training run). Set it, before the cluster starts so
            # that every process of the cluster inherits it, to this cluster's own dashboard.
            port = free_port()
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
            context = ray.init(address="local", num_cpus=num_cpus or max(os.cpu_count() or 1, 4),
                               include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                               _node_ip_address="127.0.0.1", **common)
            if context.dashboard_url and not context.dashboard_url.endswith(f":{port}"):
                os.environ["RAY_API_SERVER_ADDRESS"] = f"http://{context.dashboard_url}"  # the port was taken
    return dict(ray.cluster_resources())


def project_runtime_env(project: Any) -> dict[str, Any]:
    """The runtime environment Loom gives its Ray Train workers and Serve replicas.

    The project directory goes on ``PYTHONPATH`` so that modules it holds (a custom architecture, the plugins named
    in ``loom.yaml``'s ``plugins:``) import on every worker, and the resolved state directory is passed explicitly
    so every process opens the same registry and feature store. On a multi-node cluster the project directory must
    exist at the same path on each node (``cluster.yaml`` syncs it) or be shipped as a job's working directory
    (``loom submit``)."""
    paths = [str(project.root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
                         "LOOM_STATE_DIR": str(project.state_dir)}}


class _DropTokenAuthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _quiet_token_auth_notice() -> None:
    """Drop Ray's "Token authentication is enabled" start-up warning (only that message)."""
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropTokenAuthNotice) for f in logger.filters):
        logger.addFilter(_DropTokenAuthNotice())
