"""Loom's SQL data sources, through SQLAlchemy: ``sqlite://`` (embedded, the default) and ``postgresql://``.

A first-party plugin that uses only the public ``runtime`` API, exactly as a third-party plugin would.

URIs are SQLAlchemy URLs: ``sqlite:///data/app.db`` (a path relative to the project; ``sqlite:////abs/app.db`` for an
absolute one) and ``postgresql://user@host:5432/dbname`` (driver: psycopg 3). Options (``data.options``):

* ``table`` (with optional ``schema``) or ``query`` (one ``SELECT``): what to read; exactly one of them.
* ``password_env``: the name of an environment variable holding the password, so none is written in ``loom.yaml``.

Databases are opened read-only (SQLite ``mode=ro``, PostgreSQL read-only transactions), rows stream in batches
through a server-side cursor, and the fingerprint is a content hash of the rows read (see ``_hash``). Incremental
reads: ``source.since(column, watermark)`` reads only rows whose ``column`` is after ``watermark``; on SQLite,
timestamps are expected as ISO-8601 text (what SQLAlchemy and pandas write), compared as instants.

SQLAlchemy and psycopg come with the ``sql`` extra (``pip install 'loom-mlops[sql]'``); without them the plugin
still loads and says what to install when a SQL source is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtime import ConfigError, NotFoundError, Register, hookimpl, resolve_path

__all__ = ["loom_register_data_sources", "open_source"]

#: Options this source accepts.
OPTIONS = ("table", "schema", "query", "password_env")
_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


def _check_options(uri: str, options: dict[str, Any]) -> dict[str, str]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"data source {uri}: unknown option(s) {', '.join(unknown)} (accepted: {', '.join(OPTIONS)})")
    for key, value in options.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"data source {uri}: option {key!r} must be a non-empty string, got {value!r}")
    if ("table" in options) == ("query" in options):
        raise ConfigError(f"data source {uri}: set exactly one of the options 'table' and 'query'")
    if "schema" in options and "table" not in options:
        raise ConfigError(f"data source {uri}: option 'schema' goes with 'table'")
    return dict(options)


def open_source(uri: str, *, base_dir: Path, options: dict[str, Any]) -> Any:
    """Open ``uri`` (a SQLAlchemy URL) as a :class:`runtime.DataSource`; nothing is read yet."""
    try:
        import sqlalchemy as sa
    except ImportError:
        raise ConfigError(f"data source {uri.split('://', 1)[0]}:// needs SQLAlchemy: "
                          "pip install 'loom-mlops[sql]'") from None
    from ._source import SqlSource

    opts = _check_options(uri, options)
    try:
        url = sa.engine.make_url(uri)
    except sa.exc.ArgumentError as err:
        raise ConfigError(f"data source {uri}: not a database URL: {err}") from None
    url = url.set(drivername=_SCHEMES[url.get_backend_name()])
    if "password_env" in opts:
        name = opts["password_env"]
        if name not in os.environ:
            raise ConfigError(f"data source {url.render_as_string()}: environment variable {name} (password_env) "
                              "is not set")
        url = url.set(password=os.environ[name])
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ConfigError(f"data source {uri}: name a database file, e.g. sqlite:///data/app.db")
        path = resolve_path(url.database, Path(base_dir)).resolve()
        if not path.is_file():
            raise NotFoundError(f"data source {uri}: no SQLite database at {path}")
        url = url.set(database=f"file:{path}", query={"mode": "ro", "uri": "true"})
        kwargs["poolclass"] = sa.pool.NullPool
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError(f"data source {uri}: PostgreSQL needs psycopg: pip install 'loom-mlops[sql]'") from None
        kwargs["connect_args"] = {"options": "-c timezone=UTC", "connect_timeout": 10}
        kwargs["pool_pre_ping"] = True
    engine = sa.create_engine(url, **kwargs)
    quote = engine.dialect.identifier_preparer.quote
    if "table" in opts:
        table = quote(opts["table"]) if "schema" not in opts else f"{quote(opts['schema'])}.{quote(opts['table'])}"
        sql = f"SELECT * FROM {table}"
    else:
        sql = opts["query"].strip().rstrip(";").strip()
    shown = sa.engine.make_url(uri).render_as_string(hide_password=True)
    return SqlSource(uri=uri, engine=engine, sql=sql, shown=shown)


def _factory(uri: str, *, base_dir: Path, options: dict[str, Any]) -> Any:
    return open_source(uri, base_dir=base_dir, options=options)


@hookimpl
def loom_register_data_sources(register: Register) -> None:
    """``sqlite://``, ``postgresql://`` and its alias ``postgres://``."""
    for scheme in _SCHEMES:
        register(scheme, _factory)
