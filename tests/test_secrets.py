"""Secrets in the project file: ``${VAR}`` interpolation of ``loom.yaml``, and redaction of passwords and credential
parameters wherever a URI is printed, logged, stored in lineage or put in an error (``runtime.secrets``).

The end-to-end cases run the ``loom`` command line in-process (click's runner), so that its output, every log
record (``caplog``, with plugin tracing on) and the lineage of a registered version can all be searched for the
password. They also run against a real PostgreSQL server: the session's ``postgres_url`` (``LOOM_TEST_POSTGRES_URL``,
or a private server the run starts, tests/services.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from runtime import ConfigError, DataValidationError, LoomError, load_project, redact, redact_data
from runtime.secrets import interpolate, redact_error

PASSWORD = "Pa55w0rd-xyzzy"
QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"

# -- ${VAR} interpolation ------------------------------------------------------------------------------------------

PROJECT = """\
name: secrets
data:
  source: ${SOURCE:-csv://data/x.csv}
  options: {query: "SELECT '$${not_a_variable}'"}
  entity: id
  timestamp: t
  label: y
  columns:
    id: {type: int}
    t: {type: timestamp}
    x: {type: float}
    y: {type: bool}
  bad_rows: {path: "${QUARANTINE:-quarantine}"}
model: {name: m}
training:
  learning_rate: ${LR:-0.003}
  use_gpu: ${USE_GPU:-false}
serving:
  host: ${HOST:-127.0.0.1}
  port: ${PORT:-8000}
monitoring:
  retrain:
    enabled: ${RETRAIN:-false}   # unquoted in block style; in a {flow: mapping} YAML needs quotes around it
"""


def _project(tmp_path: Path, text: str = PROJECT):
    (tmp_path / "loom.yaml").write_text(text)
    return load_project(tmp_path)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("SOURCE", "QUARANTINE", "LR", "USE_GPU", "HOST", "PORT", "RETRAIN", "DB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_apply_when_variables_are_unset_or_empty(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("HOST", "")  # empty counts as unset, as in docker compose's ${VAR:-default}
    cfg = _project(tmp_path).config
    assert cfg.data.source == "csv://data/x.csv" and cfg.serving.host == "127.0.0.1"
    assert cfg.data.options == {"query": "SELECT '${not_a_variable}'"}  # $${ is a literal ${


def test_set_variables_replace_their_references(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("SOURCE", f"postgresql://loom:{PASSWORD}@db:5432/loom")
    env.setenv("HOST", "0.0.0.0")
    cfg = _project(tmp_path).config
    assert cfg.data.source == f"postgresql://loom:{PASSWORD}@db:5432/loom" and cfg.serving.host == "0.0.0.0"


def test_an_unset_variable_without_default_names_the_variable_and_the_key(env: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    text = PROJECT.replace("${SOURCE:-csv://data/x.csv}", "postgresql://loom:${DB_PASSWORD}@db/loom")
    with pytest.raises(ConfigError) as err:
        _project(tmp_path, text)
    message = str(err.value)
    assert "DB_PASSWORD" in message and "data.source" in message and "loom.yaml" in message
    assert "${DB_PASSWORD:-" in message  # says how to give a default


def test_a_malformed_reference_is_an_error(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"serving\.host: malformed variable '\$\{1HOST\}'"):
        _project(tmp_path, PROJECT.replace("${HOST:-127.0.0.1}", "${1HOST}"))


def test_values_are_never_parsed_as_yaml(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    special = "q: [1, 2] # {not: yaml} &anchor *alias !tag | >"
    env.setenv("QUARANTINE", special)
    env.setenv("SOURCE", "${QUARANTINE}")  # nor interpolated again
    cfg = _project(tmp_path).config
    assert cfg.data.bad_rows.path == special and cfg.data.source == "${QUARANTINE}"


def test_numbers_and_booleans_validate_in_typed_fields(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``port: ${PORT:-8000}`` is the string "8000" after interpolation: the schema turns it into the int, as
    docker compose users expect; a value that is not a number is still refused, naming the key."""
    cfg = _project(tmp_path).config
    assert (cfg.serving.port, cfg.training.learning_rate, cfg.training.use_gpu) == (8000, 0.003, False)
    assert type(cfg.serving.port) is int and type(cfg.training.learning_rate) is float
    assert cfg.monitoring.retrain.enabled is False
    env.setenv("PORT", "9001")
    env.setenv("LR", "1e-2")
    env.setenv("USE_GPU", "true")
    env.setenv("RETRAIN", "true")
    cfg = _project(tmp_path).config
    assert (cfg.serving.port, cfg.training.learning_rate, cfg.training.use_gpu) == (9001, 0.01, True)
    assert cfg.monitoring.retrain.enabled is True
    env.setenv("USE_GPU", "auto")
    assert _project(tmp_path).config.training.use_gpu == "auto"
    env.setenv("PORT", "eighty")
    with pytest.raises(ConfigError, match=r"serving\.port"):
        _project(tmp_path)


def test_interpolate_walks_lists_and_leaves_other_values_alone() -> None:
    data = {"a": ["${X}", 3, None, {"b": "$${X} ${Y:-y}"}], "c": True}
    assert interpolate(data, {"X": "x"}) == {"a": ["x", 3, None, {"b": "${X} y"}], "c": True}
    with pytest.raises(ConfigError, match=r"a\[3\]\.b uses \$\{Y\}"):
        interpolate({"a": [1, 2, 3, {"b": "${Y}"}]}, {})


# -- redaction ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, shown", [
    (f"postgresql://loom:{PASSWORD}@db:5432/loom", "postgresql://loom:***@db:5432/loom"),
    (f"postgresql+psycopg://loom:{PASSWORD}@db/loom?sslmode=require",
     "postgresql+psycopg://loom:***@db/loom?sslmode=require"),
    ("mysql://u:p@ss:w0rd@host/db", "mysql://u:***@host/db"),  # an unencoded '@' or ':' in the password
    (f"redis://:{PASSWORD}@cache:6379/0", "redis://:***@cache:6379/0"),
    (f"data source 'postgresql://loom:{PASSWORD}@db/loom': refused",
     "data source 'postgresql://loom:***@db/loom': refused"),
    (f"https://b.s3.amazonaws.com/x.csv?X-Amz-Credential=AKIA&X-Amz-Signature={PASSWORD}&v=1",
     "https://b.s3.amazonaws.com/x.csv?X-Amz-Credential=***&X-Amz-Signature=***&v=1"),
    (f"http://mlflow:5000/api?token={PASSWORD}#top", "http://mlflow:5000/api?token=***#top"),
    ("sqlite:///data/app.db", "sqlite:///data/app.db"),
    ("postgresql://loom@db:5432/loom", "postgresql://loom@db:5432/loom"),
    ("http://127.0.0.1:8265", "http://127.0.0.1:8265"),
    ("http://host:8080/path?q=a@b", "http://host:8080/path?q=a@b"),
    ("user@example.com wrote key=value", "user@example.com wrote key=value"),
])
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown and PASSWORD not in redact(text)


def test_redact_data_masks_credential_keys_and_redacts_every_string() -> None:
    data = {"tracking_uri": f"http://u:{PASSWORD}@mlflow", "password": PASSWORD, "api_token": PASSWORD,
            "password_env": "DB_PASSWORD", "auth_token_env": "TOKEN", "key": "sha256:abc", "empty_token": "",
            "nested": [{"secret": PASSWORD}, (f"s3://a:{PASSWORD}@b/c",)]}
    assert redact_data(data) == {
        "tracking_uri": "http://u:***@mlflow", "password": "***", "api_token": "***", "password_env": "DB_PASSWORD",
        "auth_token_env": "TOKEN", "key": "sha256:abc", "empty_token": "",
        "nested": [{"secret": "***"}, ("s3://a:***@b/c",)]}
    columns = {"token": {"type": "string"}, "uri": f"sqlite://u:{PASSWORD}@/x"}
    assert redact_data(columns, keys=False) == {"token": {"type": "string"}, "uri": "sqlite://u:***@/x"}


def test_redact_error_rewrites_the_message_in_place() -> None:
    err = DataValidationError(f"postgresql://u:{PASSWORD}@db/x", [f"postgresql://u:{PASSWORD}@db/x: column 'a'"])
    try:
        raise err
    except DataValidationError as caught:
        assert redact_error(caught) is err and err.__traceback__ is not None
    assert PASSWORD not in str(err) and PASSWORD not in err.source and PASSWORD not in err.problems[0]
    other = ConnectionError(111, f"cannot reach ray://u:{PASSWORD}@head:10001", f"s3://k:{PASSWORD}@b/x")
    assert PASSWORD not in str(redact_error(other)) and other.errno == 111 and "ray://u:***@head" in str(other)
    plain = ValueError(f"bad url http://mlflow/?token={PASSWORD}", 3)
    assert PASSWORD not in str(redact_error(plain)) and plain.args[1] == 3


# -- the lineage key --------------------------------------------------------------------------------------------


def _settings_before_redaction(project) -> dict:
    """How runtime.lineage dumped the settings before secrets were redacted."""
    cfg = project.config
    settings = cfg.model_dump(mode="json", exclude={"serving", "monitoring", "state_dir"})
    settings["reference_rows"] = cfg.monitoring.reference_rows
    return settings


def test_lineage_key_ignores_passwords_and_is_unchanged_without_them(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runtime import lineage

    quickstart = load_project(QUICKSTART)
    assert lineage._settings(quickstart) == _settings_before_redaction(quickstart)  # keys made before still match
    text = PROJECT.replace("model: {name: m}", "model: {name: m}\nregistry:\n  options: {token: '${TOKEN:-t}'}")

    def key(password: str, host: str = "db", token: str = "t") -> str:
        env.setenv("SOURCE", f"postgresql://loom:{password}@{host}/loom")
        env.setenv("TOKEN", token)
        project = _project(tmp_path, text)
        return lineage.lineage_key(project, {project.config.data.source: "sha256:aaaa"})

    assert key(PASSWORD) == key("another-password") == key(PASSWORD, token="another-token")
    assert key(PASSWORD, host="elsewhere") != key(PASSWORD)


# -- the command line, the pipeline and lineage -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quickstart_data(root: Path) -> pd.DataFrame:
    shutil.copytree(QUICKSTART, root, ignore=shutil.ignore_patterns("data", ".loom", "__pycache__"))
    subprocess.run([sys.executable, str(root / "generate_data.py"), "--rows", "300"], check=True, cwd=root)
    return pd.read_csv(root / "data" / "customers.csv")


def _configure(root: Path, source: str, options: dict | None = None, *, plugins: list[str] = ()) -> None:
    """Point the project's data section at ``source`` (written as is: ``${DB_PASSWORD}`` stays a reference)."""
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["data"]["source"] = source
    cfg["data"]["options"] = options or {}
    cfg["data"].pop("generate", None)
    cfg["serving"]["port"] = _free_port()
    cfg["plugins"] = list(plugins)
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture
def loom(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """``loom(*args)``: the command line in-process, with plugin tracing on and wide consoles (so no URL is
    wrapped across lines); returns (exit code, output with stderr)."""
    from runtime.cli import _common, cli

    monkeypatch.setenv("LOOM_TRACE_PLUGINS", "1")
    monkeypatch.setenv("LOOM_PLUGINS", "files,sql,local_features,local_registry")
    monkeypatch.setattr(_common.console, "width", 500)
    monkeypatch.setattr(_common.out, "width", 500)
    # Loom's loggers at every level, the rest from INFO: a library's DEBUG records (fsspec's memory filesystem logs
    # each path it opens) are its own business, and off unless someone turns them on.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="loom")

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output

    return run


def _no_password(texts: list[str], caplog: pytest.LogCaptureFixture, password: str = PASSWORD) -> None:
    for text in texts:
        assert password not in text
    logged = [r.getMessage() for r in caplog.records]
    assert logged, "plugin tracing logged nothing: the log was not searched"
    assert not [m for m in logged if password in m]


def _register(root: Path) -> dict:
    """Ingest, write features and register a version (a stand-in for training: no Ray needed); its lineage."""
    from runtime import Pipeline
    from runtime.pipeline import Trained

    pipe = Pipeline(root)
    data = pipe.ingest()
    view = pipe.write_features(data)
    trained = Trained(artifacts={"model.json": b"{}"}, params={"hidden": [64, 32]}, metrics={}, history=[],
                      train_rows=len(data.frame), seconds=0.0)
    version = pipe.register(trained, data, view)
    return pipe.registry.get_version(version.name, version.version).lineage


def test_a_sqlite_source_is_shown_and_stored_as_written(tmp_path: Path, loom, caplog) -> None:
    root = tmp_path / "proj"
    frame = _quickstart_data(root)
    with sqlite3.connect(root / "data" / "customers.db") as conn:
        frame.to_sql("customers", conn, index=False)
    _configure(root, "sqlite:///data/customers.db", {"table": "customers"})
    code, output = loom("validate", str(root))
    assert code == 0, output
    assert "opening sqlite:///data/customers.db" in output and f"{len(frame):,} rows valid" in output
    lineage = _register(root)
    assert lineage["data"]["source"] == "sqlite:///data/customers.db"
    assert any("sqlite:///data/customers.db" in r.getMessage() for r in caplog.records)


def _memory_source(root: Path, frame: pd.DataFrame) -> str:
    """A files source whose URI carries a password in its user info (an in-memory filesystem, so no server)."""
    import fsspec

    with fsspec.filesystem("memory").open(f"memory://loom:{PASSWORD}@lake/customers.csv", "w") as f:
        frame.to_csv(f, index=False)
    return "memory://loom:${DB_PASSWORD}@lake/customers.csv"


def _postgres_source(root: Path, frame: pd.DataFrame, url: str) -> str:
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    assert parsed.password, "LOOM_TEST_POSTGRES_URL names no password: unset it, and the tests start a server with one"
    engine = sa.create_engine(parsed.set(drivername="postgresql+psycopg"))
    table = f"customers_{os.getpid()}"
    frame.assign(event_time=pd.to_datetime(frame["event_time"], utc=True)).to_sql(table, engine, index=False,
                                                                                 if_exists="replace")
    engine.dispose()
    (root / "table").write_text(table)
    return parsed.set(password="PASSWORD_HERE").render_as_string(hide_password=False).replace(
        "PASSWORD_HERE", "${DB_PASSWORD}")


@pytest.mark.parametrize("kind", ["memory", "postgresql"])
def test_a_password_in_the_source_is_never_shown_logged_or_stored(kind: str, tmp_path: Path, loom, caplog,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  request: pytest.FixtureRequest) -> None:
    root = tmp_path / "proj"
    frame = _quickstart_data(root)
    password = PASSWORD
    if kind == "memory":
        source, options = _memory_source(root, frame), {}
    else:
        import sqlalchemy as sa

        url = request.getfixturevalue("postgres_url")
        source = _postgres_source(root, frame, url)
        password = sa.engine.make_url(url).password
        options = {"table": (root / "table").read_text()}
    monkeypatch.setenv("DB_PASSWORD", password)
    _configure(root, source, options)
    assert password in load_project(root).config.data.source  # interpolated: the plugin gets the real one
    if password in redact(load_project(root).config.data.source):  # a password that is also the user name (loom:loom)
        password = f":{password}@"

    code, validated = loom("validate", str(root))
    assert code == 0, validated
    assert f"{len(frame):,} rows valid" in validated and ":***@" in validated  # the source is shown, redacted
    code, listed = loom("features", "list", "-p", str(root))
    assert code == 0 and ":***@" in listed, listed
    lineage = _register(root)
    assert lineage["data"]["source"] == redact(load_project(root).config.data.source)
    _no_password([validated, listed, repr(lineage)], caplog, password)

    # a new password for the same data is the same lineage: the version is found again, nothing to retrain
    from runtime import Pipeline
    from runtime.lineage import find_version

    if kind == "memory":
        import fsspec

        memory = fsspec.filesystem("memory")
        memory.copy(f"memory://loom:{PASSWORD}@lake/customers.csv", "memory://loom:rotated-1234@lake/customers.csv")
        monkeypatch.setenv("DB_PASSWORD", "rotated-1234")
        pipe = Pipeline(root)
        assert find_version(pipe.registry, "churn", pipe.lineage_key(pipe.ingest())) is not None


@pytest.mark.parametrize("kind", ["closed-port", "wrong-password", "unknown-scheme"])
def test_connection_errors_do_not_show_the_password(kind: str, tmp_path: Path, loom, caplog,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    request: pytest.FixtureRequest) -> None:
    """A wrong password to PostgreSQL (with a server), a server that is not there, and a driver Loom has no
    plugin for: the error says what went wrong, with the URL redacted."""
    import sqlalchemy as sa

    root = tmp_path / "proj"
    _quickstart_data(root)
    if kind == "wrong-password":
        url = sa.engine.make_url(request.getfixturevalue("postgres_url"))
        source = url.set(password="PASSWORD_HERE").render_as_string(hide_password=False)
        expected = "password authentication failed"
    elif kind == "closed-port":
        source = f"postgresql://loom:PASSWORD_HERE@127.0.0.1:{_free_port()}/loom"
        expected = "connection failed"
    else:
        source = "mysql://loom:PASSWORD_HERE@127.0.0.1/loom"
        expected = "no data-source plugin handles mysql://"
    monkeypatch.setenv("DB_PASSWORD", PASSWORD)
    _configure(root, source.replace("PASSWORD_HERE", "${DB_PASSWORD}"), {"query": "SELECT 1"})
    code, output = loom("validate", str(root))
    assert code == 1 and expected in output, output
    assert ":***@" in output or kind == "unknown-scheme"
    _no_password([output], caplog)


LEAKY = '''\
"""A careless third-party data source: its errors quote the URI it was given, password and all."""
from runtime import LoomError, hookimpl


def _open(uri, *, base_dir, options):
    if options.get("fail") == "loom":
        raise LoomError(f"cannot open {uri}")
    raise ValueError(f"cannot reach {uri}")


@hookimpl
def loom_register_data_sources(register):
    register("leaky", _open)
'''


@pytest.mark.parametrize("fail", ["loom", "other"])
def test_errors_of_third_party_plugins_are_redacted(fail: str, tmp_path: Path, loom, caplog,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "proj"
    _quickstart_data(root)
    (root / "leaky.py").write_text(LEAKY)
    monkeypatch.setenv("DB_PASSWORD", PASSWORD)
    _configure(root, "leaky://loom:${DB_PASSWORD}@db/loom?token=${DB_PASSWORD}", {"fail": fail}, plugins=["leaky"])
    code, output = loom("validate", str(root))
    assert code == 1 and "cannot " in output and "leaky://loom:***@db/loom?token=***" in output, output
    _no_password([output], caplog)
    monkeypatch.syspath_prepend(str(root))
    from runtime import Pipeline

    with pytest.raises(LoomError) as err:
        Pipeline(root).ingest()
    assert PASSWORD not in str(err.value)
    assert err.value.__cause__ is None or PASSWORD not in str(err.value.__cause__)


def test_validation_names_its_source_redacted() -> None:
    """Every problem line starts with the source: validation redacts it, whoever calls it."""
    from runtime import ColumnSpec, validate_frame

    with pytest.raises(DataValidationError) as err:
        validate_frame(pd.DataFrame({"a": ["x"]}), {"a": ColumnSpec(type="int")},
                       source=f"postgresql://u:{PASSWORD}@db/x")
    assert PASSWORD not in str(err.value) and "postgresql://u:***@db/x" in str(err.value)
