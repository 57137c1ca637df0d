"""``loom models …`` and ``loom runs …``: the project's registry and tracked runs, as tables or ``--json``.

Both groups work on whichever registry plugin the project's ``loom.yaml`` selects, through the same
:class:`runtime.Pipeline` the other commands use.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..errors import LoomError
from ..registry import LATEST, ModelRegistry, ModelVersion, check_alias, parse_ref
from ..tracking import Run, Tracker, compare_runs
from ._common import console, json_option, open_project, out, print_json, project_option


def _registry(project: str) -> ModelRegistry:
    from ..pipeline import Pipeline

    return Pipeline(project).registry


def _tracker(project: str) -> Tracker:
    from ..pipeline import Pipeline

    pipe = Pipeline(project)
    if pipe.tracker is None:
        raise LoomError(f"the {pipe.project.config.registry.kind!r} registry does not track runs")
    return pipe.tracker


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _metrics(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k} {_number(v)}" for k, v in sorted(metrics.items())) or "-"


def _version_dict(v: ModelVersion) -> dict[str, Any]:
    data = asdict(v)
    data["aliases"] = list(v.aliases)
    data["artifacts"] = list(v.artifacts)
    return data


def _run_dict(r: Run) -> dict[str, Any]:
    return {**asdict(r), "artifacts": list(r.artifacts), "duration": r.duration}


# -- loom models ------------------------------------------------------------------------------------------------


@click.group("models")
def models() -> None:
    """Registered models: list them, inspect versions and lineage, move aliases, delete versions, import models
    trained elsewhere."""


@models.command("list")
@project_option()
@json_option()
def models_list(project: str, as_json: bool) -> None:
    """Every registered model with its newest version and aliases."""
    registry = _registry(project)
    rows = []
    for name in registry.list_models():
        versions = registry.list_versions(name)
        aliases = {a: v.version for v in versions for a in v.aliases}
        latest = versions[-1] if versions else None
        rows.append({"name": name, "versions": len(versions), "latest": latest.version if latest else None,
                     "aliases": dict(sorted(aliases.items())),
                     "updated_at": latest.created_at if latest else None})
    if as_json:
        print_json(rows)
        return
    table = Table("model", "versions", "latest", "aliases", "last registered")
    for r in rows:
        table.add_row(r["name"], str(r["versions"]), _number(r["latest"]),
                      ", ".join(f"{a} → {v}" for a, v in r["aliases"].items()) or "-", _when(r["updated_at"]))
    out.print(table)


@models.command("versions")
@click.argument("name")
@project_option()
@json_option()
def models_versions(name: str, project: str, as_json: bool) -> None:
    """Every version of model NAME, oldest first."""
    versions = _registry(project).list_versions(name)
    if as_json:
        print_json([_version_dict(v) for v in versions])
        return
    table = Table("version", "registered", "aliases", "run", "metrics", "description", title=name)
    for v in versions:
        table.add_row(str(v.version), _when(v.created_at), ", ".join(v.aliases) or "-", (v.run_id or "-")[:12],
                      _metrics(v.metrics), v.description or "-")
    out.print(table)


@models.command("show")
@click.argument("name")
@click.argument("ref", default=LATEST)
@project_option()
@json_option()
def models_show(name: str, ref: str, project: str, as_json: bool) -> None:
    """One version of model NAME (REF: a number, an alias or 'latest', the default) with its lineage."""
    v = _registry(project).get_version(name, parse_ref(ref))
    if as_json:
        print_json(_version_dict(v))
        return
    table = Table(show_header=False, title=f"{v.name} version {v.version}", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("registered", _when(v.created_at))
    table.add_row("aliases", ", ".join(v.aliases) or "-")
    table.add_row("run", v.run_id or "-")
    table.add_row("description", v.description or "-")
    table.add_row("tags", ", ".join(f"{k}={t}" for k, t in sorted(v.tags.items())) or "-")
    table.add_row("artifacts", ", ".join(v.artifacts))
    table.add_row("metrics", _metrics(v.metrics))
    table.add_row("params", "\n".join(f"{k} = {_value(p)}" for k, p in sorted(v.params.items())) or "-")
    lineage = v.lineage
    data = lineage.get("data", {})
    if data:
        table.add_row("data", f"{data.get('source', '-')}  ({_number(data.get('rows'))} rows, "
                              f"fingerprint {str(data.get('fingerprint', '-'))[:16]}…)")
    features = lineage.get("features", {})
    if features:
        table.add_row("features", f"{features.get('store', '-')}:{features.get('view', '-')}  "
                                  f"{', '.join(features.get('features', []))}")
    training = lineage.get("training", {})
    if training:
        epochs = len(training.get("history", []))
        table.add_row("training", f"{epochs} epochs on {_number(training.get('train_rows'))} rows in "
                                  f"{_number(training.get('seconds'))} s")
    code = lineage.get("code", {})
    if code:
        table.add_row("code", f"{code.get('project', '-')} @ {code.get('git_commit') or 'no git commit'}")
    packages = lineage.get("packages", {})
    if packages:
        table.add_row("packages", "  ".join(f"{k} {p}" for k, p in sorted(packages.items())))
    imported = lineage.get("imported", {})
    if imported:
        table.add_row("imported", f"{imported.get('format', '-')} {imported.get('file', '-')} (sha256 "
                                  f"{str(imported.get('sha256', '-'))[:16]}…, inputs from {imported.get('signature', '-')})")
    if lineage.get("reference_profile"):
        table.add_row("drift reference", str(lineage["reference_profile"]))
    out.print(table)


@models.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int, required=False)
@click.option("--delete", is_flag=True, help="Remove the alias instead of setting it.")
@project_option()
def models_alias(name: str, alias: str, version: int | None, delete: bool, project: str) -> None:
    """Point ALIAS of model NAME at VERSION, or remove it with --delete.

    Example: loom models alias churn production 3
    """
    check_alias(alias)
    registry = _registry(project)
    if delete:
        if version is not None:
            raise click.UsageError("give either a VERSION or --delete, not both")
        registry.delete_alias(name, alias)
        out.print(f"removed alias {alias!r} of {name}")
        return
    if version is None:
        raise click.UsageError("missing VERSION (or --delete to remove the alias)")
    registry.set_alias(name, alias, version)
    out.print(f"{name}@{alias} → version {version}")


@models.command("delete")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Delete the version even while the project's application serves it.")
@project_option()
def models_delete(name: str, version: int, yes: bool, force: bool, project: str) -> None:
    """Delete VERSION of model NAME and the aliases pointing at it (its number is never reused).

    Refused while the project's running application serves VERSION (as primary, canary or standby) unless --force.
    """
    registry = _registry(project)
    v = registry.get_version(name, version)
    if not force:
        _refuse_if_served(project, name, version)
    if v.aliases and not yes:
        click.confirm(f"{name} version {version} is {', '.join(v.aliases)}; delete it anyway?", abort=True)
    elif not yes:
        click.confirm(f"delete {name} version {version}?", abort=True)
    registry.delete_version(name, version)
    out.print(f"deleted {name} version {version}")


def _refuse_if_served(project: str, name: str, version: int) -> None:
    """Raise when the project's running application serves ``version`` of ``name`` (nothing running: fine)."""
    from ..serving import RoutingTable, ServingClient

    client = ServingClient.for_project(open_project(project), timeout_s=10)
    try:
        served = client.running_routes()
    except LoomError as err:
        raise LoomError(f"cannot tell whether {name} version {version} is being served ({err}); "
                        "pass --force to delete it anyway") from None
    if served is None:
        return
    try:
        routes = RoutingTable.from_config(served).models.get(name)
    except LoomError as err:
        raise LoomError(f"cannot tell whether {name} version {version} is being served ({client.url}/models: "
                        f"{err}); pass --force to delete it anyway") from None
    if routes is None or version not in routes.live:
        return
    how = ("the primary" if version == routes.primary else
           f"the canary ({routes.canary_percent}% of traffic)" if version == routes.canary else
           "on standby (loaded for an instant rollback)")
    raise LoomError(f"{name} version {version} is being served at {client.url}, as {how}; take it out of serving "
                    f"first (loom rollback, loom scale-to-zero --version {version}) or pass --force to delete it "
                    "anyway")


@models.command("import")
@click.argument("name")
@click.option("--format", "fmt", metavar="FORMAT",
              help="The file's model format: onnx, torch, or one a plugin registers (with --from: read from the "
                   "source).")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False),
              help="The model file (--format onnx, or another single-file format).")
@click.option("--from", "from_uri", metavar="URI",
              help="A model in the project's registry store that was not registered through Loom, by the store's "
                   "URI: models:/NAME/VERSION or models:/NAME@ALIAS (registry.kind: mlflow; an onnx flavor or "
                   "safetensors weights).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False),
              help="--format torch: the weights, as safetensors (pickles are refused).")
@click.option("--architecture", metavar="MODULE:CLASS",
              help="--format torch, or safetensors weights --from a registry: the torch.nn.Module the weights are "
                   "for.")
@click.option("--options", "options_json", metavar="JSON",
              help="With --architecture: the architecture's constructor arguments, a JSON object.")
@click.option("--signature", default="project", show_default=True, metavar="project|graph|FILE",
              help="Where the inputs come from: the project's loom.yaml, the model's own declared inputs (ONNX), or "
                   "a YAML file (inputs, and optionally label, task, classes).")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False),
              help="Rows of the model's inputs (Parquet or CSV): the baseline of drift checks.")
@click.option("--alias", help="Alias to point at the new version (default: registry.alias, e.g. production).")
@click.option("--description", default="", help="The version's description.")
@project_option()
@json_option()
def models_import(name: str, fmt: str | None, file: str | None, from_uri: str | None, weights: str | None,
                  architecture: str | None, options_json: str | None, signature: str, reference: str | None,
                  alias: str | None, description: str, project: str, as_json: bool) -> None:
    """Register a model Loom did not train as a new version of NAME: an ONNX file, or torch weights with their
    architecture, from files or from the project's MLflow registry (--from models:/NAME/VERSION). Everything is
    checked first (the format, the inputs against the signature, a forward pass, the reference rows); the version is
    written only then, all at once.

    \b
    Examples:
      loom models import churn --format onnx --file model.onnx
      loom models import churn --format torch --weights w.safetensors --architecture mymodels:Net --options '{"hidden": [32]}'
      loom models import churn --from models:/churn-onnx/3
    """
    from ..formats import ImportFile, LoadLimits, Signature, import_model, read_reference_file
    from ..pipeline import Pipeline

    if from_uri and (file or weights):
        raise click.UsageError("--from reads the model from the registry: give no --file or --weights")
    path = None if from_uri else _import_path(fmt, file, weights, architecture, options_json)
    options = _options(options_json)
    pipe = Pipeline(project)
    proj = pipe.project
    default = Signature.of_project(proj)
    sig: Signature | str = (default if signature == "project" else "graph" if signature == "graph"
                            else Signature.from_file(signature, default))
    ref = read_reference_file(reference) if reference else None
    lineage: dict[str, Any] = {}
    if path is None:
        with console.status(f"reading {from_uri} from the {proj.config.registry.kind!r} registry…"):
            fmt_name, source, lineage["source"] = _open_uri(pipe.registry, proj.config.registry.kind, str(from_uri),
                                                            fmt, architecture, options_json)
    else:
        fmt_name, source = str(fmt), ImportFile.read(path)
    with console.status(f"checking {source.origin} ({fmt_name})…"):
        version = import_model(pipe.registry, name, fmt_name, source, plugins=pipe.plugins, signature=sig,
                               default=default, architecture=architecture, options=options, reference=ref,
                               reference_origin=Path(reference).name if reference else "",
                               reference_rows=proj.config.monitoring.reference_rows,
                               limits=LoadLimits.of(proj), alias=alias or proj.config.registry.alias,
                               description=description, lineage=lineage)
    pipe.plugins.call("loom_model_registered", project=proj, version=version)
    if as_json:
        print_json(_version_dict(version))
        return
    imported = version.lineage["imported"]
    origin = f" from {from_uri}" if from_uri else ""
    out.print(f"imported {version.name} version {version.version}{origin} ({imported['format']}, sha256 "
              f"{imported['sha256'][:12]}…, inputs from {imported['signature']}"
              f"{', with a drift reference' if reference else ''}; aliases: {', '.join(version.aliases) or '-'})")


def _open_uri(registry: ModelRegistry, kind: str, uri: str, fmt: str | None, architecture: str | None,
              options_json: str | None) -> tuple[str, Any, dict[str, Any]]:
    """The format, the file (an ``ImportFile``) and the origin of the model ``uri`` names in the project's registry
    store, read by the registry's optional ``open_model_uri``; the options checked against what was found."""
    from ..formats import ImportFile

    opener = getattr(registry, "open_model_uri", None)
    if opener is None:
        raise LoomError(f"the {kind!r} registry cannot read models by URI, so --from {uri} cannot be imported: "
                        "--from works with a registry that can (registry.kind: mlflow reads models:/NAME/VERSION)")
    found, files, origin = opener(uri)
    if len(files) != 1:
        raise LoomError(f"{uri} gives {len(files)} files; an import stores one")
    [(where, data)] = files.items()
    if fmt and fmt.lower() != found.lower():
        raise LoomError(f"{uri} is in the {found!r} format ({where}), not --format {fmt}")
    if found.lower() == "torch":
        if not architecture:
            raise LoomError(f"{uri} holds safetensors weights ({where}): give --architecture MODULE:CLASS, the "
                            "torch.nn.Module they are for (and --options JSON, its constructor arguments)")
    elif architecture or options_json:
        raise click.UsageError(f"--architecture and --options go with safetensors weights; {uri} is in the "
                               f"{found!r} format")
    return found, ImportFile(bytes(data), where), origin


def _import_path(fmt: str | None, file: str | None, weights: str | None, architecture: str | None,
                 options_json: str | None) -> str:
    """The file ``loom models import`` reads, after checking that the options fit the format."""
    if not fmt:
        raise click.UsageError("give --format with --file or --weights (or --from URI, a model in the registry)")
    if fmt.lower() == "torch":
        if file:
            raise click.UsageError("--format torch takes --weights (safetensors) and --architecture, not --file")
        if not weights or not architecture:
            raise click.UsageError("--format torch needs --weights FILE.safetensors and --architecture MODULE:CLASS")
        return weights
    if weights or architecture or options_json:
        raise click.UsageError("--weights, --architecture and --options go with --format torch; give --file")
    if not file:
        raise click.UsageError(f"--format {fmt} needs --file")
    return file


def _options(options_json: str | None) -> dict[str, Any]:
    if not options_json:
        return {}
    try:
        options = json.loads(options_json)
    except ValueError as err:
        raise click.BadParameter(f"not JSON: {err}", param_hint="--options") from None
    if not isinstance(options, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--options")
    return options


# -- loom runs --------------------------------------------------------------------------------------------------


@click.group("runs")
def runs() -> None:
    """Tracked training runs: params, metrics over time, status, duration and artifacts; compare them."""


@runs.command("list")
@click.option("-e", "--experiment", help="Only runs of this experiment (default: all).")
@project_option()
@json_option()
def runs_list(experiment: str | None, project: str, as_json: bool) -> None:
    """Runs, newest first."""
    found = _tracker(project).list_runs(experiment)
    if as_json:
        print_json([_run_dict(r) for r in found])
        return
    table = Table("run", "experiment", "name", "status", "started", "duration", "metrics")
    for r in found:
        table.add_row(r.id, r.experiment, r.name, _status(r.status), _when(r.started_at),
                      "-" if r.duration is None else f"{r.duration:.1f} s", _metrics(r.metrics))
    out.print(table)


def _status(status: str) -> str:
    colour = {"finished": "green", "failed": "red", "killed": "yellow"}.get(status, "cyan")
    return f"[{colour}]{status}[/]"


@runs.command("show")
@click.argument("run_id")
@project_option()
@json_option()
def runs_show(run_id: str, project: str, as_json: bool) -> None:
    """One run: params, the history of every metric, and its artifacts."""
    tracker = _tracker(project)
    r = tracker.get_run(run_id)
    history = {key: tracker.metric_history(run_id, key) for key in sorted(r.metrics)}
    if as_json:
        print_json({**_run_dict(r), "history": {k: [asdict(p) for p in points] for k, points in history.items()}})
        return
    table = Table(show_header=False, title=f"run {r.id}", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in (("experiment", r.experiment), ("name", r.name), ("status", _status(r.status)),
                         ("started", _when(r.started_at)), ("ended", _when(r.ended_at)),
                         ("duration", "-" if r.duration is None else f"{r.duration:.1f} s"),
                         ("tags", ", ".join(f"{k}={t}" for k, t in sorted(r.tags.items())) or "-"),
                         ("artifacts", ", ".join(r.artifacts) or "-"),
                         ("params", "\n".join(f"{k} = {_value(p)}" for k, p in sorted(r.params.items())) or "-")):
        table.add_row(label, value)
    out.print(table)
    if history:
        steps = sorted({p.step for points in history.values() for p in points})
        by_step = {k: {p.step: p.value for p in points} for k, points in history.items()}
        metrics = Table("step", *history, title="metrics", title_justify="left")
        for step in steps:
            metrics.add_row(str(step), *(_number(by_step[k].get(step)) for k in history))
        out.print(metrics)


@runs.command("compare")
@click.argument("run_ids", nargs=-1, required=True)
@project_option()
@json_option()
def runs_compare(run_ids: tuple[str, ...], project: str, as_json: bool) -> None:
    """Runs side by side: every param (those that differ in yellow) and every metric's final value."""
    if len(run_ids) < 2:
        raise click.UsageError("give at least two run ids to compare")
    tracker = _tracker(project)
    cmp = compare_runs(tracker.get_run(r) for r in run_ids)
    if as_json:
        print_json(cmp.to_dict())
        return
    table = Table("", *(f"{r.name}\n{r.id[:12]}" for r in cmp.runs))
    differing = set(cmp.differing_params)
    table.add_row("[bold]status", *(_status(r.status) for r in cmp.runs))
    table.add_row("[bold]duration", *("-" if r.duration is None else f"{r.duration:.1f} s" for r in cmp.runs))
    for key, values in cmp.params.items():
        cells = [key, *("-" if v is None else _value(v) for v in values)]
        table.add_row(*(f"[yellow]{c}[/]" if key in differing else c for c in cells))
    for key, values in cmp.metrics.items():
        table.add_row(f"[bold]{key}", *(_number(v) for v in values))
    out.print(table)
