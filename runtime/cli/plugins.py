"""``loom plugin new NAME``: a new, installable plugin package with a hook implementation and a passing test; and
``loom plugins``: the plugins loaded, with the hooks each implements."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from string import Template

import click
from rich.table import Table

from .._version import __version__
from ..errors import InvalidNameError, LoomError
from ._common import json_option, out, print_json

_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")

# $name: plugin (entry-point) name, e.g. slack_alerts; $module: loom_slack_alerts; $dist: loom-slack-alerts.
_FILES = {
    "pyproject.toml": '''\
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "A Loom plugin."
requires-python = ">=3.10"
dependencies = ["loom-mlops>=$loom_version"]

[project.optional-dependencies]
test = ["pytest>=8"]

# Loom finds installed plugins through this entry-point group: name = module.
[project.entry-points.loom]
$name = "$module"

[tool.pytest.ini_options]
testpaths = ["tests"]
''',
    "README.md": '''\
# $dist

A [Loom](https://pypi.org/project/loom-mlops/) plugin.

    pip install -e '.[test]'    # Loom discovers it through its `loom` entry point
    loom plugins                # lists it, with the hooks it implements
    pytest                      # runs its tests with Loom's runtime.testing fixtures

See Loom's docs/plugins.md for every hook, its arguments and when Loom calls it.
''',
    "src/$module/__init__.py": '''\
"""$dist: a Loom plugin.

Every function marked with ``@hookimpl`` implements the Loom hook of the same name. A hook implementation may
take any subset of the hook's arguments.
"""

from __future__ import annotations

import logging

from runtime import ModelVersion, hookimpl

log = logging.getLogger(__name__)


@hookimpl
def loom_model_registered(version: ModelVersion) -> None:
    """Log each model version Loom registers."""
    log.info("registered %s v%d (aliases: %s)", version.name, version.version, ", ".join(version.aliases) or "none")
''',
    "tests/test_$name.py": '''\
"""Tests of the $dist plugin, with the fixtures Loom ships in runtime.testing."""

from __future__ import annotations

import logging

from runtime import ModelVersion

import $module


def test_installed_plugin_is_discovered(loom_plugins):
    plugins = {p.name: p for p in loom_plugins(installed=True).info()}
    assert plugins["$name"].dist == "$dist"
    assert plugins["$name"].hooks == ("loom_model_registered",)


def test_logs_each_registered_version(loom_plugins, caplog):
    plugins = loom_plugins($module)
    version = ModelVersion(name="churn", version=3, created_at=0.0, aliases=("production",))
    with caplog.at_level(logging.INFO, logger="$module"):
        plugins.call("loom_model_registered", project=None, version=version)
    assert "registered churn v3 (aliases: production)" in caplog.text
''',
}


def plugin_names(name: str) -> dict[str, str]:
    """The names a plugin called ``name`` goes by: entry point, module and distribution.

    ``slack-alerts``, ``slack_alerts`` and ``loom-slack-alerts`` all give ``slack_alerts``, ``loom_slack_alerts``
    and ``loom-slack-alerts``.
    """
    base = re.sub(r"^loom[-_]", "", name.strip().lower())
    if not _NAME.fullmatch(base):
        raise InvalidNameError(f"plugin name {name!r} must be lower-case letters and digits, words joined by '-' "
                               f"or '_', starting with a letter (e.g. slack-alerts)")
    snake = base.replace("-", "_")
    return {"name": snake, "module": f"loom_{snake}", "dist": f"loom-{snake.replace('_', '-')}"}


def new_plugin(name: str, parent: Path) -> Path:
    """Write a plugin package for ``name`` into a new directory under ``parent``; return that directory."""
    names = plugin_names(name)
    root = parent / names["dist"]
    if root.exists():
        raise LoomError(f"{root} already exists; pick another name or directory")
    values = {**names, "loom_version": __version__}
    for path, text in _FILES.items():
        target = root / Template(path).substitute(values)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template(text).substitute(values))
    return root


@click.group("plugin")
def plugin_group() -> None:
    """Write Loom plugins."""


@plugin_group.command("new")
@click.argument("name")
@click.option("--dir", "parent", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Directory to create the package in.")
def new(name: str, parent: Path) -> None:
    """Create an installable plugin package NAME: pyproject with the `loom` entry point, a hook
    implementation and a passing test."""
    root = new_plugin(name, parent)
    click.echo(f"created {root}")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        click.echo(f"  {path.relative_to(root)}")
    click.echo(f"\nnext:\n  pip install -e '{root}[test]'\n  loom plugins\n  pytest {root}")


@click.command()
@json_option()
def plugins(as_json: bool) -> None:
    """List loaded plugins with their distribution, version and the hooks each implements."""
    from ..plugins import get_plugins

    infos = get_plugins().info()
    if as_json:
        print_json([asdict(i) for i in infos])
        return
    table = Table("plugin", "module", "distribution", "version", "hooks", "provides")
    for i in infos:
        provides = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in i.provides.items())
        table.add_row(i.name, i.module, i.dist or "-", i.version or "-", "\n".join(i.hooks) or "-", provides or "-")
    out.print(table)
