"""Where the retrain loop's controller runs: its actor's name, and finding or stopping it (the controller itself is
:mod:`runtime.loop_controller`, a layer above serving). :func:`~runtime.serving.shutdown` stops it with the
application."""

from __future__ import annotations

import hashlib

import ray

from ..config import Project

NAMESPACE = "loom"


def controller_name(project: Project) -> str:
    """The controller actor of a project (one per project directory, like its monitor)."""
    digest = hashlib.sha256(str(project.root).encode()).hexdigest()[:10]
    return f"loom-loop-{project.config.name}-{digest}"


def find_controller(project: Project) -> Any | None:
    """The handle of the project's running controller, or None."""
    try:
        return ray.get_actor(controller_name(project), namespace=NAMESPACE)
    except ValueError:
        return None


def stop_controller(project: Project) -> None:
    """End the project's controller, if it runs."""
    handle = find_controller(project)
    if handle is not None:
        ray.kill(handle, no_restart=True)
