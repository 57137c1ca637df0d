"""``loom monitor MODEL``: a drift check of a served model's traffic against its training reference, as a table.

It asks the served application through :class:`runtime.serving.ServingClient`, so it sends the project's operator
token (``LOOM_TOKEN``, else ``serving.operator_token_env``, else ``serving.auth_token_env``) and reports any failure,
a reply it cannot read included, as a short message.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click
from rich.table import Table

from ..errors import LoomError
from ._common import has_project_file, json_option, open_project, out, print_json, project_option

#: Where a served application answers by default (serving.host and serving.port), asked outside of a project.
DEFAULT_URL = "http://127.0.0.1:8000"

if TYPE_CHECKING:
    from ..serving import ServingClient


def _client(project: str, url: str | None) -> ServingClient:
    from ..serving import ServingClient

    if not has_project_file(project):  # no project to name the token's variable: LOOM_TOKEN alone
        return ServingClient(url or DEFAULT_URL, os.environ.get("LOOM_TOKEN") or None, timeout_s=120)
    return ServingClient.for_project(open_project(project), url=url, timeout_s=120)


@click.command()
@click.argument("model")
@project_option()
@click.option("--url", help="Base URL of the served app (default: the project's, from its serving settings; "
                            f"outside a project {DEFAULT_URL}).")
@json_option("Print the raw JSON report.")
def monitor(model: str, project: str, url: str | None, as_json: bool) -> None:
    """Check served traffic of MODEL for drift against its training reference."""
    client = _client(project, url)
    report = client.drift(model)
    if as_json:
        print_json(report)
        return
    try:
        _print_report(model, report)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise LoomError(f"{client.url} answered a drift report of {model} that Loom cannot read "
                        f"({type(err).__name__}: {err}); print it with --json") from None


def _print_report(model: str, report: dict) -> None:
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
