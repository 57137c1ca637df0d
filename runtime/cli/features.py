"""``loom features``: look at, materialise, query and push to a project's feature store.

Every command works on the store and definitions of ``loom.yaml`` (``--project``, default the current directory),
through the same :class:`runtime.Pipeline` and :class:`runtime.FeatureService` code as training and serving.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from ..errors import ConfigError, NotFoundError
from ..secrets import redact
from ._common import console, json_option, out, print_json, project_option


def _pipeline(project: str) -> Any:
    from ..pipeline import Pipeline

    return Pipeline(project, console=console)


def _apply(pipe: Any) -> Any:
    """Apply every view and service of ``loom.yaml`` (idempotent) and return the definitions."""
    defs = pipe.project.config.feature_definitions
    for view in defs.views.values():
        pipe.feature_store.apply(view)
    for service in {**defs.services, defs.service.name: defs.service}.values():
        pipe.feature_store.apply_service(service)
    return defs


def _entity_rows(service: Any, entities: tuple[str, ...]) -> dict[str, list[Any]]:
    """``VALUE`` (services of one entity) or ``key=value,key=value`` arguments, as columns of keys."""
    keys = service.join_keys
    rows: dict[str, list[Any]] = {k: [] for k in keys}
    for arg in entities:
        if "=" not in arg:
            if len(keys) != 1:
                raise ConfigError(f"service {service.name!r} joins on {', '.join(keys)}: give keys as "
                                  f"{','.join(f'{k}=...' for k in keys)}")
            rows[keys[0]].append(arg)
            continue
        pairs = dict(part.split("=", 1) for part in arg.split(","))
        missing = [k for k in keys if k not in pairs]
        if missing:
            raise ConfigError(f"entity {arg!r} lacks {', '.join(missing)}")
        for k in keys:
            rows[k].append(pairs[k])
    for k, values in rows.items():
        if service.dtypes.get(k) == "int":
            try:
                rows[k] = [int(v) for v in values]
            except ValueError as err:
                raise ConfigError(f"join key {k!r} takes integers: {err}") from None
    return rows


@click.group("features")
def features() -> None:
    """Entities, feature views and services of loom.yaml, in its feature store."""


@features.command("list")
@project_option()
def list_(project: str) -> None:
    """Show the entities, feature views and feature services loom.yaml defines."""
    pipe = _pipeline(project)
    defs = pipe.project.config.feature_definitions
    table = Table("view", "entity", "timestamp", "features", "ttl", "source")
    for name, view in defs.views.items():
        source = redact(defs.sources[name].uri if name in defs.sources else pipe.project.config.data.source)
        table.add_row(name, view.entity, view.timestamp, ", ".join(view.features), str(view.ttl or "-"), source)
    out.print(table)
    for name, service in {**defs.services, defs.service.name: defs.service}.items():
        mark = " (the model's)" if name == defs.service.name else ""
        out.print(f"service [bold]{name}[/]{mark}: " + "; ".join(
            f"{p.name}: {', '.join(p.features)}" for p in service.projections), highlight=False)


@features.command()
@project_option()
@click.option("--view", "views", multiple=True, help="Only this view (repeatable); default: every view.")
@click.option("--since", help="Copy rows stamped after this time (ISO 8601); default: whatever is new since the "
              "last materialisation.")
def materialize(project: str, views: tuple[str, ...], since: str | None) -> None:
    """Copy the latest feature values from the offline store to the online store."""
    pipe = _pipeline(project)
    defs = _apply(pipe)
    for name in views or tuple(defs.views):
        if name not in defs.views:
            raise NotFoundError(f"loom.yaml defines no feature view {name!r} (views: {', '.join(defs.views)})")
        written = pipe.feature_store.materialize(name, since=since)
        out.print(f"{name}: {written:,} entities materialized", highlight=False)
    pipe.feature_store.close()


@features.command()
@project_option()
@click.argument("entities", nargs=-1, required=True)
@click.option("--service", help="Feature service to read (default: the model's, features.service).")
@json_option("Print JSON records instead of a table.")
def get(project: str, entities: tuple[str, ...], service: str | None, as_json: bool) -> None:
    """Look ENTITIES up in the online store: key values, or key=value,key=value for several join keys."""
    pipe = _pipeline(project)
    defs = pipe.project.config.feature_definitions
    chosen = defs.service if service is None else defs.services.get(service)
    if chosen is None:
        raise NotFoundError(f"loom.yaml defines no feature service {service!r} "
                            f"(services: {', '.join(defs.services) or 'none'})")
    rows = _entity_rows(chosen, entities)
    frame = chosen.online(pipe.feature_store, rows)
    for key, values in reversed(rows.items()):
        frame.insert(0, key, values)
    pipe.feature_store.close()
    if as_json:
        print_json(json.loads(frame.to_json(orient="records", date_format="iso")))
        return
    table = Table(*map(str, frame.columns))
    for record in frame.astype(object).where(frame.notna(), None).itertuples(index=False):
        table.add_row(*("-" if v is None else str(v) for v in record))
    out.print(table)


@features.command()
@project_option()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--view", required=True, help="Feature view the rows belong to.")
def push(project: str, file: str, view: str) -> None:
    """Write fresh feature values from FILE (CSV or Parquet) straight to the online store, and offline."""
    from pathlib import Path

    from ..config import ColumnSpec
    from ..validation import validate_frame

    pipe = _pipeline(project)
    defs = _apply(pipe)
    definition = defs.views.get(view)
    if definition is None:
        raise NotFoundError(f"loom.yaml defines no feature view {view!r} (views: {', '.join(defs.views)})")
    columns = {definition.entity: ColumnSpec(type=definition.dtypes.get(definition.entity, "string"), nullable=False),
               definition.timestamp: ColumnSpec(type="timestamp", nullable=False),
               **{f: defs.columns[f] for f in definition.features}}
    path = Path(file).resolve()
    source = pipe.plugins.data_source(str(path), base_dir=path.parent, options={})
    frame = validate_frame(source.read(), columns, source=str(path), empty_columns=True).frame
    pushed = pipe.feature_store.push(view, frame)
    pipe.feature_store.close()
    out.print(f"{view}: {pushed:,} rows pushed", highlight=False)
