"""What a trained version was made from, as one key: the data's fingerprints, the project's settings that shape
training, and the code (Loom, torch, the project's own Python files). ``loom up`` reuses a registered version with
the same key instead of training an identical one again (``--retrain`` trains anyway).

Left out of the key on purpose: ``serving:`` and ``monitoring:`` (except ``monitoring.reference_rows``, which
shapes the reference sample stored with the version), and the git commit (a commit that touches only the README
must not force a retrain); the project's ``*.py`` files are hashed instead.

Secrets are left out too: URIs (the fingerprints' and every URI in the settings) are hashed as
:func:`runtime.redact` shows them, and plugin options under credential-named keys are masked
(:func:`runtime.redact_data`). A new password for the same database is the same data, so it does not force a
retrain; a URI or option without a secret hashes exactly as it did before redaction existed, so keys made then
still match.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
from collections.abc import Mapping
from pathlib import Path

from ._version import __version__
from .config import Project
from .registry import ModelRegistry, ModelVersion
from .secrets import redact, redact_data

#: Where a version keeps its key: ``lineage["key"]`` (fixed at registration, unlike tags).
LINEAGE_KEY = "key"
#: Directories of a project that hold no code of its own.
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}


def lineage_key(project: Project, fingerprints: Mapping[str, str]) -> str:
    """The key of training ``project`` on data with these fingerprints (source URI -> fingerprint)."""
    settings = _settings(project)
    fingerprints = {redact(uri): fingerprint for uri, fingerprint in fingerprints.items()}
    h = hashlib.sha256()
    for part in (json.dumps(dict(sorted(fingerprints.items()))), json.dumps(settings, sort_keys=True),
                 __version__, _version("torch")):
        h.update(part.encode())
        h.update(b"\0")
    for path in project_code(project):
        h.update(path.relative_to(project.root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"sha256:{h.hexdigest()}"


def _settings(project: Project) -> dict:
    """The settings that shape training, as hashed: every string redacted (column names and categories are kept:
    they hold no ``scheme://user:password@`` or ``?token=``), and the plugin options of the data source, the feature
    store, each view's own source and the registry masked under credential-named keys as well."""
    cfg = project.config
    settings = redact_data(cfg.model_dump(mode="json", exclude={"serving", "monitoring", "state_dir"}), keys=False)
    settings["reference_rows"] = cfg.monitoring.reference_rows
    for section in (settings["data"], settings["features"], settings["registry"],
                    *settings["features"]["views"].values()):
        section["options"] = redact_data(section["options"])
    return settings


def project_code(project: Project) -> list[Path]:
    """The project's own Python files (an architecture, plugins, a data generator), outside hidden directories
    and the state directory."""
    root, state = project.root, project.state_dir
    out = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS and here / d != state)
        out += [here / f for f in sorted(files) if f.endswith(".py")]
    return out


def find_version(registry: ModelRegistry, model: str, key: str) -> ModelVersion | None:
    """The latest registered version of ``model`` with this lineage key, if any."""
    from .errors import NotFoundError

    try:
        versions = registry.list_versions(model)
    except NotFoundError:
        return None
    matching = [v for v in versions if v.lineage.get(LINEAGE_KEY) == key]
    return max(matching, key=lambda v: v.version) if matching else None


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return ""
