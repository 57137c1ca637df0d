"""The names of a model version's artifacts, in one place (the registry stores them; the bundle, serving, the
retrain loop and the CLI read them). Torch-free, so registries and their contract suites can use it cheaply."""

from __future__ import annotations

#: The model's weights (safetensors; a training checkpoint uses the same name).
WEIGHTS = "model.safetensors"
#: The model's spec: architecture import path, constructor arguments, preprocessing, classes, input schema (JSON).
SPEC = "model.json"
#: A sample of the training rows with the trained model's predictions: the baseline of drift checks (Parquet).
REFERENCE = "reference.parquet"
#: What a version's model is rebuilt from.
MODEL_ARTIFACTS = (SPEC, WEIGHTS)
