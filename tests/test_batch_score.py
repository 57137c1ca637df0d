"""Batch scoring (``loom score``, ``runtime.score``): the checks and encoding of one batch without Ray, the refusals
that come before any work, and the real thing on the shared cluster: 200k rows of quickstart data scored on Ray
Data equal what the served endpoint answers for the same rows, bad rows are quarantined and counted, and a refused
or failed run leaves the previous output as it was."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from click.testing import CliRunner

import runtime
from conftest import make_project
from runtime import ConfigError, InvalidNameError, LoomError, NotFoundError, load_project
from runtime.batch import (
    PREDICTION,
    PROBABILITIES,
    VERSION,
    BatchScorer,
    Network,
    _load_network,
    _Output,
    _Shipped,
    parse_model_ref,
)
from runtime.cli import cli
from runtime.config import ColumnSpec
from runtime.model import ModelBundle, Preprocessor, TabularMLP
from runtime.serving import shutdown
from runtime.serving.encoding import FeatureEncoder
from serving_models import FEATURES, records, register_version

SCHEMA = {"n": ColumnSpec(type="int", nullable=False, min=0, max=10), "x": ColumnSpec(type="float"),
          "flag": ColumnSpec(type="bool", nullable=False),
          "cat": ColumnSpec(type="category", nullable=False, categories=["a", "b", "c"])}


def tiny_bundle(seed: int = 0, architecture: str = "runtime.model:TabularMLP") -> ModelBundle:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"n": rng.integers(0, 10, 200), "x": rng.normal(size=200), "flag": rng.random(200) > 0.5,
                          "cat": rng.choice(["a", "b", "c"], 200)})
    pre = Preprocessor.fit(frame, SCHEMA)
    torch.manual_seed(seed)
    kwargs = {"in_features": pre.n_features, "hidden": [8], "out_features": 2, "dropout": 0.0}
    return ModelBundle(architecture=architecture, kwargs=kwargs, preprocessor=pre, classes=["no", "yes"],
                       inputs={c: s.model_dump(exclude_none=True) for c, s in SCHEMA.items()}, label="y",
                       state_dict=TabularMLP(**kwargs).state_dict())


def batch(**changes) -> pd.DataFrame:
    """Six rows as a CSV reader gives them (text where text is), with ``changes`` as {column: {row: value}}."""
    frame = pd.DataFrame({"id": [10, 11, 12, 13, 14, 15], "n": ["1", "2", "3", "4", "5", "60"],
                          "x": [0.5, None, -1.0, 2.0, 1e3, 0.0], "flag": ["true", "no", "1", "f", "yes", "0"],
                          "cat": ["a", "b", "c", "a", "d", "b"], "extra": list("uvwxyz")})
    for column, rows in changes.items():
        for row, value in rows.items():
            frame.loc[row, column] = value
    frame["_loom_row"] = np.arange(100, 106)
    return frame


def loom(*args: str):
    return CliRunner().invoke(cli, list(args))


def said(result) -> str:
    """What a command printed, with the console's line wrapping undone."""
    return " ".join(result.output.split())


# -- one batch, no Ray ------------------------------------------------------------------------------------------


def test_a_batch_is_checked_and_encoded_as_serving_does():
    bundle = tiny_bundle()
    scorer = BatchScorer(Network.from_bundle(bundle), 7, {"id": None})
    table = scorer(batch())
    problems = table.column("_loom_problems").to_pylist()
    # row 4 has category 'd', outside the declared ones; row 5's n=60 is above max 10, which serving accepts too
    assert [p is not None for p in problems] == [False, False, False, False, True, False]
    assert "cat: value not in categories" in problems[4]
    assert table.column("id").to_pylist() == [10, 11, 12, 13, 14, 15]
    assert table.column(VERSION).to_pylist() == [7] * 6
    assert table.column("_loom_row").to_pylist() == list(range(100, 106))
    assert json.loads(table.column("_loom_raw")[4].as_py())["cat"] == "d"

    # serving's encoder on the same rows, sent as a JSON request carries them, gives the same outputs
    good = [0, 1, 2, 3, 5]
    cols = {"n": [1, 2, 3, 4, 60], "x": [0.5, None, -1.0, 2.0, 0.0], "flag": [True, False, True, False, False],
            "cat": ["a", "b", "c", "a", "b"]}
    served = Network.from_bundle(bundle).forward((FeatureEncoder(bundle.preprocessor)(cols),))
    proba = np.array(table.column(PROBABILITIES).to_pylist(), dtype=object)
    assert np.allclose(np.stack(proba[good]), served, atol=1e-6)
    labels = [bundle.classes[i] for i in served.argmax(1)]
    assert table.column(PREDICTION).to_pylist() == labels[:4] + [None] + labels[4:]


def test_bad_rows_carry_every_reason_and_their_values():
    scorer = BatchScorer(Network.from_bundle(tiny_bundle()), 1, {"id": ColumnSpec(type="int", nullable=False)})
    table = scorer(batch(n={0: "abc"}, flag={1: None}, id={2: None}, x={3: 1e308}))
    problems = table.column("_loom_problems").to_pylist()
    assert "n: value cannot be coerced to int" in problems[0]
    assert "flag: null value in a non-nullable column" in problems[1]
    assert "id: null value in a non-nullable column" in problems[2]  # a declared key is checked like an input
    assert "not finite" in problems[3]  # 1e308 overflows the encoder: serving answers 400 for it
    assert problems[5] is None
    assert table.column(PREDICTION).null_count == 5  # rows 0-4, row 4 for its category
    assert json.loads(table.column("_loom_raw")[0].as_py())["n"] == "abc"


def test_a_missing_input_fails_the_run_instead_of_every_row():
    scorer = BatchScorer(Network.from_bundle(tiny_bundle()), 1, {"id": None})
    with pytest.raises(runtime.DataValidationError, match="column 'cat' is missing"):
        scorer(batch().drop(columns=["cat"]))
    with pytest.raises(runtime.DataValidationError, match="key column 'id' is missing"):
        scorer(batch().drop(columns=["id"]))


def test_the_network_loads_with_servings_checks(tmp_path):
    root = make_project(tmp_path / "qs", port=8000, generate=False,
                        serving={"allowed_architectures": ["runtime.model:TabularMLP"], "max_parameters": 10_000})
    project = load_project(root)
    art = tiny_bundle().to_artifacts()
    shipped = _Shipped("m", 2, art)
    net = _load_network(project, shipped, "m", 2)
    assert list(net.schema) == list(SCHEMA) and net.task.classes == ["no", "yes"]
    with pytest.raises(NotFoundError):
        shipped.read_artifact("m", 3, "model.json")
    other = _Shipped("m", 2, tiny_bundle(architecture="somewhere.else:Net").to_artifacts())
    with pytest.raises(ConfigError, match="not allowed to be served"):
        _load_network(project, other, "m", 2)
    small = make_project(tmp_path / "small", port=8000, generate=False, serving={"max_parameters": 10})
    with pytest.raises(ConfigError, match="max_parameters"):
        _load_network(load_project(small), shipped, "m", 2)


@pytest.mark.parametrize("ref, expected", [("churn", ("churn", "production")), ("churn@champion", ("churn", "champion")),
                                           ("churn/3", ("churn", 3)), ("churn@4", ("churn", 4))])
def test_references(ref, expected):
    assert parse_model_ref(ref, "production") == expected


@pytest.mark.parametrize("ref", ["../x", "churn/abc", "churn@../../x", "churn@", "/3"])
def test_bad_references_are_refused(ref):
    with pytest.raises(InvalidNameError):
        parse_model_ref(ref, "production")


def test_the_output_must_be_a_parquet_file_and_is_not_replaced_by_default(tmp_path):
    with pytest.raises(LoomError, match="must name a Parquet file"):
        _Output.of(tmp_path / "scores.csv")
    with pytest.raises(LoomError, match="must name a Parquet file"):
        _Output.of("s3://bucket/scores/")
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(LoomError, match="is a directory"):
        _Output.of(tmp_path / "dir.parquet").check(overwrite=True)
    (tmp_path / "old.parquet").write_bytes(b"old")
    with pytest.raises(LoomError, match="exists; pass --overwrite"):
        _Output.of(tmp_path / "old.parquet").check(overwrite=False)
    _Output.of(tmp_path / "old.parquet").check(overwrite=True)
    _Output.of(tmp_path / "new" / "s.parquet").check(overwrite=False)


def test_refusals_come_before_any_work(tmp_path):
    root = make_project(tmp_path / "qs", port=8000)
    out = tmp_path / "scores.parquet"
    out.write_bytes(b"previous")
    result = CliRunner().invoke(cli, ["score", "churn", "--input", str(root / "data" / "customers.csv"),
                                      "--output", str(out), "-p", str(root)])
    assert result.exit_code == 1 and "exists; pass --overwrite" in said(result)
    assert "Traceback" not in result.output and out.read_bytes() == b"previous"
    result = loom("score", "churn", "--input", str(root / "data" / "customers.csv"), "--output",
                  str(tmp_path / "new.parquet"), "-p", str(root))
    assert result.exit_code == 1 and "churn" in said(result) and "Traceback" not in result.output  # none registered
    result = loom("score", "churn", "--input", str(out), "--output", str(out), "-p", str(root))
    assert result.exit_code == 1 and "name the same file" in said(result)
    result = loom("score", "churn@../x", "--input", str(out), "--output", str(tmp_path / "x.parquet"), "-p", str(root))
    assert result.exit_code == 1 and "alias" in said(result) and "Traceback" not in result.output


# -- on the cluster ------------------------------------------------------------------------------------------


ROWS = 200_000
BAD = {5: ("contract", "weekly"), 6: ("monthly_charges", None), 7: ("payment_method", "bitcoin")}


@pytest.fixture(scope="module")
def scoring(tmp_path_factory, serve_port, ray_cluster):
    """The quickstart with a registered version, served, and 200k rows of its data with three bad ones."""
    work = tmp_path_factory.mktemp("score")
    root = make_project(work / "qs", port=serve_port, serving={"route_prefix": "/score"})
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["name"] = "score-test"
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    version = register_version(root, seed=1)
    import subprocess
    import sys

    big = work / "big.csv"
    subprocess.run([sys.executable, str(root / "generate_data.py"), "--rows", str(ROWS), "--seed", "7",
                    "--out", str(big)], check=True, capture_output=True)
    frame = pd.read_csv(big)
    for row, (column, value) in BAD.items():
        frame.loc[row, column] = value
    frame.to_csv(big, index=False)
    result = CliRunner().invoke(cli, ["deploy", str(root), "--detach"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    url = result.output.strip().splitlines()[-1]
    yield {"root": root, "work": work, "big": big, "frame": frame, "url": url, "version": version}
    shutdown(load_project(root))


@pytest.mark.slow
def test_loom_score_equals_the_served_predictions(scoring):
    out = scoring["work"] / "scores.parquet"
    result = loom("score", "churn", "--input", str(scoring["big"]), "--output", str(out), "-p", str(scoring["root"]))
    assert result.exit_code == 0, result.output
    frame = scoring["frame"]
    assert "rows/s" in said(result) and f"3 of {len(frame):,} rows failed the checks" in said(result)
    scores = pq.read_table(out).to_pandas()
    assert len(scores) == len(frame) - len(BAD)
    assert list(scores.columns) == ["customer_id", "event_time", PREDICTION, PROBABILITIES, VERSION]
    assert (scores[VERSION] == scoring["version"]).all()
    meta = pq.read_schema(out).metadata
    assert meta[b"loom.model"] == b"churn" and json.loads(meta[b"loom.classes"]) == [False, True]

    frame = frame.assign(event_time=pd.to_datetime(frame["event_time"], utc=True).dt.tz_localize(None))  # UTC, naive
    merged = frame.drop(index=list(BAD)).merge(scores, on=["customer_id", "event_time"], validate="one_to_one")
    assert len(merged) == len(scores)
    sample = merged.sample(300, random_state=3)
    served = httpx.post(f"{scoring['url']}/predict/churn", json=records(sample), timeout=60)
    assert served.status_code == 200, served.text
    body = served.json()
    assert body["version"] == scoring["version"]
    assert sample[PREDICTION].tolist() == body["predictions"]
    assert np.allclose(np.stack(sample[PROBABILITIES].to_numpy()), np.array(body["probabilities"]), atol=2e-6)

    quarantined = sorted(load_project(scoring["root"]).quarantine_dir.glob("score-churn-*.csv"))
    assert len(quarantined) == 1
    bad = pd.read_csv(quarantined[0])
    assert bad["_loom_row"].tolist() == list(BAD)
    assert bad.loc[0, "contract"] == "weekly" and "payment_method: value not in categories" in bad.loc[2, "_loom_problems"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.slow
def test_a_refused_or_failed_run_leaves_the_output_as_it_was(scoring):
    root, work = scoring["root"], scoring["work"]
    small = work / "small.csv"
    frame = scoring["frame"].head(1000).copy()
    frame.loc[:299, "contract"] = "weekly"  # 30% bad: above data.bad_rows.max_fraction (0.1)
    frame.to_csv(small, index=False)
    out = work / "previous.parquet"
    first = loom("score", f"churn/{scoring['version']}", "--input", str(small), "--output", str(out), "-p", str(root),
                 "--max-bad-fraction", "0.5")
    assert first.exit_code == 0, first.output
    before = out.read_bytes()
    assert pq.read_table(out).num_rows == 700

    refused = loom("score", "churn", "--input", str(small), "--output", str(out), "-p", str(root))
    assert refused.exit_code == 1 and "exists" in said(refused)
    failed = loom("score", "churn@production", "--input", str(small), "--output", str(out), "-p", str(root),
                  "--overwrite")
    assert failed.exit_code == 1, failed.output
    assert "300 of 1,000 rows have problems" in said(failed) and "Traceback" not in failed.output
    assert out.read_bytes() == before
    assert not [p for p in work.iterdir() if p.name.startswith(".")]

    again = runtime.score(root, "churn", str(small), out, overwrite=True, keys=["customer_id"], max_bad_fraction=1)
    assert (again.rows, again.scored, again.quarantined) == (1000, 700, 300)
    assert pq.read_table(out).column_names == ["customer_id", PREDICTION, PROBABILITIES, VERSION]
