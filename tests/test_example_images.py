"""`examples/images` end to end, as `loom up` runs it: pictures made by `data.generate`, a CNN of the project's
own trained on Ray Train over a tensor input, served on Ray Serve, queried through tritonclient with binary
tensors and as JSON, a wrong shape refused, and a drift check on the tensor's summary statistics."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from example_projects import copy_example as _copy
from example_projects import triton as _triton
from runtime import Pipeline
from runtime.serving import shutdown

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes(ray_cluster, serve_port, tmp_path_factory):
    root = _copy("images", tmp_path_factory.mktemp("images"), serve_port, training={"epochs": 4})
    pipe = Pipeline(root)
    result = pipe.up()
    yield {"pipe": pipe, "result": result, "url": result.url, "root": root}
    shutdown(pipe.project)


def _pictures(root: Path, n: int, drift: float = 0.0):
    import sys

    sys.path.insert(0, str(root))
    try:
        from generate_data import generate
    finally:
        sys.path.remove(str(root))
    frame = generate(n, seed=99, drift=drift)
    return np.stack(frame["image"].to_list()).reshape(n, 1, 28, 28).astype(np.float32), frame["shape"].tolist()


def test_images_serve_binary_tensors_to_tritonclient(shapes):
    tc, triton = _triton(shapes["url"])
    meta = triton.get_model_metadata("shapes")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    images, labels = _pictures(shapes["root"], 200)
    inp = tc.InferInput("image", list(images.shape), "FP32")
    inp.set_data_from_numpy(images, binary_data=True)
    result = triton.infer("shapes", [inp])
    predicted = [p.decode() if isinstance(p, bytes) else p for p in result.as_numpy("predicted").tolist()]
    accuracy = float(np.mean([p == y for p, y in zip(predicted, labels)]))
    print(f"served accuracy on 200 new pictures: {accuracy:.3f}")
    assert accuracy > 0.8
    assert result.as_numpy("probabilities").reshape(200, 4).sum(axis=1) == pytest.approx(np.ones(200), abs=1e-4)
    # JSON, nested, one picture: the same answer
    one = httpx.post(f"{shapes['url']}/v2/models/shapes/infer", timeout=30, json={"inputs": [
        {"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": images[:1].tolist()}]})
    assert one.status_code == 200, one.text
    assert one.json()["outputs"][0]["data"] == predicted[:1]


def test_images_reject_a_wrong_shape_with_a_clear_400(shapes):
    bad = httpx.post(f"{shapes['url']}/v2/models/shapes/infer", timeout=30, json={"inputs": [
        {"name": "image", "datatype": "FP32", "shape": [1, 28, 28], "data": [0.0] * 784}]})
    assert bad.status_code == 400
    assert bad.json() == {"error": "input 'image': shape [1, 28, 28] does not match [N, 1, 28, 28]"}


def test_images_answer_a_drift_check_on_summary_statistics(shapes):
    tc, triton = _triton(shapes["url"])
    images, _ = _pictures(shapes["root"], 150, drift=2.0)  # brighter, noisier pictures
    inp = tc.InferInput("image", list(images.shape), "FP32")
    inp.set_data_from_numpy(images, binary_data=True)
    triton.infer("shapes", [inp])
    drift = httpx.get(f"{shapes['url']}/monitoring/shapes/drift", timeout=120)
    assert drift.status_code == 200, drift.text
    report = drift.json()
    assert set(report["features"]) == {"image.mean", "image.std", "image.min", "image.max"}
    assert report["features"]["image.mean"]["drifted"] and report["drifted"]
