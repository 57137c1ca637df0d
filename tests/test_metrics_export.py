"""Prometheus sees every replica through Ray's metrics export: with two serving replicas, each replica's request
counters and latency histogram, and the deployment monitor's drift gauges, appear on the node's Ray metrics export
port (listed in Ray's service-discovery file), and the replicas' exported counts add up to the requests sent.
The example scrape config names the discovery file the docs give."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from conftest import make_project
from runtime import load_project
from runtime.cli import cli
from runtime.serving import shutdown
from runtime.serving.metrics import RayExport, ServingMetrics
from serving_models import data, records, register_version

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "prometheus" / "prometheus.yml"
DOC = (ROOT / "docs" / "monitoring.md").read_text()
SECTION = DOC.split("## Prometheus across the cluster", 1)[-1].split("\n## ", 1)[0]
DISCOVERY = "/tmp/ray/prom_metrics_service_discovery.json"
MODEL = "churn-export"
#: A new connection per request, so HAProxy spreads them over the replicas.
FRESH = httpx.Limits(max_keepalive_connections=0)
#: What Ray adds to every exported series (``Version`` is Ray's, ``version`` the model's).
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "JobId", "otel_scope_name",
              "otel_scope_schema_url", "otel_scope_version"}


def test_the_example_scrape_config_reads_the_documented_discovery_file():
    cfg = yaml.safe_load(EXAMPLE.read_text())
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    files = [f for job in jobs.values() for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert files == [DISCOVERY]
    assert "## Prometheus across the cluster" in DOC and DISCOVERY in SECTION
    assert "examples/prometheus/prometheus.yml" in SECTION
    # the section's scrape config is the example's
    block = re.search(r"```yaml\n(.*?)```", SECTION, re.S).group(1)
    documented = {job["job_name"]: job for job in yaml.safe_load(block)["scrape_configs"]}
    assert documented["ray"] == jobs["ray"]
    assert "static_configs" in SECTION and "--metrics-export-port" in SECTION


def test_a_pass_adds_what_counters_gained_and_sets_every_gauge(monkeypatch):
    calls: list[tuple] = []

    class Recorder:
        def __init__(self, kind: str, name: str, tag_keys: tuple[str, ...]):
            self.kind, self.name, self.tag_keys = kind, name, tag_keys

        def inc(self, value, tags):
            calls.append(("inc", self.name, value, tags))

        def set(self, value, tags):
            calls.append(("set", self.name, value, tags))

    monkeypatch.setattr("runtime.serving.metrics._ray_metric",
                        lambda cls, name, doc, keys: Recorder(cls.__name__, name, keys))
    serving = ServingMetrics("r1")
    assert RayExport.in_ray_worker(serving.registry) is None  # not in a Ray worker: nothing starts
    export = RayExport(serving.registry)
    for _ in range(2):
        serving.observe("m", "1", "predict", 200, 0.003)
    tags = {"replica": "r1", "model": "m", "version": "1", "protocol": "predict"}
    assert export.export() == 1 + 13 + 2
    assert ("inc", "loom_requests", 2.0, {**tags, "code": "200"}) in calls
    buckets = {c[3]["le"]: c[2] for c in calls if c[1] == "loom_request_seconds_bucket"}
    assert len(buckets) == 13 and buckets["0.0025"] == 0 and buckets["0.005"] == buckets["+Inf"] == 2
    assert ("set", "loom_request_seconds_count", 2.0, tags) in calls
    assert not [c for c in calls if c[1].startswith("loom_capture")]  # a zero counter is not exported
    calls.clear()
    serving.observe("m", "1", "predict", 200, 0.003)
    serving.capture_stored.inc(3)
    export.export()
    assert [c for c in calls if c[0] == "inc"] == [("inc", "loom_requests", 1.0, {**tags, "code": "200"}),
                                                   ("inc", "loom_capture_stored", 3.0, {"replica": "r1"})]
    calls.clear()
    assert export.export() == 13 + 2  # nothing counted since: only the gauges, set again (Ray drops stale ones)
    assert {c[0] for c in calls} == {"set"}


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, serve_port) -> Path:
    root = make_project(tmp_path_factory.mktemp("export") / "qs", port=serve_port,
                        serving={"route_prefix": "/exported", "replicas": 2, "replica_cpus": 0.25},
                        model={"name": MODEL},
                        monitoring={"interval_s": None, "flush_interval_s": 0.5})
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["name"] = "export-test"
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    register_version(root, seed=1, alias="production")
    return root


@pytest.fixture(scope="module")
def served(ray_cluster, project_dir):
    result = CliRunner().invoke(cli, ["deploy", str(project_dir), "--detach"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    url = result.output.strip().splitlines()[-1]
    yield url, load_project(project_dir)
    shutdown(load_project(project_dir))


def _replicas(client: httpx.Client) -> set[str]:
    """The replicas that served this model (each answers /metrics with its own counts)."""
    seen = set()
    for _ in range(10):
        for family in text_string_to_metric_families(client.get("/metrics").text):
            seen |= {s.labels["replica"] for s in family.samples
                     if s.name == "loom_requests_total" and s.labels.get("model") == MODEL}
    return seen


def _targets() -> list[str]:
    """Every live node's Ray metrics export endpoint (what Ray's service-discovery file lists)."""
    return [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n["Alive"]]


def _scrape() -> dict[str, list]:
    """Ray's exported Loom samples of every node, by sample name."""
    out: dict[str, list] = {}
    for target in _targets():
        text = httpx.get(f"http://{target}/metrics", timeout=30).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("ray_loom_"):
                    out.setdefault(sample.name, []).append(sample)
    return out


def _until(what: str, probe, timeout: float = 120):
    """``probe()`` until it returns something true (Ray reports every few seconds); its last answer otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer[0] or time.monotonic() > deadline:
            assert answer[0], f"{what}: {answer[1]}"
            return answer[1]
        time.sleep(2)


def test_every_replica_and_the_monitor_reach_rays_metrics_export(served, project_dir):
    url, project = served
    frame = data(project_dir)
    sent = 0
    with httpx.Client(base_url=url, timeout=60, limits=FRESH) as client:
        # fresh connections, until both replicas have served some and at least 40 requests were sent
        deadline = time.monotonic() + 120
        while True:
            for _ in range(10):
                start = (sent * 5) % 2000
                r = client.post(f"/predict/{MODEL}", json=records(frame.iloc[start:start + 5]))
                assert r.status_code == 200, r.text
                sent += 1
            mine = _replicas(client)
            if sent >= 40 and len(mine) == 2 or time.monotonic() > deadline or sent >= 2000:
                break
        assert len(mine) == 2, mine

        def requests_exported():
            samples = [s for s in _scrape().get("ray_loom_requests_total", [])
                       if s.labels.get("model") == MODEL and s.labels.get("replica") in mine]
            by_replica: dict[str, float] = {}
            for s in samples:
                by_replica[s.labels["replica"]] = by_replica.get(s.labels["replica"], 0) + s.value
            return set(by_replica) == mine and sum(by_replica.values()) == sent, (by_replica, samples)

        by_replica, samples = _until(f"both replicas' {sent} requests exported", requests_exported)
        assert all(v > 0 for v in by_replica.values())
        for s in samples:  # bounded labels: the registry's, and Ray's own
            assert set(s.labels) - RAY_LABELS == {"replica", "model", "version", "protocol", "code"}, s.labels
            assert (s.labels["version"], s.labels["protocol"], s.labels["code"]) == ("1", "predict", "200")

        # the latency histogram, as cumulative buckets histogram_quantile reads
        scraped = _scrape()

        def mine_of(name: str) -> list:
            return [s for s in scraped.get(name, []) if s.labels.get("model") == MODEL
                    and s.labels.get("replica") in mine]

        assert sum(s.value for s in mine_of("ray_loom_request_seconds_count")) == sent
        buckets = mine_of("ray_loom_request_seconds_bucket")
        assert sum(s.value for s in buckets if s.labels["le"] == "+Inf") == sent
        assert len({s.labels["le"] for s in buckets}) == 13  # every bucket, the empty ones too
        assert sum(s.value for s in mine_of("ray_loom_predicted_rows_total")) == 5 * sent

        # a drift check in the deployment's monitor: its gauges, once per deployment
        def drift():
            r = client.get(f"/monitoring/{MODEL}/drift")
            return r.status_code == 200, r.json() if r.status_code == 200 else r.text[:300]

        report = _until("a drift check", drift, timeout=60)

        def drift_exported():
            shares = [s for s in _scrape().get("ray_loom_drift_share", []) if s.labels.get("model") == MODEL]
            return bool(shares), shares

        shares = _until("the monitor's drift gauge exported", drift_exported)
        assert len(shares) == 1 and shares[0].labels["replica"] == "monitor", shares
        assert shares[0].value == pytest.approx(report["share_drifted"])

    # Ray's service-discovery file (on the head) lists the node Prometheus scrapes
    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())

    def discovered():
        try:
            content = json.loads((session / "prom_metrics_service_discovery.json").read_text())
        except (OSError, ValueError) as err:
            return False, repr(err)
        listed = {t for group in content for t in group["targets"]}
        return set(_targets()) <= listed, content

    _until("the service-discovery file lists every node", discovered, timeout=30)
    # every exported name the docs give is one Ray serves
    scraped = _scrape()
    named = set(re.findall(r"ray_loom_[a-z_]+", SECTION))
    assert named and named <= set(scraped), named - set(scraped)
