"""How the serving application reaches Ray Serve: the HAProxy ingress settings and its loopback wrapper, and the
deployment options built from the project file. No cluster needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QUICKSTART
from runtime import ConfigError, load_project
from runtime.config import Project
from runtime.cluster import ingress
from runtime.serving.rollout import deployment_options
from runtime.serving.routing import RoutingTable

RAY_CONFIG = """global
    stats socket /tmp/x/admin.sock mode 666 level admin expose-fd listeners
defaults
    mode http
    errorfile 502 /tmp/x/500.http
    errorfile 503 /tmp/x/500.http
    errorfile 504 /tmp/x/500.http
frontend prometheus
    bind :{metrics}
    mode http
frontend http_frontend
    bind 127.0.0.1:8000
backend default_backend
    http-request return status 404
listen stats
  bind *:{stats}
  stats enable
"""


@pytest.fixture
def clean_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("RAY_SERVE_") or k in (ingress.INGRESS_ENV,
                                                                              ingress._PORTS_OWNER)]:
        monkeypatch.delenv(key)
    return monkeypatch


def test_haproxy_mode_is_configured_with_loopback_wrapper(clean_env, tmp_path):
    ingress.configure_environment()
    env = os.environ
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    stats, metrics = env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]
    assert stats not in ("8404", "9101") and metrics not in ("8404", "9101")  # free ports, not Ray's fixed ones
    assert Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"]).read_text().startswith("#!/bin/sh")
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG.format(stats=stats, metrics=metrics))
    wrapper = ingress._write_wrapper("/bin/echo", stats, metrics)  # the same script around a stand-in binary
    out = subprocess.run([wrapper, "-db", "-f", str(config), "-dR"], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-4:] == ["-db", "-f", str(config), "-dR"]
    rewritten = config.read_text()
    assert f"bind 127.0.0.1:{stats}" in rewritten and f"bind 127.0.0.1:{metrics}" in rewritten
    assert "bind 127.0.0.1:8000" in rewritten and "errorfile" not in rewritten
    assert 'frontend http_frontend\n    http-request set-header x-request-disconnect-disabled "?1"\n' in rewritten
    assert "*:" not in rewritten and f"bind :{metrics}" not in rewritten


def test_operator_settings_win_and_proxy_mode_opts_out(clean_env):
    clean_env.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")
    ingress.configure_environment()
    assert os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    for key in [k for k in os.environ if k.startswith("RAY_SERVE_")]:
        clean_env.delenv(key)
    clean_env.setenv(ingress.INGRESS_ENV, "proxy")
    ingress.configure_environment()
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ
    clean_env.setenv(ingress.INGRESS_ENV, "nginx")
    with pytest.raises(ConfigError, match="LOOM_SERVE_INGRESS"):
        ingress.configure_environment()


def test_a_child_process_picks_its_own_ports_not_its_parents(clean_env):
    """A process that inherits the ports a Loom parent picked for its own cluster (a script that served, then runs
    `loom up`) picks new ones: the parent's HAProxy holds those."""
    ingress.configure_environment()
    picked = os.environ["RAY_SERVE_HAPROXY_STATS_PORT"]
    assert os.environ[ingress._PORTS_OWNER] == str(os.getpid())
    ingress.configure_environment()  # again in the same process: kept
    assert os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == picked
    code = ("import os; from runtime.cluster import ingress; ingress.configure_environment(); "
            "print(os.environ['RAY_SERVE_HAPROXY_STATS_PORT'], os.environ['LOOM_HAPROXY_PORTS_OF'] == str(os.getpid()))")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    port, owned = child.stdout.split()
    assert port != picked and owned == "True"


def _project(**serving) -> Project:
    project = load_project(QUICKSTART)
    cfg = project.config
    return Project(root=project.root, config=cfg.model_copy(
        update={"serving": cfg.serving.model_copy(update=serving)}))


def test_deployment_options_come_from_the_project_file():
    from runtime.config import AutoscalingConfig

    table = RoutingTable().deploy("churn", 3)
    opts = deployment_options(_project(max_ongoing_requests=16, max_queued_requests=8, overload_status=429,
                                       retry_after_s=3, replicas=2), table)
    assert (opts["max_ongoing_requests"], opts["max_queued_requests"], opts["num_replicas"]) == (16, 8, 2)
    assert opts["backpressure_config"].status_code == 429 and opts["backpressure_config"].retry_after_s == 3
    assert opts["user_config"] == table.to_config() and "autoscaling_config" not in opts
    assert opts["ray_actor_options"]["runtime_env"]["env_vars"]["LOOM_STATE_DIR"]
    auto = AutoscalingConfig(min_replicas=0, max_replicas=4, target_ongoing_requests=8)
    opts = deployment_options(_project(autoscaling=auto), table)
    assert opts["autoscaling_config"]["min_replicas"] == 0 and opts["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in opts
