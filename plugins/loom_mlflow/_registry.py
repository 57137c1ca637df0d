"""``MlflowRegistry``: Loom's registry and tracker protocols on MLflow's model registry and tracking store.

Mapping: a Loom model is an MLflow registered model, a version a model version, an alias an alias; a run is an
MLflow run in the experiment of the same name. A version's artifacts are files under its run's artifacts
(``loom.models/<model>/<registration id>/``) with a :data:`VERSION_DOCUMENT` holding its params, metrics, lineage
and the SHA-256 of every artifact; weights stay safetensors, nothing goes through MLflow's pickling flavors.
A registration uploads everything first and then creates the model version in one call, so a crash leaves at
most unreferenced files, never a partial version; contended version creation is retried (it cannot create a
duplicate: each attempt is first looked up by its registration id).

What is read back from MLflow and becomes a path is checked before use, since anyone with write access to the
store can change a tag: a version's folder tag (:data:`_PATH_TAG`) must be a relative path of safe names (no
``..``, no absolute path, no backslash), run ids and the artifact names of a version document safe names; a
tampered value is a :class:`runtime.LoomError` naming it. Store URIs appear in messages as :func:`runtime.redact`
shows them (no password), and so does MLflow's own error text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Set before MLflow is imported: Loom never phones home (set MLFLOW_DISABLE_TELEMETRY=false to allow MLflow's
# usage telemetry), and MLflow's download progress bars do not belong in Loom's output.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from runtime import (  # noqa: E402
    LATEST,
    InvalidNameError,
    LoomError,
    MetricPoint,
    ModelVersion,
    NotFoundError,
    Run,
    check_alias,
    check_artifact_name,
    check_metrics,
    check_name,
    check_run_id,
    check_run_status,
    parse_ref,
    redact,
)

from ._codec import (  # noqa: E402
    PREFIX,
    RESERVED_TAGS,
    VERSION_DOCUMENT,
    decode_param,
    encode_param,
    user_tags,
    version_document,
)

#: MLflow keeps at most this many characters of a param value (and would silently truncate longer ones).
MAX_PARAM_CHARS = 6000
#: Tag holding a version's folder under its run's artifacts.
_PATH_TAG = f"{PREFIX}artifact_path"
#: Tag marking a run created only to hold a registration's artifacts (no tracked run was given).
_HOLDER_TAG = f"{PREFIX}artifact_holder"
#: Tag holding a run's start as a float, finer than MLflow's milliseconds, so runs order exactly.
_STARTED_TAG = f"{PREFIX}started_at"
_HOLDER_EXPERIMENT = "loom-registrations"
_STATUS = {"RUNNING": "running", "SCHEDULED": "running", "FINISHED": "finished", "FAILED": "failed",
           "KILLED": "killed"}
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
#: Error codes of a store that is busy rather than broken: the call may succeed if repeated.
_BUSY = ("TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED")
#: Attempts at creating a model version when concurrent writers collide on the version number.
_CREATE_ATTEMPTS = 40
_PAGE = 1000
_CACHE_LIMIT = 1024


def _quiet_lock_contention(record: logging.LogRecord) -> bool:
    """MLflow logs a traceback for every "database is locked" it meets; Loom retries those, so they are noise."""
    return "database is locked" not in record.getMessage()


logging.getLogger("mlflow.store.db.utils").addFilter(_quiet_lock_contention)


def _contended(err: MlflowException) -> bool:
    """Whether a failed version creation lost a race with concurrent writers (and may be retried)."""
    text = str(err.message).lower()
    return err.error_code in _BUSY or "locked" in text or "version creation error" in text


def _bytes(name: str, data: object) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"artifact {name!r} must be bytes, got {type(data).__name__}")
    return bytes(data)


def _json(value: dict[str, Any] | None, what: str) -> str:
    if value is None:
        return "{}"
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON-serialisable: {err}") from None


def _check_tags(tags: dict[str, str] | None) -> dict[str, str]:
    tags = dict(tags or {})
    for key, value in tags.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise TypeError(f"tags must map non-empty strings to strings, got {key!r}: {value!r}")
        if key in RESERVED_TAGS or key.startswith("mlflow."):
            raise InvalidNameError(f"tag {key!r} is reserved (MLflow's 'mlflow.*' and {', '.join(sorted(RESERVED_TAGS))})")
    return tags


def _safe_path(value: object, what: str) -> str:
    """``value`` (read back from MLflow) if it is a relative artifact path of safe names, else a
    :class:`LoomError` naming ``what``: no '..', no absolute path, no backslash, every segment a safe name."""
    if not isinstance(value, str) or not value:
        raise LoomError(f"{what} is empty or not a string; register the model again")
    problem = None
    if "\\" in value:
        problem = "it holds a backslash"
    elif value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        problem = "it is an absolute path"
    elif ".." in value.split("/"):
        problem = "it climbs out of its folder with '..'"
    else:
        for segment in value.split("/"):
            try:
                check_name(segment, "segment")
            except InvalidNameError as err:
                problem = str(err)
                break
    if problem:
        raise LoomError(f"{what} is {value!r}, which is not a safe artifact path: {problem}. Someone changed it in "
                        "MLflow; restore it or register the model again")
    return value


def _safe_name(value: object, what: str) -> str:
    """``value`` (read back from MLflow) if it is a safe name (:func:`runtime.check_name`), else a
    :class:`LoomError` naming ``what``."""
    try:
        return check_name(value, what)
    except InvalidNameError as err:
        raise LoomError(f"{err}: it was read back from MLflow, where someone changed it; restore it or register "
                        "the model again") from None


def _listing(items: list[Any]) -> str:
    return ", ".join(map(str, items[:20])) + (f" and {len(items) - 20} more" if len(items) > 20 else "") or "none"


class MlflowRegistry:
    """A :class:`runtime.ModelRegistry` and :class:`runtime.Tracker` on an MLflow tracking and registry store.

    Holds only URIs (the client is built on first use in each process), so it can be pickled to Ray workers.
    """

    def __init__(self, tracking_uri: str, registry_uri: str, artifact_root: str | None) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.artifact_root = artifact_root.rstrip("/") if artifact_root else None
        #: The stores as messages name them: passwords and credential parameters redacted.
        self.shown_tracking_uri = redact(tracking_uri)
        self.shown_registry_uri = redact(registry_uri)
        self._client: MlflowClient | None = None
        self._documents: dict[tuple[str, str], dict[str, Any]] = {}
        self._experiments: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"MlflowRegistry(tracking_uri={self.shown_tracking_uri!r}, registry_uri={self.shown_registry_uri!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def shared(self) -> bool:
        """Whether serving replicas on other nodes can read this registry directly: both stores are a tracking
        server (``http(s)://``) or a database server (any SQLAlchemy URL but ``sqlite``), and Loom's experiments
        keep their artifacts at a URI every node reaches (``s3://``, ``gs://``, ...; ``mlflow-artifacts:`` through a
        tracking server). False for a SQLite store, a local artifact directory (also ``file://``: Loom cannot tell
        a shared mount from a local disk), and a tracking server left to choose the artifact location (Loom cannot
        see where that is); Loom then ships the versions it serves through Ray's object store."""
        from urllib.parse import urlsplit

        def scheme(uri: str) -> str:
            found = urlsplit(uri).scheme.lower()
            return found if len(found) > 1 else ""  # C:\... is a Windows path, not a URI

        def served(uri: str) -> bool:
            kind = scheme(uri)
            return kind in ("http", "https") or kind.split("+", 1)[0] in ("postgresql", "postgres", "mysql", "mssql")

        if not (served(self.tracking_uri) and served(self.registry_uri)) or self.artifact_root is None:
            return False
        artifacts = scheme(self.artifact_root)
        if artifacts == "mlflow-artifacts":  # proxied by the tracking server
            return scheme(self.tracking_uri) in ("http", "https")
        return artifacts not in ("", "file", "local", "memory")

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            with self._errors("connecting"):
                self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn MLflow's exceptions into Loom's: absent things are :class:`NotFoundError`, the rest
        :class:`LoomError`, each naming the store."""
        try:
            yield
        except MlflowException as err:
            message = f"MLflow at {self.shown_registry_uri}: {doing}: {redact(err.message)}"
            if err.error_code in _MISSING:
                raise NotFoundError(message) from None
            raise LoomError(message) from None

    # -- models and versions ---------------------------------------------------------------------------------

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
        """Upload the artifacts and the version document under the run, then create the model version."""
        check_name(name, "model name")
        if alias is not None:
            check_alias(alias)
        if run_id is not None:
            check_run_id(run_id)
        if not isinstance(artifacts, dict):
            raise TypeError(f"artifacts must be a dict of name -> bytes, got {type(artifacts).__name__}")
        payload = {check_artifact_name(a): _bytes(a, data) for a, data in artifacts.items()}
        document = version_document(_json(params, "params"), _json(metrics, "metrics"), _json(lineage, "lineage"),
                                    {a: hashlib.sha256(data).hexdigest() for a, data in payload.items()})
        tags = _check_tags(tags)
        if not isinstance(description, str):
            raise TypeError(f"description must be a string, got {type(description).__name__}")

        holder = run_id is None
        if holder:
            run_id = self._holder_run(name)
        else:
            self._run_info(run_id)
        registration = uuid.uuid4().hex
        path = f"{PREFIX}models/{name}/{registration}"
        with tempfile.TemporaryDirectory(prefix="loom-mlflow-") as tmp:
            for artifact, data in payload.items():
                Path(tmp, artifact).write_bytes(data)
            Path(tmp, VERSION_DOCUMENT).write_bytes(document)
            with self._errors(f"uploading the artifacts of model {name!r}"):
                self.client.log_artifacts(run_id, tmp, artifact_path=path)
        source = f"{self._run_info(run_id).artifact_uri}/{path}"
        version_tags = {**tags, _PATH_TAG: path}
        if holder:
            version_tags[_HOLDER_TAG] = "true"
            with self._errors("closing the registration run"):
                self.client.set_terminated(run_id, "FINISHED")
        self._before_create(name)
        created = self._create_version(name, source, run_id, version_tags, description)
        if alias is not None:
            with self._errors(f"pointing alias {alias!r} of model {name!r} at version {created}"):
                self.client.set_registered_model_alias(name, alias, str(created))
        return self.get_version(name, created)

    def _before_create(self, name: str) -> None:
        """Test seam: runs in :meth:`register` after every file is uploaded, just before the version is created.
        The crash-safety test replaces it to kill a registration at that point."""

    def _holder_run(self, name: str) -> str:
        experiment = self._experiment_id(_HOLDER_EXPERIMENT, create=True)
        with self._errors(f"creating a run to hold the artifacts of model {name!r}"):
            run = self.client.create_run(experiment, run_name=f"register-{name}",
                                         tags={_HOLDER_TAG: "true", _STARTED_TAG: repr(time.time())})
        return run.info.run_id

    def _create_version(self, name: str, source: str, run_id: str, tags: dict[str, str], description: str) -> int:
        """Create the model version, retrying when concurrent writers collide: MLflow allocates numbers with a
        read-then-insert that SQLite refuses ("database is locked") and other databases retry only thrice."""
        registration = tags[_PATH_TAG]
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                try:
                    self.client.create_registered_model(name)
                except MlflowException as err:
                    if err.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                mv = self.client.create_model_version(name, source, run_id=run_id, tags=tags,
                                                      description=description or None)
                return int(mv.version)
            except MlflowException as err:
                if attempt == _CREATE_ATTEMPTS - 1 or not _contended(err):
                    raise LoomError(f"MLflow at {self.shown_registry_uri}: creating a version of model {name!r}: "
                                    f"{redact(err.message)}") from None
                done = self._find_registration(name, run_id, registration)
                if done is not None:  # the failed attempt did commit (its answer was lost)
                    return done
                time.sleep(random.uniform(0.01, 0.05 * (attempt + 1)))
        raise AssertionError("unreachable")

    def _find_registration(self, name: str, run_id: str, path: str) -> int | None:
        try:
            found = self.client.search_model_versions(f"run_id = '{run_id}'")
        except MlflowException:
            return None
        for mv in found:
            if mv.name == name and mv.tags.get(_PATH_TAG) == path:
                return int(mv.version)
        return None

    def get_version(self, name: str, ref: int | str) -> ModelVersion:
        """A version by number, alias or ``latest``."""
        check_name(name, "model name")
        return self._version(self._mlflow_version(name, parse_ref(ref)))

    def list_models(self) -> list[str]:
        with self._errors("listing models"):
            return sorted(m.name for m in self._pages(self.client.search_registered_models))

    def list_versions(self, name: str) -> list[ModelVersion]:
        check_name(name, "model name")
        self._require_model(name)
        versions = self._live_versions(name)  # MLflow's search leaves aliases out: add them from the model
        with self._errors(f"reading model {name!r}"):
            aliases = self.client.get_registered_model(name).aliases
        by_version: dict[str, list[str]] = {}
        for alias, number in aliases.items():
            by_version.setdefault(str(number), []).append(alias)
        # versions registered by MLflow's own tools are not Loom versions (``loom models import --from`` makes one)
        return [self._version(mv, by_version.get(str(mv.version), [])) for mv in versions
                if mv.tags.get(_PATH_TAG) is not None]

    def read_artifact(self, name: str, version: int, artifact: str) -> bytes:
        """Download one artifact and check it against the digest recorded at registration."""
        check_name(name, "model name")
        check_name(artifact, "artifact name")
        mv = self._mlflow_version(name, _version_number(version))
        digests: dict[str, str] = self._document(mv)["artifacts"]
        if artifact not in digests:
            raise NotFoundError(f"model {name!r} version {mv.version} has no artifact {artifact!r} "
                                f"(artifacts: {_listing(sorted(digests))})")
        run_id, folder = self._folder(mv)
        data = self._download(run_id, f"{folder}/{artifact}",
                              f"artifact {artifact!r} of model {name!r} version {mv.version}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != digests[artifact]:
            raise LoomError(f"artifact {artifact!r} of model {name!r} version {mv.version} is corrupt: it has "
                            f"sha256 {actual} but {digests[artifact]} was registered; register the model again")
        return data

    def set_alias(self, name: str, alias: str, version: int) -> None:
        check_name(name, "model name")
        check_alias(alias)
        mv = self._mlflow_version(name, _version_number(version))
        with self._errors(f"pointing alias {alias!r} of model {name!r} at version {mv.version}"):
            self.client.set_registered_model_alias(name, alias, mv.version)

    def delete_alias(self, name: str, alias: str) -> None:
        check_name(name, "model name")
        check_alias(alias)
        self._mlflow_version(name, alias)
        with self._errors(f"deleting alias {alias!r} of model {name!r}"):
            self.client.delete_registered_model_alias(name, alias)

    def delete_version(self, name: str, version: int) -> None:
        """Delete a version (MLflow keeps its number taken) and its aliases; its files stay with its run."""
        check_name(name, "model name")
        mv = self._mlflow_version(name, _version_number(version))
        with self._errors(f"deleting version {mv.version} of model {name!r}"):
            self.client.delete_model_version(name, mv.version)

    def set_tags(self, name: str, version: int, tags: dict[str, str]) -> None:
        check_name(name, "model name")
        new = _check_tags(tags)
        mv = self._mlflow_version(name, _version_number(version))
        with self._errors(f"setting the tags of version {mv.version} of model {name!r}"):
            for key in user_tags(mv.tags).keys() - new.keys():
                self.client.delete_model_version_tag(name, mv.version, key)
            for key, value in new.items():
                self.client.set_model_version_tag(name, mv.version, key, value)

    def set_description(self, name: str, version: int, description: str) -> None:
        check_name(name, "model name")
        if not isinstance(description, str):
            raise TypeError(f"description must be a string, got {type(description).__name__}")
        mv = self._mlflow_version(name, _version_number(version))
        with self._errors(f"setting the description of version {mv.version} of model {name!r}"):
            self.client.update_model_version(name, mv.version, description=description)

    def open_model_uri(self, uri: str) -> tuple[str, dict[str, bytes], dict[str, Any]]:
        """A model registered in this MLflow registry by MLflow's own tools, for ``loom models import --from``:
        ``models:/NAME/VERSION``, ``models:/NAME/latest`` or ``models:/NAME@ALIAS``.

        Returns ``(format, files, source)``: ``onnx`` and the graph (external data inlined) for a version whose
        MLmodel has an ``onnx`` flavor, else ``torch`` and the weights when its artifacts hold one
        ``*.safetensors`` file; ``files`` maps ``models:/NAME/VERSION/<path>`` to the file's bytes; ``source`` is
        the lineage of where it came from (the URI, the resolved version, its run id and source, its flavors).
        Nothing is unpickled or run (see ``_import``).

        :raises NotFoundError: no such model, version or alias (the message lists those there are).
        :raises LoomError: the version is a pickled flavor, has neither an ONNX graph nor safetensors weights, or
            was registered through Loom; the message says what was found.
        """
        from ._import import open_model

        return open_model(self, uri)

    # -- version helpers ---------------------------------------------------------------------------------------

    def _require_model(self, name: str) -> None:
        try:
            self.client.get_registered_model(name)
        except MlflowException as err:
            if err.error_code not in _MISSING:
                raise LoomError(f"MLflow at {self.shown_registry_uri}: reading model {name!r}: "
                                f"{redact(err.message)}") from None
            raise NotFoundError(f"no model named {name!r} in the MLflow registry at {self.shown_registry_uri} "
                                f"(models: {_listing(self.list_models())})") from None

    def _live_versions(self, name: str) -> list[Any]:
        with self._errors(f"listing the versions of model {name!r}"):
            found = self._pages(self.client.search_model_versions, f"name = '{name}'")
        return sorted(found, key=lambda mv: int(mv.version))

    def _mlflow_version(self, name: str, ref: int | str) -> Any:
        """MLflow's model version for a number, an alias or ``latest``, or :class:`NotFoundError` saying what
        exists."""
        self._require_model(name)
        if ref == LATEST:
            versions = self._live_versions(name)
            if not versions:
                raise NotFoundError(f"model {name!r} has no versions")
            ref = int(versions[-1].version)  # fetched again below: search results lack aliases
        try:
            if isinstance(ref, int):
                return self.client.get_model_version(name, str(ref))
            return self.client.get_model_version_by_alias(name, ref)
        except MlflowException as err:
            if err.error_code not in _MISSING and "not found" not in err.message.lower():
                raise LoomError(f"MLflow at {self.shown_registry_uri}: reading model {name!r} {ref}: "
                                f"{redact(err.message)}") from None
        if isinstance(ref, int):
            numbers = [int(mv.version) for mv in self._live_versions(name)]
            raise NotFoundError(f"model {name!r} has no version {ref} (versions: {_listing(numbers)})")
        aliases = self.client.get_registered_model(name).aliases
        raise NotFoundError(f"model {name!r} has no alias {ref!r} (aliases: "
                            f"{_listing([f'{a} -> {v}' for a, v in sorted(aliases.items())])})")

    def _folder(self, mv: Any) -> tuple[str, str]:
        """The run id and artifact folder of a version, as its tags and run record say, checked before they make a
        path: a version registered elsewhere has no folder tag, a tampered one is refused naming the tag."""
        what = f"model {mv.name!r} version {mv.version} in MLflow"
        path = mv.tags.get(_PATH_TAG)
        if path is None:
            raise LoomError(f"{what} was not registered through Loom (it has no {_PATH_TAG!r} tag); import it "
                            f"(an onnx flavor or safetensors weights) to serve it: loom models import NAME --from "
                            f"models:/{mv.name}/{mv.version}")
        return (_safe_name(mv.run_id, f"the run id of {what}"),
                _safe_path(path, f"the {_PATH_TAG!r} tag of {what}"))

    def _document(self, mv: Any) -> dict[str, Any]:
        key = self._folder(mv)
        if key not in self._documents:
            what = f"the metadata of model {mv.name!r} version {mv.version}"
            raw = self._download(key[0], f"{key[1]}/{VERSION_DOCUMENT}", what)
            try:
                document = json.loads(raw)
                digests = document["artifacts"]
                for field in ("params", "metrics", "lineage"):
                    if not isinstance(document[field], dict):
                        raise TypeError(f"{field} is not a mapping")
            except (ValueError, KeyError, TypeError) as err:
                raise LoomError(f"{what} in MLflow is not a Loom version document ({err}); register the model "
                                "again") from None
            if not isinstance(digests, dict):
                raise LoomError(f"{what} in MLflow lists its artifacts wrongly; register the model again")
            for artifact in digests:
                _safe_name(artifact, f"artifact name {artifact!r} in {what}")
            if len(self._documents) >= _CACHE_LIMIT:
                self._documents.clear()
            self._documents[key] = document
        return self._documents[key]

    def _version(self, mv: Any, aliases: list[str] | None = None) -> ModelVersion:
        document = self._document(mv)
        return ModelVersion(
            name=mv.name,
            version=int(mv.version),
            created_at=mv.creation_timestamp / 1000,
            aliases=tuple(sorted(mv.aliases if aliases is None else aliases)),
            params=document["params"],
            metrics=document["metrics"],
            lineage=document["lineage"],
            tags=user_tags(mv.tags),
            description=mv.description or "",
            artifacts=tuple(sorted(document["artifacts"])),
            run_id=None if mv.tags.get(_HOLDER_TAG) else mv.run_id,
        )

    # -- runs ------------------------------------------------------------------------------------------------

    def start_run(
        self, experiment: str, *, name: str = "", params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> Run:
        check_name(experiment, "experiment name")
        if not isinstance(name, str):
            raise TypeError(f"run name must be a string, got {type(name).__name__}")
        encoded = self._encode_params(params)
        tags = _check_tags(tags)
        experiment_id = self._experiment_id(experiment, create=True)
        with self._errors(f"starting a run in experiment {experiment!r}"):
            run = self.client.create_run(experiment_id, run_name=name or None,
                                         tags={**tags, _STARTED_TAG: repr(time.time())})
            if encoded:
                self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in encoded.items()])
        return self.get_run(run.info.run_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        check_run_id(run_id)
        encoded = self._encode_params(params)
        current = self._mlflow_run(run_id).data.params
        changed = [f"{k}: {decode_param(current[k])!r} -> {decode_param(v)!r}" for k, v in sorted(encoded.items())
                   if k in current and current[k] != v]
        if changed:
            raise LoomError(f"run {run_id} already has different values for params ({'; '.join(changed)}); "
                            "params are written once, so start a new run to change them")
        new = [Param(k, v) for k, v in encoded.items() if k not in current]
        if new:
            with self._errors(f"logging params of run {run_id}"):
                self.client.log_batch(run_id, params=new)

    def log_metrics(self, run_id: str, metrics: dict[str, float], *, step: int = 0) -> None:
        check_run_id(run_id)
        values = check_metrics(metrics)
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {step!r}")
        now = int(time.time() * 1000)
        with self._errors(f"logging metrics of run {run_id}"):
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_artifact(self, run_id: str, name: str, data: bytes) -> None:
        check_run_id(run_id)
        check_artifact_name(name)
        payload = _bytes(name, data)
        self._run_info(run_id)
        with tempfile.TemporaryDirectory(prefix="loom-mlflow-") as tmp:
            Path(tmp, name).write_bytes(payload)
            with self._errors(f"uploading artifact {name!r} of run {run_id}"):
                self.client.log_artifact(run_id, str(Path(tmp, name)))

    def end_run(self, run_id: str, status: str = "finished") -> Run:
        check_run_id(run_id)
        check_run_status(status)
        self._run_info(run_id)
        with self._errors(f"ending run {run_id}"):
            self.client.set_terminated(run_id, status.upper())
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> Run:
        check_run_id(run_id)
        return self._to_run(self._mlflow_run(run_id))

    def list_runs(self, experiment: str | None = None) -> list[Run]:
        """Runs newest first; the runs Loom creates only to hold registered artifacts are left out."""
        if experiment is not None:
            check_name(experiment, "experiment name")
            found = self._experiment_id(experiment, create=False)
            ids = [found] if found is not None else []
        else:
            with self._errors("listing experiments"):
                ids = [e.experiment_id for e in self._pages(self.client.search_experiments)]
        if not ids:
            return []
        with self._errors("listing runs"):
            found_runs = self._pages(self.client.search_runs, ids)
        runs = [self._to_run(r) for r in found_runs if _HOLDER_TAG not in r.data.tags]
        return sorted(runs, key=lambda r: r.started_at, reverse=True)

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        check_run_id(run_id)
        check_name(key, "metric name")
        self._run_info(run_id)
        with self._errors(f"reading metric {key!r} of run {run_id}"):
            history = self.client.get_metric_history(run_id, key)
        if not history:
            raise NotFoundError(f"run {run_id} has no metric {key!r}")
        ordered = sorted(history, key=lambda m: (m.step, m.timestamp))
        return [MetricPoint(step=m.step, value=m.value, timestamp=m.timestamp / 1000) for m in ordered]

    def read_run_artifact(self, run_id: str, name: str) -> bytes:
        check_run_id(run_id)
        check_name(name, "artifact name")
        names = self._run_artifacts(run_id)
        if name not in names:
            raise NotFoundError(f"run {run_id} has no artifact {name!r} (artifacts: {_listing(sorted(names))})")
        return self._download(run_id, name, f"artifact {name!r} of run {run_id}")

    # -- run helpers -------------------------------------------------------------------------------------------

    def _encode_params(self, params: dict[str, Any] | None) -> dict[str, str]:
        decoded = json.loads(_json(params, "params"))
        encoded = {}
        for key, value in decoded.items():
            check_name(key, "param name")
            text = encode_param(value)
            if len(text) > MAX_PARAM_CHARS:
                raise LoomError(f"param {key!r} is {len(text)} characters long; MLflow keeps at most "
                                f"{MAX_PARAM_CHARS}, so log it as an artifact instead")
            encoded[key] = text
        return encoded

    def _experiment_id(self, experiment: str, *, create: bool) -> str | None:
        if experiment in self._experiments:
            return self._experiments[experiment]
        with self._errors(f"looking up experiment {experiment!r}"):
            found = self.client.get_experiment_by_name(experiment)
            if found is None and create:
                location = f"{self.artifact_root}/{experiment}" if self.artifact_root else None
                try:
                    return self._remember(experiment, self.client.create_experiment(experiment, location))
                except MlflowException as err:
                    if err.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return None
        return self._remember(experiment, found.experiment_id)

    def _remember(self, experiment: str, experiment_id: str) -> str:
        self._experiments[experiment] = experiment_id
        return experiment_id

    def _experiment_name(self, experiment_id: str) -> str:
        for name, known in self._experiments.items():
            if known == experiment_id:
                return name
        with self._errors(f"looking up experiment {experiment_id}"):
            name = self.client.get_experiment(experiment_id).name
        self._experiments[name] = experiment_id
        return name

    def _mlflow_run(self, run_id: str) -> Any:
        try:
            return self.client.get_run(run_id)
        except MlflowException as err:
            if err.error_code in _MISSING:
                raise NotFoundError(f"no run with id {run_id!r} in MLflow at {self.shown_tracking_uri}") from None
            raise LoomError(f"MLflow at {self.shown_tracking_uri}: reading run {run_id}: "
                            f"{redact(err.message)}") from None

    def _run_info(self, run_id: str) -> Any:
        return self._mlflow_run(run_id).info

    def _run_artifacts(self, run_id: str) -> list[str]:
        self._run_info(run_id)
        with self._errors(f"listing the artifacts of run {run_id}"):
            return sorted(f.path for f in self.client.list_artifacts(run_id) if not f.is_dir)

    def _to_run(self, run: Any) -> Run:
        info, data = run.info, run.data
        _safe_name(info.run_id, f"run id {info.run_id!r}")
        try:
            started = float(data.tags.get(_STARTED_TAG, info.start_time / 1000))
        except (TypeError, ValueError):
            raise LoomError(f"the {_STARTED_TAG!r} tag of run {info.run_id} in MLflow is "
                            f"{data.tags.get(_STARTED_TAG)!r}, not a time; someone changed it in MLflow") from None
        status = _STATUS.get(info.status, "running")
        ended = None if status == "running" or info.end_time is None else max(started, info.end_time / 1000)
        metrics = {k: (math.nan if v is None else float(v)) for k, v in data.metrics.items()}
        return Run(
            id=info.run_id,
            experiment=self._experiment_name(info.experiment_id),
            name=info.run_name or "",
            status=status,
            started_at=started,
            ended_at=ended,
            params={k: decode_param(v) for k, v in data.params.items()},
            metrics=metrics,
            tags=user_tags(data.tags),
            artifacts=tuple(self._run_artifacts(info.run_id)),
        )

    def _download(self, run_id: str, path: str, what: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="loom-mlflow-") as tmp:
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except (MlflowException, OSError) as err:
                raise LoomError(f"{what} could not be read from MLflow at {self.shown_tracking_uri} ({redact(err)}); "
                                "restore it or register the model again") from None
            return Path(local).read_bytes()

    @staticmethod
    def _pages(search: Any, *args: Any) -> list[Any]:
        """Every result of a paginated MLflow search."""
        out: list[Any] = []
        token = None
        while True:
            page = search(*args, max_results=_PAGE, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out


def _version_number(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be an int, got {version!r}")
    return version
