"""Loom's ONNX model format: a version can be an ``.onnx`` file, run with onnxruntime.

Registered as ``onnx`` (``loom models import NAME --format onnx --file model.onnx``). The version keeps Loom's
``model.json`` (inputs, encoding, task, classes) and the graph as ``model.onnx``; the graph takes what every Loom
network takes (the encoded tabular matrix as one FP32 input, then one input per tensor input, in declared order)
and its first output is read as the raw outputs (class logits, or one value per row).

Execution providers: CUDA when onnxruntime has it, else the CPU (``LOOM_ONNX_PROVIDERS=CPUExecutionProvider,...``
chooses). Intra-op threads follow ``OMP_NUM_THREADS`` (what Ray gives a replica), and idle threads do not spin, so
the model does not take CPU from the replica's request handling.

onnx and onnxruntime are imported only when a model is read (``loom plugins`` and every process start stay fast);
install them with ``pip install 'loom-mlops[onnx]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime import Register, hookimpl

from ._format import ARTIFACT, OnnxFormat, OnnxNetwork

if TYPE_CHECKING:
    from runtime import ModelFormat

__all__ = ["ARTIFACT", "NAME", "OnnxFormat", "OnnxNetwork", "loom_register_model_formats"]

NAME = "onnx"


def _factory() -> ModelFormat:
    return OnnxFormat()


@hookimpl
def loom_register_model_formats(register: Register) -> None:
    register(NAME, _factory)


