"""A serving replica killed under load: at least 99% of requests still succeed and Ray Serve restores the
replica count within 30 s."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
import yaml

from conftest import make_project

pytestmark = pytest.mark.slow

RECORD = [{"tenure_months": 3, "monthly_charges": 89.5, "total_charges": 268.5, "support_calls": 4,
           "paperless_billing": True, "contract": "month-to-month", "internet_service": "fiber",
           "payment_method": "electronic-check"}]


def _replicas(app: str) -> list[int]:
    from ray._private.state import actors  # GCS actor table of this cluster

    return [a["Pid"] for a in actors().values()
            if a.get("ActorClassName", "").startswith(f"ServeReplica:{app}:") and a.get("State") == "ALIVE"]


def test_killed_replica_under_load(ray_cluster, serve_port, tmp_path):
    from runtime import Pipeline
    from runtime.serving import app_name, shutdown

    project_dir = make_project(tmp_path / "p", port=serve_port, training={"epochs": 1, "workers": 1},
                               serving={"replicas": 2, "replica_cpus": 0.25, "route_prefix": "/faults"})
    cfg = yaml.safe_load((project_dir / "loom.yaml").read_text())
    cfg["name"] = "faults"
    (project_dir / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    pipe = Pipeline(project_dir)
    url = pipe.up().url
    app = app_name(pipe.project)
    try:
        assert len(_replicas(app)) == 2
        codes: list[int] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=10) as c:
                while not stop.is_set():
                    try:
                        codes.append(c.post(f"{url}/predict/churn", json=RECORD).status_code)
                    except httpx.HTTPError:
                        codes.append(0)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(3)
        victim = _replicas(app)[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        recovered = None
        while time.monotonic() - killed_at < 30:
            pids = _replicas(app)
            if len(pids) == 2 and victim not in pids:
                recovered = time.monotonic() - killed_at
                break
            time.sleep(0.5)
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join()
        ok = codes.count(200) / len(codes)
        print(f"replica killed under load: {ok:.4%} of {len(codes)} requests succeeded; "
              f"replica count restored after {recovered} s")
        assert recovered is not None, "replica count not restored within 30 s"
        assert ok >= 0.99, f"{ok:.4f} of {len(codes)} requests succeeded: {set(codes)}"
    finally:
        shutdown(pipe.project)
