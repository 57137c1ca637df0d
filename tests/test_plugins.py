"""The plugin system: discovery through entry points, allow/block lists, and errors that name the plugin."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import runtime
from runtime import PluginError, get_plugins, hookimpl

BUILTINS = {"files", "local_features", "local_registry", "evidently"}


def test_builtin_plugins_are_loaded_through_entry_points():
    infos = {i.name: i for i in get_plugins().info()}
    assert BUILTINS <= set(infos)
    assert infos["files"].dist == "loom-mlops" and infos["files"].version == runtime.__version__
    assert "loom_register_data_sources" in infos["files"].hooks
    assert "loom_register_registries" in infos["local_registry"].hooks


def test_registered_names_by_kind():
    p = get_plugins()
    assert p.names("loom_register_data_sources")["csv"] == "files"
    assert p.names("loom_register_feature_stores")["local"] == "local_features"
    assert p.names("loom_register_registries")["local"] == "local_registry"
    assert p.names("loom_register_drift_monitors")["evidently"] == "evidently"


def test_allow_list_and_block_list(monkeypatch):
    monkeypatch.setenv("LOOM_PLUGINS", "files,local_registry")
    assert {i.name for i in get_plugins().info()} == {"files", "local_registry"}
    monkeypatch.delenv("LOOM_PLUGINS")
    monkeypatch.setenv("LOOM_DISABLE_PLUGINS", "evidently")
    names = {i.name for i in get_plugins().info()}
    assert "evidently" not in names and "files" in names
    with pytest.raises(runtime.NotFoundError, match="no drift monitor plugin named 'evidently'"):
        get_plugins().drift_monitor("evidently")


class Duplicate:
    @hookimpl
    def loom_register_data_sources(self, register):
        register("csv", lambda uri, **kw: None)


def test_duplicate_registration_names_both_plugins():
    with pytest.raises(PluginError) as info:
        get_plugins([Duplicate()])
    msg = str(info.value)
    assert "Duplicate" in msg and "'files'" in msg and "loom_register_data_sources" in msg


class Raises:
    @hookimpl
    def loom_register_registries(self, register):
        raise RuntimeError("database is on fire")


def test_plugin_exception_names_plugin_and_hook():
    with pytest.raises(PluginError, match=r"plugin 'Raises' failed in hook loom_register_registries: "
                                          r"RuntimeError: database is on fire"):
        get_plugins([Raises()])


class Malformed:
    @hookimpl
    def loom_register_feature_stores(self, register):
        register("redis", "not-a-factory")


def test_malformed_registration_is_rejected():
    with pytest.raises(PluginError, match="'Malformed'.*non-callable factory"):
        get_plugins([Malformed()])


class UnknownHook:
    @hookimpl
    def loom_register_frobnicators(self, register):
        pass


def test_unknown_hook_is_rejected_at_startup():
    with pytest.raises(PluginError, match="'UnknownHook'.*loom_register_frobnicators.*does not define"):
        get_plugins([UnknownHook()])


class WrongSignature:
    @hookimpl
    def loom_model_registered(self, project, versoin):
        pass


def test_wrong_signature_is_rejected_at_startup():
    with pytest.raises(PluginError, match="WrongSignature.*versoin"):
        get_plugins([WrongSignature()])


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def loom_model_deployed(self, model, url):  # opt-in arguments: a subset of the spec's
        self.calls.append((model, url))


class FailingLifecycle:
    @hookimpl
    def loom_after_training(self, metrics):
        raise KeyError("val_auc")


def test_lifecycle_hooks_take_a_subset_of_arguments_and_failures_are_attributed():
    rec = Recorder()
    p = get_plugins([rec, FailingLifecycle()], entrypoints=False)
    p.call("loom_model_deployed", project=None, model="churn", version=3, url="http://x")
    assert rec.calls == [("churn", "http://x")]
    with pytest.raises(PluginError, match="FailingLifecycle.*loom_after_training.*KeyError"):
        p.call("loom_after_training", project=None, metrics={}, history=[])


def test_broken_import_names_the_plugin(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("import does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="'broken_plugin'.*\\(import\\).*does_not_exist"):
        get_plugins(modules=["broken_plugin"])


def test_loom_plugins_command_lists_plugins_as_json():
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "plugins", "--json"], capture_output=True, text=True,
                         check=True)
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert BUILTINS <= set(rows)
    assert rows["evidently"]["hooks"] == ["loom_register_drift_monitors"]


def test_builtin_plugins_use_only_the_public_api():
    """First-party plugins import from ``runtime`` exactly as a third-party plugin would."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "plugins"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runtime."):
                pytest.fail(f"{path.relative_to(root)} imports private module {node.module}")
            if isinstance(node, ast.ImportFrom) and node.module == "runtime":
                for alias in node.names:
                    assert alias.name in runtime.__all__, f"{path.name} imports non-public runtime.{alias.name}"
