"""The model-registry protocol: versioned, aliased model artifacts with lineage. Never pickles anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .errors import InvalidNameError
from .names import check_name

#: Artifact file suffixes a registry must refuse: they are (or may be) pickles, which run code when loaded.
FORBIDDEN_ARTIFACT_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".joblib", ".ckpt", ".bin")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model."""

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


@runtime_checkable
class ModelRegistry(Protocol):
    """Built by ``factory(*, state_dir, options)`` registered with ``loom_register_registries``."""

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
    ) -> ModelVersion:
        """Store a new version atomically (all artifacts or nothing) with the next version number."""
        ...

    def get_version(self, name: str, ref: int | str) -> ModelVersion:
        """Look a version up by number or alias; raise :class:`runtime.NotFoundError` if absent."""
        ...

    def read_artifact(self, name: str, version: int, artifact: str) -> bytes:
        """Return one artifact's bytes."""
        ...

    def list_models(self) -> list[str]:
        ...

    def list_versions(self, name: str) -> list[ModelVersion]:
        ...

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
        ...


def check_artifact_name(artifact: str) -> str:
    """Reject unsafe artifact names and pickle formats."""
    check_name(artifact, "artifact name")
    if artifact.lower().endswith(FORBIDDEN_ARTIFACT_SUFFIXES):
        raise InvalidNameError(f"artifact {artifact!r} looks like a pickle; Loom stores weights as safetensors only")
    return artifact


def parse_ref(ref: int | str) -> int | str:
    """``3``, ``"3"`` -> version 3; ``"production"`` -> alias."""
    if isinstance(ref, int):
        return ref
    s = str(ref)
    if s.isdigit():
        return int(s)
    return check_name(s, "alias")


RegistryFactory = Any
