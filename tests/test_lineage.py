"""The lineage key that lets a repeated `loom up` reuse the version it has, and `data.generate`, which makes an
example's data on the first run. Real project files, real local registry, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import edit_config as _edit
from conftest import make_project
from runtime import LoomError, NotFoundError, Pipeline, get_plugins, load_project
from runtime.lineage import LINEAGE_KEY, find_version, lineage_key

FINGERPRINTS = {"csv://data/customers.csv": "sha256:aaaa"}


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "qs", port=8000, generate=False)


def test_the_key_follows_data_settings_and_code_and_nothing_else(project):
    base = lineage_key(load_project(project), FINGERPRINTS)
    assert base.startswith("sha256:") and base == lineage_key(load_project(project), dict(FINGERPRINTS))
    assert lineage_key(load_project(project), {"csv://data/customers.csv": "sha256:bbbb"}) != base
    # serving, monitoring windows and files other than Python code do not change what training makes
    _edit(project, "serving", port=9123)
    _edit(project, "monitoring", window=77)
    (project / "README.md").write_text("notes")
    (project / ".loom").mkdir()
    (project / ".loom" / "scratch.py").write_text("x = 1")
    assert lineage_key(load_project(project), FINGERPRINTS) == base
    # the project's own code does
    (project / "models.py").write_text("class Net: ...\n")
    with_code = lineage_key(load_project(project), FINGERPRINTS)
    assert with_code != base
    # and so do the settings that shape training, and the reference sample
    _edit(project, "training", epochs=3)
    epochs = lineage_key(load_project(project), FINGERPRINTS)
    assert epochs != with_code
    _edit(project, "monitoring", reference_rows=10)
    assert lineage_key(load_project(project), FINGERPRINTS) != epochs


def test_find_version_returns_the_latest_version_with_the_key(project):
    proj = load_project(project)
    registry = get_plugins().registry("local", state_dir=proj.state_dir, options={})
    assert find_version(registry, "churn", "sha256:k") is None  # no model at all
    registry.register("churn", {"model.json": b"{}"}, lineage={LINEAGE_KEY: "sha256:k"})
    registry.register("churn", {"model.json": b"{}"}, lineage={LINEAGE_KEY: "sha256:other"})
    registry.register("churn", {"model.json": b"{}"}, lineage={LINEAGE_KEY: "sha256:k"})
    assert find_version(registry, "churn", "sha256:k").version == 3
    assert find_version(registry, "churn", "sha256:other").version == 2
    assert find_version(registry, "churn", "sha256:none") is None


def test_data_generate_makes_missing_data_once(project):
    assert not (project / "data").exists()
    pipe = Pipeline(project)
    data = pipe.ingest()
    assert (project / "data" / "customers.csv").is_file() and len(data.frame) > 1000
    assert "generate" in pipe.timings
    again = Pipeline(project)
    assert again.generate_data() is False  # the data is there now: nothing to make
    assert again.ingest().fingerprint == data.fingerprint


def test_data_generate_failure_names_the_script_and_shows_its_output(project):
    (project / "broken.py").write_text("import sys\nprint('no disk space left', file=sys.stderr)\nsys.exit(3)\n")
    _edit(project, "data", generate="broken.py")
    with pytest.raises(LoomError, match=r"(?s)'broken.py' failed with exit code 3.*no disk space left"):
        Pipeline(project).ingest()
    _edit(project, "data", generate="missing.py")
    with pytest.raises(LoomError, match="'missing.py', which is not a file"):
        Pipeline(project).ingest()


def test_without_data_generate_missing_data_is_still_an_error(project):
    cfg = yaml.safe_load((project / "loom.yaml").read_text())
    del cfg["data"]["generate"]
    (project / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(NotFoundError, match="no csv files match"):
        Pipeline(project).ingest()
