"""Checking and encoding the metadata users hand to the registry, before anything is written."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from runtime import check_artifact_name

#: How many names an error message lists before summarising the rest.
_LISTED = 20


def listing(items: Iterable[object]) -> str:
    """``a, b, c`` (at most ``_LISTED`` items, then ``and N more``), or ``none``."""
    names = [str(i) for i in items]
    if not names:
        return "none"
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown} and {len(names) - _LISTED} more"


def check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be an int, got {version!r}")
    return version


def to_json(value: Mapping[str, Any] | None, what: str) -> str:
    """Canonical JSON of a dict (``{}`` for ``None``)."""
    if value is None:
        return "{}"
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(dict(value), sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON-serialisable: {err}") from None


def check_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    tags = dict(tags or {})
    for key, value in tags.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise TypeError(f"tags must map non-empty strings to strings, got {key!r}: {value!r}")
    return tags


def check_artifacts(artifacts: Mapping[str, bytes]) -> dict[str, bytes | bytearray | memoryview]:
    """Validate every artifact name and payload before anything is written."""
    if not isinstance(artifacts, Mapping):
        raise TypeError(f"artifacts must be a dict of name -> bytes, got {type(artifacts).__name__}")
    for artifact, data in artifacts.items():
        check_artifact_name(artifact)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"artifact {artifact!r} must be bytes, got {type(data).__name__}")
    return dict(artifacts)
