"""The ``loom`` command line. Every command runs the same :class:`runtime.Pipeline` code as the Python API."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._version import __version__
from .cli_plugin import plugin_group
from .cli_cluster import submit
from .cli_features import features
from .cli_serving import COMMANDS as serving_commands
from .cli_loop import loop
from .cli_models import models, runs
from .config import Project, load_project
from .errors import LoomError

console = Console(stderr=True)
out = Console()


def _project(path: str, **serving: Any) -> Project:
    project = load_project(path)
    updates = {k: v for k, v in serving.items() if v is not None}
    if updates:
        cfg = project.config
        project = Project(root=project.root, config=cfg.model_copy(
            update={"serving": cfg.serving.model_copy(update=updates)}))
    return project


def _serve_forever(project: Project, url: str) -> None:
    model = project.config.model.name
    try:  # Ctrl-C from here on, even while the example is built, stops serving cleanly
        example = _curl_example(project, url)
        out.print(f"\n[bold green]Serving[/] {model} at {url}  (Ctrl-C to stop)\nTry it:\n")
        out.print(f"  {example}\n", soft_wrap=True, highlight=False)
        out.print(f"  curl -s {url}/v2/models/{model}\n", soft_wrap=True, highlight=False)
        # Short sleeps: Ray's threads can receive the SIGINT, and Python then only raises KeyboardInterrupt once
        # the main thread runs bytecode again, so one long sleep would ignore Ctrl-C for up to its length.
        while True:
            time.sleep(0.25)
    except KeyboardInterrupt:
        console.print("stopping…")
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def _curl_example(project: Project, url: str) -> str:
    import io

    import pandas as pd

    from .pipeline import Pipeline

    pipe = Pipeline(project, console=console)
    mv = pipe.registry.get_version(project.config.model.name, project.config.registry.alias)
    ref = pd.read_parquet(io.BytesIO(pipe.registry.read_artifact(mv.name, mv.version, "reference.parquet")))
    record = json.loads(ref.drop(columns=["prediction"], errors="ignore").head(1).to_json(orient="records"))
    return (f"curl -s -X POST {url}/predict/{mv.name} -H 'Content-Type: application/json' "
            f"-d '{json.dumps(record)}'")


class LoomGroup(click.Group):
    """Adds plugin commands lazily and turns :class:`LoomError` into a short message."""

    def _load_plugin_commands(self) -> None:
        if getattr(self, "_plugins_loaded", False):
            return
        self._plugins_loaded = True
        from .plugins import get_plugins

        try:
            get_plugins().call("loom_register_commands", cli=self)
        except LoomError as err:
            console.print(f"[yellow]warning:[/] {err}")

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str):
        cmd = super().get_command(ctx, name)
        if cmd is None:
            self._load_plugin_commands()
            cmd = super().get_command(ctx, name)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LoomError as err:
            console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
            sys.exit(1)


@click.group(cls=LoomGroup)
@click.version_option(__version__, prog_name="loom")
def cli() -> None:
    """Loom: data -> features -> Ray Train -> registry -> Ray Serve -> drift monitoring, from one loom.yaml."""


@cli.command()
@click.argument("project", default=".", type=click.Path(exists=True, file_okay=True))
@click.option("--port", type=int, help="HTTP port to serve on (overrides serving.port).")
@click.option("--host", help="Interface to bind (overrides serving.host; default 127.0.0.1).")
@click.option("--detach", is_flag=True, help="Return once the model answers instead of serving until Ctrl-C.")
def up(project: str, port: int | None, host: str | None, detach: bool) -> None:
    """Run the whole life cycle and keep serving: ingest, validate, features, train, register, deploy."""
    from .pipeline import Pipeline

    proj = _project(project, port=port, host=host)
    result = Pipeline(proj, console=console).up()
    timings = "  ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    console.print(f"[dim]{timings}[/]")
    if detach:
        out.print(result.url)
        return
    _serve_forever(proj, result.url)


@cli.command()
@click.argument("project", default=".", type=click.Path(exists=True, file_okay=True))
def validate(project: str) -> None:
    """Check the project file and validate the data against its declared schema."""
    from .pipeline import Pipeline

    data = Pipeline(project, console=console).ingest()
    out.print(f"{len(data.frame):,} rows valid; fingerprint {data.fingerprint}")


@cli.command()
@click.argument("project", default=".", type=click.Path(exists=True, file_okay=True))
def train(project: str) -> None:
    """Ingest, validate, write features, train with Ray Train and register a new version."""
    from .pipeline import Pipeline

    pipe = Pipeline(project, console=console)
    data = pipe.ingest()
    view = pipe.write_features(data)
    version = pipe.register(pipe.train(data, view), data, view)
    out.print(f"registered {version.name} version {version.version} (aliases: {', '.join(version.aliases)})")


@cli.command()
@click.argument("project", default=".", type=click.Path(exists=True, file_okay=True))
@click.option("--version", "ref", help="Version number or alias to serve (default: the registry alias).")
@click.option("--port", type=int, help="HTTP port (overrides serving.port).")
@click.option("--host", help="Interface to bind (overrides serving.host).")
@click.option("--detach", is_flag=True, help="Return once the model answers.")
@click.option("--canary", type=click.IntRange(1, 99), help="Serve the version as a canary taking this percentage of "
              "traffic next to the running version (acts on the running cluster; see `loom promote`).")
@click.option("--address", help="Ray cluster to deploy to (default: $RAY_ADDRESS, else an embedded one; with "
              "--canary, the cluster running on this machine).")
def deploy(project: str, ref: str | None, port: int | None, host: str | None, detach: bool, canary: int | None,
           address: str | None) -> None:
    """Serve a registered model version with Ray Serve, or roll it out as a canary."""
    from .cli_serving import attach
    from .pipeline import Pipeline

    proj = _project(project, port=port, host=host)
    if canary is not None or address:
        attach(address)
    url = Pipeline(proj, console=console).deploy(ref, canary=canary)
    if detach or canary is not None:
        out.print(url)
        return
    _serve_forever(proj, url)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List loaded plugins with their distribution, version and the hooks each implements."""
    from .plugins import get_plugins

    infos = get_plugins().info()
    if as_json:
        out.print_json(json.dumps([asdict(i) for i in infos]))
        return
    table = Table("plugin", "module", "distribution", "version", "hooks", "provides")
    for i in infos:
        provides = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in i.provides.items())
        table.add_row(i.name, i.module, i.dist or "-", i.version or "-", "\n".join(i.hooks) or "-", provides or "-")
    out.print(table)


@cli.command()
@click.argument("model")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="Base URL of the served app.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON report.")
def monitor(model: str, url: str, as_json: bool) -> None:
    """Check served traffic of MODEL for drift against its training reference."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/monitoring/{model}/drift", timeout=120) as r:
            report = json.loads(r.read())
    except urllib.error.HTTPError as err:
        raise LoomError(json.loads(err.read() or b"{}").get("error", str(err))) from None
    except urllib.error.URLError as err:
        raise LoomError(f"cannot reach {url}: {err.reason}") from None
    if as_json:
        out.print_json(json.dumps(report))
        return
    verdict = "[red]DRIFT[/]" if report["drifted"] else "[green]no drift[/]"
    out.print(f"{model} v{report['version']}: {verdict} — {report['share_drifted']:.0%} of columns drifted "
              f"({report['n_current']} served rows vs {report['n_reference']} reference rows)")
    table = Table("column", "drifted", "score", "method", "threshold", "data quality")
    for col, f in report["features"].items():
        quality = report.get("data_quality", {}).get(col, {})
        issues = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in quality.items() if k != "rows" and v) or "-"
        table.add_row(col, "yes" if f["drifted"] else "no", f"{f['score']:.4g}", f["method"], f"{f['threshold']:.3g}",
                      issues)
    out.print(table)
    pred, perf = report.get("prediction_drift", {}), report.get("performance", {})
    if "drifted" in pred:
        out.print(f"prediction drift: {'[red]yes[/]' if pred['drifted'] else 'no'} ({pred['method']} {pred['score']:.4g})")
    if "accuracy" in perf:
        out.print(f"performance on {perf['rows']} labelled rows: accuracy {perf['accuracy']:.3f}, f1 {perf['f1']:.3f}")


# Command groups of each area live in their own modules and are attached here.
cli.add_command(plugin_group)
cli.add_command(submit)
cli.add_command(features)
cli.add_command(models)
cli.add_command(runs)
cli.add_command(loop)

for _command in serving_commands:
    cli.add_command(_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
