"""The loop inside the served cluster, end to end on real Ray Train and Ray Serve: ``Pipeline.up`` starts the
controller actor; drifted, labelled traffic alone makes it retrain on that traffic, shadow, canary and promote a
new version, while a client counts every failed request. The controller is killed mid-canary and resumes."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import ray

from runtime import Pipeline, load_project
from runtime.loop_controller import start_if_enabled
from runtime.retrain_loop import RetrainLoop
from runtime.serving import current_table, find_controller, shutdown
from test_drift_loop import FEATURES, generator, loop_project, new_concept

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(ray_cluster, serve_port, tmp_path_factory):
    root = loop_project(tmp_path_factory.mktemp("ctl") / "qs", serve_port, "loop-controller", "/loopctl",
                        min_labelled=150, shadow_requests=10, check_interval_s=0.5)
    result = Pipeline(root).up()
    assert start_if_enabled(load_project(root)) is not None  # as `loom up` does after serving
    yield root, result
    shutdown(load_project(root))


class Traffic(threading.Thread):
    """Drifted requests with their labels, as fast as one client sends them; counts every failure."""

    def __init__(self, url: str, frame):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, timeout=60)
        self.frame, self.sent, self.failed = frame, 0, []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            part = self.frame.iloc[i % len(self.frame):][:20]
            i += 20
            try:
                r = self.client.post("/predict/churn", content=part[FEATURES].to_json(orient="records"),
                                     headers={"content-type": "application/json"})
                self.sent += 1
                if r.status_code != 200:
                    self.failed.append(("predict", r.status_code, r.text[:200]))
                    continue
                f = self.client.post("/feedback/churn", json={"labels": [
                    {"id": r.headers["x-loom-request-id"], "label": part["churned"].tolist()}]})
                if f.status_code != 200:
                    self.failed.append(("feedback", f.status_code, f.text[:300]))
            except httpx.HTTPError as err:
                self.failed.append(type(err).__name__)
            time.sleep(0.05)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_drifted_labelled_traffic_alone_promotes_a_retrained_version_through_a_killed_controller(project):
    root, result = project
    proj = load_project(root)
    handle = find_controller(proj)
    assert handle is not None, "loom up did not start the loop's controller"
    assert ray.get(handle.status.remote(), timeout=30)["alive"]
    loop = RetrainLoop(proj)
    traffic = Traffic(result.url, new_concept(generator(root)(3000, seed=22, drift=1.0)))
    traffic.start()
    try:
        wait_for(lambda: loop.state().get("phase") == "canary", 240, "the controller's canary")
        new = int(loop.state()["version"])
        candidate = loop.pipe.registry.get_version("churn", new)
        assert list(candidate.aliases) == ["candidate"]  # never production before the verdict
        assert candidate.lineage["retrain"]["capture"]["rows_labelled"] > 0
        assert int(candidate.tags["loom.shadow_requests"]) >= 10
        ray.kill(handle, no_restart=False)  # mid-canary: Ray restarts it, and it resumes from its state
        wait_for(lambda: loop.state().get("phase") == "idle", 240, "the verdict after the restart")
        state = loop.state()
        assert state["outcome"] == "promoted", state["verdict"]["guards"]
        status = ray.get(find_controller(proj).status.remote(), timeout=30)
        assert status["alive"] and status["state"]["last"] == new
    finally:
        traffic.halt.set()
        traffic.join(timeout=60)
    assert traffic.sent > 100 and traffic.failed == [], traffic.failed[:10]
    version = loop.pipe.registry.get_version("churn", new)
    assert list(version.aliases) == ["production"] and version.tags["loom.loop"] == "promoted"
    assert current_table(proj).models["churn"].primary == new
