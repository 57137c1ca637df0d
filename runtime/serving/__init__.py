"""Serving: a project's models on Ray Serve, behind HTTP (Open Inference Protocol v2, MLflow ``/invocations``,
``/predict``), with rollouts, captured traffic and drift checks.

This is serving's public face; everything outside ``runtime/serving/`` imports from here, never a submodule's
private names. Rollouts need Ray, so they load lazily: ``import runtime.serving`` stays cheap.

- rollouts (:mod:`.rollout`): :func:`deploy`, :func:`set_canary`, :func:`shadow`, :func:`unshadow`,
  :func:`promote`, :func:`rollback`, :func:`scale_to_zero`, :func:`shutdown`, :func:`current_table`,
  :func:`app_name`;
- routes (:mod:`.routing`): :class:`RoutingTable`, :class:`ModelRoutes`;
- the served app over HTTP (:mod:`.client`): :class:`ServingClient`, :func:`url_of`, :func:`serving_token`;
- captured traffic (:mod:`.capture`): :func:`read_captured`, :func:`read_feedback`;
- the retrain loop's controller (:mod:`.controller`; started by :mod:`runtime.loop_controller`):
  :func:`find_controller`, :func:`stop_controller`.
"""

from __future__ import annotations

import importlib
from typing import Any

from .client import ServingClient, serving_token, url_of
from .routing import ModelRoutes, RoutingTable

_LAZY = {
    "deploy": ".rollout",
    "set_canary": ".rollout",
    "shadow": ".rollout",
    "unshadow": ".rollout",
    "promote": ".rollout",
    "rollback": ".rollout",
    "scale_to_zero": ".rollout",
    "shutdown": ".rollout",
    "current_table": ".rollout",
    "app_name": ".rollout",
    "read_captured": ".capture",
    "read_feedback": ".capture",
    "find_controller": ".controller",
    "controller_name": ".controller",
    "stop_controller": ".controller",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'runtime.serving' has no attribute {name!r}")


__all__ = ["ModelRoutes", "RoutingTable", "ServingClient", "app_name", "current_table", "controller_name", "deploy",
           "find_controller", "promote", "read_captured", "read_feedback", "rollback", "scale_to_zero", "serving_token", "set_canary", "shadow",
           "shutdown", "stop_controller", "unshadow", "url_of"]
