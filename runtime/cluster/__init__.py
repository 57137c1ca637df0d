"""The Ray cluster Loom runs on: connecting (an embedded local cluster by default, or ``RAY_ADDRESS``), the
runtime environment of workers and replicas, and the HTTP ingress settings a cluster must start with.

- :mod:`.connection`: :func:`connect`, :func:`project_runtime_env`;
- :mod:`.ingress`: Ray Serve's HAProxy ingress, configured in the environment before the cluster starts;
- :mod:`.ports`: :func:`free_port`.
"""

from __future__ import annotations

from .connection import connect, project_runtime_env
from .ingress import configure_environment, ingress_mode
from .ports import free_port

__all__ = ["configure_environment", "connect", "free_port", "ingress_mode", "project_runtime_env"]
