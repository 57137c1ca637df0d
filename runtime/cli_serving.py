"""Rollout commands on a running serving application: ``loom promote``, ``loom rollback``, ``loom canary``,
``loom scale-to-zero`` and ``loom routes``. ``loom deploy --canary`` lives with ``loom deploy`` in :mod:`.cli`.

They act on the Ray cluster that serves the project: ``--address``, else ``RAY_ADDRESS``, else the cluster
running on this machine (the one ``loom up`` / ``loom deploy`` started). Each change is applied in place on the
live replicas; no request is dropped.
"""

from __future__ import annotations

import json
import os

import click
from rich.console import Console
from rich.table import Table

from .config import Project, load_project
from .errors import LoomError

console = Console(stderr=True)
out = Console()

_address = click.option("--address", help="Ray cluster to act on (default: $RAY_ADDRESS, else the cluster "
                                          "running on this machine).")
_model = click.option("--model", "model", help="Model to act on (default: the project's model.name).")
_project_arg = click.argument("project", default=".", type=click.Path(exists=True, file_okay=True))


def attach(address: str | None) -> None:
    """Connect to the running cluster that serves the project (never start a new one)."""
    import ray

    if ray.is_initialized():
        return
    from .cluster import connect

    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        connect(target)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise LoomError(f"no running Ray cluster at {target!r} ({err}); start serving with `loom deploy` or "
                        "`loom up`, or pass --address") from None


def _load(project: str, address: str | None) -> Project:
    proj = load_project(project)
    attach(address)
    return proj


def _show(proj: Project) -> None:
    from .serving.deploy import current_table, url_of

    table = current_table(proj)
    if not table.models:
        out.print(f"{proj.config.name}: nothing is being served")
        return
    grid = Table("model", "version", "traffic", "aliases", title=f"{url_of(proj)}  (generation {table.generation})")
    for name, routes in table.models.items():
        for v in routes.live:
            aliases = ", ".join(a for a, av in routes.aliases.items() if av == v)
            share = f"{routes.traffic[v]}%" if v in routes.traffic else "standby"
            grid.add_row(name, str(v), share, aliases or "-")
    out.print(grid)


@click.command()
@_project_arg
@_model
@_address
def promote(project: str, model: str | None, address: str | None) -> None:
    """Give the running canary all traffic and point the registry's serving alias at it."""
    from .serving.deploy import promote as promote_

    proj = _load(project, address)
    name = model or proj.config.model.name
    version = promote_(proj, name)
    console.print(f"[green]✓[/] {name} v{version} takes all traffic and is {proj.config.registry.alias!r}")
    _show(proj)


@click.command()
@_project_arg
@_model
@_address
def rollback(project: str, model: str | None, address: str | None) -> None:
    """Abort the running canary, or give all traffic back to the previous version."""
    from .serving.deploy import rollback as rollback_

    proj = _load(project, address)
    name = model or proj.config.model.name
    version = rollback_(proj, name)
    console.print(f"[green]✓[/] {name} v{version} takes all traffic")
    _show(proj)


@click.command()
@_project_arg
@click.argument("percent", type=click.IntRange(1, 99))
@_model
@_address
def canary(project: str, percent: int, model: str | None, address: str | None) -> None:
    """Set the share of traffic (1-99 %) the running canary takes."""
    from .serving.deploy import set_canary

    proj = _load(project, address)
    set_canary(proj, model or proj.config.model.name, percent)
    _show(proj)


@click.command("scale-to-zero")
@_project_arg
@click.option("--version", type=int, help="Unload this standby version (default: stop serving the model).")
@_model
@_address
def scale_to_zero(project: str, version: int | None, model: str | None, address: str | None) -> None:
    """Unload a model version that takes no traffic, or stop serving the model altogether."""
    from .serving.deploy import scale_to_zero as scale_

    proj = _load(project, address)
    name = model or proj.config.model.name
    scale_(proj, name, version)
    console.print(f"[green]✓[/] {name}{f' v{version}' if version else ''} unloaded")
    _show(proj)


@click.command()
@_project_arg
@click.option("--json", "as_json", is_flag=True, help="Print the routing table as JSON.")
@_address
def routes(project: str, as_json: bool, address: str | None) -> None:
    """Show what the project serves: live versions, traffic shares and aliases."""
    from .serving.deploy import current_table

    proj = _load(project, address)
    if as_json:
        out.print_json(json.dumps(current_table(proj).to_config()))
        return
    _show(proj)


COMMANDS = (promote, rollback, canary, scale_to_zero, routes)
