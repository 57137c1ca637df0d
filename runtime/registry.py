"""The model-registry protocol: versioned, aliased model artifacts with lineage. Never pickles anything.

A registry is the contract between training and serving. Every backend (the built-in ``local`` one, MLflow, a
third-party plugin) must behave the same way, which ``runtime.testing``'s registry contract suite checks:

- version numbers are allocated by the registry, start at 1, grow by one per registration (also when many
  processes register at once) and are never reused, even after a version is deleted;
- a registration stores all of its artifacts or none, and a version is visible only once complete;
- params, metrics, lineage and artifacts of a version never change; tags, description and aliases may;
- names (models, aliases, artifacts) are checked with :func:`runtime.check_name`, so none can traverse paths;
- artifacts are bytes under safe names; pickle formats are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .errors import InvalidNameError
from .names import check_name

#: Artifact file suffixes a registry must refuse: they are (or may be) pickles, which run code when loaded.
FORBIDDEN_ARTIFACT_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".joblib", ".ckpt", ".bin")

#: The reference that always means a model's newest version; it cannot be used as an alias.
LATEST = "latest"

#: Aliases that would read as something else: version numbers (``3``), MLflow's version references (``v3``) and
#: :data:`LATEST`. Refused on every backend so an alias means the same thing whichever registry holds it.
_RESERVED_ALIAS = re.compile(r"^(\d+|[vV]\d+|latest)$")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model.

    ``params``, ``metrics``, ``lineage`` and ``artifacts`` are fixed at registration; ``aliases``, ``tags`` and
    ``description`` can change later. ``run_id`` links the version to the tracked run that trained it, if any.
    """

    name: str
    version: int
    created_at: float
    aliases: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    artifacts: tuple[str, ...] = ()
    run_id: str | None = None


@runtime_checkable
class ModelRegistry(Protocol):
    """Built by ``factory(*, state_dir, options)`` registered with ``loom_register_registries``.

    Look-ups of something absent raise :class:`runtime.NotFoundError` saying what does exist; unsafe names raise
    :class:`runtime.InvalidNameError` before anything is written. A registry may also implement
    :class:`runtime.Tracker` (experiment tracking); the pipeline then records each training run in it and links
    the registered version to that run.

    Optional attributes (read with ``getattr(registry, name, default)``; a registry need not define them):

    - ``shared`` (optional, default False): whether serving replicas on other nodes can read it directly; when
      False Loom ships the versions it serves through Ray's object store. True only when every node reaches both
      the metadata and the artifacts on its own (the ``local`` registry on PostgreSQL with artifacts on ``s3://``
      or another object store), never for a store on one host's disk.
    - ``open_model_uri(uri) -> (format, files, source)`` (optional): a model the store holds that was not
      registered through Loom, named by the store's own URI (MLflow's ``models:/NAME/VERSION``), for ``loom models
      import NAME --from URI``. ``format`` is a Loom model format (``onnx``, ``torch``); ``files`` maps where each
      file came from (a URI ending in the file's name) to its bytes, exactly one file: the network as that format's
      first artifact; ``source`` is a JSON-serialisable record of the origin (URI, resolved version, run id),
      stored in the new version's ``imported`` lineage. The caller passes the file to
      :func:`runtime.formats.import_model`, which checks everything before registering. It must never unpickle or
      run anything from the artifacts; it raises :class:`runtime.NotFoundError` for an unknown model or version
      and :class:`runtime.LoomError` naming what was found for a model it cannot import (a pickled flavor).
    """

    def register(
        self,
        name: str,
        artifacts: dict[str, bytes],
        *,
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        description: str = "",
        alias: str | None = None,
        run_id: str | None = None,
    ) -> ModelVersion:
        """Store a new version atomically (all artifacts or nothing) with the next version number.

        ``params``, ``metrics`` and ``lineage`` are JSON-serialisable dicts, stored exactly; ``alias`` is pointed
        at the new version (moved if it pointed elsewhere); ``run_id`` names the tracked run that produced it.
        """
        ...

    def get_version(self, name: str, ref: int | str) -> ModelVersion:
        """Look a version up by number (``3``, ``"3"``), alias (``"production"``) or ``"latest"``."""
        ...

    def read_artifact(self, name: str, version: int, artifact: str) -> bytes:
        """Return one artifact's bytes exactly as registered (a corrupted copy raises, never returns)."""
        ...

    def list_models(self) -> list[str]:
        """Names of every registered model, sorted."""
        ...

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every live version of ``name``, lowest number first."""
        ...

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
        ...

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias``; the version it pointed at stays."""
        ...

    def delete_version(self, name: str, version: int) -> None:
        """Delete a version and every alias pointing at it. Its number is never handed out again."""
        ...

    def set_tags(self, name: str, version: int, tags: dict[str, str]) -> None:
        """Replace the tags of one version."""
        ...

    def set_description(self, name: str, version: int, description: str) -> None:
        """Replace the description of one version."""
        ...


def check_artifact_name(artifact: str) -> str:
    """Reject unsafe artifact names and pickle formats."""
    check_name(artifact, "artifact name")
    if artifact.lower().endswith(FORBIDDEN_ARTIFACT_SUFFIXES):
        raise InvalidNameError(f"artifact {artifact!r} looks like a pickle; Loom stores weights as safetensors only")
    return artifact


def check_alias(alias: object) -> str:
    """Return ``alias`` if it is a safe name that cannot be mistaken for a version reference, else raise
    :class:`InvalidNameError` (``3``, ``v3`` and ``latest`` are refused)."""
    alias = check_name(alias, "alias")
    if _RESERVED_ALIAS.match(alias):
        raise InvalidNameError(
            f"alias {alias!r} is reserved: it would read as a version reference (digits, 'v<digits>' and "
            f"{LATEST!r} are not allowed as aliases)"
        )
    return alias


def parse_ref(ref: int | str) -> int | str:
    """``3``, ``"3"`` -> version 3; ``"production"`` -> alias; ``"latest"`` stays ``"latest"``."""
    if isinstance(ref, bool):
        raise InvalidNameError(f"version reference must be a number or an alias, got {ref!r}")
    if isinstance(ref, int):
        return ref
    s = str(ref)
    if s.isascii() and s.isdigit():
        return int(s)
    return check_name(s, "alias")


RegistryFactory = Any
