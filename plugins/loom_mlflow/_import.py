"""A model someone registered in MLflow (not through Loom), read for ``loom models import NAME --from models:/...``.

What imports: a version whose MLmodel has an ``onnx`` flavor (its graph, with any external data inlined), or whose
artifacts hold one ``*.safetensors`` file (torch weights; the importer names the architecture). Anything else (the
``sklearn``, ``pytorch``, ``python_function`` flavors and their pickles) is refused naming what was found.

Nothing from the artifacts is unpickled or run: MLmodel is read with ``yaml.safe_load``, an ONNX graph is parsed as
protobuf, weights are passed on as bytes; only the files the import needs are downloaded, into a temporary
directory, and every path read back from MLflow (the flavor's ``data``, an ONNX external-data location, a listed
artifact) is checked to be a relative path of safe names before it is used.
"""

from __future__ import annotations

import posixpath
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from runtime import FORBIDDEN_ARTIFACT_SUFFIXES, LATEST, InvalidNameError, LoomError, check_alias, check_name, redact

from ._registry import _PATH_TAG, _listing, _safe_path

if TYPE_CHECKING:
    from ._registry import MlflowRegistry

SCHEME = "models:/"
MLMODEL = "MLmodel"
#: Loom's names of the formats an MLflow model imports as.
ONNX, TORCH = "onnx", "torch"
#: Most files listed in a model version's artifacts before Loom gives up (a model is a handful of files).
_MAX_FILES = 10_000
_FORMS = "models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS"


def parse_models_uri(uri: object) -> tuple[str, int | str]:
    """``models:/churn/3`` -> ``("churn", 3)``; ``models:/churn@production`` -> ``("churn", "production")``;
    ``models:/churn/latest`` -> ``("churn", "latest")``.

    :raises LoomError: any other form (a stage, a path inside the version, a logged model's id), or an unsafe name.
    """
    if not isinstance(uri, str) or not uri.startswith(SCHEME) or uri.startswith(SCHEME + "/"):
        raise LoomError(f"{uri!r} is not an MLflow model URI: give {_FORMS}")
    rest = uri[len(SCHEME):]
    try:
        if "/" not in rest and "@" in rest:
            name, alias = rest.split("@", 1)
            return check_name(name, f"the model name in {uri!r}"), check_alias(alias)
        parts = rest.split("/")
        if len(parts) != 2:
            if len(parts) == 1 and rest.startswith("m-"):
                raise LoomError(f"{uri!r} names a logged model, not a registered one: register it and give {_FORMS}")
            raise LoomError(f"{uri!r} is not a model version: give {_FORMS} (a path inside a version is not "
                            "supported)")
        name, ref = check_name(parts[0], f"the model name in {uri!r}"), parts[1]
    except InvalidNameError as err:
        raise LoomError(f"{uri!r}: {err}") from None
    if ref == LATEST:
        return name, LATEST
    if not (ref.isascii() and ref.isdigit()):
        raise LoomError(f"{uri!r}: {ref!r} is not a version number (MLflow's stages are not supported): give "
                        f"{_FORMS}")
    return name, int(ref)


def open_model(registry: MlflowRegistry, uri: str) -> tuple[str, dict[str, bytes], dict[str, Any]]:
    """The network of the model version ``uri`` names, as :meth:`MlflowRegistry.open_model_uri` returns it."""
    name, ref = parse_models_uri(uri)
    mv = registry._mlflow_version(name, ref)  # NotFoundError naming the versions or aliases there are
    version = int(mv.version)
    where = f"{SCHEME}{name}/{version}"
    if mv.tags.get(_PATH_TAG) is not None:
        raise LoomError(f"{where} was registered through Loom, so it is a Loom version already: serve it as "
                        f"{name} version {version} (loom deploy --version {version})")
    with registry._errors(f"locating the artifacts of {where}"):
        root = registry.client.get_model_version_download_uri(name, str(version))
    with _Artifacts(registry, root, where) as reader:
        return _network(reader, uri, mv, where)


def _network(reader: _Artifacts, uri: str, mv: Any, where: str) -> tuple[str, dict[str, bytes], dict[str, Any]]:
    name, version = mv.name, int(mv.version)
    files = reader.files()
    flavors = reader.flavors(files)
    source = {"registry": "mlflow", "uri": uri, "model": name, "version": version, "run_id": mv.run_id,
              "source": redact(str(mv.source)), "flavors": sorted(flavors)}
    if ONNX in flavors:
        path, data, external = reader.onnx(flavors[ONNX], files)
        return ONNX, {f"{where}/{path}": data}, {**source, "file": path, **({"external_data": external}
                                                                             if external else {})}
    weights = sorted(p for p in files if p.lower().endswith(".safetensors"))
    if len(weights) > 1:
        raise LoomError(f"{where} holds {len(weights)} safetensors files ({_listing(weights)}); Loom imports the "
                        "weights of one network from one file")
    if weights:
        return TORCH, {f"{where}/{weights[0]}": reader.read(weights[0])}, {**source, "file": weights[0]}
    pickles = [p for p in files if p.lower().endswith(FORBIDDEN_ARTIFACT_SUFFIXES)]
    what = (f"an MLflow model of flavor(s) {', '.join(sorted(flavors))}" if flavors else
            "a model version with no MLflow flavor")
    found = f"pickled file(s) {_listing(pickles)}" if pickles else f"file(s) {_listing(files)}"
    raise LoomError(f"{where} is {what} with {found}, and no onnx flavor or safetensors weights. Loom never loads "
                    "a pickle: export the model to ONNX and log it with mlflow.onnx.log_model, or log its weights "
                    "as a .safetensors file (safetensors.torch.save_file(model.state_dict(), ...))")


class _Artifacts:
    """One model version's artifacts in MLflow, listed and downloaded with MLflow's own artifact repositories into a
    private temporary directory, removed when the ``with`` block ends."""

    def __init__(self, registry: MlflowRegistry, root: str, where: str) -> None:
        self.registry, self.where = registry, where
        self.shown = registry.shown_tracking_uri
        try:
            self.repo = get_artifact_repository(root, tracking_uri=registry.tracking_uri,
                                                registry_uri=registry.registry_uri)
        except (MlflowException, OSError, ValueError) as err:
            raise LoomError(f"the artifacts of {where} at {redact(root)} cannot be opened: {redact(err)}") from None
        self._tmp = tempfile.TemporaryDirectory(prefix="loom-mlflow-import-")
        self.dir = Path(self._tmp.name).resolve()

    def __enter__(self) -> _Artifacts:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def files(self) -> list[str]:
        """Every file of the version, as paths relative to its root, sorted."""
        out: list[str] = []
        pending = [""]
        while pending:
            folder = pending.pop()
            try:
                listed = self.repo.list_artifacts(folder)
            except (MlflowException, OSError) as err:
                raise LoomError(f"the artifacts of {self.where} could not be listed in MLflow at {self.shown}: "
                                f"{redact(err)}") from None
            for info in listed:
                if info.is_dir:
                    pending.append(_safe_path(info.path, f"artifact folder {info.path!r} of {self.where}"))
                else:
                    out.append(info.path)
            if len(out) > _MAX_FILES:
                raise LoomError(f"{self.where} holds more than {_MAX_FILES} files; it is not a model Loom imports")
        return sorted(out)

    def read(self, path: str) -> bytes:
        return self.fetch(path).read_bytes()

    def fetch(self, path: str) -> Path:
        """Download the file ``path`` (checked: a relative path of safe names) to the temporary directory."""
        path = _safe_path(path, f"artifact {path!r} of {self.where}")
        target = (self.dir / path).parent
        target.mkdir(parents=True, exist_ok=True)
        try:
            local = Path(self.repo.download_artifacts(path, dst_path=str(self.dir))).resolve()
        except (MlflowException, OSError) as err:
            raise LoomError(f"{path} of {self.where} could not be downloaded from MLflow at {self.shown}: "
                            f"{redact(err)}") from None
        if not local.is_relative_to(self.dir) or not local.is_file():
            raise LoomError(f"{path} of {self.where} did not download as a file")
        return local

    def flavors(self, files: list[str]) -> dict[str, dict[str, Any]]:
        """The MLmodel file's flavors (none without an MLmodel), read as YAML (never as a Python object)."""
        if MLMODEL not in files:
            return {}
        try:
            mlmodel = yaml.safe_load(self.read(MLMODEL))
        except yaml.YAMLError as err:
            raise LoomError(f"the MLmodel file of {self.where} is not YAML: {str(err).splitlines()[0]}") from None
        flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
        if not isinstance(flavors, dict):
            raise LoomError(f"the MLmodel file of {self.where} has no 'flavors' mapping")
        return {str(k): v if isinstance(v, dict) else {} for k, v in flavors.items()}

    def onnx(self, flavor: dict[str, Any], files: list[str]) -> tuple[str, bytes, list[str]]:
        """The onnx flavor's graph (its ``data`` file) with its external data, if any, inlined: the path, the bytes
        and the external data files read."""
        path = _safe_path(flavor.get("data", "model.onnx"), f"the onnx flavor's 'data' in the MLmodel of {self.where}")
        if path not in files:
            raise LoomError(f"the onnx flavor of {self.where} names {path}, which is not among its files "
                            f"({_listing(files)})")
        local = self.fetch(path)
        data = local.read_bytes()
        try:
            import onnx
        except ImportError:
            raise LoomError("importing an ONNX model needs onnx and onnxruntime: pip install 'loom-mlops[onnx]'") \
                from None
        try:
            model = onnx.load_model_from_string(data)
        except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise LoomError(f"{path} of {self.where} is not an ONNX model (it does not parse: "
                            f"{type(err).__name__})") from None
        locations = sorted({entry.value for tensor in _tensors(model.graph)
                            if tensor.data_location == onnx.TensorProto.EXTERNAL
                            for entry in tensor.external_data if entry.key == "location"})
        if not locations:
            return path, data, []
        folder = posixpath.dirname(path)
        external = []
        for location in locations:
            what = f"the external data location {location!r} in {path} of {self.where}"
            file = posixpath.join(folder, _safe_path(location, what))
            if file not in files:
                raise LoomError(f"{what} is not among its files ({_listing(files)})")
            self.fetch(file)
            external.append(file)
        try:
            onnx.load_external_data_for_model(model, str(local.parent))
            return path, model.SerializeToString(), external
        except Exception as err:  # noqa: BLE001 - onnx's and protobuf's errors (a graph over 2 GB among them)
            raise LoomError(f"the external data of {path} of {self.where} cannot be inlined: {type(err).__name__}: "
                            f"{str(err).splitlines()[0][:300] if str(err) else ''}") from None


def _tensors(graph: Any) -> Any:
    """Every tensor of an ONNX graph that may keep its data outside the file: initializers (dense and sparse) and
    tensor attributes, in subgraphs too."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _tensors(sub)
