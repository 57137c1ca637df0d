"""The webhook notifier, installed and called through Loom's plugin manager, posting to a local HTTP server."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from pathlib import Path

import pytest

from runtime import DriftReport, FeatureDrift, Project, parse_config

import loom_webhook


class Receiver(http.server.BaseHTTPRequestHandler):
    """Records each POST; answers with the status the test sets on the server."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.received, server.status = [], 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def project(tmp_path: Path) -> Project:
    config = parse_config({
        "name": "churn-quickstart",
        "data": {"source": "csv://data.csv", "entity": "id", "timestamp": "ts", "label": "y",
                 "columns": {"id": {"type": "int"}, "ts": {"type": "timestamp"}, "x": {"type": "float"},
                             "y": {"type": "bool"}}},
        "model": {"name": "churn"},
    })
    return Project(root=tmp_path, config=config)


REPORT = DriftReport(
    monitor="evidently", drifted=True, share_drifted=0.5, n_reference=2000, n_current=500,
    features=(FeatureDrift("monthly_charges", True, 0.001, "ks", 0.05),
              FeatureDrift("tenure_months", False, 0.4, "ks", 0.05)),
)


def drift(plugins, project):
    return plugins.call("loom_drift_detected", project=project, model="churn", version=3, report=REPORT)


def test_discovered_through_its_entry_point(loom_plugins):
    info = {p.name: p for p in loom_plugins(installed=True).info()}["webhook"]
    assert (info.dist, info.hooks) == ("loom-webhook", ("loom_drift_detected",))


def test_posts_the_report(loom_plugins, receiver, project, monkeypatch):
    monkeypatch.setenv("LOOM_WEBHOOK_URL", f"http://127.0.0.1:{receiver.server_port}/hooks/T000/secret")
    assert drift(loom_plugins(loom_webhook), project) == []  # never asks for a retrain
    [got] = receiver.received
    assert got["path"] == "/hooks/T000/secret"
    assert got["headers"]["Content-Type"] == "application/json"
    body = got["body"]
    assert (body["event"], body["project"], body["model"], body["version"]) == (
        "loom.drift_detected", "churn-quickstart", "churn", 3)
    assert body["text"].startswith("Drift in churn v3 (churn-quickstart): 50% of columns drifted (monthly_charges)")
    assert body["report"]["features"]["monthly_charges"] == {"drifted": True, "score": 0.001, "method": "ks",
                                                             "threshold": 0.05}


def test_a_refused_delivery_is_logged_without_the_secret(loom_plugins, receiver, project, monkeypatch, caplog):
    receiver.status = 500
    monkeypatch.setenv("LOOM_WEBHOOK_URL", f"http://127.0.0.1:{receiver.server_port}/hooks/T000/secret")
    with caplog.at_level(logging.WARNING, logger="loom_webhook"):
        drift(loom_plugins(loom_webhook), project)
    assert f"to http://127.0.0.1:{receiver.server_port} was refused: HTTP 500" in caplog.text
    assert "secret" not in caplog.text


def test_an_unreachable_webhook_does_not_fail_the_check(loom_plugins, receiver, project, monkeypatch, caplog):
    port = receiver.server_port
    receiver.shutdown()
    receiver.server_close()
    monkeypatch.setenv("LOOM_WEBHOOK_URL", f"http://127.0.0.1:{port}/hook")
    monkeypatch.setenv("LOOM_WEBHOOK_TIMEOUT", "2")
    with caplog.at_level(logging.WARNING, logger="loom_webhook"):
        drift(loom_plugins(loom_webhook), project)
    assert f"drift notification to http://127.0.0.1:{port} failed" in caplog.text


def test_does_nothing_without_a_url(loom_plugins, receiver, project, monkeypatch):
    monkeypatch.delenv("LOOM_WEBHOOK_URL", raising=False)
    drift(loom_plugins(loom_webhook), project)
    assert receiver.received == []
