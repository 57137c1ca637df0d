"""Validation of user-supplied names that end up in paths, URLs and SQL keys."""

from __future__ import annotations

import re
import unicodedata

from .errors import InvalidNameError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is safe to use as a path segment, else raise :class:`InvalidNameError`.

    Allowed: letters, digits, ``_``, ``-`` and ``.`` (not leading, never ``..``), at most 128 characters.
    Rejects path separators, ``..``, percent-encoding and control characters with a message saying which.
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"{what} must be a non-empty string, got {name!r}")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidNameError(f"{what} {name!r} contains control characters")
    if "/" in name or "\\" in name:
        raise InvalidNameError(f"{what} {name!r} contains a path separator")
    if ".." in name:
        raise InvalidNameError(f"{what} {name!r} contains '..'")
    if "%" in name:
        raise InvalidNameError(f"{what} {name!r} contains '%' (URL-encoded characters are not allowed)")
    if not _NAME.match(name):
        raise InvalidNameError(
            f"{what} {name!r} is invalid: use letters, digits, '_', '-' and '.', starting with a letter or digit"
        )
    return name
