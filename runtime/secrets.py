"""Secrets in the project file: ``${VAR}`` interpolation, and redaction wherever a value may be shown or stored.

``loom.yaml`` never needs a credential written inline: any string value may say ``${VAR}`` (the environment
variable, which must be set) or ``${VAR:-default}`` (the default when it is unset or empty); ``$${`` writes a literal
``${``. Interpolation runs on the parsed YAML, value by value, so a variable's value is never parsed as YAML.

:func:`redact` takes the secrets out of a string before it is printed, logged, stored in lineage or put in an error:
the password of a URI's user info (``postgresql://loom:***@db/loom``), and the values of query parameters that name
a credential (``?token=***``). :func:`redact_data` does it to every string of a structure (and masks values under
credential-named keys), :func:`redact_error` to an exception's message in place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")
#: Query parameters whose values are credentials.
SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "secret", "token", "access_token", "api_key", "apikey",
                           "key", "sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
                           "aws_secret_access_key", "aws_session_token", "sas", "sastoken", "client_secret"})
MASK = "***"
# scheme://user:password@host -> the password, up to the last '@' before the host (as urllib splits it), so a
# password holding an unencoded '@' or ':' is masked whole.
_USERINFO = re.compile(r"(?P<pre>(?:[A-Za-z][A-Za-z0-9+.-]*://)[^/@:\s]*:)(?P<secret>[^/?#\s]+)(?=@)")
_QUERY = re.compile(r"(?P<pre>[?&;](?P<name>[A-Za-z0-9_.-]+)=)(?P<value>[^&;#\s'\"]*)")


def interpolate(data: Any, environ: Mapping[str, str] | None = None, *, where: str = "") -> Any:
    """``data`` (parsed YAML) with ``${VAR}`` / ``${VAR:-default}`` replaced in every string; an unset variable
    without a default is a :class:`ConfigError` naming it and the key it is in."""
    env = os.environ if environ is None else environ
    if isinstance(data, dict):
        return {k: interpolate(v, env, where=f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, where=f"{where}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str) or "$" not in data:
        return data

    def sub(m: re.Match[str]) -> str:
        text = m.group(0)
        if text == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        if name is None:
            raise ConfigError(f"{where or 'a value'}: malformed variable {text!r}; write ${{NAME}} or "
                              f"${{NAME:-default}} (and $${{ for a literal ${{)")
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise ConfigError(f"{where or 'a value'} uses ${{{name}}}, but the environment variable {name} is not set "
                          f"(set it, or give a default: ${{{name}:-value}})")

    return _VAR.sub(sub, data)


def _secrets_of(url: str) -> set[str]:
    """The password of ``url`` (user info or ``?password=``), as written and percent-decoded."""
    from urllib.parse import parse_qs, unquote, urlsplit

    found: set[str] = set()
    try:
        parts = urlsplit(url)
        if parts.password:
            found |= {parts.password, unquote(parts.password)}
        for value in parse_qs(parts.query).get("password", []):
            found |= {value, unquote(value)}
    except ValueError:  # an unparseable URL: the patterns below still mask what looks like user info
        pass
    return {s for s in found if s}


def redact(text: Any, *, url: str | None = None) -> str:
    """``text`` as a string with URI passwords and credential query parameters replaced by ``***``. With ``url``
    (the URL ``text`` is about, e.g. a database driver's message), that URL's password is also masked wherever it
    appears in any spelling: drivers quote pieces of a connection string they cannot parse (libpq's ``invalid
    percent-encoded token: "<password>"``), which the ``user:password@`` pattern alone would not catch."""
    s = str(text)
    if "@" in s:
        s = _USERINFO.sub(lambda m: m.group("pre") + MASK, s)
    if "=" in s:
        s = _QUERY.sub(lambda m: m.group("pre") + (MASK if m.group("name").lower() in SECRET_PARAMS and m.group("value")
                                                   else m.group("value")), s)
    if url:
        for secret in sorted(_secrets_of(url), key=len, reverse=True):
            s = s.replace(secret, MASK)
    return s


def redact_data(data: Any, *, keys: bool = True) -> Any:
    """Every string inside ``data`` (dicts, lists, tuples) redacted, and values under keys that name a credential
    (``password``, ``token``, ...) masked whole; anything else unchanged. ``keys=False`` redacts the strings only
    (for data whose keys are user names, such as column names, rather than option names)."""
    if isinstance(data, Mapping):
        return {k: (MASK if keys and isinstance(k, str) and _secret_key(k) and data[k] not in (None, "")
                    else redact_data(v, keys=keys)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(redact_data(v, keys=keys) for v in data)
    return redact(data) if isinstance(data, str) else data


#: Attributes of exceptions that hold (part of) their message.
_MESSAGE_ATTRIBUTES = ("source", "strerror", "filename", "filename2", "message", "msg", "reason")


def redact_error(err: BaseException) -> BaseException:
    """``err`` with the secrets taken out of its message, in place, so its type, attributes and traceback stay
    (and so does its place in a ``raise ... from`` chain); returns it. Covers the string arguments every exception
    keeps in ``args``, the string attributes common exceptions build their message from (``OSError.strerror`` and
    ``filename``, ``message``, ``msg``, ``reason``) and the ``source`` and ``problems`` of
    :class:`runtime.DataValidationError`; an exception that builds its message some other way is left as it is
    (wrap it in a :class:`runtime.LoomError` with a redacted message instead)."""
    try:
        args = tuple(redact(a) if isinstance(a, str) else a for a in err.args)
        if args != err.args:
            err.args = args
        for name in _MESSAGE_ATTRIBUTES:
            value = getattr(err, name, None)
            if isinstance(value, str) and redact(value) != value:
                setattr(err, name, redact(value))
        problems = getattr(err, "problems", None)
        if isinstance(problems, list) and all(isinstance(p, str) for p in problems):
            err.problems = [redact(p) for p in problems]  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - read-only attributes of an extension type: never fail over the error itself
        pass
    return err


#: Mapping keys whose values are credentials (``key`` alone is not one: lineage has a ``key``).
SECRET_KEYS = frozenset({"password", "passwd", "pwd", "secret", "token", "access_token", "api_key", "apikey",
                         "client_secret", "aws_secret_access_key", "aws_session_token", "auth_token"})


def _secret_key(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return k in SECRET_KEYS or k.endswith(("_password", "_secret", "_api_key")) or (
        k.endswith("_token") and not k.endswith("_env"))
