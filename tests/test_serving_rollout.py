"""Rollouts on the real thing: Ray Serve behind HAProxy on the shared test cluster, driven by the `loom` CLI while
clients send traffic the whole time. Canary, promote, rollback and scale-to-zero drop no request and restart no
replica; overload is answered at once with 503 and Retry-After."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from conftest import make_project
from runtime import load_project
from runtime.cli import cli
from runtime.serving import current_table, shutdown
from serving_models import oip_inputs, records, register_version, registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, serve_port) -> Path:
    root = make_project(tmp_path_factory.mktemp("rollout") / "qs", port=serve_port,
                        serving={"route_prefix": "/rollout", "max_ongoing_requests": 4, "max_queued_requests": 4,
                                 "batch_wait_ms": 2, "retry_after_s": 2})
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["name"] = "rollout-test"
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for seed in (1, 2, 3):
        register_version(root, seed=seed, alias="production" if seed == 1 else None)
    return root


def loom(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def served(ray_cluster, project_dir):
    out = loom("deploy", str(project_dir), "--detach")
    url = out.strip().splitlines()[-1]
    assert url.endswith("/rollout")
    yield url
    shutdown(load_project(project_dir))


class Traffic:
    """Clients sending requests back to back in threads, recording every answer."""

    def __init__(self, url: str, body_predict: list, body_infer: dict, clients: int = 2):
        self.url, self.bodies = url, (body_predict, body_infer)
        self.codes: Counter[int] = Counter()
        self.versions: Counter[int] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                try:
                    if i % 2:
                        r = c.post("/v2/models/churn/infer", json=self.bodies[1])
                        version = int(r.json()["model_version"]) if r.status_code == 200 else None
                    else:
                        r = c.post("/predict/churn", json=self.bodies[0])
                        version = r.json()["version"] if r.status_code == 200 else None
                except httpx.HTTPError as err:
                    self.errors.append(repr(err))
                    continue
                self.codes[r.status_code] += 1
                if version is not None:
                    self.versions[version] += 1
                else:
                    self.errors.append(f"{r.status_code} {r.text[:200]}")

    def wait_for(self, version: int, n: int = 20, timeout: float = 30) -> None:
        start = self.versions[version]
        deadline = time.monotonic() + timeout
        while self.versions[version] < start + n:
            assert time.monotonic() < deadline, f"no traffic reached v{version}: {self.versions}"
            time.sleep(0.05)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def _replica(client: httpx.Client) -> str:
    line = next(line for line in client.get("/metrics").text.splitlines() if line.startswith("loom_requests_total"))
    return line.split('replica="', 1)[1].split('"', 1)[0]


def test_canary_promote_rollback_and_scale_to_zero_drop_nothing(served, project_dir):
    from serving_models import data

    df = data(project_dir).head(2)
    client = httpx.Client(base_url=served, timeout=30)
    client.post("/predict/churn", json=records(df))
    replica = _replica(client)
    project = str(project_dir)
    reg = registry(project_dir)
    with Traffic(served, records(df), {"inputs": oip_inputs(df)}) as traffic:
        traffic.wait_for(1)
        loom("deploy", project, "--version", "2", "--canary", "30")
        traffic.wait_for(2)
        assert traffic.versions[1] > 0
        loom("canary", project, "60")
        routes = current_table(load_project(project_dir)).routes("churn")
        assert routes.traffic == {1: 40, 2: 60} and routes.canary == 2
        loom("promote", project)
        assert reg.get_version("churn", "production").version == 2
        seen_v1 = traffic.versions[1]
        traffic.wait_for(2, n=50)
        assert traffic.versions[1] - seen_v1 < 10  # only requests in flight during the switch
        loom("rollback", project)
        assert reg.get_version("churn", "production").version == 1
        traffic.wait_for(1, n=50)
        loom("deploy", project, "--version", "3", "--canary", "10")
        traffic.wait_for(3)
        loom("rollback", project)  # aborts the canary; production stays
        assert reg.get_version("churn", "production").version == 1
        loom("scale-to-zero", project, "--version", "2")
        traffic.wait_for(1, n=30)
    assert traffic.errors == [] and set(traffic.codes) == {200}, (traffic.codes, traffic.errors[:5])
    assert sum(traffic.codes.values()) > 200
    assert _replica(client) == replica  # every change was applied in place
    gone = client.post("/v2/models/churn/versions/2/infer", json={"inputs": oip_inputs(df)})
    assert gone.status_code == 404 and "live versions: 1" in gone.json()["error"]
    out = loom("routes", project, "--json")
    assert '"production": 1' in out and '"standby": []' in out


def test_overload_is_refused_fast_with_retry_after(served, project_dir):
    from serving_models import data

    body = records(data(project_dir).head(1))

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=served, timeout=30, limits=limits) as c:
            return await asyncio.gather(*(c.post("/predict/churn", json=body) for _ in range(300)))

    started = time.monotonic()
    responses = asyncio.run(burst())
    elapsed = time.monotonic() - started
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, codes
    assert codes[503] > 0 and codes[200] > 0, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "2"
    assert elapsed < 20, elapsed


def test_unknown_routes_and_health_through_haproxy(served):
    with httpx.Client(base_url=served, timeout=10) as c:
        assert c.get("/v2/health/ready").json() == {"ready": True}
        r = c.post("/v2/models/nope/infer", content=b"{}")
        assert r.status_code == 404 and "nope" in r.json()["error"]
        r = c.post("/predict/churn", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
