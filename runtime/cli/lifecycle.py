"""The life cycle from the command line: ``loom up``, ``loom validate``, ``loom train`` and ``loom deploy``, and
serving in the foreground until Ctrl-C with a ready-to-paste ``curl`` line."""

from __future__ import annotations

import json
import time

import click

from ..config import Project
from ._common import attach, console, open_project, out, project_option

_port = click.option("--port", type=int, help="HTTP port to serve on (overrides serving.port).")
_host = click.option("--host", help="Interface to bind (overrides serving.host; default 127.0.0.1).")


@click.command()
@project_option(positional=True)
@_port
@_host
@click.option("--detach", is_flag=True, help="Return once the model answers instead of serving until Ctrl-C.")
@click.option("--retrain", is_flag=True, help="Train a new version even when one with the same data, settings and "
              "code is registered (by default that one is served again).")
def up(project: str, port: int | None, host: str | None, detach: bool, retrain: bool) -> None:
    """Run the whole life cycle and keep serving: ingest, validate, features, train, register, deploy.

    A version registered before from the same data, settings and code is reused instead of trained again."""
    from ..pipeline import Pipeline

    proj = open_project(project, port=port, host=host)
    result = Pipeline(proj, console=console).up(retrain=retrain)
    _start_loop(proj)
    timings = "  ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    console.print(f"[dim]{timings}[/]")
    if detach:
        out.print(result.url)
        return
    serve_forever(proj, result.url)


@click.command()
@project_option(positional=True)
def validate(project: str) -> None:
    """Check the project file and validate the data against its declared schema."""
    from ..pipeline import Pipeline

    data = Pipeline(project, console=console).ingest()
    out.print(f"{len(data.frame):,} rows valid; fingerprint {data.fingerprint}")


@click.command()
@project_option(positional=True)
def train(project: str) -> None:
    """Ingest, validate, write features, train with Ray Train and register a new version."""
    from ..pipeline import Pipeline

    pipe = Pipeline(project, console=console)
    data = pipe.ingest()
    view = pipe.write_features(data)
    version = pipe.register(pipe.train(data, view), data, view)
    out.print(f"registered {version.name} version {version.version} (aliases: {', '.join(version.aliases)})")


@click.command()
@project_option(positional=True)
@click.option("--version", "ref", help="Version number or alias to serve, also as NAME@ALIAS or NAME/N (default: the "
              "registry alias).")
@_port
@_host
@click.option("--detach", is_flag=True, help="Return once the model answers.")
@click.option("--canary", type=click.IntRange(1, 99), help="Serve the version as a canary taking this percentage of "
              "traffic next to the running version (acts on the running cluster; see `loom promote`).")
@click.option("--address", help="Ray cluster to deploy to (default: $RAY_ADDRESS, else an embedded one; with "
              "--canary, the cluster running on this machine).")
def deploy(project: str, ref: str | None, port: int | None, host: str | None, detach: bool, canary: int | None,
           address: str | None) -> None:
    """Serve a registered model version with Ray Serve, or roll it out as a canary."""
    from ..pipeline import Pipeline

    proj = open_project(project, port=port, host=host)
    if ref is not None and ("@" in ref or "/" in ref):  # churn@production, churn/3: the project's model only
        from ..batch import parse_model_ref

        name, version = parse_model_ref(ref)
        if name != proj.config.model.name:
            raise click.BadParameter(f"this project serves {proj.config.model.name!r}, not {name!r}",
                                     param_hint="--version")
        ref = str(version)
    if canary is not None or address:
        attach(address)
    url = Pipeline(proj, console=console).deploy(ref, canary=canary)
    _start_loop(proj)
    if detach or canary is not None:
        out.print(url)
        return
    serve_forever(proj, url)


def _start_loop(project: Project) -> None:
    """The retrain loop's controller, beside the deployment, when the project turns it on."""
    from ..loop_controller import start_if_enabled

    if start_if_enabled(project) is not None:
        console.print("[green]✓[/] retrain loop    controller running in the cluster (loom loop --status)")


def serve_forever(project: Project, url: str) -> None:
    """Print how to query the served model, then wait; Ctrl-C shuts serving and Ray down."""
    model = project.config.model.name
    try:  # Ctrl-C from here on, even while the example is built, stops serving cleanly
        example = curl_example(project, url)
        out.print(f"\n[bold green]Serving[/] {model} at {url}  (Ctrl-C to stop)\nTry it:\n")
        if example:
            out.print(f"  {example}\n", soft_wrap=True, highlight=False)
        env = project.config.serving.auth_token_env
        auth = f"-H \"Authorization: Bearer ${env}\" " if env else ""
        out.print(f"  curl -s {auth}{url}/v2/models/{model}\n", soft_wrap=True, highlight=False)
        out.print(f"Console: {url}/ui  (loom status in a terminal)\n", soft_wrap=True, highlight=False)
        # Short sleeps: Ray's threads can receive the SIGINT, and Python then only raises KeyboardInterrupt once
        # the main thread runs bytecode again, so one long sleep would ignore Ctrl-C for up to its length.
        while True:
            time.sleep(0.25)
    except KeyboardInterrupt:
        console.print("stopping…")
        import ray
        from ray import serve

        from ..serving import stop_controller

        stop_controller(project)  # detached: it would outlive serving on a cluster that keeps running
        serve.shutdown()
        ray.shutdown()


def curl_example(project: Project, url: str) -> str | None:
    """A ``curl`` request predicting the first row of the served version's reference sample (``None`` when the
    version has no reference sample)."""
    from ..model import read_reference
    from ..pipeline import Pipeline

    pipe = Pipeline(project, console=console)
    mv = pipe.registry.get_version(project.config.model.name, project.config.registry.alias)
    ref = read_reference(pipe.registry, mv)
    if ref is None:
        return None
    record = json.loads(ref.drop(columns=["prediction"], errors="ignore").head(1).to_json(orient="records"))
    env = project.config.serving.auth_token_env
    auth = f"-H \"Authorization: Bearer ${env}\" " if env else ""  # the variable's name, never its value
    return (f"curl -s -X POST {url}/predict/{mv.name} -H 'Content-Type: application/json' {auth}"
            f"-d '{json.dumps(record)}'")


COMMANDS = (up, validate, train, deploy)
