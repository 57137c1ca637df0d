"""``loom loop``: the driver-side closed loop from drift to a retrained, canaried and judged model
(:mod:`runtime.retrain_loop`)."""

from __future__ import annotations

import click

from ._common import console, project_option, served_project


@click.command("loop")
@project_option(positional=True)
@click.option("--interval", type=float, help="Seconds between steps (default: monitoring.interval_s, else 60).")
@click.option("--once", is_flag=True, help="Do one step (check drift, or judge the running canary) and exit.")
@click.option("--address", help="Ray cluster serving the project (default: $RAY_ADDRESS, else the local one).")
def loop(project: str, interval: float | None, once: bool, address: str | None) -> None:
    """Watch served traffic for drift; on drift retrain, deploy a canary, then promote or roll it back.

    Needs monitoring.retrain.enabled: true. Every step is logged and tagged on the version (loom models show)."""
    from ..retrain_loop import RetrainLoop

    proj = served_project(project, address)
    every = interval or proj.config.monitoring.interval_s or 60
    RetrainLoop(proj, console=console).run(every, max_steps=1 if once else None)
