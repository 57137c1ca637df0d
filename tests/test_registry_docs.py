"""docs/registry.md stays true: its Python example runs, and the commands it lists exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runtime.cli.models import models, runs

DOC = (Path(__file__).resolve().parents[1] / "docs" / "registry.md").read_text()


@pytest.fixture(autouse=True)
def _only_registry_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_PLUGINS", "local_registry")


def test_python_example_runs() -> None:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOC, re.S) if "MyRegistry" not in b]
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/registry.md", "exec"), {})


def test_listed_commands_exist() -> None:
    listed = set(re.findall(r"^\$ loom (models|runs) (\w+)", DOC, re.M))
    assert listed == {("models", c) for c in models.commands} | {("runs", c) for c in runs.commands}
