"""SVG charts for the console, drawn on the server: no chart library, no script, nothing from the network.

Every chart is an ``<svg class="chart">`` whose drawn marks carry ``class="mark"`` (a line with at least two
points, a bar with a height), so a test (or a person) can tell a drawn chart from an empty one; an empty chart
says so in words. All text is escaped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from html import escape

#: Series colours, in order (colour-blind safe: Okabe and Ito).
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")

Point = tuple[float, float]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.1e}"


def _tick(value: float, span: float) -> str:
    """An axis label precise enough to tell the ticks of a ``span`` wide axis apart."""
    if span <= 0 or abs(value) >= 1000 or value == 0:
        return _fmt(value)
    digits = max(0, min(8, 2 - math.floor(math.log10(span))))
    return f"{value:.{digits}f}"


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at))


def _empty(width: int, height: int, title: str, message: str) -> str:
    return (f'<svg class="chart empty" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'aria-label="{escape(title)}"><text class="note" x="{width / 2}" y="{height / 2}" '
            f'text-anchor="middle">{escape(message)}</text></svg>')


def _legend(names: Sequence[str], x: float, y: float) -> str:
    out = []
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        row = y + 14 * i
        out.append(f'<rect x="{x}" y="{row - 8}" width="10" height="10" fill="{colour}"/>'
                   f'<text class="legend" x="{x + 14}" y="{row + 1}">{escape(str(name))}</text>')
    return "".join(out)


def line_chart(series: Mapping[str, Sequence[Point]], *, title: str, y_label: str = "", time_axis: bool = True,
               width: int = 640, height: int = 200, y_min: float | None = 0.0,
               empty: str = "no data yet") -> str:
    """Lines of ``(x, y)`` points, one per named series; ``time_axis``: x is a Unix time shown as UTC clock time,
    else a step number. Non-finite points are left out."""
    clean = {name: [(float(x), float(y)) for x, y in pts if y is not None and math.isfinite(float(y))]
             for name, pts in series.items()}
    clean = {name: pts for name, pts in clean.items() if pts}
    if not clean:
        return _empty(width, height, title, empty)
    left, right, top, bottom = 52, (70 if width < 400 else 130), 12, 26
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0 = min(ys) if y_min is None else min(y_min, min(ys))
    y1 = max(ys)
    if x1 <= x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 <= y0:
        y1 = y0 + (abs(y0) or 1.0)
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return round(left + (x - x0) / (x1 - x0) * pw, 1)

    def py(y: float) -> float:
        return round(top + ph - (y - y0) / (y1 - y0) * ph, 1)

    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<line class="axis" x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}"/>',
             f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}"/>']
    for frac in (0.0, 0.5, 1.0):
        value = y0 + (y1 - y0) * frac
        parts.append(f'<line class="grid" x1="{left}" y1="{py(value)}" x2="{left + pw}" y2="{py(value)}"/>'
                     f'<text class="tick" x="{left - 4}" y="{py(value) + 4}" text-anchor="end">{_tick(value, y1 - y0)}'
                     '</text>')
    label = _clock if time_axis else (lambda v: _fmt(v))
    for x, anchor in ((x0, "start"), (x1, "end")):
        parts.append(f'<text class="tick" x="{px(x)}" y="{height - 8}" text-anchor="{anchor}">{label(x)}</text>')
    if y_label:
        parts.append(f'<text class="tick" x="{left + 4}" y="{top + 10}">{escape(y_label)}</text>')
    for i, (name, pts) in enumerate(clean.items()):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{px(x)},{py(y)}" for x, y in sorted(pts))
        if len({x for x, _ in pts}) == 1:  # one point (or several at one time): a dot, still a drawn mark
            x, y = pts[-1]
            parts.append(f'<circle class="mark" data-series="{escape(name)}" cx="{px(x)}" cy="{py(y)}" r="3" '
                         f'fill="{colour}"/>')
        else:
            parts.append(f'<polyline class="mark" data-series="{escape(name)}" fill="none" stroke="{colour}" '
                         f'stroke-width="2" points="{coords}"/>')
    parts.append(_legend(list(clean), width - right + 12, top + 10))
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(labels: Sequence[str], groups: Mapping[str, Sequence[float]], *, title: str, width: int = 640,
              height: int = 220, empty: str = "no data yet") -> str:
    """Grouped bars: one group of bars per label, one bar per named group (e.g. reference and current shares)."""
    if not labels or not groups or not any(v for vals in groups.values() for v in vals):
        return _empty(width, height, title, empty)
    left, right, top, bottom = 52, 130, 12, 40
    pw, ph = width - left - right, height - top - bottom
    peak = max(max(vals) for vals in groups.values()) or 1.0
    slot = pw / len(labels)
    bar = max(1.0, slot * 0.8 / len(groups))
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<line class="axis" x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}"/>']
    for frac in (0.0, 0.5, 1.0):
        y = round(top + ph - frac * ph, 1)
        parts.append(f'<line class="grid" x1="{left}" y1="{y}" x2="{left + pw}" y2="{y}"/>'
                     f'<text class="tick" x="{left - 4}" y="{y + 4}" text-anchor="end">{_fmt(peak * frac)}</text>')
    for g, (name, vals) in enumerate(groups.items()):
        colour = PALETTE[g % len(PALETTE)]
        for i, value in enumerate(vals):
            h = round(max(0.0, float(value)) / peak * ph, 1)
            x = round(left + i * slot + slot * 0.1 + g * bar, 1)
            parts.append(f'<rect class="{"mark" if h > 0 else "bar"}" data-series="{escape(name)}" x="{x}" '
                         f'y="{round(top + ph - h, 1)}" width="{round(bar, 1)}" height="{h}" fill="{colour}">'
                         f'<title>{escape(str(labels[i]))}: {escape(name)} {_fmt(float(value))}</title></rect>')
    step = max(1, math.ceil(len(labels) / 8))
    for i in range(0, len(labels), step):
        x = round(left + i * slot + slot / 2, 1)
        parts.append(f'<text class="tick" x="{x}" y="{top + ph + 14}" text-anchor="middle">'
                     f'{escape(str(labels[i])[:12])}</text>')
    parts.append(_legend(list(groups), width - right + 12, top + 10))
    parts.append("</svg>")
    return "".join(parts)
