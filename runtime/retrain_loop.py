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

import hashlib
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
from .secrets import redact

log = logging.getLogger("loom.loop")

#: The alias of a retrained version while it is judged: ``registry.alias`` moves to it only on promotion.
CANDIDATE = "candidate"


#: Latency the guard always allows on top of ``max_latency_ratio`` times production's p99: the latency histogram's
#: buckets are coarse, and a p99 interpolated inside one moves by a bucket's width on a few slow requests.
LATENCY_SLACK_MS = 10.0
#: Requests the canary must have served before its p99 is compared: below this its p99 is its few slowest
#: requests (on a busy machine, the ones that waited for a core), so the guard compares the medians instead.
MIN_TAIL_REQUESTS = 500


def check_guards(candidate: dict[str, Any], production: dict[str, Any], *, max_latency_ratio: float,
                 max_error_rate: float) -> dict[str, Any]:
    """The canary's guards on the traffic figures of both versions (``GET /monitoring/{m}/traffic``): its
    server-error rate is at most ``max_error_rate``, and its p99 latency at most ``max_latency_ratio`` times
    production's plus :data:`LATENCY_SLACK_MS` (its p50 against production's, while it has served fewer than
    :data:`MIN_TAIL_REQUESTS` requests)."""
    out: dict[str, Any] = {"candidate": candidate, "production": production, "max_latency_ratio": max_latency_ratio,
                           "max_error_rate": max_error_rate}
    requests = int(candidate.get("requests") or 0)
    rate = (int(candidate.get("errors") or 0) / requests) if requests else 0.0
    q = "p99" if requests >= MIN_TAIL_REQUESTS else "p50"
    latency, limit = candidate.get(f"{q}_ms"), None
    if production.get(f"{q}_ms") is not None:
        limit = float(production[f"{q}_ms"]) * max_latency_ratio + LATENCY_SLACK_MS
    out["latency_quantile"] = q
    if rate > max_error_rate:
        return {**out, "passed": False, "reason": f"the canary's error rate {rate:.2%} is above {max_error_rate:.2%}"}
    if latency is not None and limit is not None and float(latency) > limit:
        return {**out, "passed": False, "reason": f"the canary's {q} latency {float(latency):.1f} ms is above "
                                                  f"{limit:.1f} ms"}
    return {**out, "passed": True, "reason": "latency and errors within bounds"}


class RetrainLoop:
    """One project's loop. :meth:`step` does what is due now and returns what it did (``None``: nothing)."""

    def __init__(self, project: Project, *, plugins: Any = None, console: Any = None, on_demand_checks: bool = True):
        from .pipeline import Pipeline

        #: True: each idle step runs a drift check (``loom loop``); False: it reads the deployment's latest
        #: scheduled check (the controller, which must not add a check every few seconds).
        self.on_demand_checks = on_demand_checks
        #: When this loop started: ``retrain.every`` counts from here until a round has ended.
        self.started = time.time()
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
        """Advance the running round (shadow, then canary, then the verdict), or check drift and start a round."""
        if not self.cfg.enabled:
            raise LoomError("the retrain loop is off: set monitoring.retrain.enabled: true in loom.yaml")
        state = self.state()
        if state.get("phase") == "shadow":
            return self.shadowed(state)
        if state.get("phase") == "canary":
            return self.judge(state)
        if state.get("phase") == "training":  # cut off while training: nothing to resume from
            return self.recover() or None
        if time.time() - state.get("finished_at", 0) < self.cfg.cooldown_s:
            return None
        report = self.drift() if self.on_demand_checks else self.latest_check(state)
        if report is None or not (report["drifted"] or report.get("retrain_requested")):
            if not self.schedule_due(state):
                return None
            report = {**(report or self.served_report()), "scheduled": True}
        return self.retrain(report)

    def schedule_due(self, state: dict[str, Any]) -> bool:
        """Whether ``retrain.every`` has passed since the last round ended (or since this loop started)."""
        every = self.cfg.every_s
        return every is not None and time.time() - float(state.get("finished_at") or self.started) >= every

    def served_report(self) -> dict[str, Any]:
        """What a scheduled round answers when there is no drift check to name: the version served now."""
        from .serving import current_table

        primary = current_table(self.project).routes(self.model).primary
        return {"id": f"schedule-{int(time.time())}", "version": primary, "drifted": False, "features": {}}

    def latest_check(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """The deployment's newest drift check, if it ran after the last round ended."""
        import calendar

        history = self.client().history(self.model, limit=1)
        if not history:
            return None
        check = history[-1]
        at = calendar.timegm(time.strptime(check["at"], "%Y-%m-%dT%H:%M:%SZ"))
        return check if at >= state.get("finished_at", 0) else None

    def recover(self) -> str | None:
        """End a round that was cut off while training (a controller killed then): no alias moved and serving is
        as it was; a version it registered loses the ``candidate`` alias."""
        state = self.state()
        if state.get("phase") != "training":
            return None
        registry = self.pipe.registry
        try:
            stray = registry.get_version(self.model, CANDIDATE)
        except LoomError:
            stray = None
        if stray is not None:
            registry.delete_alias(self.model, CANDIDATE)
            self._log(stray.version, "rolled-back", reason="the round was cut off before its shadow started")
        self._save({"phase": "idle", "outcome": "aborted", "reason": "the round was cut off while training",
                    "finished_at": time.time()})
        log.warning("loop %s: a round cut off while training was aborted; serving is unchanged", self.model)
        return "aborted the round cut off while training"

    def start(self) -> str:
        """Start a round now (``loom retrain``), drift or not: refused while one is running."""
        if not self.cfg.enabled:
            raise LoomError("the retrain loop is off: set monitoring.retrain.enabled: true in loom.yaml")
        phase = self.state().get("phase")
        if phase in ("shadow", "canary"):
            raise LoomError(f"a round of {self.model} is running ({phase} of "
                            f"v{self.state().get('version')}); wait for its verdict or roll it back")
        return self.retrain({**self.drift(), "on_demand": True})

    def drift(self) -> dict[str, Any]:
        """A drift check of the served model, through the serving application."""
        return self.client().drift(self.model)

    def client(self) -> Any:
        from .serving import ServingClient

        return ServingClient.for_project(self.project)

    def retrain(self, report: dict[str, Any]) -> str:
        """Retrain on the original (or ``retrain.source``) data plus labelled captured traffic, register the new
        version under the alias ``candidate`` with lineage to ``report`` and the capture window, then run it in
        shadow (or, with ``shadow_requests: 0``, as a canary). A failure leaves serving as it was and is reported."""
        current = int(report["version"])
        self._save({"phase": "training", "previous": current, "report": report["id"], "started_at": time.time()})
        try:
            version, lineage = self._train_candidate(report, current)
        except Exception as err:  # noqa: BLE001 - serving goes on untouched; the round is over and says why
            message = f"{type(err).__name__}: {err}"
            log.error("loop %s: the retrain failed, serving is unchanged: %s", self.model, message)
            self.pipe.plugins.call_quietly("loom_on_error", project=self.project, stage="retrain", error=err)
            self._save({"phase": "idle", "outcome": "failed", "error": message, "finished_at": time.time()})
            return f"retrain failed: {message}"
        self._save_report(version, report)
        capture = lineage.get("capture", {})
        self._log(version, "registered", drift_report=report["id"], retrained_from=current,
                  drifted_features=",".join(c for c, f in report.get("features", {}).items() if f["drifted"]),
                  data_source=lineage["source"], captured_rows=capture.get("rows_labelled", 0))
        return self._start_shadow(version, current, report["id"])

    def _train_candidate(self, report: dict[str, Any], current: int) -> tuple[int, dict[str, Any]]:
        from .pipeline import Dataset

        pipe, project, cfg = self.pipe, self.project, self.cfg
        config = project.config
        update: dict[str, Any] = {}
        if cfg.source:
            update["data"] = config.data.model_copy(update={"source": cfg.source})
        if cfg.workers:
            update["training"] = config.training.model_copy(update={"workers": cfg.workers})
        if update:
            pipe.project = project.model_copy(update={"config": config.model_copy(update=update)})
        pipe.training_nice = cfg.nice
        data = pipe.ingest()
        lineage: dict[str, Any] = {"source": data.uri}
        if cfg.captured:
            source = pipe.open_source(f"captured://{self.model}", {"window": cfg.window_s, "store": self.capture})
            report_, fingerprint = pipe.validated(source, pipe.project.config.data.columns)
            window = dict(getattr(source, "window", {}) or {})
            window.update(rows_used=len(report_.frame), quarantined=report_.quarantined, fingerprint=fingerprint)
            lineage["capture"] = window
            if len(report_.frame):
                frame = pd.concat([data.frame, report_.frame], ignore_index=True)
                digest = hashlib.sha256(f"{data.fingerprint}+{fingerprint}".encode()).hexdigest()
                data = Dataset(frame=frame, uri=f"{data.uri} + captured://{self.model}", fingerprint=f"sha256:{digest}",
                               quarantined=data.quarantined + report_.quarantined)
        view = pipe.write_features(data)
        trained = pipe.train(data, view)
        trigger = ("on demand" if report.get("on_demand") else "schedule" if report.get("scheduled")
                   else "drift" if report.get("drifted") else "loom_drift_detected")
        retrain = {"trigger": trigger,
                   "drift_report": report["id"], "retrained_from": current, "source": redact(lineage["source"]),
                   "capture": lineage.get("capture")}
        version = pipe.register(trained, data, view, alias=CANDIDATE, lineage={"retrain": retrain}).version
        return version, lineage

    def _start_shadow(self, version: int, current: int, report_id: str) -> str:
        from .serving import shadow

        if self.cfg.shadow_requests == 0:
            return self._start_canary({"version": version, "previous": current, "report": report_id})
        shadow(self.project, self.model, version)
        self._save({"phase": "shadow", "version": version, "previous": current, "report": report_id,
                    "started_at": time.time()})
        self._log(version, "shadow", shadow_requests=self.cfg.shadow_requests)
        return f"shadow v{version}"

    def _start_canary(self, state: dict[str, Any]) -> str:
        from .serving import deploy

        version = int(state["version"])
        deploy(self.project, self.model, version, canary=self.cfg.canary_percent)
        self._save({**state, "phase": "canary", "started_at": time.time()})
        self._log(version, "canary", canary_percent=self.cfg.canary_percent)
        return f"canary v{version}"

    def shadowed(self, state: dict[str, Any]) -> str | None:
        """Once the shadow has scored ``shadow_requests`` mirrored requests, record the agreement and start the
        canary; a shadow failing more than ``max_error_rate`` of them is retired instead."""
        new = int(state["version"])
        seen = self.client().traffic(self.model, window_s=900).get("shadow") or {}
        if int(seen.get("version") or -1) != new:
            log.warning("loop %s v%d: the shadow is no longer served; retiring it", self.model, new)
            return self._retire(state, "the shadow was no longer served")
        requests = int(seen.get("requests") or 0)
        if requests < self.cfg.shadow_requests:
            log.info("loop %s v%d: %d of %d shadow requests", self.model, new, requests, self.cfg.shadow_requests)
            return None
        errors = int(seen.get("errors") or 0)
        agreement = seen.get("agreement")
        self._log(new, "shadowed", shadow_requests=requests, shadow_errors=errors,
                  shadow_agreement="n/a" if agreement is None else round(float(agreement), 4))
        if errors > self.cfg.max_error_rate * requests:
            return self._retire(state, f"the shadow failed {errors} of {requests} requests")
        return self._start_canary({k: state[k] for k in ("version", "previous", "report")} |
                                  {"shadow": {"requests": requests, "errors": errors, "agreement": agreement}})

    def _retire(self, state: dict[str, Any], reason: str) -> str:
        """End a round without promotion: the candidate leaves routing and loses its alias."""
        from .serving import current_table, rollback, unshadow

        new = int(state["version"])
        self._drop_candidate(new)  # first: the rollout below snapshots the registry's aliases into the routes
        routes = current_table(self.project).models.get(self.model)
        if routes is not None and routes.canary == new:
            rollback(self.project, self.model)
        elif routes is not None and routes.shadow == new:
            unshadow(self.project, self.model)
        self._log(new, "rolled-back", reason=reason)
        self._save({"phase": "idle", "last": new, "outcome": "rolled-back", "reason": reason,
                    "finished_at": time.time()})
        return f"rolled back v{new}"

    def _drop_candidate(self, version: int) -> None:
        registry = self.pipe.registry
        if CANDIDATE in registry.get_version(self.model, version).aliases:
            registry.delete_alias(self.model, CANDIDATE)

    def judge(self, state: dict[str, Any]) -> str | None:
        """Promote the canary if it beats the current version on the labelled rows served since it started, and
        its latency and errors stay within the guards; else roll back."""
        from .serving import promote, rollback

        new, old = int(state["version"]), int(state["previous"])
        labelled = self.labelled(since=state.get("started_at"))
        if len(labelled) < self.cfg.min_labelled:
            log.info("loop %s v%d: %d of %d labelled rows to judge the canary", self.model, new, len(labelled),
                     self.cfg.min_labelled)
            return None
        verdict = self.verdict(old, new, labelled)
        guards = self.guards(state, old, new)
        won = verdict.promoted and guards["passed"]
        metric = verdict.metric
        reason = verdict.reason if guards["passed"] else guards["reason"]
        tags = {metric: round(verdict.candidate, 4), f"{metric}_previous": round(verdict.current, 4),
                "judged_rows": verdict.n, "judge.test": verdict.test, "judge.p_value": f"{verdict.p_value:.3g}",
                "judge.ci": f"[{verdict.ci[0]:.4g}, {verdict.ci[1]:.4g}]", "judge.confidence": verdict.confidence,
                "judge.reason": reason, "judge.guards": json.dumps(guards, sort_keys=True)}
        # the alias goes first: a rollout snapshots the registry's aliases into the routes (name@candidate)
        self._drop_candidate(new)
        if won:
            promote(self.project, self.model)
            self._log(new, "promoted", **tags)
        else:
            rollback(self.project, self.model)
            self._log(new, "rolled-back", **tags)
        evidence = {**verdict.to_dict(), "guards": guards, "promoted": won}
        try:
            self.pipe.plugins.call("loom_canary_judged", project=self.project, model=self.model, version=new,
                                   previous=old, verdict=evidence)
        except LoomError as err:  # a plugin's failure, named; the decision stands
            log.error("%s", err)
        self._save({"phase": "idle", "last": new, "outcome": "promoted" if won else "rolled-back",
                    "verdict": evidence, "finished_at": time.time()})
        return f"{'promoted' if won else 'rolled back'} v{new}"

    def guards(self, state: dict[str, Any], old: int, new: int) -> dict[str, Any]:
        """The canary's p99 latency and server-error rate against production's, over the canary's period (at most
        the last 15 minutes, as the deployment's monitor keeps them)."""
        cfg = self.cfg
        window = min(900.0, max(1.0, time.time() - float(state.get("started_at") or 0)))
        try:
            versions = self.client().traffic(self.model, window_s=window)["versions"]
        except LoomError as err:
            return {"passed": False, "reason": f"no traffic figures to check the guards: {err}"}
        return {"window_s": round(window, 1),
                **check_guards(versions.get(str(new)) or {}, versions.get(str(old)) or {},
                               max_latency_ratio=cfg.max_latency_ratio, max_error_rate=cfg.max_error_rate)}

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

    def labelled(self, since: float | None = None) -> pd.DataFrame:
        """The most recent served rows (any version; a row a shadow scored too counts once) with a ground-truth
        label, captured after ``since`` (epoch seconds), at most ``monitoring.window``."""
        from .serving import read_captured, read_feedback

        rows = read_captured(self.capture, self.model)
        labels = read_feedback(self.capture, self.model)
        if rows.empty or labels.empty:
            return rows.iloc[0:0].assign(label=[])
        if since is not None:
            rows = rows[rows["ts"] >= pd.Timestamp(since, unit="s", tz="UTC")]
        rows = rows.drop_duplicates(["request_id", "row"], keep="first")
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
