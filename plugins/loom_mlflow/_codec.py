"""How Loom's values map onto MLflow's: params as display-friendly strings that decode back exactly, and the
immutable metadata of a model version as a JSON document stored next to its artifacts."""

from __future__ import annotations

import json
from typing import Any

#: The document holding a version's params, metrics, lineage and artifact digests, beside its artifacts.
VERSION_DOCUMENT = "loom-version.json"
#: Tag and folder prefix Loom reserves for its own bookkeeping; hidden from users' tags.
PREFIX = "loom."
#: Loom's own bookkeeping tags in MLflow; every other ``loom.*`` tag is a user's (the retrain loop's ``loom.loop``,
#: ``loom.judge.*``) and round-trips.
RESERVED_TAGS = frozenset({f"{PREFIX}artifact_path", f"{PREFIX}artifact_holder", f"{PREFIX}started_at"})


def encode_param(value: Any) -> str:
    """A param as MLflow shows it: strings as they are (``adam``), everything else as JSON (``0.003``,
    ``[64, 32]``). A string that would itself parse as JSON (``"3"``, ``"true"``) is stored JSON-quoted, so
    :func:`decode_param` can always tell ``3`` from ``"3"``."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, sort_keys=True)


def decode_param(text: str) -> Any:
    """The inverse of :func:`encode_param`."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def version_document(params: str, metrics: str, lineage: str, digests: dict[str, str]) -> bytes:
    """The version document from already-encoded JSON parts and the artifacts' SHA-256 digests."""
    return (
        f'{{"format": "loom-version/1", "params": {params}, "metrics": {metrics}, "lineage": {lineage}, '
        f'"artifacts": {json.dumps(digests, sort_keys=True)}}}'
    ).encode()


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    """Tags without MLflow's (``mlflow.*``) and this plugin's (:data:`RESERVED_TAGS`) own bookkeeping."""
    return {k: v for k, v in tags.items() if k not in RESERVED_TAGS and not k.startswith("mlflow.")}
