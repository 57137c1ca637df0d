"""The closed loop from drift to a retrained model, driven from the driver (``loom loop``).

On a drifted check of the served model (or a ``loom_drift_detected`` plugin asking for a retrain), it retrains on
fresh data with Ray Train, registers the new version with tags linking it to the drift report, deploys it as a
canary, and once enough served rows carry ground-truth labels (``POST /feedback/{model}``) has both versions
predict the same recent labelled rows and judges them with a paired test (:mod:`runtime.judge`: McNemar's exact
test, or a bootstrap of the RMSE gap): the new version is promoted only if it is better by ``min_improvement``
with ``retrain.confidence``, else rolled back; the verdict and its evidence go to the version's tags and the
``loom_canary_judged`` hook. Every step is logged and written to the
version's tags (``loom models show``).

It runs on the driver, not in a Serve replica: training needs Ray Train workers and minutes of CPU, which must not
come out of a serving replica's budget or die with it; the driver already holds the project, the registry and the
cluster connection that ``loom deploy``/``promote``/``rollback`` use. The loop's state (the canary being judged)
is a JSON file in the capture store, written atomically (a temporary file, fsync, rename), so a restarted
``loom loop`` picks up where it left off and a crash mid-write leaves the previous state, never half of one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Project
from .errors import LoomError
from .files import write_atomic
from .judge import Verdict, judge_classification, judge_regression

log = logging.getLogger("loom.loop")


class RetrainLoop:
    """One project's loop. :meth:`step` does what is due now and returns what it did (``None``: nothing)."""

    def __init__(self, project: Project, *, plugins: Any = None, console: Any = None):
        from .pipeline import Pipeline

        self.project = project
        self.cfg = project.config.monitoring.retrain
        self.model = project.config.model.name
        self.pipe = Pipeline(project, plugins=plugins, console=console)
        #: Where the loop keeps its state (a local directory: the capture store's, or the state directory's).
        self.root = project.capture_dir
        #: Where served traffic and feedback are read from (a directory or a file system URI, as served).
        self.capture = project.capture_uri
        self.state_file = self.root / "loop" / f"{self.model}.json"

    # -- state -----------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {}
        try:
            state = json.loads(self.state_file.read_text())
        except ValueError as err:
            raise LoomError(f"the loop's state file {self.state_file} is not JSON ({err}); fix or remove it") from None
        if not isinstance(state, dict):
            raise LoomError(f"the loop's state file {self.state_file} holds no JSON object; fix or remove it")
        return state

    def _save(self, state: dict[str, Any]) -> None:
        write_atomic(self.state_file, json.dumps(state, indent=1).encode())

    def _log(self, version: int, step: str, **tags: Any) -> None:
        log.info("loop %s v%d: %s %s", self.model, version, step, tags or "")
        self.pipe.console.print(f"[bold]loop[/] {self.model} v{version}: {step}")
        registry = self.pipe.registry
        kept = registry.get_version(self.model, version).tags
        registry.set_tags(self.model, version, {**kept, "loom.loop": step, **{f"loom.{k}": str(v) for k, v in
                                                                            tags.items()}})

    # -- the loop --------------------------------------------------------------------------------------------

    def step(self) -> str | None:
        """Judge a running canary, or check drift and start a retrain when it is due."""
        if not self.cfg.enabled:
            raise LoomError("the retrain loop is off: set monitoring.retrain.enabled: true in loom.yaml")
        state = self.state()
        if state.get("phase") == "canary":
            return self.judge(state)
        if time.time() - state.get("finished_at", 0) < self.cfg.cooldown_s:
            return None
        report = self.drift()
        if not (report["drifted"] or report.get("retrain_requested")):
            return None
        return self.retrain(report)

    def drift(self) -> dict[str, Any]:
        """A drift check of the served model, through the serving application."""
        from .serving import ServingClient

        return ServingClient.for_project(self.project).drift(self.model)

    def retrain(self, report: dict[str, Any]) -> str:
        """Retrain on fresh data, register with lineage to ``report``, deploy as a canary."""
        from .serving import deploy

        pipe, project = self.pipe, self.project
        current = int(report["version"])
        if self.cfg.source:
            cfg = project.config
            pipe.project = project.model_copy(update={"config": cfg.model_copy(
                update={"data": cfg.data.model_copy(update={"source": self.cfg.source})})})
        data = pipe.ingest()
        view = pipe.write_features(data)
        trained = pipe.train(data, view)
        version = pipe.register(trained, data, view).version
        alias = project.config.registry.alias
        pipe.registry.set_alias(self.model, alias, current)  # the alias moves only on promotion
        self._save_report(version, report)
        self._log(version, "registered", drift_report=report["id"], retrained_from=current,
                  drifted_features=",".join(c for c, f in report["features"].items() if f["drifted"]),
                  data_source=data.uri)
        deploy(project, self.model, version, canary=self.cfg.canary_percent)
        self._log(version, "canary", canary_percent=self.cfg.canary_percent)
        self._save({"phase": "canary", "version": version, "previous": current, "report": report["id"],
                    "started_at": time.time()})
        return f"canary v{version}"

    def judge(self, state: dict[str, Any]) -> str | None:
        """Promote the canary if it beats the current version on the recent labelled rows, else roll back."""
        from .serving import promote, rollback

        new, old = int(state["version"]), int(state["previous"])
        labelled = self.labelled()
        if len(labelled) < self.cfg.min_labelled:
            log.info("loop %s v%d: %d of %d labelled rows to judge the canary", self.model, new, len(labelled),
                     self.cfg.min_labelled)
            return None
        verdict = self.verdict(old, new, labelled)
        won = verdict.promoted
        metric = verdict.metric
        tags = {metric: round(verdict.candidate, 4), f"{metric}_previous": round(verdict.current, 4),
                "judged_rows": verdict.n, "judge.test": verdict.test, "judge.p_value": f"{verdict.p_value:.3g}",
                "judge.ci": f"[{verdict.ci[0]:.4g}, {verdict.ci[1]:.4g}]", "judge.confidence": verdict.confidence,
                "judge.reason": verdict.reason}
        if won:
            promote(self.project, self.model)
            self._log(new, "promoted", **tags)
        else:
            rollback(self.project, self.model)
            self._log(new, "rolled-back", **tags)
        try:
            self.pipe.plugins.call("loom_canary_judged", project=self.project, model=self.model, version=new,
                                   previous=old, verdict=verdict.to_dict())
        except LoomError as err:  # a plugin's failure, named; the decision stands
            log.error("%s", err)
        self._save({"phase": "idle", "last": new, "outcome": "promoted" if won else "rolled-back",
                    "verdict": verdict.to_dict(), "finished_at": time.time()})
        return f"{'promoted' if won else 'rolled back'} v{new}"

    def verdict(self, old: int, new: int, labelled: pd.DataFrame) -> Verdict:
        """Both versions predict the same labelled rows; a paired test (:mod:`runtime.judge`) decides."""
        current, candidate = (self.predict(v, labelled) for v in (old, new))
        cfg = self.cfg
        if self._regression(new):
            truth = pd.to_numeric(labelled["label"]).to_numpy()
            return judge_regression(truth, current, candidate, confidence=cfg.confidence,
                                    min_improvement=cfg.min_improvement)
        truth = labelled["label"].astype(str).to_numpy()
        return judge_classification(truth, [str(p) for p in current], [str(p) for p in candidate],
                                    confidence=cfg.confidence, min_improvement=cfg.min_improvement)

    def _regression(self, version: int) -> bool:
        from .model import ModelBundle

        bundle = ModelBundle.from_registry(self.pipe.registry, self.model, version)
        assert bundle.task is not None
        return bundle.task.name == "regression"

    def predict(self, version: int, labelled: pd.DataFrame) -> list[Any]:
        """``version``'s predictions of the labelled rows."""
        from .model import ModelBundle, Predictor

        bundle = ModelBundle.from_registry(self.pipe.registry, self.model, version)
        predicted, _ = Predictor(bundle).predict(labelled[list(bundle.inputs)])
        return list(predicted)

    def labelled(self) -> pd.DataFrame:
        """The most recent served rows (any version) with a ground-truth label, at most ``monitoring.window``."""
        from .serving import read_captured, read_feedback

        rows = read_captured(self.capture, self.model)
        labels = read_feedback(self.capture, self.model)
        if rows.empty or labels.empty:
            return rows.iloc[0:0].assign(label=[])
        out = rows.merge(labels, on=["request_id", "row"], how="inner")
        return out.tail(self.project.config.monitoring.window).reset_index(drop=True)

    def _save_report(self, version: int, report: dict[str, Any]) -> Path:
        path = self.root / "loop" / f"{self.model}-v{version}-drift-{report['id']}.json"
        write_atomic(path, json.dumps(report, indent=1, default=str).encode())
        return path

    def run(self, interval_s: float, *, max_steps: int | None = None) -> None:
        """Step every ``interval_s`` seconds (forever, or ``max_steps`` times)."""
        done = 0
        while max_steps is None or done < max_steps:
            outcome = self.step()
            if outcome:
                self.pipe.console.print(f"[green]✓[/] {outcome}")
            done += 1
            if max_steps is None or done < max_steps:
                time.sleep(interval_s)
