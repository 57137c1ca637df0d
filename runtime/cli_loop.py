"""``loom loop``: the driver-side closed loop from drift to a retrained, canaried and judged model
(:mod:`runtime.retrain_loop`)."""

from __future__ import annotations

import click
from rich.console import Console

from .config import load_project

console = Console(stderr=True)


@click.command("loop")
@click.argument("project", default=".", type=click.Path(exists=True, file_okay=True))
@click.option("--interval", type=float, help="Seconds between steps (default: monitoring.interval_s, else 60).")
@click.option("--once", is_flag=True, help="Do one step (check drift, or judge the running canary) and exit.")
@click.option("--address", help="Ray cluster serving the project (default: $RAY_ADDRESS, else the local one).")
def loop(project: str, interval: float | None, once: bool, address: str | None) -> None:
    """Watch served traffic for drift; on drift retrain, deploy a canary, then promote or roll it back.

    Needs monitoring.retrain.enabled: true. Every step is logged and tagged on the version (loom models show)."""
    from .cli_serving import attach
    from .retrain_loop import RetrainLoop

    proj = load_project(project)
    attach(address)
    every = interval or proj.config.monitoring.interval_s or 60
    RetrainLoop(proj, console=console).run(every, max_steps=1 if once else None)
