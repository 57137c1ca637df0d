"""Loom's SQL data sources, through SQLAlchemy: ``sqlite://`` (embedded, the default) and ``postgresql://``.

A first-party plugin that uses only the public ``runtime`` API, exactly as a third-party plugin would.

URIs are SQLAlchemy URLs: ``sqlite:///data/app.db`` (a path relative to the project; ``sqlite:////abs/app.db`` for an
absolute one) and ``postgresql://user@host:5432/dbname`` (driver: psycopg 3). Options (``data.options``):

* ``table`` (with optional ``schema``) or ``query`` (one ``SELECT``): what to read; exactly one of them.
* ``password_env``: the name of an environment variable holding the password, so none is written in ``loom.yaml``
  (``${VAR}`` in the URL itself, ``postgresql://loom:${DB_PASSWORD}@db/loom``, does the same).

The password never appears in a message: every error names the URL as :func:`runtime.redact` shows it
(``postgresql://loom:***@db/loom``), the driver's own error text is redacted, and so is the source's ``uri``.

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

from runtime import ConfigError, LoomError, NotFoundError, Register, hookimpl, redact, resolve_path

__all__ = ["loom_register_data_sources", "open_source"]

#: Options this source accepts.
OPTIONS = ("table", "schema", "query", "password_env")
_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


def _check_options(shown: str, options: dict[str, Any]) -> dict[str, str]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"data source {shown}: unknown option(s) {', '.join(unknown)} "
                          f"(accepted: {', '.join(OPTIONS)})")
    for key, value in options.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"data source {shown}: option {key!r} must be a non-empty string, got "
                              f"{type(value).__name__ if key == 'password_env' else repr(value)}")
    if ("table" in options) == ("query" in options):
        raise ConfigError(f"data source {shown}: set exactly one of the options 'table' and 'query'")
    if "schema" in options and "table" not in options:
        raise ConfigError(f"data source {shown}: option 'schema' goes with 'table'")
    return dict(options)


def open_source(uri: str, *, base_dir: Path, options: dict[str, Any]) -> Any:
    """Open ``uri`` (a SQLAlchemy URL) as a :class:`runtime.DataSource`; nothing is read yet."""
    try:
        import sqlalchemy as sa
    except ImportError:
        raise ConfigError(f"data source {uri.split('://', 1)[0]}:// needs SQLAlchemy: "
                          "pip install 'loom-mlops[sql]'") from None
    from ._source import SqlSource, scrub

    shown = redact(uri)
    opts = _check_options(shown, options)
    try:
        url = sa.engine.make_url(uri)
    except (sa.exc.ArgumentError, ValueError) as err:  # a bad port is a ValueError
        raise ConfigError(f"data source {shown}: not a database URL ({scrub(str(err), None)}); e.g. "
                          "postgresql://user@host:5432/dbname or sqlite:///data/app.db") from None
    url = url.set(drivername=_SCHEMES[url.get_backend_name()])
    if "password_env" in opts:
        name = opts["password_env"]
        if name not in os.environ:
            raise ConfigError(f"data source {shown}: environment variable {name} (password_env) is not set")
        url = url.set(password=os.environ[name])
    password = url.password if isinstance(url.password, str) else None
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        if url.username or url.password or url.host:
            raise ConfigError(f"data source {shown}: a SQLite URL names a file only, with no user, password or host "
                              "(sqlite:///data/app.db)")
        if not url.database or url.database == ":memory:":
            raise ConfigError(f"data source {shown}: name a database file, e.g. sqlite:///data/app.db")
        path = resolve_path(url.database, Path(base_dir)).resolve()
        if not path.is_file():
            raise NotFoundError(f"data source {shown}: no SQLite database at {path}")
        url = url.set(database=f"file:{path}", query={"mode": "ro", "uri": "true"})
        kwargs["poolclass"] = sa.pool.NullPool
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError(f"data source {shown}: PostgreSQL needs psycopg: pip install 'loom-mlops[sql]'") from None
        kwargs["connect_args"] = {"options": "-c timezone=UTC", "connect_timeout": 10}
        kwargs["pool_pre_ping"] = True
    try:
        engine = sa.create_engine(url, **kwargs)
    except (sa.exc.SQLAlchemyError, ImportError, TypeError, ValueError) as err:
        raise LoomError(f"data source {shown}: cannot open the database: "
                        f"{scrub(f'{type(err).__name__}: {err}', password)}") from None
    quote = engine.dialect.identifier_preparer.quote
    if "table" in opts:
        table = quote(opts["table"]) if "schema" not in opts else f"{quote(opts['schema'])}.{quote(opts['table'])}"
        sql = f"SELECT * FROM {table}"
    else:
        sql = opts["query"].strip().rstrip(";").strip()
    return SqlSource(uri=shown, engine=engine, sql=sql, shown=shown, password=password)


def _factory(uri: str, *, base_dir: Path, options: dict[str, Any]) -> Any:
    return open_source(uri, base_dir=base_dir, options=options)


@hookimpl
def loom_register_data_sources(register: Register) -> None:
    """``sqlite://``, ``postgresql://`` and its alias ``postgres://``."""
    for scheme in _SCHEMES:
        register(scheme, _factory)
