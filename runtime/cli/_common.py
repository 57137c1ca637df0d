"""What every ``loom`` command shares: the two consoles, the project option, JSON output, the project loader and
the connection to a running cluster."""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import click
from rich.console import Console

from ..config import PROJECT_FILE, Project, load_project
from ..errors import LoomError

#: Progress, status and errors (stderr), so that stdout carries only results.
console = Console(stderr=True)
#: Results: tables, URLs, ids (stdout).
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


def project_option(*, positional: bool = False, file_okay: bool = True) -> Callable[[F], F]:
    """The project a command works on, ``-p/--project PATH`` (a directory or its loom.yaml; default: the current
    directory), handed to the command as ``project: str``.

    With ``positional=True`` the command also takes it as an optional first argument, ``[PROJECT]``, even ahead of
    further arguments: ``loom canary DIR 30``, ``loom canary -p DIR 30`` and ``loom canary 30`` (in the project's
    directory) are the same command. Giving both forms with different paths is a usage error.
    """
    path = click.Path(exists=True, file_okay=file_okay)
    what = "Project directory or its loom.yaml" if file_okay else "Project directory"
    also = "; it may also be given as the first argument, PROJECT" if positional else ""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def command(*args: Any, project_path: str | None = None, project_arg: tuple[str, ...] = (),
                    **kwargs: Any) -> Any:
            return f(*args, project=_one_project(project_arg, project_path), **kwargs)

        command = click.option("-p", "--project", "project_path", type=path, metavar="PATH",
                               help=f"{what} (default: the current directory){also}.")(command)
        if positional:  # nargs=-1 lets click fill the arguments after it first, so the project may be left out
            command = click.argument("project_arg", nargs=-1, type=path, metavar="[PROJECT]")(command)
        return command  # type: ignore[return-value]

    return decorate


def _one_project(positional: tuple[str, ...], option: str | None) -> str:
    ctx = click.get_current_context(silent=True)
    if len(positional) > 1:
        raise click.UsageError(f"one PROJECT at the most, got {len(positional)}: {' '.join(positional)}", ctx)
    given = positional[0] if positional else None
    if given is not None and option is not None and Path(given).resolve() != Path(option).resolve():
        raise click.UsageError(f"two projects given, {given} and -p {option}: give one", ctx)
    return given or option or "."


def has_project_file(path: str) -> bool:
    """Whether ``path`` is a loom.yaml or a directory holding one."""
    p = Path(path)
    return (p / PROJECT_FILE).is_file() if p.is_dir() else p.is_file()


def open_project(path: str, **serving: Any) -> Project:
    """Load the project at ``path``, with the ``serving`` settings given on the command line (``None``: unset)."""
    project = load_project(path)
    updates = {k: v for k, v in serving.items() if v is not None}
    return project.with_serving(**updates) if updates else project


def served_project(path: str, address: str | None) -> Project:
    """The project at ``path``, with this process attached to the running cluster that serves it."""
    project = open_project(path)
    attach(address)
    return project


def attach(address: str | None) -> None:
    """Connect to the running cluster that serves the project (never start a new one)."""
    import ray

    if ray.is_initialized():
        return
    from ..cluster import connect

    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        connect(target)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise LoomError(f"no running Ray cluster at {target!r} ({err}); start serving with `loom deploy` or "
                        "`loom up`, or pass --address") from None


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they print as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_option(help: str = "Print JSON instead of a table.") -> Callable[[F], F]:
    """``--json``, handed to the command as ``as_json: bool``; print with :func:`print_json`."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def print_json(data: Any) -> None:
    """``--json`` output: plain, indented JSON on stdout, for scripts."""
    click.echo(json.dumps(finite(data), indent=2, sort_keys=False))
