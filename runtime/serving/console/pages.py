"""The console's HTML: Jinja2 templates (autoescaped) shipped in the package, filled from :mod:`.views`, with SVG
charts from :mod:`.charts`."""

from __future__ import annotations

import calendar
import math
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..._version import __version__
from . import charts

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def _when(at: Any) -> str:
    if isinstance(at, str):
        return at.replace("T", " ").rstrip("Z")
    if not isinstance(at, (int, float)) or not math.isfinite(at):
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _ms(value: Any) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{value:.3g} ms"


def _pct(value: Any) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{value * 100:.3g}%"


_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]), trim_blocks=True,
                   lstrip_blocks=True)
_env.filters.update(when=_when, num=_num, ms=_ms, pct=_pct)


def render(template: str, *, base: str, project: str, signed_in: bool, **context: Any) -> str:
    return _env.get_template(template).render(base=base, project=project, signed_in=signed_in,
                                              loom_version=__version__, **context)


def _at(point: dict[str, Any]) -> float:
    return float(point["t"])


def live_charts(view: dict[str, Any]) -> dict[str, str]:
    """Req/s, p99 and 5xx rate per version over the model page's window."""
    series = view.get("series") or []
    versions = [str(v) for v in view["traffic"]["versions"]]
    rps = {f"v{v}": [(_at(p), p.get(v, 0.0)) for p in series] for v in versions}
    p99 = {f"v{v}": [(_at(p), p["p99_ms"].get(v)) for p in series if p.get("p99_ms", {}).get(v) is not None]
           for v in versions}
    errors = {f"v{v}": [(_at(p), p["error_rate"].get(v)) for p in series if v in p.get("error_rate", {})]
              for v in versions}
    small = {"width": 350, "height": 170, "empty": "no requests in the window"}
    return {"rps": charts.line_chart(rps, title="requests per second", y_label="req/s", **small),
            "p99": charts.line_chart(p99, title="p99 latency (ms)", y_label="p99 ms", **small),
            "errors": charts.line_chart(errors, title="5xx error rate", y_label="5xx share", **small)}


def _check_time(check: dict[str, Any]) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(check["at"], "%Y-%m-%dT%H:%M:%SZ")))
    except (KeyError, TypeError, ValueError):
        return None


def drift_charts(view: dict[str, Any]) -> dict[str, str]:
    """Per-input drift scores, the share of drifted inputs and prediction drift, and feedback metrics, over the
    drift checks kept."""
    history = [(t, c) for c in view.get("history") or [] if (t := _check_time(c)) is not None]
    scores: dict[str, list[tuple[float, float]]] = {}
    for t, c in history:
        for feature, score in (c.get("scores") or {}).items():
            if isinstance(score, (int, float)):
                scores.setdefault(feature, []).append((t, float(score)))
    share = {"inputs drifted": [(t, c.get("share_drifted")) for t, c in history],
             "prediction score": [(t, c.get("prediction_score")) for t, c in history
                                  if isinstance(c.get("prediction_score"), (int, float))]}
    metric = "rmse" if view.get("regression") else "accuracy"
    performance = {metric: [(t, c.get(metric)) for t, c in history if isinstance(c.get(metric), (int, float))]}
    return {"scores": charts.line_chart(scores, title="drift score per input", y_label="score",
                                        empty="no drift check yet"),
            "share": charts.line_chart(share, title="share of drifted inputs", y_label="share",
                                       empty="no drift check yet"),
            "performance": charts.line_chart(performance, title=f"{metric} on labelled served rows",
                                             y_label=metric, empty="no labelled rows yet: send /feedback")}


def histogram_chart(hist: dict[str, Any] | None) -> str:
    if not hist:
        return ""
    if hist["kind"] == "numeric":
        edges = hist["edges"]
        labels = [charts._fmt((a + b) / 2) for a, b in zip(edges, edges[1:])]
    else:
        labels = hist["categories"]
    return charts.bar_chart(labels, {"reference (training)": hist["reference"], "current (served)": hist["current"]},
                            title=f"{hist['feature']}: reference vs current")


#: Per-epoch records that are not metrics to plot.
HISTORY_SKIPPED = frozenset({"epoch", "timestamp", "time", "step"})


def history_charts(view: dict[str, Any]) -> list[str]:
    """One chart per training metric over epochs (losses together)."""
    history = view.get("history") or []
    keys = sorted({k for row in history for k, v in row.items()
                   if k not in HISTORY_SKIPPED and isinstance(v, (int, float)) and not isinstance(v, bool)})
    if not keys:
        return []
    def points(key: str) -> list[tuple[float, float]]:
        return [(float(row.get("epoch", i)), row[key]) for i, row in enumerate(history) if key in row]
    losses = [k for k in keys if "loss" in k]
    others = [k for k in keys if k not in losses]
    out = []
    if losses:
        out.append(charts.line_chart({k: points(k) for k in losses}, title="loss per epoch", time_axis=False,
                                     y_label="loss", y_min=None, width=520))
    for key in others:
        out.append(charts.line_chart({key: points(key)}, title=f"{key} per epoch", time_axis=False, y_label=key,
                                     y_min=None, width=520))
    return out
