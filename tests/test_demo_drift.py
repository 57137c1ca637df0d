"""The drift demo (examples/quickstart/demo_drift.py) on the test session's cluster, in its --worse variant: the
controller retrains on shuffled labels, and the judge must roll the candidate back while production keeps serving
the version it had, with no failed request."""

from __future__ import annotations

import contextlib
import importlib.util
import io

import pytest
import yaml
from rich.console import Console

from conftest import QUICKSTART
from runtime import NotFoundError, Pipeline, load_project
from runtime.retrain_loop import CANDIDATE
from runtime.serving import current_table, shutdown

pytestmark = pytest.mark.slow


def demo_module():
    spec = importlib.util.spec_from_file_location("demo_drift", QUICKSTART / "demo_drift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_worse_demo_rolls_the_candidate_back_and_production_keeps_serving(ray_cluster, serve_port, tmp_path):
    demo = demo_module()
    root = demo.prepare(tmp_path / "qs", worse=True, port=serve_port, name="demo-drift-worse-test",
                        route_prefix="/demoworse")
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    assert cfg["monitoring"]["retrain"]["captured"] is False
    assert not (root / ".loom").exists() and not (root / "demo_drift.py").exists()
    out = io.StringIO()
    try:
        result = demo.run_demo(root, worse=True, console=Console(file=out, width=120), timeout_s=300)
        project = load_project(root)
        assert result["outcome"] == "rolled-back", (result["state"], out.getvalue()[-3000:])
        new, previous = int(result["version"]), int(result["previous"])
        assert new != previous
        registry = Pipeline(project).registry
        candidate = registry.get_version("churn", new)
        assert CANDIDATE not in candidate.aliases and "production" not in candidate.aliases, candidate.aliases
        assert "production" in registry.get_version("churn", previous).aliases
        assert current_table(project).models["churn"].primary == previous
        assert result["failed"] == 0, [(f["what"], f["status"], f["at_s"], f["phase"], f["body"][:80])
                                       for f in result["failures"]]
        assert result["requests"] > 0 and result["seconds"]["drift_to_decision"] is not None
        verdict = result["verdict"]
        assert verdict["promoted"] is False and verdict["n"] >= 200
        assert "Verdict on v" in out.getvalue()
    finally:
        with contextlib.suppress(NotFoundError):  # nothing served: a failure above says why
            shutdown(load_project(root))
