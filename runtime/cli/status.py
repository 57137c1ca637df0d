"""``loom status``: the console's front page in the terminal (what ``/ui`` shows first), from the served
application's ``GET /ui/api/summary``, so both always say the same."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..errors import LoomError
from ._common import json_option, out, print_json, project_option
from .monitor import DEFAULT_URL, _client


def _ms(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.3g} ms"


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value * 100:.3g}%"


def _routes(m: dict[str, Any]) -> str:
    routes = m["routes"]
    parts = [f"v{v} {p}%" for v, p in routes["traffic"].items()]
    if routes.get("shadow") is not None:
        parts.append(f"v{routes['shadow']} shadow")
    return ", ".join(parts)


def _drift(m: dict[str, Any]) -> str:
    d = m.get("drift")
    if not d:
        return "no check yet"
    verdict = "[red]drifted[/]" if d.get("drifted") else "[green]no drift[/]"
    at = escape(str(d.get("at", ""))[11:19])  # the check's time of day (UTC)
    return f"{verdict} {_pct(d.get('share_drifted'))} at {at}"


def _loop(m: dict[str, Any]) -> str:
    loop = m.get("loop")
    if not loop:
        return "-"
    text = str(loop.get("phase", "idle"))
    if loop.get("phase") != "idle" and loop.get("version"):
        text += f" v{loop['version']}"
    elif loop.get("outcome"):
        text += f", last v{loop.get('last')} {loop['outcome']}"
    return escape(text)


def show(view: dict[str, Any], url: str) -> None:
    """One block per model, the front page's columns as rows (it reads in a narrow terminal too)."""
    when = time.strftime("%H:%M:%S", time.gmtime(view.get("at", time.time())))
    out.print(f"[bold]{escape(str(view.get('project', '')))}[/] at {escape(url)} (Loom {view.get('loom')}, "
              f"{when} UTC)")
    window = f"{view.get('window_s', 60):.0f} s"
    for m in view["models"]:
        t = m["traffic"]
        production = "-" if m.get("production") is None else f"v{m['production']}"
        grid = Table(show_header=False, title=f"{escape(m['name'])}: production {production}, "
                                              f"{m.get('versions') if m.get('versions') is not None else '?'} versions",
                     title_justify="left")
        grid.add_column(style="bold")
        grid.add_column(overflow="fold")
        grid.add_row("live", _routes(m))
        grid.add_row(f"traffic ({window})", f"{t['rps']:.3g} req/s, {t['requests']} requests, "
                                            f"{_pct(t.get('error_rate'))} 5xx")
        grid.add_row("latency", f"p50 {_ms(t.get('p50_ms'))}, p99 {_ms(t.get('p99_ms'))}")
        grid.add_row("drift", _drift(m))
        grid.add_row("retrain loop", _loop(m))
        for what, problem in (m.get("problems") or {}).items():
            grid.add_row(f"[yellow]{escape(what)}[/]", escape(str(problem)))
        out.print(grid)
    if not view["models"]:
        out.print("nothing is served: `loom deploy` a version")


@click.command()
@project_option()
@click.option("--url", help="Base URL of the served app (default: the project's, from its serving settings; "
                            f"outside a project {DEFAULT_URL}).")
@json_option("Print the summary as JSON (the console's /ui/api/summary).")
def status(project: str, url: str | None, as_json: bool) -> None:
    """What is served and how it is doing: the console's front page (/ui) in the terminal."""
    client = _client(project, url)
    view = client.summary()
    if as_json:
        print_json(view)
        return
    try:
        show(view, client.url)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise LoomError(f"{client.url} answered a console summary Loom cannot read ({type(err).__name__}: {err}); "
                        "print it with --json") from None
