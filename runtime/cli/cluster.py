"""``loom submit``: run a project's life cycle on an existing Ray cluster through the Ray Jobs API."""

from __future__ import annotations

import os
import shlex
import time

import click

from ..errors import LoomError
from ..secrets import redact
from ._common import console, open_project, project_option

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or "http://127.0.0.1:8265"
    # Ray's client prefers RAY_API_SERVER_ADDRESS over the address it is given: make --address win.
    previous = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # noqa: BLE001 - connection errors come in many types
        raise LoomError(f"cannot reach the Ray Jobs API at {redact(address)}: {redact(err)}") from None
    finally:
        if previous is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = previous


@click.command()
@project_option(positional=True, file_okay=False)
@click.option("--address", help="Ray dashboard / Jobs API address (default: $RAY_API_SERVER_ADDRESS or "
                                "http://127.0.0.1:8265).")
@click.option("--command", "stage", type=click.Choice(["up", "train", "validate", "deploy"]), default="up",
              show_default=True, help="The loom command the job runs.")
@click.option("--state-dir", help="LOOM_STATE_DIR for the job (its driver's local state); state shared across "
              "nodes belongs in loom.yaml's storage: section (PostgreSQL + object storage).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the job and stream its logs.")
def submit(project: str, address: str | None, stage: str, state_dir: str | None, wait: bool) -> None:
    """Ship PROJECT to a Ray cluster as a job (its working directory) and run `loom <command>` there."""
    proj = open_project(project)
    client = _client(address)
    env = {"LOOM_STATE_DIR": state_dir} if state_dir else {}
    entrypoint = f"loom {stage} ." + (" --detach" if stage in ("up", "deploy") else "")
    excludes = [f"{proj.config.state_dir.rstrip('/')}/", "__pycache__/"]
    job_id = _submit(client, entrypoint=entrypoint, metadata={"loom_project": proj.config.name},
                     runtime_env={"working_dir": str(proj.root), "excludes": excludes, "env_vars": env})
    console.print(f"submitted job [bold]{job_id}[/]: {shlex.quote(entrypoint)}")
    if not wait:
        click.echo(job_id)
        return
    status = _follow(client, job_id)
    if status != "SUCCEEDED":
        message = client.get_job_info(job_id).message or ""
        if "loom: not found" in client.get_job_logs(job_id):
            raise LoomError(f"job {job_id} ended {status}: the head node has no `loom` command on PATH. Install "
                            "Loom in the nodes' Python environment and start `ray start` from it (an activated "
                            "venv, or a Ray image with Loom installed).")
        raise LoomError(f"job {job_id} ended {status}: {redact(message)}".strip())
    click.echo(job_id)


def _submit(client, *, timeout_s: float = 120, **job) -> str:
    """Submit, retrying while the head's job agent is still starting (a cluster just brought up answers 500
    "No available agent to submit job" for a while)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise LoomError(f"the cluster refused the job: {redact(err)}") from None
            time.sleep(2)


def _follow(client, job_id: str, poll_s: float = 1.0) -> str:
    shown = 0
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            console.out(logs[shown:], end="", highlight=False)
            shown = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)
