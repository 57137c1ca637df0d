"""Rollout commands on a running serving application: ``loom promote``, ``loom rollback``, ``loom canary``,
``loom scale-to-zero`` and ``loom routes``. ``loom deploy --canary`` lives with ``loom deploy`` in
:mod:`.lifecycle`.

They act on the Ray cluster that serves the project: ``--address``, else ``RAY_ADDRESS``, else the cluster
running on this machine (the one ``loom up`` / ``loom deploy`` started). Each change is applied in place on the
live replicas; no request is dropped. A change is refused when the routing table changed since it was read (or is
not at ``--expect-generation``), and the registry alias moves only once the new table serves.
"""

from __future__ import annotations

import click
from rich.table import Table

from ..config import Project
from ._common import console, json_option, out, print_json, project_option, served_project

_address = click.option("--address", help="Ray cluster to act on (default: $RAY_ADDRESS, else the cluster "
                                          "running on this machine).")
_model = click.option("--model", "model", help="Model to act on (default: the project's model.name).")
_expect = click.option("--expect-generation", "expect_generation", type=click.IntRange(min=0), metavar="N",
                       help="Refuse unless the routing table is at generation N (see `loom routes`).")


def _on_model(f):
    """A rollout of one model: the project (``[PROJECT]`` or ``-p``), ``--model``, ``--address`` and
    ``--expect-generation``."""
    return project_option(positional=True)(_model(_address(_expect(f))))


def _target(project: str, model: str | None, address: str | None) -> tuple[Project, str]:
    """The project, attached to the cluster serving it, and the name of the model to act on."""
    proj = served_project(project, address)
    return proj, model or proj.config.model.name


def _show(proj: Project) -> None:
    from ..serving import current_table, url_of

    table = current_table(proj)
    if not table.models:
        out.print(f"{proj.config.name}: nothing is being served")
        return
    grid = Table("model", "version", "traffic", "aliases", title=f"{url_of(proj)}  (generation {table.generation})")
    for name, routes in table.models.items():
        for v in routes.live:
            aliases = ", ".join(a for a, av in routes.aliases.items() if av == v)
            share = (f"{routes.traffic[v]}%" if v in routes.traffic
                     else "shadow" if v == getattr(routes, "shadow", None) else "standby")
            grid.add_row(name, str(v), share, aliases or "-")
    out.print(grid)


@click.command()
@_on_model
def promote(project: str, model: str | None, address: str | None, expect_generation: int | None) -> None:
    """Give the running canary all traffic, then point the registry's serving alias at it."""
    from ..serving import promote as promote_

    proj, name = _target(project, model, address)
    version = promote_(proj, name, expect_generation=expect_generation)
    console.print(f"[green]✓[/] {name} v{version} takes all traffic and is {proj.config.registry.alias!r}")
    _show(proj)


@click.command()
@_on_model
def rollback(project: str, model: str | None, address: str | None, expect_generation: int | None) -> None:
    """Abort the running canary, or give all traffic back to the previous version."""
    from ..serving import rollback as rollback_

    proj, name = _target(project, model, address)
    version = rollback_(proj, name, expect_generation=expect_generation)
    console.print(f"[green]✓[/] {name} v{version} takes all traffic")
    _show(proj)


@click.command()
@_on_model
@click.argument("percent", type=click.IntRange(1, 99))
def canary(project: str, percent: int, model: str | None, address: str | None,
           expect_generation: int | None) -> None:
    """Set the share of traffic (1-99 %) the running canary takes."""
    from ..serving import set_canary

    proj, name = _target(project, model, address)
    set_canary(proj, name, percent, expect_generation=expect_generation)
    _show(proj)


@click.command()
@_on_model
@click.argument("version")
def shadow(project: str, version: str, model: str | None, address: str | None, expect_generation: int | None) -> None:
    """Run VERSION (a number or an alias) in shadow: it scores a copy of the requests production answers, and
    its agreement shows in `GET /monitoring/MODEL/traffic`; `loom deploy --canary` then makes it the canary."""
    from ..serving import shadow as shadow_

    proj, name = _target(project, model, address)
    shadow_(proj, name, int(version) if version.isdigit() else version, expect_generation=expect_generation)
    _show(proj)


@click.command()
@_on_model
def unshadow(project: str, model: str | None, address: str | None, expect_generation: int | None) -> None:
    """Stop the shadow version's mirrored scoring."""
    from ..serving import unshadow as unshadow_

    proj, name = _target(project, model, address)
    unshadow_(proj, name, expect_generation=expect_generation)
    _show(proj)


@click.command("scale-to-zero")
@_on_model
@click.option("--version", type=int, help="Unload this standby version (default: stop serving the model).")
def scale_to_zero(project: str, version: int | None, model: str | None, address: str | None,
                  expect_generation: int | None) -> None:
    """Unload a model version that takes no traffic, or stop serving the model altogether."""
    from ..serving import scale_to_zero as scale_

    proj, name = _target(project, model, address)
    scale_(proj, name, version, expect_generation=expect_generation)
    console.print(f"[green]✓[/] {name}{f' v{version}' if version else ''} unloaded")
    _show(proj)


@click.command()
@project_option(positional=True)
@json_option("Print the routing table as JSON.")
@_address
def routes(project: str, as_json: bool, address: str | None) -> None:
    """Show what the project serves: live versions, traffic shares and aliases."""
    from ..serving import current_table

    proj = served_project(project, address)
    if as_json:
        print_json(current_table(proj).to_config())
        return
    _show(proj)


COMMANDS = (promote, rollback, canary, shadow, unshadow, scale_to_zero, routes)
