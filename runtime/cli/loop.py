"""``loom loop`` and ``loom retrain``: the closed loop from drift to a retrained, shadowed, canaried and judged model
(:mod:`runtime.retrain_loop`), watched in the cluster's controller (:mod:`runtime.serving.controller`) or run
here."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.table import Table

from ..errors import LoomError
from ._common import attach, console, open_project, out, print_json, project_option, served_project


def _controller(project: Any, address: str | None) -> Any | None:
    """The project's controller in the running cluster, or None (no cluster, or none started)."""
    try:
        attach(address)
    except LoomError:
        return None
    from ..serving import find_controller

    return find_controller(project)


def _status(project: Any, address: str | None) -> dict[str, Any]:
    import ray

    from ..retrain_loop import RetrainLoop

    handle = _controller(project, address)
    if handle is not None:
        try:
            return {"controller": "running", **ray.get(handle.status.remote(), timeout=30)}
        except Exception as err:  # noqa: BLE001 - restarting, or dead: the state file still says where it is
            return {"controller": f"unavailable ({type(err).__name__})", "state": RetrainLoop(project).state()}
    return {"controller": None, "state": RetrainLoop(project).state()}


def _show(status: dict[str, Any]) -> None:
    state = status.get("state") or {}
    grid = Table(show_header=False, title=f"retrain loop of {status.get('model') or 'the model'}")
    grid.add_row("controller", str(status.get("controller") or "not running (loom loop runs it here)"))
    grid.add_row("phase", str(state.get("phase", "idle")))
    for key in ("version", "previous", "outcome", "reason", "error", "last"):
        if key in state:
            grid.add_row(key, str(state[key]))
    verdict = state.get("verdict") or {}
    if verdict:
        grid.add_row("verdict", f"{verdict.get('decision')}: {verdict.get('reason')}")
        grid.add_row("evidence", f"{verdict.get('metric')} {verdict.get('candidate')} vs {verdict.get('current')}, "
                                 f"n {verdict.get('n')}, p {verdict.get('p_value')}, CI {verdict.get('ci')}")
        guards = verdict.get("guards") or {}
        if guards:
            grid.add_row("guards", f"{'passed' if guards.get('passed') else 'failed'}: {guards.get('reason')}")
    if status.get("error"):
        grid.add_row("last error", str(status["error"]))
    if status.get("last"):
        grid.add_row("last step", str(status["last"].get("outcome")))
    out.print(grid)


@click.command("loop")
@project_option(positional=True)
@click.option("--interval", type=float, help="Seconds between steps (default: monitoring.interval_s, else 60).")
@click.option("--once", is_flag=True, help="Do one step (check drift, or judge the running canary) and exit.")
@click.option("--address", help="Ray cluster serving the project (default: $RAY_ADDRESS, else the local one).")
@click.option("--status", "show_status", is_flag=True, help="Show the loop's state (the controller, the round "
              "running, or the last decision with its evidence) and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --status: print JSON.")
def loop(project: str, interval: float | None, once: bool, address: str | None, show_status: bool,
         as_json: bool) -> None:
    """Watch served traffic for drift; on drift retrain on the data plus labelled traffic, run the candidate in
    shadow, then as a canary, then promote or roll it back on a paired test and latency/error guards.

    Needs monitoring.retrain.enabled: true. With retrain.controller (the default) the loop already runs in the
    cluster, started by loom up / loom deploy: watch it with --status. Every step is logged and tagged on the
    version (loom models show)."""
    from ..retrain_loop import RetrainLoop

    if show_status:
        status = _status(open_project(project), address)
        if as_json:
            print_json(status)
        else:
            _show(status)
        return
    proj = served_project(project, address)
    if _controller(proj, address) is not None:
        raise LoomError("the loop's controller already runs in the cluster (watch it with `loom loop --status`); "
                        "set monitoring.retrain.controller: false to run the loop here instead")
    every = interval or proj.config.monitoring.interval_s or 60
    RetrainLoop(proj, console=console).run(every, max_steps=1 if once else None)


@click.command("retrain")
@project_option(positional=True)
@click.option("--address", help="Ray cluster serving the project (default: $RAY_ADDRESS, else the local one).")
@click.option("--wait", is_flag=True, help="Wait until the round (training, shadow, canary) is decided.")
@click.option("--interval", type=float, default=5, show_default=True, help="Seconds between steps with --wait.")
def retrain(project: str, address: str | None, wait: bool, interval: float) -> None:
    """Start a round of the retrain loop now, drift or not: train on the data plus labelled traffic, register
    the candidate, run it in shadow, then as a canary, then judge it. The cluster's controller runs it when there
    is one; else it runs here (with --wait to the verdict, or `loom loop` carries it on)."""
    import ray

    from ..retrain_loop import RetrainLoop

    proj = served_project(project, address)
    handle = _controller(proj, address)
    loop_ = RetrainLoop(proj, console=console)
    started = time.time()
    if handle is not None:
        answer = ray.get(handle.retrain.remote(), timeout=60)
        if not answer["accepted"]:
            raise LoomError(answer["reason"])
        console.print("[green]✓[/] the controller starts a round (watch it with `loom loop --status`)")
        seen = None
        while wait:
            time.sleep(interval)
            state = loop_.state()
            if state.get("phase") != seen:
                seen = state.get("phase")
                console.print(f"  {seen} {('v' + str(state['version'])) if 'version' in state else ''}")
            if state.get("phase") == "idle" and state.get("finished_at", 0) > started:
                console.print(f"[green]✓[/] {state.get('outcome')} v{state.get('last', '?')}")
                return
        return
    console.print(f"[green]✓[/] {loop_.start()}")
    while wait and loop_.state().get("phase") in ("shadow", "canary"):
        time.sleep(interval)
        step = loop_.step()
        if step:
            console.print(f"[green]✓[/] {step}")
