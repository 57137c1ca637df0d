"""The first-party ``onnx`` model format (``plugins/loom_onnx``) against the ``ModelFormatContract`` with real
onnx and onnxruntime, and a model exported by ``torch.onnx.export`` answering as the torch module it came from.
No Ray."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import loom_onnx
from runtime import ConfigError, LoomError, get_plugins
from runtime.formats import LoadLimits
from runtime.model import TabularMLP
from runtime.testing import ModelFormatContract


def linear_onnx(weight: np.ndarray, bias: np.ndarray) -> tuple[dict[str, bytes], dict]:
    """``x @ weight + bias`` as one ONNX Gemm over a dynamic batch."""
    n_in, n_out = weight.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return {"model.onnx": model.SerializeToString()}, {"model_format": "onnx"}


class TestOnnxFormat(ModelFormatContract):
    @pytest.fixture
    def model_format(self, loom_plugins):
        return loom_plugins(loom_onnx).model_format("onnx")

    @pytest.fixture
    def linear_model(self):
        return linear_onnx


def exported(module: torch.nn.Module, width: int) -> bytes:
    """``module`` exported by torch.onnx with a dynamic batch axis."""
    buf = io.BytesIO()
    torch.onnx.export(module.eval(), (torch.zeros(2, width),), buf, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return buf.getvalue()


def test_a_torch_export_answers_as_the_torch_module():
    torch.manual_seed(0)
    module = TabularMLP(in_features=12, out_features=3, hidden=[32, 16], dropout=0.0).eval()
    network = loom_onnx.OnnxFormat().load({"model.onnx": exported(module, 12)}, {}, LoadLimits())
    for rows in (1, 5, 257):
        x = np.random.default_rng(rows).normal(size=(rows, 12)).astype(np.float32)
        with torch.inference_mode():
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(network((x,)), expected, atol=1e-5, rtol=1e-5)


def test_declared_inputs_come_from_the_graph():
    module = TabularMLP(in_features=4, out_features=2, hidden=[8], dropout=0.0)
    assert loom_onnx.OnnxFormat().inputs({"model.onnx": exported(module, 4)}) == [
        {"name": "x", "dtype": "FP32", "shape": [None, 4]}]


def test_an_invalid_graph_is_refused_by_the_checker():
    files, _ = linear_onnx(np.ones((3, 2), np.float32), np.zeros(2, np.float32))
    model = onnx.load_model_from_string(files["model.onnx"])
    model.graph.node[0].input[1] = "nowhere"  # an input no node or initializer produces
    with pytest.raises(LoomError, match="not a valid ONNX model"):
        loom_onnx.OnnxFormat().inputs({"model.onnx": model.SerializeToString()})


def test_the_plugin_is_installed_and_its_providers_can_be_chosen(monkeypatch):
    plugins = get_plugins()
    assert plugins.names("loom_register_model_formats") == {"onnx": "onnx"}
    assert plugins.dist_of("onnx") == "loom-mlops"
    files, _ = linear_onnx(np.ones((3, 2), np.float32), np.zeros(2, np.float32))
    monkeypatch.setenv("LOOM_ONNX_PROVIDERS", "CPUExecutionProvider")
    network = plugins.model_format("onnx").load(files, {}, LoadLimits())
    assert network.session.get_providers() == ["CPUExecutionProvider"]
    monkeypatch.setenv("LOOM_ONNX_PROVIDERS", "NoSuchExecutionProvider")
    with pytest.raises(ConfigError, match="NoSuchExecutionProvider"):
        plugins.model_format("onnx").load(files, {}, LoadLimits())
