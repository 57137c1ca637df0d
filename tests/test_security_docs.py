"""docs/security.md cannot drift from the code: its settings block is real ServingConfig fields with their real
defaults where it shows them, every test file it cites exists, and the route table matches the app's scopes."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from runtime.config import ServingConfig
from runtime.serving.app import INFERENCE, OPEN, OPERATOR, route_scope

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "security.md").read_text()


def test_settings_block_names_real_settings():
    block = re.search(r"```yaml\n(.*?)```", DOC, re.S).group(1)
    shown = yaml.safe_load(block)["serving"]
    fields = ServingConfig.model_fields
    assert set(shown) <= set(fields), set(shown) - set(fields)
    defaults = ServingConfig().model_dump()
    for key in ("max_body_bytes", "max_rows", "max_string_length", "max_json_depth", "max_parameters",
                "allowed_architectures", "host"):
        assert shown[key] == defaults[key], key
    ServingConfig.model_validate(shown)  # the example itself is valid


def test_cited_tests_exist():
    cited = set(re.findall(r"`(tests/test_\w+\.py)`", DOC))
    assert len(cited) >= 8
    missing = [c for c in cited if not (ROOT / c).exists()]
    assert not missing, missing


def test_route_table_matches_the_scopes():
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert route_scope(path) == OPEN and f"`{path}`" in DOC
    for path in ("/predict/churn", "/v2/models/churn/infer", "/v2/models/churn/versions/2/infer", "/invocations",
                 "/models/churn/invocations", "/v2", "/v2/models/churn", "/docs", "/openapi.json"):
        assert route_scope(path) == INFERENCE, path
    for path in ("/feedback/churn", "/monitoring/churn/drift", "/metrics", "/models", "/v2/health/live/x",
                 "/v2/health", "/metrics/", "/nothing", "//models", "/models/churn"):
        assert route_scope(path) == OPERATOR, path


def test_readme_points_to_the_threat_model():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Security", 1)[1].split("\n## ", 1)[0]
    assert "docs/security.md" in section
