"""``loom loop``: the driver-side closed loop from drift to a retrained, canaried and judged model
(:mod:`runtime.retrain_loop`)."""

from __future__ import annotations

import click

from ._common import console, open_project, out, project_option, served_project


@click.command("loop")
@project_option(positional=True)
@click.option("--interval", type=float, help="Seconds between steps (default: monitoring.interval_s, else 60).")
@click.option("--once", is_flag=True, help="Do one step (check drift, or judge the running canary) and exit.")
@click.option("--address", help="Ray cluster serving the project (default: $RAY_ADDRESS, else the local one).")
@click.option("--status", "show_status", is_flag=True, help="Show the loop's state (the round running, or the last "
              "decision with its evidence) as JSON and exit.")
def loop(project: str, interval: float | None, once: bool, address: str | None, show_status: bool) -> None:
    """Watch served traffic for drift; on drift retrain on the data plus labelled traffic, run the candidate in
    shadow, then as a canary, then promote or roll it back on a paired test and latency/error guards.

    Needs monitoring.retrain.enabled: true. Every step is logged and tagged on the version (loom models show)."""
    from ..retrain_loop import RetrainLoop

    if show_status:
        state = RetrainLoop(open_project(project)).state()
        out.print_json(data=state or {"phase": "idle", "rounds": 0})
        return
    proj = served_project(project, address)
    every = interval or proj.config.monitoring.interval_s or 60
    RetrainLoop(proj, console=console).run(every, max_steps=1 if once else None)


@click.command("retrain")
@project_option(positional=True)
@click.option("--address", help="Ray cluster serving the project (default: $RAY_ADDRESS, else the local one).")
@click.option("--wait", is_flag=True, help="Keep stepping the round (shadow, canary, verdict) until it is decided.")
@click.option("--interval", type=float, default=5, show_default=True, help="Seconds between steps with --wait.")
def retrain(project: str, address: str | None, wait: bool, interval: float) -> None:
    """Start a round of the retrain loop now, drift or not: train on the data plus labelled traffic, register
    the candidate, run it in shadow. `loom loop` (or --wait) carries it through the canary to a verdict."""
    import time

    from ..retrain_loop import RetrainLoop

    loop_ = RetrainLoop(served_project(project, address), console=console)
    outcome = loop_.start()
    console.print(f"[green]✓[/] {outcome}")
    while wait and loop_.state().get("phase") in ("shadow", "canary"):
        time.sleep(interval)
        step = loop_.step()
        if step:
            console.print(f"[green]✓[/] {step}")
