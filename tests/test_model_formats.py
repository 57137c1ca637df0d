"""Model formats as plugins (``loom_register_model_formats``): the built-in ``torch`` format against the
``ModelFormatContract``, registration rules (``torch`` is Loom's, errors name the plugin), ``load_model`` for
trained versions, and the passthrough encoding of imported models. No Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save

import runtime
from runtime import ConfigError, LoomError, NotFoundError, PluginError, get_plugins, hookimpl
from runtime.config import ColumnSpec
from runtime.formats import LoadLimits, ModelSpec, TorchFormat, load_model, model_format
from runtime.model import ModelBundle, Predictor, Preprocessor
from runtime.serving.encoding import FeatureEncoder
from runtime.testing import ModelFormatContract
from serving_models import data, register_version, registry


def linear_torch(weight: np.ndarray, bias: np.ndarray) -> tuple[dict[str, bytes], dict]:
    """``x @ weight + bias`` as Loom's TabularMLP with no hidden layer (one Linear), in the torch format."""
    n_in, n_out = weight.shape
    state = {"net.0.weight": torch.from_numpy(np.ascontiguousarray(weight.T)), "net.0.bias": torch.from_numpy(bias)}
    kwargs = {"in_features": n_in, "out_features": n_out, "hidden": [], "dropout": 0.0}
    return {"model.safetensors": save(state)}, {"architecture": "runtime.model:TabularMLP", "kwargs": kwargs}


class TestTorchFormat(ModelFormatContract):
    @pytest.fixture
    def model_format(self):
        return TorchFormat()

    @pytest.fixture
    def linear_model(self):
        return linear_torch


def test_torch_format_refuses_an_architecture_that_is_not_allowed():
    files, extra = linear_torch(*TestTorchFormat().weights())
    spec = TestTorchFormat().spec(extra)
    with pytest.raises(ConfigError, match="allowed_architectures"):
        TorchFormat().load(files, spec, LoadLimits(allowed=frozenset({"mymodels:Other"})))
    TorchFormat().load(files, spec, LoadLimits(allowed=frozenset({"runtime.model:TabularMLP"})))


def test_torch_format_refuses_weights_of_another_shape():
    files, extra = linear_torch(*TestTorchFormat().weights())
    extra["kwargs"]["out_features"] = 5
    with pytest.raises(LoomError, match="do not fit"):
        TorchFormat().load(files, TestTorchFormat().spec(extra), LoadLimits())


# -- registration -----------------------------------------------------------------------------------------------


class Doubling:
    """A toy format: ``model.double`` holds a JSON width; the network doubles its input."""

    artifacts = ("model.double",)

    def inputs(self, files):
        return [{"name": "x", "dtype": "FP32", "shape": [None, json.loads(files["model.double"])["width"]]}]

    def load(self, files, spec, limits):
        try:
            json.loads(files["model.double"])
        except ValueError:
            raise LoomError("not a doubling model") from None
        if spec.get("explode"):
            raise RuntimeError("the plugin broke")
        return lambda x: x[0] * 2.0


class DoublingPlugin:
    @hookimpl
    def loom_register_model_formats(self, register):
        register("double", Doubling)


def test_a_failing_format_is_named(tmp_path):
    import loom_local_registry

    plugins = get_plugins([DoublingPlugin(), loom_local_registry], entrypoints=False)
    reg = plugins.registry("local", state_dir=tmp_path, options={})
    spec = {**TestTorchFormat().spec({"model_format": "double"}), "explode": True}
    reg.register("m", {"model.json": json.dumps(spec).encode(), "model.double": b'{"width": 2}'})
    with pytest.raises(PluginError) as info:
        load_model(reg, "m", 1, plugins=plugins)
    assert "DoublingPlugin" in str(info.value) and "the plugin broke" in str(info.value)
    reg.register("m", {"model.json": json.dumps({**spec, "model_format": "tflite"}).encode()})
    with pytest.raises(NotFoundError, match=r"'tflite'.*available: .*double.*torch"):
        load_model(reg, "m", 2, plugins=plugins)


def test_torch_is_loom_s_own_format():
    class Squatter:
        @hookimpl
        def loom_register_model_formats(self, register):
            register("Torch", Doubling)

    with pytest.raises(PluginError, match=r"Squatter.*'Torch' is built into Loom"):
        get_plugins([Squatter()], entrypoints=False)
    assert isinstance(model_format(get_plugins(entrypoints=False), "torch"), TorchFormat)
    assert isinstance(TorchFormat(), runtime.ModelFormat)


# -- trained versions through load_model ------------------------------------------------------------------------


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    from conftest import make_project

    return make_project(tmp_path / "qs", port=8000)


def test_load_model_answers_as_the_trained_bundle(quickstart):
    version = register_version(quickstart, seed=3, steps=20)
    reg = registry(quickstart)
    project = runtime.load_project(quickstart)
    loaded = load_model(reg, "churn", "production", plugins=get_plugins(), limits=LoadLimits.of(project))
    assert loaded.version.version == version and loaded.spec.format == "torch"
    rows = data(quickstart).head(50)
    labels, proba = loaded.predict(rows)
    expected, expected_proba = Predictor(ModelBundle.from_registry(reg, "churn", version)).predict(rows)
    assert labels == expected
    np.testing.assert_allclose(proba, expected_proba, atol=1e-6)
    with pytest.raises(ConfigError, match="max_parameters"):
        load_model(reg, "churn", version, plugins=get_plugins(), limits=LoadLimits(max_parameters=10))


# -- the passthrough encoding -----------------------------------------------------------------------------------


def test_passthrough_encoding_keeps_numbers_and_one_hots_declared_categories():
    columns = {"b": ColumnSpec(type="float"), "kind": ColumnSpec(type="category", categories=["x", "y"]),
               "a": ColumnSpec(type="int"), "on": ColumnSpec(type="bool")}
    pre = Preprocessor.passthrough(columns)
    assert pre.input_columns == ["b", "a", "on", "kind"]  # numbers in declared order, then the categories
    cols = {"b": [1.5, None], "a": [3, 4], "on": [True, False], "kind": ["y", "z"]}
    matrix = FeatureEncoder(pre)(cols)
    expected = np.array([[1.5, 3, 1, 0, 1], [np.nan, 4, 0, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(matrix, expected)  # a missing number stays NaN; an unknown category is zeros
    frame = pd.DataFrame(cols)
    np.testing.assert_array_equal(pre.transform(frame), expected)  # the pandas path agrees
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))  # plain JSON: NaN is written as null
    assert "NaN" not in json.dumps(pre.to_dict())
    np.testing.assert_array_equal(FeatureEncoder(again)(cols), expected)


@pytest.mark.parametrize("spec", [ColumnSpec(type="string"), ColumnSpec(type="category"),
                                  ColumnSpec(type="timestamp")])
def test_passthrough_encoding_refuses_what_it_cannot_encode(spec):
    with pytest.raises(ConfigError, match="cannot be encoded for an imported model"):
        Preprocessor.passthrough({"c": spec})


def test_model_spec_refuses_what_is_not_a_spec():
    for bad in (b"not json", b"[1, 2]", b'{"model_format": 3}', b'{"inputs": {}}'):
        with pytest.raises(LoomError):
            ModelSpec.from_json(bad)
