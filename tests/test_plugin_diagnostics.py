"""What helps a plugin author find a mistake: hook-call tracing with ``LOOM_TRACE_PLUGINS=1``, and start-up
validation of what pluggy would accept but Loom would mishandle. (Installed packages with broken plugins are in
tests/test_plugin_packages.py.)"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

import runtime
from runtime import PluginError, get_plugins, hookimpl


class Source:
    @hookimpl
    def loom_register_data_sources(self, register):
        register("mem", lambda uri, *, base_dir, options: _Frame(uri))


class _Frame:
    def __init__(self, uri: str) -> None:
        self.uri = uri

    def read(self) -> pd.DataFrame:
        return pd.DataFrame({"x": [1]})

    def iter_batches(self, batch_size: int = 65_536):
        yield self.read()

    def fingerprint(self) -> str:
        return "mem"


class Slow:
    @hookimpl
    def loom_model_deployed(self, model, url):
        time.sleep(0.05)
        return f"{model} at {url}"


class Failing:
    @hookimpl
    def loom_after_training(self, metrics):
        raise KeyError("val_auc")


@pytest.fixture
def traced(monkeypatch, caplog):
    monkeypatch.setenv("LOOM_TRACE_PLUGINS", "1")
    caplog.set_level(logging.INFO, logger="loom.plugins.trace")
    return caplog


def records(caplog, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "loom.plugins.trace" and r.loom_event == event]


def test_trace_logs_registrations_factories_and_hook_calls_with_durations(traced, tmp_path):
    plugins = get_plugins([Source(), Slow()], entrypoints=False)
    plugins.data_source("mem://t", base_dir=tmp_path)
    assert plugins.call("loom_model_deployed", project=None, model="churn", version=1, url="http://x") == [
        "churn at http://x"]
    [registered] = records(traced, "register")
    assert registered.getMessage() == "register data source 'mem' by Source"
    [created] = records(traced, "create")
    assert created.getMessage().startswith("create data source 'mem://t' by Source: _Frame in ")
    calls = {r.getMessage().split(" ")[0]: r for r in records(traced, "hook")}
    assert calls["loom_register_data_sources"].getMessage().startswith(
        "loom_register_data_sources Source(register) returned None in ")
    deployed = calls["loom_model_deployed"]
    assert deployed.getMessage().startswith("loom_model_deployed Slow(model, url) returned 'churn at http://x' in ")
    assert deployed.loom_plugin == "Slow" and deployed.loom_ms >= 50


def test_trace_logs_a_failing_hook_before_it_is_reported(traced):
    plugins = get_plugins([Failing()], entrypoints=False)
    with pytest.raises(PluginError, match="Failing.*loom_after_training.*KeyError"):
        plugins.call("loom_after_training", project=None, metrics={}, history=[])
    [failed] = records(traced, "hook")
    assert failed.getMessage().startswith("loom_after_training Failing(metrics) raised KeyError: 'val_auc' in ")


def test_no_trace_without_the_variable(monkeypatch, caplog):
    monkeypatch.delenv("LOOM_TRACE_PLUGINS", raising=False)
    caplog.set_level(logging.DEBUG)
    get_plugins([Source(), Slow()], entrypoints=False).call("loom_model_deployed", project=None, model="m",
                                                            version=1, url="u")
    assert not [r for r in caplog.records if r.name == "loom.plugins.trace"]


def test_trace_goes_to_stderr_and_leaves_json_output_alone():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")} | {"LOOM_TRACE_PLUGINS": "1"}
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "plugins", "--json"], capture_output=True, text=True,
                         env=env, check=True)
    assert {r["name"] for r in json.loads(out.stdout)} >= {"files", "evidently"}
    lines = out.stderr.splitlines()
    assert any(line.startswith("loom trace: load files = loom_files (loom-mlops ") and line.endswith(" ms")
               for line in lines), out.stderr
    assert "loom trace: register data source 'csv' by files" in lines


# -- start-up validation ------------------------------------------------------------------------------------------


class Wrapper:
    @hookimpl(wrapper=True)
    def loom_model_registered(self, version):
        return (yield)


def test_hook_wrappers_are_rejected():
    with pytest.raises(PluginError, match="plugin 'Wrapper' failed in hook loom_model_registered: hook wrappers are "
                                          "not supported"):
        get_plugins([Wrapper()], entrypoints=False)


class Unmarked:
    def loom_model_deployed(self, url):
        pass


def test_a_hook_without_hookimpl_is_rejected():
    with pytest.raises(PluginError, match="'Unmarked' failed in hook loom_model_deployed: is not marked with "
                                          "@runtime.hookimpl"):
        get_plugins([Unmarked()], entrypoints=False)


class FromTheFuture:
    @hookimpl(optionalhook=True)
    def loom_model_retired(self, model):
        pass

    @hookimpl
    def loom_model_deployed(self, model):
        self.deployed = model


def test_optional_hooks_of_newer_versions_are_skipped():
    plugin = FromTheFuture()
    get_plugins([plugin], entrypoints=False).call("loom_model_deployed", project=None, model="m", version=1, url="u")
    assert plugin.deployed == "m"


class Misspelt:
    @hookimpl
    def loom_model_registered(self, project, versoin):
        pass


def test_a_wrong_argument_names_the_hooks_parameters():
    with pytest.raises(PluginError, match=r"\{'versoin'\} .* \(the hook's parameters are: project, version\)"):
        get_plugins([Misspelt()], entrypoints=False)


def test_plugin_info_says_what_each_plugin_provides():
    infos = {i.name: i for i in get_plugins([Source()]).info()}
    assert infos["Source"].provides == {"data_sources": ["mem"]}
    assert infos["evidently"].provides == {"drift_monitors": ["evidently"]}
    assert isinstance(infos["Source"], runtime.PluginInfo)
