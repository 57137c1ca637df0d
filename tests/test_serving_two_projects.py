"""Two projects served from one cluster: a rollout of one never reaches the other's traffic.

With HAProxy ingress every application is a backend chosen by the longest matching route prefix; a rollout
regenerates and reloads HAProxy's configuration. The prefixes here nest (``/two`` and ``/two/beta``), so a request
for the inner project that fell through to the outer one during a reload would come back 404 from the wrong app."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import make_project
from runtime import load_project
from runtime import serving
from serving_models import data, records, register_version

pytestmark = pytest.mark.slow


def _project(root: Path, port: int, name: str, prefix: str) -> Path:
    path = make_project(root / name, port=port, serving={"route_prefix": prefix})
    cfg = yaml.safe_load((path / "loom.yaml").read_text())
    cfg["name"] = name
    (path / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for seed in (1, 2):
        register_version(path, seed=seed, alias="production" if seed == 1 else None)
    return path


@pytest.fixture(scope="module")
def two_projects(ray_cluster, serve_port, tmp_path_factory):
    root = tmp_path_factory.mktemp("two-projects")
    projects = {name: load_project(_project(root, serve_port, name, prefix))
                for name, prefix in (("outer", "/two"), ("inner", "/two/beta"))}
    urls = {name: serving.deploy(p, "churn", 1) for name, p in projects.items()}
    yield projects, urls
    for p in projects.values():
        serving.shutdown(p)


def test_rolling_out_one_project_leaves_the_other_untouched(two_projects):
    projects, urls = two_projects
    assert urls["inner"].endswith("/two/beta") and urls["outer"].endswith("/two")
    body = records(data(projects["outer"].root).head(1))
    codes = {name: Counter() for name in urls}
    versions = {name: Counter() for name in urls}
    wrong: list[str] = []
    stop = threading.Event()

    def send(name: str) -> None:
        with httpx.Client(base_url=urls[name], timeout=30) as client:
            while not stop.is_set():
                r = client.post("/predict/churn", json=body)
                codes[name][r.status_code] += 1
                if r.status_code == 200:
                    versions[name][r.json()["version"]] += 1
                elif len(wrong) < 5:
                    wrong.append(f"{name}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=send, args=(name,)) for name in urls for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for name in ("inner", "outer"):
            other = "outer" if name == "inner" else "inner"
            before, other_v2 = sum(codes[other].values()), versions[other][2]
            serving.deploy(projects[name], "churn", 2, canary=50)
            deadline = time.monotonic() + 30
            while versions[name][2] < 10:
                assert time.monotonic() < deadline, f"the canary of {name} took no traffic: {versions[name]}"
                time.sleep(0.05)
            serving.rollback(projects[name], "churn")
            time.sleep(0.5)
            assert sum(codes[other].values()) > before, f"{other} stopped answering while {name} rolled out"
            assert versions[other][2] == other_v2, f"{other} answered with {name}'s canary"
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert wrong == [] and all(set(c) == {200} for c in codes.values()), (codes, wrong)
    assert all(sum(c.values()) > 100 for c in codes.values()), codes
