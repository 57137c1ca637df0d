"""What the console shows, as plain data: gathered in a serving replica from the routing table, the registry, the
deployment's traffic and drift checks, and the retrain loop's state. The pages (:mod:`.pages`) and ``loom status``
(through ``GET /ui/api/summary``) draw the same dictionaries.

Everything that leaves here has been through :func:`runtime.secrets.redact_data`: lineage holds data source URIs,
and a URI may hold a password. Tokens are never read into a view at all.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..._version import __version__
from ...errors import LoomError
from ...secrets import redact_data, redact
from ..protocol import RequestError

log = logging.getLogger("loom.serving")

#: The traffic window of the front page, and of the model page's graphs (seconds).
SUMMARY_WINDOW_S = 60.0
DETAIL_WINDOW_S = 300.0
#: Drift checks drawn on the model page.
HISTORY_SHOWN = 100
#: Lineage tags that record the retrain loop's rounds (set by runtime.retrain_loop).
LOOP_TAG = "loom.loop"


class NoSuchModel(LookupError):
    """The console was asked for a model (or version) that is not served here: a 404 page."""


def _ask(fn: Any, *args: Any) -> tuple[Any, str | None]:
    """``fn(*args)``, or ``(None, why)`` when it cannot be answered (no rows yet, the monitor restarting, the
    registry out of reach): the console shows the reason in place of the panel, never an error page."""
    try:
        return fn(*args), None
    except RequestError as err:
        return None, err.message
    except LoomError as err:
        return None, redact(str(err))
    except Exception as err:  # noqa: BLE001 - one panel's failure must not take the page down
        log.warning("console: %s failed: %s", getattr(fn, "__name__", fn), type(err).__name__)
        return None, f"unavailable ({type(err).__name__})"


def _traffic(server: Any, checks: Any, name: str, window_s: float) -> dict[str, Any]:
    deployment = getattr(checks, "traffic", None)  # the deployment monitor's, else this replica's own
    return deployment(name, window_s) if deployment is not None else server.traffic(name, window_s)


def _routes(server: Any, name: str) -> dict[str, Any]:
    try:
        routes = server.routes(name)
    except RequestError:
        raise NoSuchModel(name) from None
    return {**routes.to_config(), "traffic": {str(v): p for v, p in routes.traffic.items()},
            "live": list(routes.live)}


def _loop_state(server: Any, name: str) -> dict[str, Any] | None:
    """The retrain loop's state (``runtime.retrain_loop``), where this replica can read it: the capture store's
    local directory, on the node the loop runs."""
    path = server.project.capture_dir / "loop" / f"{name}.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    verdict = state.get("verdict") or {}
    return {"phase": state.get("phase", "idle"), "version": state.get("version"), "previous": state.get("previous"),
            "last": state.get("last"), "outcome": state.get("outcome"), "finished_at": state.get("finished_at"),
            "started_at": state.get("started_at"), "reason": verdict.get("reason") or state.get("reason"),
            "error": state.get("error")}


def _version_row(v: Any) -> dict[str, Any]:
    return {"version": v.version, "created_at": v.created_at, "aliases": list(v.aliases),
            "metrics": {k: m for k, m in v.metrics.items() if isinstance(m, (int, float))},
            "description": v.description, "run_id": v.run_id, "loop": v.tags.get(LOOP_TAG),
            "source": (v.lineage.get("data") or {}).get("source"),
            "imported": "imported" in v.lineage, "retrained_from": (v.lineage.get("retrain") or {}).get(
                "retrained_from")}


def _versions(server: Any, name: str) -> list[Any]:
    return sorted(server.registry.list_versions(name), key=lambda v: v.version)


def _rounds(versions: list[Any]) -> list[dict[str, Any]]:
    """The retrain loop's rounds, newest first: every version the loop trained, with its trigger and decision."""
    out = []
    for v in reversed(versions):
        retrain = v.lineage.get("retrain") or {}
        if not retrain and LOOP_TAG not in v.tags:
            continue
        tags = v.tags
        guards: Any = tags.get("loom.judge.guards")
        try:
            guards = json.loads(guards) if guards else None
        except ValueError:
            guards = None
        out.append({"version": v.version, "created_at": v.created_at, "trigger": retrain.get("trigger"),
                    "retrained_from": retrain.get("retrained_from"), "step": tags.get(LOOP_TAG),
                    "reason": tags.get("loom.judge.reason"), "p_value": tags.get("loom.judge.p_value"),
                    "test": tags.get("loom.judge.test"), "judged_rows": tags.get("loom.judged_rows"),
                    "guards_passed": None if guards is None else guards.get("passed"),
                    "rows_labelled": (retrain.get("capture") or {}).get("rows_labelled")})
    return out


def _latest_check(history: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if not history:
        return None
    last = history[-1]
    return {k: last.get(k) for k in ("at", "version", "drifted", "share_drifted", "drifted_features",
                                     "prediction_drift", "accuracy", "rmse", "labelled_rows", "trigger")}


def _gathered(server: Any, checks: Any, name: str, window_s: float, history_limit: int) -> dict[str, Any]:
    """What a page of ``name`` is drawn from, each asked once: its routes, registry versions, traffic over
    ``window_s`` and its newest ``history_limit`` drift checks (``None`` and a problem for what cannot be had)."""
    routes = _routes(server, name)  # first: an unknown model is a 404 before anything is asked
    versions, registry_error = _ask(_versions, server, name)
    traffic, traffic_error = _ask(_traffic, server, checks, name, window_s)
    history, history_error = _ask(checks.history, name, history_limit)
    return {"routes": routes, "versions": versions, "traffic": traffic, "history": history,
            "problems": {k: v for k, v in (("registry", registry_error), ("traffic", traffic_error),
                                           ("drift", history_error)) if v}}


def _summary(name: str, got: dict[str, Any], server: Any, window_s: float) -> dict[str, Any]:
    routes, versions, traffic = got["routes"], got["versions"], got["traffic"]
    aliases: dict[str, int] = {}
    for v in versions or []:
        for alias in v.aliases:
            aliases[alias] = v.version
    per_version = (traffic or {}).get("versions", {})
    total = sum(t.get("requests", 0) for t in per_version.values())
    errors = sum(t.get("errors", 0) for t in per_version.values())
    primary = per_version.get(str(routes["primary"]), {})
    return {
        "name": name,
        "production": aliases.get("production"),
        "aliases": dict(sorted(aliases.items())),
        "versions": len(versions) if versions is not None else None,
        "routes": routes,
        "traffic": {"window_s": window_s, "rps": round(sum(t.get("rps", 0.0) for t in per_version.values()), 3),
                    "requests": total, "error_rate": round(errors / total, 6) if total else 0.0,
                    "p50_ms": primary.get("p50_ms"), "p99_ms": primary.get("p99_ms"), "versions": per_version,
                    "shadow": (traffic or {}).get("shadow")},
        "drift": _latest_check(got["history"]),
        "loop": _loop_state(server, name),
        "problems": got["problems"],
    }


def model_summary(server: Any, checks: Any, name: str, *, window_s: float = SUMMARY_WINDOW_S) -> dict[str, Any]:
    """One model's line of the front page: its routes, production version, live traffic, last drift check and
    the loop's phase."""
    return _summary(name, _gathered(server, checks, name, window_s, 1), server, window_s)


def summary(server: Any, checks: Any, *, window_s: float = SUMMARY_WINDOW_S) -> dict[str, Any]:
    """The front page (and ``loom status``): every served model's summary."""
    project = server.project
    models = [model_summary(server, checks, name, window_s=window_s) for name in sorted(server.table.models)]
    return redact_data({"loom": __version__, "project": project.config.name, "at": time.time(),
                        "window_s": window_s, "models": models}, keys=False)


def model_detail(server: Any, checks: Any, name: str, *, window_s: float = DETAIL_WINDOW_S) -> dict[str, Any]:
    """The model page: versions with aliases, routing, traffic over the last minutes, drift over time, feedback
    metrics and the loop's rounds."""
    got = _gathered(server, checks, name, window_s, HISTORY_SHOWN)
    out = _summary(name, got, server, window_s)
    versions = got["versions"] or []
    primary = server.resolve(name, str(out["routes"]["primary"]))
    out.update(versions_list=[_version_row(v) for v in reversed(versions)], rounds=_rounds(versions),
               history=got["history"] or [], series=(got["traffic"] or {}).get("series", {}),
               features=list(primary.schema),
               has_reference_predictions=primary.reference is not None and "prediction" in primary.reference,
               regression=primary.regression)
    return redact_data(out, keys=False)


def live(server: Any, checks: Any, name: str, *, window_s: float = DETAIL_WINDOW_S) -> dict[str, Any]:
    """The model page's refreshed part: routing and traffic (with its per-version rate series)."""
    got = _gathered(server, checks, name, window_s, 1)
    out = _summary(name, got, server, window_s)
    out["series"] = (got["traffic"] or {}).get("series", {})
    return redact_data(out, keys=False)


def histograms(checks: Any, name: str, feature: str, version: str | None = None) -> tuple[dict[str, Any] | None,
                                                                                           str | None]:
    """Reference and current distributions of one input, or why there are none yet."""
    found, why = _ask(checks.histograms, name, feature, version)
    return (redact_data(found, keys=False) if found is not None else None), why


def version_detail(server: Any, name: str, version: int) -> dict[str, Any]:
    """One version's lineage: data, features, code, params, metrics, per-epoch history, tags."""
    if name not in server.table.models:
        raise NoSuchModel(name)
    try:
        v = server.registry.get_version(name, version)
    except LoomError:
        raise NoSuchModel(f"{name}/{version}") from None
    lineage = dict(v.lineage)
    training = lineage.get("training") or {}
    history = training.get("history") or []
    return redact_data({
        "name": name, "version": v.version, "created_at": v.created_at, "aliases": list(v.aliases),
        "description": v.description, "run_id": v.run_id, "params": v.params, "metrics": v.metrics,
        "tags": v.tags, "artifacts": list(v.artifacts), "data": lineage.get("data"),
        "features": lineage.get("features"), "code": lineage.get("code"), "packages": lineage.get("packages"),
        "training": {k: t for k, t in training.items() if k not in ("history", "params")}, "history": history,
        "key": lineage.get("key"),
        "retrain": lineage.get("retrain"), "imported": lineage.get("imported"),
        "other": {k: t for k, t in lineage.items() if k not in ("data", "features", "code", "packages", "training",
                                                                  "retrain", "imported", "key")},
    }, keys=True)
