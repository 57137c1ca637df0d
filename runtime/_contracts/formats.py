"""The model-format contract: what every :class:`runtime.ModelFormat` must do, as a pytest suite.

Subclass :class:`ModelFormatContract` and define two fixtures: ``model_format`` (the format under test) and
``linear_model``, a callable ``make(weight, bias) -> (files, spec)`` that stores, in the format, a model computing
``x @ weight + bias`` on one FP32 input ``[N, in]`` (``weight`` is ``[in, out]`` float32), returning the version's
artifacts and the keys its ``model.json`` needs (``{}`` for most formats). Every ``test_*`` method then runs
against it: answers, batch sizes, threads, refusals of what is not the format (a pickle included, never
unpickled) and of a model beyond ``serving.max_parameters``.
"""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import pytest

from ..errors import ConfigError, LoomError
from ..formats import LoadLimits, ModelFormat
from ..registry import check_artifact_name

LinearModel = Callable[[np.ndarray, np.ndarray], tuple[dict[str, bytes], dict[str, Any]]]
#: Set by the pickle of :meth:`ModelFormatContract.test_refuses_a_pickle_without_running_it` if it is ever loaded.
UNPICKLED = False


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return exec, ("import runtime._contracts.formats as m; m.UNPICKLED = True",)


class ModelFormatContract:
    """Behaviour every model format must show. Subclass it and define ``model_format`` and ``linear_model``::

        from runtime.testing import ModelFormatContract

        class TestMyFormat(ModelFormatContract):
            @pytest.fixture
            def model_format(self, loom_plugins):
                import loom_myformat

                return loom_plugins(loom_myformat).model_format("myformat")

            @pytest.fixture
            def linear_model(self):
                def make(weight, bias):
                    return {"model.my": my_export(weight, bias)}, {}
                return make
    """

    #: The widths of the contract's linear model.
    in_features = 6
    out_features = 3
    #: Largest difference allowed between the format's answers and numpy's ``x @ weight + bias``.
    tolerance = 1e-5

    @pytest.fixture
    def model_format(self) -> ModelFormat:
        pytest.fail(f"{type(self).__name__} must define a `model_format` fixture returning the ModelFormat under test")

    @pytest.fixture
    def linear_model(self) -> LinearModel:
        pytest.fail(f"{type(self).__name__} must define a `linear_model` fixture: make(weight, bias) -> (files, spec)")

    def weights(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        return (rng.normal(size=(self.in_features, self.out_features)).astype(np.float32),
                rng.normal(size=self.out_features).astype(np.float32))

    def spec(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The ``model.json`` of the contract's model: one FP32 tensor input ``x`` of ``in_features``."""
        return {"format": "loom-model/2", "inputs": {"x": {"type": "tensor", "dtype": "FP32",
                                                           "shape": [self.in_features]}},
                "label": "y", "task": {"task": "classification", "classes": list(range(self.out_features))},
                "classes": list(range(self.out_features)), "encoding": "passthrough",
                "preprocessor": {"numeric": [], "categorical": {}, "medians": [], "means": [], "stds": []}, **extra}

    def load(self, model_format: ModelFormat, linear_model: LinearModel, seed: int = 0,
             limits: LoadLimits | None = None) -> tuple[Any, np.ndarray, np.ndarray]:
        weight, bias = self.weights(seed)
        files, extra = linear_model(weight, bias)
        return model_format.load(files, self.spec(extra), limits or LoadLimits()), weight, bias

    def test_satisfies_the_protocol(self, model_format: ModelFormat) -> None:
        assert isinstance(model_format, ModelFormat)
        assert isinstance(model_format.artifacts, tuple) and model_format.artifacts
        for name in model_format.artifacts:
            check_artifact_name(name)  # a safe name, and never a pickle suffix
            assert name != "model.json", "model.json is Loom's own artifact"

    def test_the_model_stores_the_format_s_artifacts(self, model_format: ModelFormat,
                                                     linear_model: LinearModel) -> None:
        files, _ = linear_model(*self.weights())
        assert set(files) == set(model_format.artifacts)
        assert all(isinstance(b, bytes) and b for b in files.values())

    @pytest.mark.parametrize("rows", [1, 7, 64])
    def test_answers_the_model_s_outputs(self, model_format: ModelFormat, linear_model: LinearModel,
                                         rows: int) -> None:
        network, weight, bias = self.load(model_format, linear_model)
        x = np.random.default_rng(rows).normal(size=(rows, self.in_features)).astype(np.float32)
        out = np.asarray(network((x,)))
        assert out.shape == (rows, self.out_features)
        assert out.dtype.kind == "f"
        np.testing.assert_allclose(out, x @ weight + bias, atol=self.tolerance, rtol=self.tolerance)

    def test_two_models_keep_their_own_weights(self, model_format: ModelFormat, linear_model: LinearModel) -> None:
        first, w1, b1 = self.load(model_format, linear_model, seed=1)
        second, w2, b2 = self.load(model_format, linear_model, seed=2)
        x = np.ones((2, self.in_features), dtype=np.float32)
        np.testing.assert_allclose(first((x,)), x @ w1 + b1, atol=self.tolerance, rtol=self.tolerance)
        np.testing.assert_allclose(second((x,)), x @ w2 + b2, atol=self.tolerance, rtol=self.tolerance)

    def test_is_thread_safe(self, model_format: ModelFormat, linear_model: LinearModel) -> None:
        network, weight, bias = self.load(model_format, linear_model)
        batches = [np.random.default_rng(i).normal(size=(5, self.in_features)).astype(np.float32) for i in range(32)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda x: np.asarray(network((x,))), batches))
        for x, out in zip(batches, answers):
            np.testing.assert_allclose(out, x @ weight + bias, atol=self.tolerance, rtol=self.tolerance)

    def test_declared_inputs_are_none_or_the_model_s(self, model_format: ModelFormat,
                                                     linear_model: LinearModel) -> None:
        files, _ = linear_model(*self.weights())
        declared = model_format.inputs(files)
        if declared is None:
            return
        assert len(declared) == 1
        [item] = declared
        assert set(item) >= {"name", "dtype", "shape"}
        assert item["dtype"] == "FP32"
        assert len(item["shape"]) == 2 and item["shape"][1] == self.in_features

    @pytest.mark.parametrize("junk", [b"", b"not a model at all", bytes(range(256)) * 4])
    def test_refuses_what_is_not_the_format(self, model_format: ModelFormat, linear_model: LinearModel,
                                            junk: bytes) -> None:
        _, extra = linear_model(*self.weights())
        files = {name: junk for name in model_format.artifacts}
        with pytest.raises(LoomError):
            model_format.inputs(files)
        with pytest.raises(LoomError):
            model_format.load(files, self.spec(extra), LoadLimits())

    def test_refuses_a_pickle_without_running_it(self, model_format: ModelFormat, linear_model: LinearModel) -> None:
        _, extra = linear_model(*self.weights())
        files = {name: pickle.dumps(_Payload()) for name in model_format.artifacts}
        with pytest.raises(LoomError):
            model_format.load(files, self.spec(extra), LoadLimits())
        assert not UNPICKLED, "loading the artifact unpickled it"

    def test_refuses_a_model_beyond_max_parameters(self, model_format: ModelFormat,
                                                   linear_model: LinearModel) -> None:
        with pytest.raises(ConfigError, match="max_parameters"):
            self.load(model_format, linear_model, limits=LoadLimits(max_parameters=self.in_features - 1))
        # within the limit it loads (weight and bias: in * out + out parameters)
        self.load(model_format, linear_model, limits=LoadLimits(max_parameters=(self.in_features + 1)
                                                                * self.out_features))
