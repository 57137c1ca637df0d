"""docs/plugins.md cannot drift from the code: every hook in runtime/hookspecs.py is documented with its exact
signature and the built-in plugins that implement it, and has a test of its own in tests/test_hooks.py (a
function named ``test_<hook>_...``); every example is a valid plugin; every protocol member and contract suite
the page names exists."""

from __future__ import annotations

import ast
import inspect
import re
import types
from pathlib import Path

import pytest

import runtime
import runtime.testing
from runtime import get_plugins, hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "plugins.md").read_text()
HOOKS = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("loom_"))
CODE = re.compile(r"```python\n(.*?)```", re.S)


def sections() -> dict[str, str]:
    """``### heading`` -> the text up to the next heading of level 2 or 3."""
    parts = re.split(r"^(#{2,3} .*)$", DOC, flags=re.M)
    return {parts[i].lstrip("#").strip().strip("`"): parts[i + 1] for i in range(1, len(parts), 2)
            if parts[i].startswith("### ")}


def signature(hook: str) -> str:
    sig = inspect.signature(getattr(hookspecs, hook))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {hook}({params}) -> {sig.return_annotation}"


def hook_tests() -> set[str]:
    tree = ast.parse((ROOT / "tests" / "test_hooks.py").read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def examples() -> list[str]:
    """The page's code examples: every python block except the one-line hook signatures."""
    return [code for code in CODE.findall(DOC) if not re.fullmatch(r"def loom_\w+\(.*\) -> .*\n", code)]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_signature(hook: str) -> None:
    section = sections().get(hook)
    assert section is not None, f"docs/plugins.md has no '### `{hook}`' section"
    blocks = CODE.findall(section)
    assert blocks and blocks[0].strip() == signature(hook), f"{hook}: the first code block must be its signature"
    for label in ("**When:**", "**Returns:**", "**Implemented by:**"):
        assert label in section, f"{hook}: no {label}"
    assert len(blocks) >= 2, f"{hook}: no example"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test_of_its_own(hook: str) -> None:
    names = hook_tests()
    assert any(n == f"test_{hook}" or n.startswith(f"test_{hook}_") for n in names), (
        f"tests/test_hooks.py has no test_{hook}_... function")


def test_documented_hooks_exist() -> None:
    documented = {h for h in sections() if h.startswith("loom_")}
    assert documented == set(HOOKS)


@pytest.fixture(scope="module")
def builtins() -> list[runtime.PluginInfo]:
    return [i for i in get_plugins().info() if i.dist == "loom-mlops"]


@pytest.mark.parametrize("hook", HOOKS)
def test_implemented_by_names_the_builtin_plugins(hook: str, builtins: list[runtime.PluginInfo]) -> None:
    line = re.search(r"\*\*Implemented by:\*\* (.*)", sections()[hook]).group(1)
    documented = set(re.findall(r"`(\w+)`", line.split("(")[0])) if not line.startswith("none") else set()
    assert documented == {i.name for i in builtins if hook in i.hooks}


@pytest.mark.parametrize("index", range(len(examples())))
def test_example_is_a_valid_plugin(index: int) -> None:
    """Each example runs as a module and, when it implements hooks, passes start-up validation and registration."""
    code = examples()[index]
    module = types.ModuleType(f"docs_example_{index}")
    exec(compile(code, f"docs/plugins.md example {index}", "exec"), module.__dict__)  # noqa: S102 - our own docs
    if "@hookimpl" not in code:
        return
    plugins = get_plugins([module], entrypoints=False)
    [info] = plugins.info()
    assert set(info.hooks) <= set(HOOKS)
    if any(h.startswith("loom_register_") and h != "loom_register_commands" for h in info.hooks):
        assert info.provides, f"example {index} registers nothing"


PROTOCOLS = {"DataSource": runtime.DataSource, "FeatureStore": runtime.FeatureStore,
             "ModelRegistry": runtime.ModelRegistry, "DriftMonitor": runtime.DriftMonitor}


@pytest.mark.parametrize("name", PROTOCOLS)
def test_protocol_members_are_documented(name: str) -> None:
    protocol = PROTOCOLS[name]
    members = {m for m in vars(protocol) if not m.startswith("_")} | set(getattr(protocol, "__annotations__", {}))
    section = sections()[name]
    missing = sorted(m for m in members if not re.search(rf"`{m}[`(]", section))
    assert not missing, f"docs/plugins.md '### {name}' does not document {missing}"


def test_contract_suites_named_in_the_docs_are_shipped() -> None:
    named = set(re.findall(r"`(\w+Contract)`", DOC))
    assert named == {n for n in runtime.testing.__all__ if n.endswith("Contract")}
    for suite in named:
        assert inspect.isclass(getattr(runtime.testing, suite))
    for fixture in ("loom_plugins", "loom_ray"):
        assert f"`{fixture}`" in DOC
