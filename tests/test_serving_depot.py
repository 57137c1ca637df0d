"""Replicas read nothing from the driver's disk: for a project on embedded defaults (SQLite registry, local
artifacts), the versions a table serves travel to replicas through the project's depot (a detached Ray actor),
so a replica that Ray starts again after the driver's registry is gone still loads and serves its version."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from click.testing import CliRunner

from conftest import make_project
from runtime import load_project
from runtime.cli import cli
from runtime.serving import shutdown
from runtime.serving.depot import NAMESPACE, DepotRegistry, depot_name, ship, stop_depot
from runtime.serving.server import ModelServer
from serving_models import data, records, register_version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, serve_port) -> Path:
    root = make_project(tmp_path_factory.mktemp("depot") / "qs", port=serve_port,
                        serving={"route_prefix": "/depot", "replica_cpus": 0.25},
                        monitoring={"interval_s": None})
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["name"] = "depot-test"
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    register_version(root, seed=1, alias="production")
    register_version(root, seed=2, alias=None)
    return root


def _depot_keys(project) -> set[tuple[str, int]]:
    actor = ray.get_actor(depot_name(project), namespace=NAMESPACE)
    return {tuple(k) for k in ray.get(actor.has.remote())}


def _replica_actors(app: str) -> list:
    from ray.util.state import list_actors

    return [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
            if a.class_name.startswith("ServeReplica:") and app in a.class_name]


def test_a_restarted_replica_loads_from_the_depot_when_the_registry_is_gone(ray_cluster, project_dir, tmp_path):
    project = load_project(project_dir)
    result = CliRunner().invoke(cli, ["deploy", str(project_dir), "--detach"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    url = result.output.strip().splitlines()[-1]
    try:
        assert _depot_keys(project) == {("churn", 1)}
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/predict/churn", json=records(data(project_dir).head(3))).status_code == 200

            # the driver's registry disappears (as it is absent on every other node)...
            registry = project.state_dir / "registry"
            shutil.move(registry, tmp_path / "registry-away")
            try:
                # ...and Ray starts the replica again: it must load v1 from the depot alone
                killed = _replica_actors("depot-test")
                assert killed
                for actor in killed:
                    ray.kill(ray.get_actor(actor.name, namespace="serve"), no_restart=True)
                deadline, codes = time.monotonic() + 120, []
                while time.monotonic() < deadline:
                    try:
                        codes.append(client.post("/predict/churn", json=records(data(project_dir).head(3))).status_code)
                    except httpx.HTTPError:
                        codes.append(0)
                    if codes[-5:] == [200] * 5 and len(codes) > 5:
                        break
                    time.sleep(0.5)
                assert codes[-5:] == [200] * 5, codes[-20:]
                now = {a.actor_id for a in _replica_actors("depot-test")}
                assert now and not now & {a.actor_id for a in killed}, "no new replica was started"
                assert not registry.exists(), "the replica recreated the driver's registry: it read its disk"
            finally:
                if registry.exists():
                    shutil.rmtree(registry)
                shutil.move(tmp_path / "registry-away", registry)
    finally:
        shutdown(project)
    with pytest.raises(ValueError):
        ray.get_actor(depot_name(project), namespace=NAMESPACE)  # shutdown ends the depot with the application


def test_the_depot_keeps_only_what_the_tables_serve_and_replicas_fall_back_to_the_registry(ray_cluster,
                                                                                          project_dir):
    project = load_project(project_dir)
    server = ModelServer.from_project(project)
    try:
        assert ship(project, server.registry, [("churn", 1)]) > 0
        assert ship(project, server.registry, [("churn", 1)]) == 0  # already there: nothing travels again
        ship(project, server.registry, [("churn", 2)], keep=[("churn", 1)])
        assert _depot_keys(project) == {("churn", 1), ("churn", 2)}
        ship(project, server.registry, [("churn", 2)])
        assert _depot_keys(project) == {("churn", 2)}

        opened = []

        def fallback():
            opened.append(True)
            return server.registry

        shipped = DepotRegistry(project, fallback)
        assert shipped.get_version("churn", 2).version == 2 and not opened  # from the depot
        assert shipped.read_artifact("churn", 2, "model.safetensors") == \
            server.registry.read_artifact("churn", 2, "model.safetensors")
        assert not opened
        assert shipped.get_version("churn", 1).version == 1 and opened  # not in the depot: the registry
        stop_depot(project)
        assert DepotRegistry(project, lambda: server.registry).get_version("churn", 2).version == 2
    finally:
        stop_depot(project)
