"""The shape of ``runtime/``: no import cycles and no upward imports, counting imports inside functions (a lazy
import is still a dependency), and plugins that import only the public API.

Layers, lowest first; a module may import its own layer and the ones below, never above. Within a layer the
graph must still be acyclic.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import runtime

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "runtime"

#: Module (or package prefix) -> layer. The longest matching prefix wins.
LAYERS = {
    "runtime._version": 0, "runtime.errors": 0, "runtime.names": 0, "runtime.artifacts": 0,
    "runtime.secrets": 0, "runtime.storage_checks": 0, "runtime.files": 0, "runtime.filesystems": 0,
    "runtime.judge": 0,
    "runtime.config": 1, "runtime.data": 1, "runtime.features": 1, "runtime.registry": 1, "runtime.tracking": 1,
    "runtime.monitoring": 1, "runtime.hookspecs": 1, "runtime.plugins": 1, "runtime": 1,
    "runtime.tasks": 1,
    "runtime.validation": 2, "runtime.model": 2, "runtime.lineage": 2, "runtime.steps": 2, "runtime.formats": 2,
    "runtime.training": 3, "runtime.preparation": 3, "runtime.cluster": 3,
    "runtime.serving": 4,
    "runtime.pipeline": 5, "runtime.batch": 5,
    "runtime.retrain_loop": 6, "runtime.loop_controller": 6, "runtime.testing": 6, "runtime._contracts": 6,
    "runtime.cli": 7,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every ``runtime`` module that ``module`` imports anywhere in its source (module level or in functions)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for alias in node.names:
                found.add(f"{name}.{alias.name}" if f"{name}.{alias.name}" in known else name)
    return {m for m in found if m in known and m != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_runtime_has_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_has_a_layer():
    unplaced = [m for m in _modules() if not any(m == p or m.startswith(p + ".") for p in LAYERS)]
    assert unplaced == []


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
                    for m, deps in _graph().items() for d in deps
                    if _layer(d) > _layer(m) and not (m == "runtime" and d in _lazy_targets()))
    assert upward == []


def _lazy_targets() -> set[str]:
    """What ``runtime/__init__.py`` loads on attribute access only (its public API reaches up, lazily)."""
    return set(runtime._LAZY.values())


def test_nothing_outside_serving_imports_its_private_names():
    offenders = []
    for module, path in _modules().items():
        if module.startswith("runtime.serving"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "serving" in node.module.split("."):
                offenders += [f"{module}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
                if node.module.split(".")[-1] != "serving":
                    offenders.append(f"{module}: imports the submodule {node.module} (use runtime.serving)")
    assert offenders == []


@pytest.mark.parametrize("plugin", sorted(p.name for p in (ROOT / "plugins").iterdir() if p.name.startswith("loom_")))
def test_plugins_import_only_the_public_api(plugin):
    private = []
    for path in (ROOT / "plugins" / plugin).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            private += [f"{path.name}: {n}" for n in names if n.startswith("runtime.")]
            if isinstance(node, ast.ImportFrom) and node.module == "runtime":
                private += [f"{path.name}: runtime.{a.name}" for a in node.names if a.name not in runtime.__all__]
    assert private == []


def test_the_architecture_page_names_every_module():
    """docs/architecture.md's module table stays true: every module and package of runtime/ is on it."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted(PACKAGE.iterdir()):
        if path.name.startswith("__") or path.name == "_version.py":
            continue
        if path.is_dir():
            if f"runtime/{path.name}/" not in doc:
                missing.append(f"runtime/{path.name}/")
            if path.name in ("serving", "cluster", "cli"):
                missing += [f"runtime/{path.name}/{f.name}" for f in sorted(path.glob("*.py"))
                            if f.name != "__main__.py" and f.name not in doc]
        elif path.suffix == ".py" and path.name not in doc:
            missing.append(f"runtime/{path.name}")
    assert missing == []
