"""Loom's exception hierarchy: every error a user sees is one of these, short and actionable."""

from __future__ import annotations


class LoomError(Exception):
    """Base class of every error Loom raises on purpose."""


class ConfigError(LoomError):
    """The project file is missing or invalid."""


class PluginError(LoomError):
    """A plugin failed: the message names the plugin, its distribution and the hook."""

    def __init__(self, plugin: str, hook: str, message: str, *, dist: str | None = None):
        self.plugin = plugin
        self.hook = hook
        self.dist = dist
        where = f"plugin {plugin!r}" + (f" (from {dist})" if dist else "")
        super().__init__(f"{where} failed in hook {hook}: {message}")


class DataValidationError(LoomError):
    """Data does not match the schema declared in the project file."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"data from {source} failed validation:\n{lines}")


class NotFoundError(LoomError):
    """A named thing (model, version, alias, feature view, plugin kind) does not exist."""


class InvalidNameError(LoomError, ValueError):
    """A user-supplied name is unsafe (path traversal, control characters, ...)."""
