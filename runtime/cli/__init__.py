"""The ``loom`` command line. Every command runs the same :class:`runtime.Pipeline` code as the Python API.

The root group lives here; each area's commands live in a module of their own and are attached below:
:mod:`.lifecycle` (up, validate, train, deploy), :mod:`.models` (models, runs), :mod:`.features`,
:mod:`.serving` (promote, rollback, canary, scale-to-zero, routes), :mod:`.monitor`, :mod:`.status`, :mod:`.loop`,
:mod:`.cluster` (submit) and :mod:`.plugins` (plugin new, plugins). What they share is in :mod:`._common`.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape

from .._version import __version__
from ..errors import LoomError
from ..secrets import redact
from . import lifecycle, serving
from ._common import console
from .cluster import submit
from .features import features
from .loop import loop, retrain
from .models import models, runs
from .monitor import monitor
from .plugins import plugin_group, plugins
from .score import score
from .status import status


class LoomGroup(click.Group):
    """Adds plugin commands lazily and turns :class:`LoomError` into a short message."""

    def _load_plugin_commands(self) -> None:
        if getattr(self, "_plugins_loaded", False):
            return
        self._plugins_loaded = True
        from ..plugins import get_plugins

        try:
            get_plugins().call("loom_register_commands", cli=self)
        except LoomError as err:
            console.print(f"[yellow]warning:[/] {redact(err)}")

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str):
        cmd = super().get_command(ctx, name)
        if cmd is None:
            self._load_plugin_commands()
            cmd = super().get_command(ctx, name)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LoomError as err:
            console.print(f"[bold red]error:[/] {escape(redact(err))}", highlight=False)
            sys.exit(1)


@click.group(cls=LoomGroup)
@click.version_option(__version__, prog_name="loom")
def cli() -> None:
    """Loom: data -> features -> Ray Train -> registry -> Ray Serve -> drift monitoring, from one loom.yaml."""


for _command in (*lifecycle.COMMANDS, *serving.COMMANDS, monitor, models, runs, features, loop, retrain, submit,
                 plugins, plugin_group, score, status):
    cli.add_command(_command)


def main() -> None:
    cli()

