"""The shape of the ``loom`` command line: one ``-p/--project`` option on every command that takes a project (and
the positional PROJECT where it always worked), one pair of consoles. Fast: no command runs a pipeline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import runtime.cli
from runtime.cli import _common, cli

one_project = _common._one_project

PACKAGE = Path(runtime.cli.__file__).parent
#: Commands that took the project as an optional first argument before -p/--project existed, with the further
#: arguments a call needs.
POSITIONAL = {"up": [], "validate": [], "train": [], "deploy": [], "promote": [], "rollback": [],
              "canary": ["30"], "scale-to-zero": [], "routes": [], "loop": [], "submit": [],
              "retrain": [], "shadow": ["2"], "unshadow": []}


def commands(group: click.Group = cli, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def takes_project(command: click.Command) -> bool:
    return any(p.name.startswith("project") for p in command.params)


def test_every_command_taking_a_project_has_the_one_project_option() -> None:
    with_project = {" ".join(path): command for path, command in commands() if takes_project(command)}
    assert set(POSITIONAL) <= set(with_project)
    assert {"models list", "runs compare", "features get", "monitor"} <= set(with_project)
    for name, command in with_project.items():
        [option] = [p for p in command.params if isinstance(p, click.Option) and p.name == "project_path"]
        assert option.opts == ["-p", "--project"] and not option.required, name
        assert "default: the current directory" in option.help, name
        positional = [p for p in command.params if isinstance(p, click.Argument) and p.name == "project_arg"]
        assert bool(positional) == (name in POSITIONAL), name


def invoked_with(monkeypatch: pytest.MonkeyPatch, name: str, args: list[str]) -> tuple[int, str, list[str]]:
    """Run ``loom NAME ARGS`` up to the project it resolves: the command stops there, before its body runs."""
    seen: list[str] = []

    def resolve(*given):
        seen.append(one_project(*given))
        raise click.exceptions.Exit(0)

    monkeypatch.setattr(_common, "_one_project", resolve)
    result = CliRunner().invoke(cli, [name, *args])
    return result.exit_code, result.output, seen


@pytest.mark.parametrize("name", sorted(POSITIONAL))
def test_positional_and_option_forms_name_the_same_project(name: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    rest = POSITIONAL[name]
    resolved = set()
    for args in ([str(tmp_path), *rest], ["-p", str(tmp_path), *rest], [*rest, "--project", str(tmp_path)],
                 [str(tmp_path), "-p", str(tmp_path), *rest]):
        code, output, seen = invoked_with(monkeypatch, name, args)
        assert code == 0, (args, output)
        resolved |= {Path(p).resolve() for p in seen}
    assert resolved == {tmp_path.resolve()}
    monkeypatch.chdir(tmp_path)
    code, output, seen = invoked_with(monkeypatch, name, rest)
    assert code == 0 and seen == ["."], output
    code, output, seen = invoked_with(monkeypatch, name, [str(other), "-p", str(tmp_path), *rest])
    assert code == 2 and "two projects given" in output and not seen


def test_rollout_steps_take_an_expected_generation() -> None:
    for name in ("promote", "rollback", "canary", "scale-to-zero"):
        [option] = [p for p in cli.commands[name].params if p.name == "expect_generation"]
        assert option.opts == ["--expect-generation"] and not option.required and "generation" in option.help
    [force] = [p for p in cli.commands["models"].commands["delete"].params if p.name == "force"]
    assert force.is_flag and "serves" in force.help


def test_models_take_the_option_only(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["models", "list", str(tmp_path)])
    assert result.exit_code == 2 and "unexpected extra argument" in result.output


def test_only_common_makes_a_console() -> None:
    makers = {path.name for path in PACKAGE.rglob("*.py") if re.search(r"\bConsole\(", path.read_text())}
    assert makers == {"_common.py"}
    assert not [path for path in PACKAGE.rglob("*.py")
                if re.search(r"^\s*(from|import) +(\.\.|runtime\.)serving\.", path.read_text(), re.M)]


def test_module_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "canary", "--help"], capture_output=True, text=True,
                         env={**os.environ, "LOOM_PLUGINS": "local_registry"}, check=True)
    assert "[PROJECT] PERCENT" in out.stdout


def test_deploy_takes_a_model_reference_of_the_projects_own_model(tmp_path: Path) -> None:
    """``loom deploy --version churn@production`` (or ``churn/3``) names the project's model; another model's name
    is refused before anything starts."""
    from conftest import make_project

    root = make_project(tmp_path / "qs", port=8000, generate=False)
    result = CliRunner().invoke(cli, ["deploy", str(root), "--version", "fraud@production"])
    assert result.exit_code == 2 and "serves 'churn', not 'fraud'" in result.output
    result = CliRunner().invoke(cli, ["deploy", str(root), "--version", "churn/x"])
    assert result.exit_code == 1 and "not a number" in result.output
