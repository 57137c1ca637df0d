"""The retrain loop inside the served cluster: one controller per deployment, a Ray actor beside its monitor.

``loom up`` / ``loom deploy`` start it when ``monitoring.retrain.enabled`` and ``retrain.controller`` are true, so no
extra process has to be kept alive. It steps :class:`~runtime.retrain_loop.RetrainLoop` every
``retrain.check_interval_s`` on a thread of its own: a round starts when the deployment's monitor records a drifted
check (or a ``loom_drift_detected`` hook asked for a retrain) newer than the last round, or when ``loom retrain``
asks. It is detached and restarted by Ray when it dies; the loop's state lives in the capture store, so a restarted
controller resumes the shadow or canary it was judging, and a round cut off while training (no state to resume
from) is ended cleanly, with the candidate it may have registered retired. ``loom loop --status`` reads that state.

It is placed on the node that started it (softly): the project's relative paths (its data, its project directory)
resolve there. Its own CPU share is zero; a round's training asks Ray Train for its workers like ``loom train``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import ray

from .cluster import project_runtime_env
from .config import Project
from .retrain_loop import RetrainLoop
from .serving import controller_name

log = logging.getLogger("loom.loop")


class LoopController:
    """Steps the project's retrain loop on a thread; answers ``status`` and ``retrain`` calls meanwhile."""

    def __init__(self, spec: dict, env: dict[str, str]):
        from rich.console import Console

        os.environ.update(env)  # the serving tokens: a canary deployed from here keeps the application's auth
        project = Project.from_spec(spec)
        self.loop = RetrainLoop(project, console=Console(stderr=True, force_terminal=False, width=120),
                                on_demand_checks=False)
        self.interval = project.config.monitoring.retrain.check_interval_s
        self.steps = 0
        self.last: dict[str, Any] | None = None
        self.error: str | None = None
        self.busy: str | None = None
        self._demand = threading.Event()
        self._stop = threading.Event()
        self.loop.recover()
        self._thread = threading.Thread(target=self._run, name="loom-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._demand.is_set():
                    self._demand.clear()
                    self.busy = "retraining on demand"
                    outcome = self.loop.start()
                else:
                    self.busy = "stepping"
                    outcome = self.loop.step()
                self.error = None
                if outcome:
                    self.last = {"at": time.time(), "outcome": outcome}
                    log.info("loop %s: %s", self.loop.model, outcome)
            except Exception as err:  # noqa: BLE001 - reported in status; the next step tries again
                self.error = f"{type(err).__name__}: {err}"
                log.exception("loop %s: step failed", self.loop.model)
            finally:
                self.busy = None
                self.steps += 1
            self._stop.wait(0.2 if self._demand.is_set() else self.interval)

    def retrain(self) -> dict[str, Any]:
        """Start a round at the next step (refused while one runs)."""
        phase = self.loop.state().get("phase")
        if phase in ("training", "shadow", "canary"):
            return {"accepted": False, "reason": f"a round is running ({phase} of v{self.loop.state().get('version')})"}
        self._demand.set()
        return {"accepted": True}

    def status(self) -> dict[str, Any]:
        return {"model": self.loop.model, "alive": self._thread.is_alive(), "steps": self.steps, "busy": self.busy,
                "last": self.last, "error": self.error, "interval_s": self.interval, "state": self.loop.state()}

    def stop(self) -> None:
        self._stop.set()


def start_controller(project: Project) -> Any:
    """Start the project's controller if it does not run (idempotent); return its handle."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cfg = project.config.serving
    env = {name: os.environ[name] for name in (cfg.auth_token_env, cfg.operator_token_env)
           if name and name in os.environ}
    # This process's PYTHONPATH, so that the replicas' runtime env the controller computes for a rollout is the
    # one this process deployed with (Ray adds entries in a worker's): a changed runtime env would make Serve
    # replace every replica instead of reconfiguring them, and a request can then miss its route.
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(LoopController).options(
        name=controller_name(project), namespace="loom", get_if_exists=True, lifetime="detached",
        max_restarts=-1, max_task_retries=-1, num_cpus=0, max_concurrency=4,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
        runtime_env=project_runtime_env(project))
    return actor.remote(project.spec(), env)




def start_if_enabled(project: Project) -> Any | None:
    """What ``loom up`` / ``loom deploy`` do after serving: start the controller when ``monitoring.retrain.enabled``
    and ``retrain.controller`` are set (None otherwise)."""
    retrain = project.config.monitoring.retrain
    if not (retrain.enabled and retrain.controller):
        return None
    return start_controller(project)
