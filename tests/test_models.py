"""Your own model, checked before any Ray work: tasks and their labels, architectures built from `model.options`
with Loom's in_features/out_features/input_shapes, tensor columns in the data, and bundles (new and old format).
No Ray."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import edit_config as _edit
from conftest import make_project
from runtime import ConfigError, DataValidationError, Pipeline, load_project
from runtime.artifacts import SPEC, WEIGHTS
from runtime.model import ModelBundle, Predictor, Preprocessor, architecture_kwargs
from runtime.preparation import prepare, task_of
from runtime.tasks import Classification, Regression, macro_f1, regression_metrics

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "qs", port=8000)


@pytest.fixture
def models_module(tmp_path, monkeypatch):
    """A project-local ``mymodels`` module with a few constructors to build."""
    (tmp_path / "mymodels.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Tabular(nn.Module):
            def __init__(self, in_features, out_features, width=8):
                super().__init__()
                self.net = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, out_features))
            def forward(self, x):
                return self.net(x)

        class NeedsDepth(nn.Module):
            def __init__(self, in_features, out_features, depth):
                super().__init__()

        class Picky(nn.Module):
            def __init__(self, in_features, out_features, width=8):
                super().__init__()
                if width > 100:
                    raise ValueError("width must be at most 100")

        class Anything(nn.Module):
            def __init__(self, **kwargs):
                super().__init__()
                self.kwargs = kwargs

        class NotAModule:
            pass
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mymodels", None)
    yield "mymodels"
    sys.modules.pop("mymodels", None)


# -- tasks ---------------------------------------------------------------------------------------------------


def test_the_task_follows_the_label_type_unless_set(project):
    assert task_of(load_project(project)) == "classification"  # churned: bool
    reg = load_project(EXAMPLES / "regression")
    assert reg.config.model.task is None and task_of(reg) == "regression"  # price_k: float
    _edit(project, "model", task="regression")
    with pytest.raises(ConfigError, match=r"model.task is regression but label 'churned' is declared bool"):
        task_of(load_project(project))
    _edit(project, "model", task="ranking")
    with pytest.raises(ConfigError, match=r"model.task"):
        load_project(project)


def test_classification_metrics_and_outputs():
    task = Classification.fit(pd.Series(["b", "a", "c", "a"], name="y"))
    assert task.classes == ["a", "b", "c"] and task.out_features == 3 and task.metric == "val_accuracy"
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    metrics = task.metrics(logits, torch.tensor([0, 1, 1, 0]))
    assert metrics["val_accuracy"] == 0.75 and metrics["val_log_loss"] == metrics["val_loss"] > 0
    assert metrics["val_f1_macro"] == pytest.approx(np.mean([1.0, 2 / 3, 0.0]))
    assert "val_auc" not in metrics  # binary only
    assert task.predictions(task.postprocess(logits)) == ["a", "b", "c", "a"]
    assert task.check_label("b") == "b"
    with pytest.raises(ValueError, match="not a class"):
        task.check_label("z")
    binary = Classification.fit(pd.Series([True, False, True], name="y"))
    assert "val_auc" in binary.metrics(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0]]),
                                       torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="fewer than two classes"):
        Classification.fit(pd.Series(["a", "a"], name="y"))
    assert macro_f1(np.array([0, 0]), np.array([0, 0]), 3) == 1.0


def test_regression_standardizes_targets_and_restores_values():
    y = pd.Series([100.0, 200.0, 300.0, 400.0], name="price")
    task = Regression.fit(y)
    targets = task.targets(y)
    assert targets.dtype == np.float32 and abs(targets.mean()) < 1e-6 and abs(targets.std() - 1) < 1e-5
    values = task.postprocess(torch.from_numpy(targets).reshape(-1, 1))
    np.testing.assert_allclose(values, y.to_numpy(), rtol=1e-5)
    metrics = task.metrics(torch.from_numpy(targets).reshape(-1, 1) + 0.1, torch.from_numpy(targets))
    assert metrics["val_rmse"] == pytest.approx(0.1 * task.std, rel=1e-4)  # in the label's units
    assert metrics["val_mae"] == pytest.approx(0.1 * task.std, rel=1e-4) and metrics["val_r2"] < 1
    assert regression_metrics(np.array([1.0, 2.0]), np.array([1.0, 2.0]))["r2"] == 1.0
    assert task.check_label(3) == 3.0
    for bad in ("3", True, float("nan"), [1]):
        with pytest.raises(ValueError):
            task.check_label(bad)
    assert Regression.fit(pd.Series([5.0, 5.0], name="y")).std == 1.0  # a constant target still trains


# -- your own module -----------------------------------------------------------------------------------------


def test_loom_passes_only_the_arguments_a_constructor_takes(models_module):
    assert architecture_kwargs(f"{models_module}:Tabular", {"width": 4}, in_features=3, out_features=2,
                               input_shapes=None) == {"width": 4, "in_features": 3, "out_features": 2}
    # options win over what Loom would pass; **kwargs constructors get everything
    assert architecture_kwargs(f"{models_module}:Anything", {"out_features": 7}, in_features=3, out_features=2,
                               input_shapes={"image": [1, 4, 4]}) == {
        "out_features": 7, "in_features": 3, "input_shapes": {"image": [1, 4, 4]}}


@pytest.mark.parametrize("arch, options, message", [
    ("Tabular", {"widht": 4}, r"takes no parameter 'widht' \(its parameters: in_features, out_features, width\)"),
    ("NeedsDepth", {}, r"needs parameter 'depth', which model.options does not give"),
    ("NotAModule", {}, r"is not a torch.nn.Module subclass"),
    ("Missing", {}, r"cannot import model.architecture"),
])
def test_a_constructor_that_does_not_fit_is_named(models_module, arch, options, message):
    with pytest.raises(ConfigError, match=message):
        architecture_kwargs(f"{models_module}:{arch}", options, in_features=3, out_features=2)


def test_a_module_that_cannot_be_built_fails_before_ray(project, models_module, tmp_path):
    _edit(project, "model", architecture=f"{models_module}:Picky", options={"width": 500})
    pipe = Pipeline(project)
    data = pipe.ingest()
    view = pipe.write_features(data)
    with pytest.raises(ConfigError, match=r"model.architecture mymodels:Picky cannot be built .*width must be at "
                                          r"most 100"):
        prepare(pipe.project, pipe.training_frame(data, view), view)
    _edit(project, "model", architecture=f"{models_module}:Tabular", options={"width": 4})
    prepared = prepare(pipe.project.model_copy(update={"config": load_project(project).config}),
                       pipe.training_frame(data, view), view)
    assert prepared.kwargs == {"width": 4, "in_features": prepared.preprocessor.n_features, "out_features": 2}


# -- tensor columns ------------------------------------------------------------------------------------------


def test_tensor_columns_are_validated_by_shape_and_read_from_npy(tmp_path):
    from runtime.config import ColumnSpec
    from runtime.validation import validate_batches

    np.save(tmp_path / "a.npy", np.ones((2, 3), dtype=np.float32))
    np.save(tmp_path / "wrong.npy", np.ones((3, 2), dtype=np.float32))
    columns = {"x": ColumnSpec(type="tensor", shape=[2, 3])}
    good = pd.DataFrame({"x": [np.zeros(6), [[1, 2, 3], [4, 5, 6]], "a.npy"]})
    report = validate_batches([good], columns, source="mem", base_dir=tmp_path)
    values = report.frame["x"].tolist()
    assert [v.shape for v in values] == [(2, 3)] * 3 and all(v.dtype == np.float32 for v in values)
    assert values[1][1, 2] == 6.0 and values[2].sum() == 6.0
    bad = pd.DataFrame({"x": [np.zeros(5), "wrong.npy", "missing.npy", [1.0, float("inf")] * 3]})
    with pytest.raises(DataValidationError, match=r"column 'x': 4 values cannot be read as a FP32 tensor of shape "
                                                  r"\[2, 3\] \(e.g. row 0: 'values of shape \[5\]', row 1: "
                                                  r"'wrong.npy'"):
        validate_batches([bad], columns, source="mem", base_dir=tmp_path)
    with pytest.raises(ValueError, match="shape"):
        ColumnSpec(type="tensor")
    with pytest.raises(ValueError, match="apply to tensor columns"):
        ColumnSpec(type="float", shape=[2])


def test_the_images_example_prepares_tensor_inputs_without_the_feature_store(tmp_path):
    import shutil

    root = tmp_path / "images"
    shutil.copytree(EXAMPLES / "images", root, ignore=shutil.ignore_patterns("data", ".loom"))
    _edit(root, "training", epochs=1)
    pipe = Pipeline(root)
    data = pipe.ingest()  # data.generate makes the pictures
    view = pipe.write_features(data)
    assert not view.features and "features" not in pipe.timings  # nothing for the feature store
    prepared = prepare(pipe.project, pipe.training_frame(data, view), view)
    assert prepared.arrays["x_train"].shape[1:] == (1, 28, 28) and prepared.arrays["x_train"].dtype == np.float32
    assert prepared.kwargs == {"channels": 8, "out_features": 4, "input_shapes": {"image": [1, 28, 28]}}
    bundle = prepared.bundle(pipe.project, {})
    assert bundle.tensors == {"image": {"type": "tensor", "nullable": False, "dtype": "FP32", "shape": [1, 28, 28]}}


# -- bundles ----------------------------------------------------------------------------------------------------


def _regression_bundle() -> ModelBundle:
    frame = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    from runtime.config import ColumnSpec

    pre = Preprocessor.fit(frame, {"x": ColumnSpec(type="float")})
    task = Regression.fit(pd.Series([10.0, 20.0, 30.0, 40.0], name="y"))
    torch.manual_seed(0)
    from runtime.model import TabularMLP

    model = TabularMLP(in_features=1, out_features=1, hidden=[4])
    return ModelBundle(architecture="runtime.model:TabularMLP", kwargs={"in_features": 1, "out_features": 1,
                                                                        "hidden": [4]},
                       preprocessor=pre, inputs={"x": {"type": "float"}}, label="y",
                       state_dict=model.state_dict(), task=task)


def test_a_regression_bundle_keeps_its_scaling():
    bundle = _regression_bundle()
    arts = bundle.to_artifacts()
    spec = json.loads(arts[SPEC])
    assert spec["format"] == "loom-model/2" and spec["task"] == {"task": "regression", "mean": 25.0,
                                                                  "std": pytest.approx(11.1803, rel=1e-4)}
    again = ModelBundle.from_artifacts(arts)
    assert isinstance(again.task, Regression) and again.classes == []
    values, out = Predictor(again).predict({"x": [0.0, 3.0]})
    raw = again.build()(torch.from_numpy(again.preprocessor.transform({"x": [0.0, 3.0]}))).detach().numpy()[:, 0]
    np.testing.assert_allclose(values, raw * again.task.std + again.task.mean, rtol=1e-5)


def test_a_bundle_of_the_first_format_still_loads():
    """Versions registered before tasks and in_features/out_features existed keep serving."""
    bundle = _regression_bundle()
    arts = bundle.to_artifacts()
    spec = json.loads(arts[SPEC])
    from runtime.model import TabularMLP

    torch.manual_seed(0)
    model = TabularMLP(in_features=1, out_features=2, hidden=[4])
    old = {"format": "loom-model/1", "architecture": "runtime.model:TabularMLP",
           "kwargs": {"n_inputs": 1, "hidden": [4], "n_classes": 2, "dropout": 0.1},
           "preprocessor": spec["preprocessor"], "classes": [False, True], "inputs": spec["inputs"], "label": "y"}
    from safetensors.torch import save

    loaded = ModelBundle.from_artifacts({SPEC: json.dumps(old).encode(), WEIGHTS: save(model.state_dict())})
    assert isinstance(loaded.task, Classification) and loaded.classes == [False, True]
    assert loaded.kwargs["in_features"] == 1 and loaded.kwargs["out_features"] == 2
    labels, proba = Predictor(loaded).predict({"x": [1.0]})
    assert labels[0] in (False, True) and proba.shape == (1, 2)
