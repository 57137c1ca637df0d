"""Shared by the example tests: copy an example into a temporary directory with the session's serving port."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def copy_example(name: str, dest: Path, port: int, **overrides) -> Path:
    root = dest / name
    shutil.copytree(EXAMPLES / name, root, ignore=shutil.ignore_patterns("data", ".loom", "__pycache__"))
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["serving"]["port"] = port
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def triton(url: str):
    """tritonclient's HTTP module and a client of ``url``."""
    import tritonclient.http as tc

    return tc, tc.InferenceServerClient(url=url.removeprefix("http://"))
