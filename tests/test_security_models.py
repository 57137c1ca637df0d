"""What a server may load from the registry: architectures on ``serving.allowed_architectures`` only (checked
before anything is imported), at most ``serving.max_parameters`` parameters (read from the safetensors header,
before any tensor is decoded or any module constructed), and constructor options that are plain JSON. No Ray."""

from __future__ import annotations

import json
import os
import struct
import sys
import uuid
from pathlib import Path

import pytest

import runtime.model
from conftest import edit_config, make_project
from runtime import ConfigError, LoomError, load_project
from runtime.artifacts import SPEC, WEIGHTS
from runtime.model import ModelBundle, check_options, import_architecture, parameter_count
from runtime.serving.routing import RoutingTable
from runtime.serving.server import ModelServer
from serving_models import register_version, registry


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The quickstart with churn v1, its own TabularMLP; tests add versions of other shapes."""
    root = make_project(tmp_path_factory.mktemp("security") / "qs", port=8000)
    register_version(root, seed=1)
    return root


@pytest.fixture
def trap(tmp_path, monkeypatch):
    """A module on sys.path that leaves a marker file and an environment variable when imported."""
    name = f"loom_trap_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        "import os, pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        f"os.environ['LOOM_TRAP_IMPORTED'] = {name!r}\n"
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, **kwargs):\n"
        "        super().__init__()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LOOM_TRAP_IMPORTED", raising=False)
    yield f"{name}:Net", marker
    sys.modules.pop(name, None)


def _register_as(root: Path, architecture: str, **kwargs) -> int:
    """Register churn v1's weights again under a spec that names ``architecture`` (and extra options)."""
    reg = registry(root)
    arts = {a: reg.read_artifact("churn", 1, a) for a in reg.get_version("churn", 1).artifacts}
    spec = json.loads(arts[SPEC])
    spec["architecture"] = architecture
    spec["kwargs"].update(kwargs)
    arts[SPEC] = json.dumps(spec).encode()
    return reg.register("churn", arts).version


def _not_imported(marker: Path) -> bool:
    return not marker.exists() and "LOOM_TRAP_IMPORTED" not in os.environ


# -- the architecture allow-list ----------------------------------------------------------------------------------


def test_an_architecture_off_the_list_is_refused_before_it_is_imported(project, trap):
    path, marker = trap
    version = _register_as(project, path)
    cfg = load_project(project).config
    allowed = cfg.serving.architectures(cfg.model)
    assert allowed == {"runtime.model:TabularMLP"}  # the quickstart names no architecture of its own

    with pytest.raises(ConfigError, match=rf"architecture '{path}' is not allowed.*serving\.allowed_architectures"):
        ModelBundle.from_registry(registry(project), "churn", version, allowed=allowed)
    assert _not_imported(marker)

    bundle = ModelBundle.from_registry(registry(project), "churn", version)  # reading a bundle imports nothing
    with pytest.raises(ConfigError, match="serving.allowed_architectures"):
        bundle.build(allowed=allowed)
    assert _not_imported(marker)

    server = ModelServer.from_project(str(project))
    for load in (lambda: server.load("churn", version), lambda: server.apply(RoutingTable().deploy("churn", version))):
        with pytest.raises(ConfigError, match=rf"'{path}' is not allowed.*serving\.allowed_architectures"):
            load()
    assert _not_imported(marker) and not server.ready

    from runtime.serving.rollout import _check_version  # what `loom deploy` checks before any replica tries

    with pytest.raises(ConfigError, match="serving.allowed_architectures"):
        _check_version(load_project(project), "churn", version)
    assert _not_imported(marker)

    import_architecture(path)  # the trap works: importing it is what the checks above prevented
    assert marker.exists()


def test_listing_an_architecture_lets_it_through(project, trap, tmp_path):
    path, marker = trap
    version = _register_as(project, path)
    bundle = ModelBundle.from_registry(registry(project), "churn", version, allowed={path})
    assert _not_imported(marker)
    with pytest.raises(RuntimeError, match="Unexpected key"):  # on the list: imported, built, then its weights
        bundle.build(allowed={path})                            # do not fit this stand-in
    assert marker.exists()


def test_the_default_list_serves_the_quickstart_model(project):
    project_obj = load_project(project)
    cfg = project_obj.config
    bundle = ModelBundle.from_registry(registry(project), "churn", 1, allowed=cfg.serving.architectures(cfg.model),
                                       max_parameters=cfg.serving.max_parameters)
    model = bundle.build(allowed=cfg.serving.architectures(cfg.model), max_parameters=cfg.serving.max_parameters)
    assert isinstance(model, runtime.model.TabularMLP)
    server = ModelServer.from_project(str(project))
    server.apply(RoutingTable().deploy("churn", 1))
    assert server.ready and server.resolve("churn").version == 1

    from runtime.serving.rollout import _check_version

    assert _check_version(project_obj, "churn", "production") == 1


def test_the_project_architecture_and_an_explicit_list():
    from runtime.config import ModelConfig, ServingConfig

    own = ModelConfig(name="m", architecture="mymodels:Net")
    assert ServingConfig().architectures(own) == {"runtime.model:TabularMLP", "mymodels:Net"}
    assert ServingConfig(allowed_architectures=["a:B"]).architectures(own) == {"a:B"}


# -- the parameter limit --------------------------------------------------------------------------------------------


def test_too_many_parameters_are_refused_before_anything_is_built(project, monkeypatch):
    bundle = ModelBundle.from_registry(registry(project), "churn", 1)
    count = bundle.parameters
    assert count == sum(t.numel() for t in bundle.state_dict.values())

    def never(*args, **kwargs):
        raise AssertionError("decoded or constructed past the parameter limit")

    monkeypatch.setattr(runtime.model, "build_architecture", never)
    message = rf"model has {count:,} parameters, more than serving\.max_parameters \({count - 1:,}\)"
    with pytest.raises(ConfigError, match=message):
        bundle.build(max_parameters=count - 1)
    monkeypatch.setattr(runtime.model, "st_load", never)  # refused from the header: no tensor is decoded
    with pytest.raises(ConfigError, match=message):
        ModelBundle.from_registry(registry(project), "churn", 1, max_parameters=count - 1)


def test_the_server_applies_serving_max_parameters(tmp_path, monkeypatch):
    root = make_project(tmp_path / "small", port=8000)
    register_version(root, seed=1)
    edit_config(root, "serving", max_parameters=10)

    def never(*args, **kwargs):
        raise AssertionError("constructed past the parameter limit")

    monkeypatch.setattr(runtime.model, "build_architecture", never)
    server = ModelServer.from_project(str(root))
    with pytest.raises(ConfigError, match=r"parameters, more than serving\.max_parameters \(10\)"):
        server.load("churn", 1)


def test_the_parameter_count_is_read_from_the_header_only():
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
                         "b": {"dtype": "F32", "shape": [7], "data_offsets": [48, 76]},
                         "c": {"dtype": "F32", "shape": [], "data_offsets": [76, 80]}}).encode()
    assert parameter_count(struct.pack("<Q", len(header)) + header) == 12 + 7 + 1  # no tensor data at all
    for broken in (b"", b"\x01\x02", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"nope",
                   struct.pack("<Q", 2) + b"[]"):
        with pytest.raises(LoomError, match="safetensors"):
            parameter_count(broken)


# -- constructor options --------------------------------------------------------------------------------------------


def test_constructor_options_must_be_plain_json(project):
    check_options({"hidden": [16, 8], "dropout": 0.0, "name": "x", "flag": True, "none": None,
                   "nested": {"a": [1, {"b": 2.5}]}})
    for bad in ({"hidden": (16, 8)}, {"layer": object()}, {"x": float("nan")}, {"x": {1: 2}}, {"x": b"bytes"}):
        with pytest.raises(ConfigError, match="not plain JSON"):
            check_options(bad)
    version = _register_as(project, "runtime.model:TabularMLP", dropout=float("inf"))  # json writes Infinity
    with pytest.raises(ConfigError, match="option 'dropout' is not plain JSON"):
        ModelBundle.from_registry(registry(project), "churn", version)


def test_a_spec_without_an_import_path_string_is_refused(project):
    arts = {SPEC: json.dumps({"architecture": ["os", "system"], "kwargs": {}}).encode(), WEIGHTS: b""}
    with pytest.raises(ConfigError, match="import path"):
        ModelBundle.from_artifacts(arts, allowed={"runtime.model:TabularMLP"})
