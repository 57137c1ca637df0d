"""Rollouts that cannot leave serving and the registry disagreeing, nor overwrite each other: serving changes first
and the alias follows only on success (or both roll back), a step refuses a table that changed since it read it,
a table that cannot be read is an error (never an empty table), the loop's state file is replaced atomically,
`loom models delete` refuses a served version, and the client's tokens and error messages.

The rollout tests share one served project on the session's Ray cluster; the rest need no Ray."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import QUICKSTART, make_project
from runtime import load_project
from runtime.cli import cli
from runtime.config import Project
from runtime.errors import LoomError
from runtime.retrain_loop import RetrainLoop
from runtime.serving import (ServingClient, current_table, promote, rollback, serving_token, set_canary, shutdown,
                             url_of)
from runtime.serving.routing import RoutingTable
from serving_models import register_version, registry

TOKEN_ENV, TOKEN = "LOOM_SAFETY_TOKEN", "safety-inference"
OPERATOR_ENV, OPERATOR = "LOOM_SAFETY_OPERATOR_TOKEN", "safety-operator"


# -- one served project (Ray Serve) -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, serve_port) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_ENV, TOKEN)
        mp.setenv(OPERATOR_ENV, OPERATOR)
        mp.delenv("LOOM_TOKEN", raising=False)
        root = make_project(tmp_path_factory.mktemp("safety") / "qs", port=serve_port,
                            serving={"route_prefix": "/safety", "auth_token_env": TOKEN_ENV,
                                     "operator_token_env": OPERATOR_ENV})
        cfg = yaml.safe_load((root / "loom.yaml").read_text())
        cfg["name"] = "safety-test"
        (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        for seed in (1, 2, 3):
            register_version(root, seed=seed, alias="production" if seed == 1 else None)
        yield root


@pytest.fixture(scope="module")
def served(ray_cluster, project_dir) -> Iterator[Project]:
    from runtime.serving import deploy

    project = load_project(project_dir)
    deploy(project, "churn", 1)
    yield project
    try:
        shutdown(project)
    except LoomError:  # the last test stops it itself
        pass


def loom(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def loom_fails(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def production(project_dir: Path) -> int:
    return registry(project_dir).get_version("churn", "production").version


@pytest.mark.slow
def test_nothing_running_is_the_empty_table(served: Project) -> None:
    from runtime.serving import rollout

    other = Project(root=served.root, config=served.config.model_copy(update={"name": "safety-not-deployed"}))
    assert current_table(other) == RoutingTable()
    assert rollout._target_generation(other) == 0
    table = current_table(served)
    assert table.models["churn"].primary == 1
    assert rollout._target_generation(served) == table.generation  # the controller's target agrees with replicas


@pytest.mark.slow
def test_a_table_that_cannot_be_read_is_an_error_not_an_empty_table(served: Project, project_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import serve

    from runtime.serving import deploy

    before = current_table(served)

    def unreadable(name: str):
        raise RuntimeError("replica gone")

    with monkeypatch.context() as mp:
        mp.setattr(serve, "get_app_handle", unreadable)
        with pytest.raises(LoomError, match="cannot read the routing table.*replica gone"):
            current_table(served)
        with pytest.raises(LoomError, match="replica gone"):
            deploy(served, "churn", 2)  # would have wiped nothing, but must not start from an empty table
    with monkeypatch.context() as mp:
        def broken_status():
            raise ConnectionError("controller away")

        mp.setattr(serve, "status", broken_status)
        with pytest.raises(LoomError, match="controller away"):
            current_table(served)
    assert current_table(served) == before


@pytest.mark.slow
def test_the_alias_does_not_move_when_serving_fails(served: Project, project_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.serving import deploy, rollout

    deploy(served, "churn", 2, canary=30)
    before = current_table(served)
    assert before.models["churn"].canary == 2

    def failing_apply(*args, **kwargs):
        raise LoomError("injected: the replicas could not load the version")

    monkeypatch.setattr(rollout, "_apply", failing_apply)
    with pytest.raises(LoomError, match="injected"):
        promote(served, "churn")
    assert production(project_dir) == 1
    monkeypatch.undo()
    assert current_table(served) == before


@pytest.mark.slow
def test_a_failed_alias_move_restores_the_previous_table(served: Project, project_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    before = current_table(served)
    registry_class = type(registry(project_dir))

    def failing_set_alias(self, name, alias, version):
        raise OSError("registry database is locked")

    monkeypatch.setattr(registry_class, "set_alias", failing_set_alias)
    with pytest.raises(LoomError) as err:
        promote(served, "churn")
    message = str(err.value)
    assert "pointing alias 'production' at it failed" in message and "database is locked" in message
    assert "previous routing table is served again" in message
    monkeypatch.undo()
    after = current_table(served)
    assert after.models == before.models and after.generation > before.generation  # a new generation, same routes
    assert production(project_dir) == 1
    served_now = ServingClient.for_project(served, timeout_s=10).routes()  # over HTTP, with the operator token
    assert served_now["generation"] == after.generation and served_now["models"]["churn"]["canary"] == 2
    with pytest.raises(LoomError, match="failed \\(403\\): this route needs the operator token.*LOOM_TOKEN"):
        ServingClient(url_of(served), TOKEN, timeout_s=10).routes()  # the inference token opens no operator route


@pytest.mark.slow
def test_a_stale_generation_is_refused(served: Project, project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.serving import rollout

    before = current_table(served)
    with pytest.raises(LoomError, match=f"generation {before.generation}, not {before.generation - 1}"):
        promote(served, "churn", expect_generation=before.generation - 1)
    out = loom_fails("canary", str(project_dir), "50", "--expect-generation", str(before.generation - 1))
    assert f"generation {before.generation}, not {before.generation - 1}" in out

    original = rollout._with_registry_aliases

    def racing(*args, **kwargs):  # another operator changes the canary between this step's read and its apply
        monkeypatch.setattr(rollout, "_with_registry_aliases", original)
        set_canary(served, "churn", 40)
        return original(*args, **kwargs)

    monkeypatch.setattr(rollout, "_with_registry_aliases", racing)
    with pytest.raises(LoomError, match=rf"changed while promoting .*\(generation {before.generation} -> "
                                        rf"{before.generation + 1}\).*re-run"):
        promote(served, "churn")
    raced = current_table(served)
    assert raced.generation == before.generation + 1 and raced.models["churn"].canary_percent == 40
    assert production(project_dir) == 1

    # pinned at the right generation, the step goes through: serving first, then the alias
    assert promote(served, "churn", expect_generation=raced.generation) == 2
    assert production(project_dir) == 2
    routes = current_table(served).models["churn"]
    assert routes.primary == 2 and routes.standby == (1,) and routes.aliases == {"production": 2}


@pytest.mark.slow
def test_rollback_moves_the_alias_after_serving(served: Project, project_dir: Path) -> None:
    assert rollback(served, "churn") == 1
    assert production(project_dir) == 1
    assert current_table(served).models["churn"].aliases == {"production": 1}
    assert rollback(served, "churn") == 2
    assert production(project_dir) == 2


@pytest.mark.slow
def test_models_delete_refuses_a_served_version(served: Project, project_dir: Path) -> None:
    project = str(project_dir)
    routes = current_table(served).models["churn"]
    assert routes.primary == 2 and routes.standby == (1,)
    out = loom_fails("models", "delete", "churn", "1", "--yes", "-p", project)
    assert "churn version 1 is being served" in out and "standby" in out and "--force" in out
    out = loom_fails("models", "delete", "churn", "2", "--yes", "-p", project)
    assert "version 2" in out and "primary" in out and "--force" in out
    loom("models", "delete", "churn", "3", "--yes", "-p", project)  # not served
    loom("models", "delete", "churn", "1", "--yes", "--force", "-p", project)
    assert [v.version for v in registry(project_dir).list_versions("churn")] == [2]
    shutdown(served)
    assert current_table(served) == RoutingTable()
    loom("models", "delete", "churn", "2", "--yes", "-p", project)  # nothing runs: allowed
    assert registry(project_dir).list_versions("churn") == []


# -- the loop's state file ----------------------------------------------------------------------------------------


def _loop(tmp_path: Path) -> RetrainLoop:
    loop = object.__new__(RetrainLoop)  # the state file alone: no pipeline, no Ray
    loop.state_file = tmp_path / "loop" / "churn.json"
    return loop


def test_the_loop_state_is_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = _loop(tmp_path)
    loop._save({"phase": "canary", "version": 2})
    assert loop.state() == {"phase": "canary", "version": 2}

    def crash(fd):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "fsync", crash)  # fails after the new content was written to the temporary file
    with pytest.raises(OSError, match="disk went away"):
        loop._save({"phase": "idle", "last": 2, "padding": "x" * 100_000})
    monkeypatch.undo()
    assert loop.state() == {"phase": "canary", "version": 2}
    assert [p.name for p in loop.state_file.parent.iterdir()] == ["churn.json"]  # no temporary file left

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed before rename")))
    with pytest.raises(OSError, match="killed"):
        loop._save({"phase": "idle"})
    monkeypatch.setattr(os, "replace", real_replace)
    assert loop.state() == {"phase": "canary", "version": 2}
    loop._save({"phase": "idle", "last": 2})
    assert loop.state() == {"phase": "idle", "last": 2}


def test_a_corrupt_loop_state_is_a_short_error(tmp_path: Path) -> None:
    loop = _loop(tmp_path)
    loop.state_file.parent.mkdir(parents=True)
    loop.state_file.write_text('{"phase": "can')
    with pytest.raises(LoomError, match="not JSON"):
        loop.state()


# -- tokens -------------------------------------------------------------------------------------------------------


def _project(tmp_path: Path, **serving) -> Project:
    cfg = yaml.safe_load((QUICKSTART / "loom.yaml").read_text())
    cfg["serving"].update(serving)
    root = tmp_path / "proj"
    root.mkdir(exist_ok=True)
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_project(root)


def test_operator_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.serving.client import operator_token, served_tokens

    for var in ("LOOM_TOKEN", "INFER_T", "OPS_T"):
        monkeypatch.delenv(var, raising=False)
    open_ = _project(tmp_path)
    assert operator_token(open_) is None and serving_token(open_) is None
    assert ServingClient.for_project(open_).token is None

    both = _project(tmp_path, auth_token_env="INFER_T", operator_token_env="OPS_T")
    monkeypatch.setenv("INFER_T", "infer")
    with pytest.raises(LoomError, match="serving.operator_token_env is 'OPS_T'"):
        operator_token(both)  # configured but empty: never falls back silently
    monkeypatch.setenv("OPS_T", "ops")
    assert operator_token(both) == "ops" and serving_token(both) == "infer"
    assert ServingClient.for_project(both).token == "ops"
    assert served_tokens(both) == ("infer", "ops")

    inference_only = _project(tmp_path, auth_token_env="INFER_T")
    assert operator_token(inference_only) == "infer" and served_tokens(inference_only) == ("infer", None)

    monkeypatch.setenv("LOOM_TOKEN", "override")
    assert operator_token(both) == "override" and serving_token(both) == "override"
    assert ServingClient.for_project(both).token == "override"
    assert operator_token(open_) == "override"
    assert served_tokens(both) == ("infer", "ops")  # a client's override never becomes the server's token
    monkeypatch.setenv("LOOM_TOKEN", "")
    assert operator_token(both) == "ops"  # empty: not set

    # a project that names LOOM_TOKEN as its inference variable keeps its operator token first
    named = _project(tmp_path, auth_token_env="LOOM_TOKEN", operator_token_env="OPS_T")
    monkeypatch.setenv("LOOM_TOKEN", "infer-via-loom-token")
    assert operator_token(named) == "ops" and serving_token(named) == "infer-via-loom-token"

    monkeypatch.delenv("INFER_T")
    monkeypatch.delenv("LOOM_TOKEN")
    with pytest.raises(LoomError, match="serving.auth_token_env is 'INFER_T'"):
        serving_token(both)


# -- the client's errors ------------------------------------------------------------------------------------------


class _Canned(BaseHTTPRequestHandler):
    """Answers every path under ``/<kind>/`` the same way."""

    answers: dict[str, tuple[int, str, bytes]] = {
        "html": (502, "text/html", b"<html><body><h1>502 Bad Gateway</h1>The server returned an invalid "
                                   b"response.</body></html>"),
        "empty": (200, "application/json", b""),
        "empty-error": (500, "text/plain", b""),
        "page": (200, "text/html", b"<html><body>" + b"Welcome! " * 200 + b"</body></html>"),
        "list": (200, "application/json", b"[1, 2]"),
        "auth": (401, "application/json", b'{"error": "missing or wrong bearer token"}'),
        "gone": (404, "text/plain", b"Path not found"),
        "odd-report": (200, "application/json", b'{"rows": 3}'),
    }
    seen: list[str | None] = []

    def do_GET(self) -> None:
        _Canned.seen.append(self.headers.get("Authorization"))
        status, kind, body = self.answers.get(self.path.split("/")[1], (404, "text/plain", b""))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def canned() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(("prefix", "message"), [
    ("html", "failed (502): 502 Bad Gateway The server returned an invalid response."),
    ("empty", "answered an empty body"),
    ("empty-error", "failed (500)"),
    ("page", "answered something that is not JSON (Welcome! Welcome!"),
    ("list", "answered no routing table"),
    ("auth", "missing or wrong bearer token; set the token's environment variable"),
])
def test_client_errors_are_short(canned: str, prefix: str, message: str) -> None:
    client = ServingClient(f"{canned}/{prefix}", "tok", timeout_s=5)
    with pytest.raises(LoomError) as err:
        client.routes()
    assert message in str(err.value)
    assert len(str(err.value)) < 300 and "<" not in str(err.value)
    assert _Canned.seen[-1] == "Bearer tok"


def test_client_running_routes_and_unreadable_reports(canned: str) -> None:
    assert ServingClient(f"{canned}/gone").running_routes() is None  # the proxy knows no application there
    with socket_closed() as url:
        assert ServingClient(url, timeout_s=5).running_routes() is None  # nothing listens
    with pytest.raises(LoomError, match="failed \\(502\\)"):
        ServingClient(f"{canned}/html").running_routes()  # something answers: cannot tell what it serves
    with pytest.raises(LoomError, match="answered no drift report"):
        ServingClient(f"{canned}/odd-report").drift("churn")


class socket_closed:
    """A URL on which nothing listens."""

    def __enter__(self) -> str:
        from conftest import free_port

        return f"http://127.0.0.1:{free_port()}"

    def __exit__(self, *exc) -> None:
        pass


def test_monitor_reports_a_broken_server_in_one_line(canned: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["monitor", "churn", "-p", str(tmp_path), "--url", f"{canned}/html"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "502 Bad Gateway" in result.output
    for kind, message in (("empty", "empty body"), ("page", "not JSON"), ("odd-report", "no drift report")):
        result = CliRunner().invoke(cli, ["monitor", "churn", "-p", str(tmp_path), "--url", f"{canned}/{kind}"])
        text = " ".join(result.output.split())
        assert result.exit_code == 1 and "Traceback" not in text and message in text, kind

