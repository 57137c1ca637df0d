"""``loom models …`` and ``loom runs …`` on a project's real registry: tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from runtime import Pipeline
from runtime.cli import cli

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart" / "loom.yaml"


@pytest.fixture(autouse=True)
def _only_registry_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_PLUGINS", "local_registry,mlflow")
    monkeypatch.setenv("COLUMNS", "200")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _project(root: Path, registry: dict | None = None, port: int | None = None) -> Path:
    cfg = yaml.safe_load(QUICKSTART.read_text())
    if registry is not None:
        cfg["registry"] = registry
    cfg["serving"]["port"] = port or _free_port()  # nothing serves it: `models delete` finds nothing running
    root.mkdir(parents=True, exist_ok=True)
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose local registry holds two versions of ``churn``, each trained by a tracked run."""
    root = _project(tmp_path / "proj")
    reg = Pipeline(root).registry
    for i, (lr, auc) in enumerate(((0.01, 0.71), (0.003, 0.83)), start=1):
        run = reg.start_run("churn-quickstart", name=f"train-{i}", params={"learning_rate": lr, "epochs": 2})
        for epoch in (1, 2):
            reg.log_metrics(run.id, {"val_auc": auc - 0.1 / epoch, "train_loss": 1 / epoch}, step=epoch)
        reg.log_metrics(run.id, {"val_auc": auc}, step=3)
        reg.end_run(run.id)
        reg.register("churn", {"model.safetensors": b"w%d" % i, "model.json": b"{}"}, params={"learning_rate": lr},
                     metrics={"val_auc": auc}, run_id=run.id, alias="production", description=f"try {i}",
                     lineage={"data": {"source": "csv://data/customers.csv", "fingerprint": "ab" * 32, "rows": 10},
                              "code": {"project": "churn-quickstart", "git_commit": "0123abc"}})
    return root


def _loom(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_models_list_versions_and_show(project: Path) -> None:
    table = _loom("models", "list", "-p", str(project))
    assert "churn" in table and "production → 2" in table
    rows = json.loads(_loom("models", "list", "-p", str(project), "--json"))
    assert rows[0]["name"] == "churn" and rows[0]["versions"] == 2 and rows[0]["aliases"] == {"production": 2}
    versions = json.loads(_loom("models", "versions", "churn", "-p", str(project), "--json"))
    assert [(v["version"], v["aliases"], v["description"]) for v in versions] == [
        (1, [], "try 1"), (2, ["production"], "try 2")]
    assert "try 1" in _loom("models", "versions", "churn", "-p", str(project))
    shown = json.loads(_loom("models", "show", "churn", "production", "-p", str(project), "--json"))
    assert shown["version"] == 2 and shown["run_id"] == versions[1]["run_id"]
    assert shown["lineage"]["data"]["fingerprint"] == "ab" * 32
    text = _loom("models", "show", "churn", "-p", str(project))
    assert "churn version 2" in text and "csv://data/customers.csv" in text and "0123abc" in text


def test_models_alias_and_delete(project: Path) -> None:
    assert "churn@staging → version 1" in _loom("models", "alias", "churn", "staging", "1", "-p", str(project))
    assert json.loads(_loom("models", "show", "churn", "staging", "-p", str(project), "--json"))["version"] == 1
    _loom("models", "alias", "churn", "staging", "--delete", "-p", str(project))
    refused = CliRunner().invoke(cli, ["models", "delete", "churn", "2", "-p", str(project)], input="n\n")
    assert refused.exit_code == 1 and "is production" in refused.output
    _loom("models", "delete", "churn", "1", "--yes", "-p", str(project))
    versions = json.loads(_loom("models", "versions", "churn", "-p", str(project), "--json"))
    assert [v["version"] for v in versions] == [2]


class _Routes(BaseHTTPRequestHandler):
    """A served application's ``GET /models``: ``churn`` v2 primary, v1 canary; anything else: a 500 page."""

    table = {"generation": 3, "models": {"churn": {"primary": 2, "canary": 1, "canary_percent": 10, "aliases": {},
                                                   "standby": []}}}
    broken = False

    def do_GET(self) -> None:
        ok = self.path == "/models" and not _Routes.broken
        body = json.dumps(self.table).encode() if ok else b"<html><h1>500 Internal Server Error</h1></html>"
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Routes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    _Routes.broken = False


def test_models_delete_refuses_a_served_version_unless_forced(project: Path, served_port: int) -> None:
    cfg = yaml.safe_load((project / "loom.yaml").read_text())
    cfg["serving"]["port"] = served_port
    (project / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    refused = CliRunner().invoke(cli, ["models", "delete", "churn", "1", "--yes", "-p", str(project)])
    text = " ".join(refused.output.split())
    assert refused.exit_code == 1 and "Traceback" not in text
    assert "churn version 1 is being served" in text and "canary (10% of traffic)" in text and "--force" in text
    _Routes.broken = True  # cannot tell: refused too
    refused = CliRunner().invoke(cli, ["models", "delete", "churn", "1", "--yes", "-p", str(project)])
    assert refused.exit_code == 1 and "cannot tell whether churn version 1 is being served" in refused.output
    _loom("models", "delete", "churn", "1", "--yes", "--force", "-p", str(project))
    assert [v["version"] for v in json.loads(_loom("models", "versions", "churn", "-p", str(project), "--json"))] == [2]


def test_errors_are_short_messages(project: Path) -> None:
    for args, message in ((["models", "show", "nope"], "no model named 'nope'"),
                          (["models", "alias", "churn", "latest", "1"], "reserved"),
                          (["models", "alias", "churn", "x", "9"], "no version 9"),
                          (["runs", "show", "0" * 32], "no run")):
        result = CliRunner().invoke(cli, [*args, "-p", str(project)])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output


def test_runs_list_show_and_compare(project: Path) -> None:
    runs = json.loads(_loom("runs", "list", "-p", str(project), "--json"))
    assert [r["name"] for r in runs] == ["train-2", "train-1"]
    assert all(r["status"] == "finished" and r["duration"] >= 0 for r in runs)
    shown = json.loads(_loom("runs", "show", runs[0]["id"], "-p", str(project), "--json"))
    assert [(p["step"], p["value"]) for p in shown["history"]["train_loss"]] == [(1, 1.0), (2, 0.5)]
    assert shown["metrics"]["val_auc"] == 0.83
    text = _loom("runs", "show", runs[0]["id"], "-p", str(project))
    assert "train-2" in text and "learning_rate" in text
    compared = json.loads(_loom("runs", "compare", runs[1]["id"], runs[0]["id"], "-p", str(project), "--json"))
    assert compared["differing_params"] == ["learning_rate"]
    assert compared["metrics"]["val_auc"] == [0.71, 0.83]
    assert "learning_rate" in _loom("runs", "compare", runs[1]["id"], runs[0]["id"], "-p", str(project))
    assert _loom("runs", "list", "-e", "other", "-p", str(project), "--json").strip() == "[]"


def test_json_output_is_plain_json_for_scripts(project: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "models", "versions", "churn", "-p", str(project),
                          "--json"], capture_output=True, text=True, check=True)
    assert [v["version"] for v in json.loads(out.stdout)] == [1, 2]


def test_one_line_selects_mlflow(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    root = _project(tmp_path / "proj", registry={"kind": "mlflow"})
    reg = Pipeline(root).registry
    run = reg.start_run("churn-quickstart", name="train", params={"epochs": 2})
    reg.end_run(run.id)
    reg.register("churn", {"model.safetensors": b"w"}, alias="production", run_id=run.id)
    assert (root / ".loom" / "mlflow" / "mlflow.db").is_file()
    rows = json.loads(_loom("models", "list", "-p", str(root), "--json"))
    assert rows[0]["aliases"] == {"production": 1}
    assert [r["id"] for r in json.loads(_loom("runs", "list", "-p", str(root), "--json"))] == [run.id]
