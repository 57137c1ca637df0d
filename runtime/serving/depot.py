"""Model versions shipped to replicas through Ray's object store, for registries that other nodes cannot read.

A project on embedded defaults keeps its registry on the driver's disk (SQLite plus an artifact directory). A
serving replica on another node of a cluster cannot open it, so before a routing table is applied the driver puts
each version it names (metadata, weights, reference sample) into the project's **depot**: a detached Ray actor
that holds them in memory, outlives the driver (``loom deploy --detach``), and hands them to any replica, on any
node, that loads the version, including one Ray starts again later. Registries that every node reaches on its own
(``shared = True``: PostgreSQL plus object storage, an MLflow server) skip the depot: replicas read them directly.

The depot keeps the versions of the table being applied and of the one before it (replicas may still be moving
between them) and drops the rest. If the depot itself is lost (its node died), replicas that are already running
keep serving; a replica started afterwards falls back to opening the registry itself (which works on the driver's
node), and the next ``loom deploy`` fills the depot again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

from ..config import Project
from ..errors import NotFoundError
from ..registry import ModelRegistry, ModelVersion

log = logging.getLogger("loom.serving")

NAMESPACE = "loom"
#: How long a replica waits for the depot to hand over a version.
FETCH_TIMEOUT_S = 300

Key = tuple[str, int]


def is_shared(registry: Any) -> bool:
    """Whether a registry is readable from every node on its own (a plugin says so with ``shared = True``)."""
    return bool(getattr(registry, "shared", False))


def depot_name(project: Project) -> str:
    digest = hashlib.sha256(str(project.root).encode()).hexdigest()[:10]
    return f"loom-depot-{project.config.name}-{digest}"


class VersionDepot:
    """The actor: model versions by ``(name, version)``, each as its :class:`ModelVersion` and artifact bytes."""

    def __init__(self) -> None:
        self._versions: dict[Key, tuple[ModelVersion, dict[str, bytes]]] = {}

    def has(self) -> list[Key]:
        return list(self._versions)

    def put(self, key: Key, version: ModelVersion, artifacts: dict[str, bytes]) -> None:
        self._versions[tuple(key)] = (version, artifacts)

    def keep(self, keys: list[Key]) -> int:
        """Drop every version not in ``keys``; returns how many remain."""
        wanted = {tuple(k) for k in keys}
        for key in [k for k in self._versions if k not in wanted]:
            del self._versions[key]
        return len(self._versions)

    def get(self, key: Key) -> tuple[ModelVersion, dict[str, bytes]] | None:
        return self._versions.get(tuple(key))


def _actor(project: Project, *, create: bool) -> Any:
    import ray

    if not create:
        try:
            return ray.get_actor(depot_name(project), namespace=NAMESPACE)
        except ValueError:
            return None
    # num_cpus=0: it only holds bytes; restarted (empty) by Ray if its process dies, and refilled by the next deploy.
    return ray.remote(VersionDepot).options(name=depot_name(project), namespace=NAMESPACE, get_if_exists=True,
                                            lifetime="detached", max_restarts=-1, max_task_retries=-1,
                                            num_cpus=0).remote()


def ship(project: Project, registry: ModelRegistry, keys: Iterable[Key], keep: Iterable[Key] = ()) -> int:
    """Make sure the depot holds every version in ``keys`` (read from ``registry`` on this process), and drop
    those in neither ``keys`` nor ``keep``. Returns the bytes shipped now."""
    import ray

    depot = _actor(project, create=True)
    keys = [(n, int(v)) for n, v in keys]
    present = {tuple(k) for k in ray.get(depot.has.remote())}
    shipped, pending = 0, []
    for name, version in keys:
        if (name, version) in present:
            continue
        mv = registry.get_version(name, version)
        wanted = list(mv.artifacts)  # whatever its format holds (model.safetensors, model.onnx, ...) and its reference
        artifacts = {a: registry.read_artifact(name, version, a) for a in wanted}
        shipped += sum(len(b) for b in artifacts.values())
        pending.append(depot.put.remote((name, version), mv, artifacts))
    ray.get(pending)
    ray.get(depot.keep.remote([*keys, *[(n, int(v)) for n, v in keep]]))
    return shipped


def stop_depot(project: Project) -> None:
    """End the project's depot, if it runs."""
    import ray

    depot = _actor(project, create=False)
    if depot is not None:
        ray.kill(depot, no_restart=True)


class DepotRegistry:
    """The read side of a registry, as a replica sees it: versions come from the depot, or, for a version the depot
    does not hold, from ``fallback()`` (the project's registry plugin, opened on first need)."""

    shared = False

    def __init__(self, project: Project, fallback: Any):
        self._project = project
        self._fallback_factory = fallback
        self._fallback: Any = None
        self._cache: dict[Key, tuple[ModelVersion, dict[str, bytes]]] = {}

    def _registry(self) -> Any:
        if self._fallback is None:
            self._fallback = self._fallback_factory()
        return self._fallback

    def _fetch(self, key: Key) -> tuple[ModelVersion, dict[str, bytes]] | None:
        if key in self._cache:
            return self._cache[key]
        import ray

        depot = _actor(self._project, create=False)
        got = None
        if depot is not None:
            try:
                got = ray.get(depot.get.remote(key), timeout=FETCH_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001 - the depot is an optimisation over the registry: say, go on
                log.warning("model depot did not answer for %s v%d (%s); reading the registry", *key, err)
        if got is not None:
            self._cache = {key: got}  # one version at a time: what a load needs, not every version ever served
        return got

    def get_version(self, name: str, ref: int | str) -> ModelVersion:
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            got = self._fetch((name, int(ref)))
            if got is not None:
                return got[0]
        return self._registry().get_version(name, ref)

    def read_artifact(self, name: str, version: int, artifact: str) -> bytes:
        got = self._fetch((name, int(version)))
        if got is not None:
            data = got[1].get(artifact)
            if data is not None:
                return data
            if artifact in got[0].artifacts:
                return self._registry().read_artifact(name, version, artifact)
            raise NotFoundError(f"model {name!r} v{version} has no artifact {artifact!r}")
        return self._registry().read_artifact(name, version, artifact)

    def __getattr__(self, name: str) -> Any:  # anything else a replica asks (never writes) goes to the registry
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._registry(), name)


__all__ = ["DepotRegistry", "VersionDepot", "depot_name", "is_shared", "ship", "stop_depot"]
