"""``loom score``: batch scoring of a whole table with a registered version, on Ray Data (:mod:`runtime.batch`)."""

from __future__ import annotations

import os

import click

from ..errors import LoomError
from ._common import console, open_project, out, project_option


def _options(pairs: tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` pairs -> the data-source plugin's options."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        options[key] = value
    return options


@click.command()
@click.argument("ref", metavar="NAME[@ALIAS|/VERSION]")
@click.option("--input", "input_uri", required=True, metavar="URI",
              help="The table to score: a data source URI (csv://, parquet://, sql://, captured://, ...; relative to the "
                   "project) or a path (relative to the current directory).")
@click.option("--output", "output_uri", required=True, metavar="URI",
              help="The Parquet file to write: a path or a file system URI (s3://bucket/scores.parquet).")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists (once the new one is complete).")
@click.option("--key", "keys", multiple=True, metavar="COLUMN",
              help="An input column that identifies a row, copied to the output (repeatable; default: data.entity "
                   "and data.timestamp, those the input has).")
@click.option("--option", "source_options", multiple=True, metavar="KEY=VALUE",
              help="An option for the input's data-source plugin (repeatable), e.g. delimiter=';'.")
@click.option("--actors", type=click.IntRange(min=1), help="Scoring actors (default: sized to the cluster).")
@click.option("--batch-rows", type=click.IntRange(min=1), help="Rows scored at a time (default 65536).")
@click.option("--gpu/--no-gpu", "use_gpu", default=None, help="Score on GPUs (default: when the cluster has any).")
@click.option("--max-bad-fraction", type=click.FloatRange(0, 1),
              help="Fail when more than this fraction of rows is bad (default: data.bad_rows.max_fraction).")
@project_option()
def score(project: str, ref: str, input_uri: str, output_uri: str, overwrite: bool, keys: tuple[str, ...],
          source_options: tuple[str, ...], actors: int | None, batch_rows: int | None, use_gpu: bool | None,
          max_bad_fraction: float | None) -> None:
    """Score a table with a registered version and write the predictions to Parquet.

    NAME is the project's serving alias (registry.alias), NAME@ALIAS or NAME/VERSION another version. Rows are
    checked and encoded as serving does; bad rows are quarantined and counted. Runs on Ray Data on $RAY_ADDRESS,
    else an embedded cluster."""
    from ..batch import BATCH_ROWS
    from ..batch import score as score_

    if "://" not in input_uri:  # a bare path is the shell's, relative to here (a URI's is the project's)
        input_uri = os.path.abspath(input_uri)
    if "://" not in output_uri and os.path.abspath(output_uri) == input_uri:
        raise LoomError("--input and --output name the same file")
    result = score_(open_project(project), ref, input_uri, output_uri, overwrite=overwrite, keys=keys or None,
                    options=_options(source_options), actors=actors, batch_rows=batch_rows or BATCH_ROWS,
                    use_gpu="auto" if use_gpu is None else use_gpu, max_bad_fraction=max_bad_fraction,
                    console=console)
    console.print(f"[green]✓[/] scored {result.scored:,} rows with {result.model} v{result.version} in "
                  f"{result.seconds:.1f}s ({result.rows_per_s:,.0f} rows/s)")
    out.print(result.output, highlight=False)
