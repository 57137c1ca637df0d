"""The project file (``loom.yaml``) schema.

Every model forbids unknown keys and describes every field, so a typo is reported with its location instead of
being silently ignored. Paths in the file are relative to the project directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .features import FeatureService, FeatureView
from .names import check_name
from .filesystems import join_uri
from .secrets import interpolate, redact

PROJECT_FILE = "loom.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ColumnType = Literal["int", "float", "bool", "string", "category", "timestamp", "tensor"]
#: Element types of a tensor column (Open Inference Protocol names).
TensorDType = Literal["FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                      "UINT64", "BOOL"]


class ColumnSpec(_Strict):
    """One column of the declared data schema."""

    type: ColumnType = Field(description="Logical type; values are coerced to it by explicit rules (see docs).")
    nullable: bool = Field(True, description="Whether missing values are allowed in this column.")
    min: float | None = Field(None, description="Smallest allowed value (numeric columns).")
    max: float | None = Field(None, description="Largest allowed value (numeric columns).")
    categories: list[str] | None = Field(None, description="Allowed values (category columns).")
    dtype: TensorDType | None = Field(None, description="Element type of a tensor column (default FP32).")
    shape: list[int] | None = Field(None, description="Per-row shape of a tensor column, e.g. [1, 28, 28]: each "
                                                      "row is a Parquet list (or fixed-size list) or the path of "
                                                      "a .npy file.")

    @model_validator(mode="after")
    def _checks_fit_the_type(self) -> ColumnSpec:
        if self.type == "tensor":
            if not self.shape or len(self.shape) > 8 or any(d < 1 for d in self.shape):
                raise ValueError("a tensor column needs 'shape': 1 to 8 positive dimensions, e.g. [1, 28, 28]")
            if self.dtype is None:
                object.__setattr__(self, "dtype", "FP32")
        elif self.dtype is not None or self.shape is not None:
            raise ValueError(f"dtype and shape apply to tensor columns, not {self.type} (use type: tensor)")
        if self.type not in ("int", "float") and (self.min is not None or self.max is not None):
            raise ValueError(f"min/max apply to int and float columns, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.categories is not None:
            if self.type != "category":
                raise ValueError(f"categories apply to category columns, not {self.type} (use type: category)")
            if not self.categories or len(set(self.categories)) != len(self.categories):
                raise ValueError("categories must be a non-empty list of distinct values")
        return self


class BadRowsConfig(_Strict):
    """What happens to rows that fail validation. They are always counted and never silently dropped."""

    policy: Literal["reject", "quarantine"] = Field(
        "reject", description="reject: the stage fails with a report naming columns and example rows; "
        "quarantine: bad rows are written to a file under `path` and the rest continue.")
    path: str | None = Field(None, description="Quarantine directory (relative to the project); "
                             "default <state_dir>/quarantine.")
    max_fraction: float = Field(0.1, ge=0, le=1, description="With quarantine: fail anyway when more than this "
                                "fraction of rows is bad (a broken source should stop, not trickle through).")


class DataConfig(_Strict):
    """Where the data comes from and what it must look like."""

    source: str = Field(description="Data source URI; its scheme picks the data-source plugin, e.g. csv://data/x.csv.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options passed to the data-source plugin.")
    entity: str = Field(description="Entity key column, e.g. customer_id.")
    timestamp: str = Field(description="Event-time column used for point-in-time joins.")
    label: str = Field(description="Target column the model learns to predict.")
    columns: dict[str, ColumnSpec] = Field(description="Declared schema: every column the pipeline reads.")
    bad_rows: BadRowsConfig = Field(default_factory=BadRowsConfig, description="Policy for rows that fail validation.")
    batch_rows: int = Field(65_536, ge=1, description="Rows read and validated at a time (the source streams).")
    generate: str | None = Field(
        None, description="A Python script of the project that makes the data (path relative to the project). "
                          "`loom up`, `loom train` and `loom validate` run it, with Loom's Python and in the project "
                          "directory, when the data source finds no data.")

    @model_validator(mode="after")
    def _key_columns_declared(self) -> DataConfig:
        for role in ("entity", "timestamp", "label"):
            col = getattr(self, role)
            if col not in self.columns:
                raise ValueError(f"data.{role} column {col!r} is not declared in data.columns")
        return self

    @property
    def feature_columns(self) -> list[str]:
        """Tabular columns the model reads: everything declared except entity, timestamp, label and tensors."""
        skip = {self.entity, self.timestamp, self.label}
        return [c for c, s in self.columns.items() if c not in skip and s.type != "tensor"]

    @property
    def tensor_columns(self) -> list[str]:
        """Tensor inputs: read with the labels, straight from the data source (never through the feature store)."""
        return [c for c, s in self.columns.items() if s.type == "tensor"]


class EntityConfig(_Strict):
    """Something features describe (a customer, a product), identified by a join-key column."""

    join_key: str = Field(description="Column holding the entity's key, in the data and in its feature views.")
    description: str = Field("", description="What the entity is, for people reading the project.")


class ViewConfig(_Strict):
    """A feature view: features of one entity, stamped with event time, from the data source or its own."""

    entity: str | None = Field(None, description="Entity name from features.entities; default: the data's entity.")
    source: str | None = Field(None, description="Data source URI of this view; default: the project's data.source.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options passed to this view's source plugin.")
    timestamp: str | None = Field(None, description="Event-time column of `source` (required with it).")
    columns: dict[str, ColumnSpec] = Field(
        default_factory=dict, description="Declared schema of `source` (required with it): key, time and features.")
    features: list[str] | None = Field(None, description="Features of the view; default: every column of its source "
                                       "except keys, timestamp and label.")
    ttl_days: float | None = Field(None, gt=0, description="Values older than this are not joined (None: no limit).")
    description: str = Field("", description="What the view holds.")

    @model_validator(mode="after")
    def _own_source_is_declared(self) -> ViewConfig:
        if self.source is None and (self.timestamp or self.columns or self.options):
            raise ValueError("timestamp, columns and options describe a view's own `source`; set source too")
        if self.source is not None and (not self.timestamp or not self.columns):
            raise ValueError("a view with its own source needs `timestamp` and `columns`")
        return self


class FeaturesConfig(_Strict):
    """The feature store, and the entities, feature views and feature services it holds.

    The short form names one view built from the data source (``view``, ``ttl_days``); ``views`` defines several.
    The model trains on, and is served with, the feature service ``service`` (default: every view's features).
    """

    store: str = Field("local", description="Feature-store plugin name.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options passed to the feature-store plugin.")
    view: str = Field("features", description="Short form: name of the one feature view built from the data source.")
    ttl_days: float | None = Field(None, gt=0, description="Short form: values older than this are not joined.")
    entities: dict[str, EntityConfig] = Field(
        default_factory=dict, description="Entities by name; default: one named after data.entity.")
    views: dict[str, ViewConfig] = Field(default_factory=dict, description="Feature views by name (long form).")
    services: dict[str, list[str]] = Field(
        default_factory=dict, description="Feature services by name: a list of 'view' or 'view:feature' items.")
    service: str | None = Field(None, description="The service the model uses; default: the only service, or "
                                "every view's features when there is none.")

    @model_validator(mode="after")
    def _one_form(self) -> FeaturesConfig:
        if self.views and {"view", "ttl_days"} & self.model_fields_set:
            raise ValueError("use either the short form (view, ttl_days) or views, not both")
        names = [*self.entities, *self.views, *self.services]
        for name in names:
            check_name(name, "features name")
        if self.service is not None and self.service not in self.services:
            raise ValueError(f"service {self.service!r} is not defined in features.services")
        return self


@dataclass(frozen=True)
class ViewSource:
    """Where a view with its own source reads from, and the schema its rows are validated against."""

    uri: str
    options: dict[str, Any]
    columns: dict[str, ColumnSpec]


@dataclass(frozen=True)
class FeatureDefinitions:
    """The entities, views and services of a project, resolved against its data section."""

    entities: dict[str, EntityConfig]
    views: dict[str, FeatureView]
    sources: dict[str, ViewSource]
    """Views with a source of their own; the other views are built from ``data.source``."""
    services: dict[str, FeatureService]
    service: FeatureService
    """The service the model trains on and is served with."""
    columns: dict[str, ColumnSpec]
    """Declared schema of every feature of every view."""


def resolve_features(data: DataConfig, features: FeaturesConfig) -> FeatureDefinitions:
    """Resolve defaults and cross-references of the features section; :class:`ConfigError` names what is wrong."""
    entities = dict(features.entities) or {data.entity: EntityConfig(join_key=data.entity)}
    join_keys = {e.join_key for e in entities.values()}
    data_entity = [n for n, e in entities.items() if e.join_key == data.entity]
    label_columns = {data.entity, data.timestamp, data.label} | join_keys
    specs = features.views or {features.view: ViewConfig(ttl_days=features.ttl_days)}
    views: dict[str, FeatureView] = {}
    sources: dict[str, ViewSource] = {}
    columns: dict[str, ColumnSpec] = {}
    for name, spec in specs.items():
        where = f"features.views.{name}" if features.views else "features"
        entity_name = spec.entity or (data_entity[0] if data_entity else None)
        if entity_name not in entities:
            raise ConfigError(f"{where}: entity {entity_name!r} is not defined in features.entities "
                              f"({', '.join(entities)})")
        key = entities[entity_name].join_key
        if spec.source is None:
            cols, timestamp, skip = data.columns, data.timestamp, label_columns
        else:
            cols, timestamp, skip = spec.columns, spec.timestamp, {key, spec.timestamp}
            sources[name] = ViewSource(uri=spec.source, options=dict(spec.options), columns=dict(spec.columns))
        for role, col in (("join key", key), ("timestamp", timestamp)):
            if col not in cols:
                raise ConfigError(f"{where}: {role} column {col!r} is not declared in the view's source columns")
        chosen = (spec.features if spec.features is not None
                  else [c for c, s in cols.items() if c not in skip and s.type != "tensor"])
        for f in chosen:
            if f not in cols or f in (key, timestamp):
                raise ConfigError(f"{where}: feature {f!r} is not a declared column of the view's source")
            if cols[f].type == "tensor":
                raise ConfigError(f"{where}: {f!r} is a tensor column; tensors are model inputs read with the "
                                  "labels, not features of a view")
            if spec.source is None and f == data.label:
                raise ConfigError(f"{where}: {f!r} is the label (data.label); a feature made of it would leak it")
            if f in columns and columns[f] != cols[f]:
                raise ConfigError(f"{where}: feature {f!r} is declared differently in another view")
            columns[f] = cols[f]
        if not chosen and spec.source is None and spec.features is None and data.tensor_columns:
            continue  # a model of tensor inputs only: nothing for the feature store
        ttl = timedelta(days=spec.ttl_days) if spec.ttl_days else None
        dtypes = {c: cols[c].type for c in (key, *chosen)}
        views[name] = FeatureView(name=name, entity=key, timestamp=timestamp, features=tuple(chosen), ttl=ttl,
                                  dtypes=dtypes)
    services = {}
    for name, items in features.services.items():
        selection: dict[str, list[str] | None] = {}
        for item in items:
            view, _, feature = item.partition(":")
            if not feature:
                selection[view] = None
            elif selection.get(view, []) is not None:
                selection.setdefault(view, []).append(feature)  # type: ignore[union-attr]
        services[name] = FeatureService.of(name, list(views.values()), selection)
    if features.service is not None:
        service = services[features.service]
    elif len(services) == 1:
        service = next(iter(services.values()))
    elif services:
        raise ConfigError(f"features.service must name the service the model uses (one of {', '.join(services)})")
    elif not views:  # tensor inputs only (see above)
        service = FeatureService(name="none", projections=())
    else:
        service = FeatureService(name=next(iter(views)) if len(views) == 1 else "all",
                                 projections=tuple(views.values()))
    missing = [k for k in service.join_keys if k not in data.columns]
    if missing:
        raise ConfigError(f"feature service {service.name!r} joins on {', '.join(missing)}, which data.columns "
                          "does not declare (training labels need every join key)")
    return FeatureDefinitions(entities=entities, views=views, sources=sources, services=services, service=service,
                              columns=columns)


class ModelConfig(_Strict):
    """The model to train and serve."""

    name: str = Field(description="Registered model name; also the serving route, e.g. /v2/models/<name>.")
    task: Literal["classification", "regression"] | None = Field(
        None, description="What the model predicts: classes or a number. Default: from the label's declared type "
                          "(float -> regression, anything else -> classification).")
    architecture: str = Field(
        "runtime.model:TabularMLP", description="Import path 'module:Class' of the torch.nn.Module to train; the "
                                                "module may live in the project directory (docs/models.md)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the architecture's constructor. Loom adds "
                                          "in_features/out_features (tabular inputs) and input_shapes (tensor "
                                          "inputs) when the constructor takes them.")
    hidden: list[int] = Field(default_factory=lambda: [64, 32], description="Hidden layer widths of the built-in "
                                                                            "MLP (its 'hidden' option).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout between hidden layers of the built-in MLP.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v, "model.name")


class TrainingConfig(_Strict):
    """Distributed training with Ray Train."""

    workers: int = Field(2, ge=1, description="Number of Ray Train workers.")
    use_gpu: bool | Literal["auto"] = Field("auto", description="Train on GPUs; 'auto' uses them when the cluster has any.")
    epochs: int = Field(8, ge=1, description="Passes over the training data.")
    batch_size: int = Field(256, ge=1, description="Per-worker batch size.")
    learning_rate: float = Field(3e-3, gt=0, description="Adam learning rate.")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="Latest fraction of rows (by time) held out.")
    seed: int = Field(0, description="Random seed for weights and shuffling.")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts (from the last checkpoint) before giving up.")
    step: str | None = Field(
        None, description="Import path 'module:callable' of your own training step (docs/models.md): called with a "
                          "runtime.StepContext, it returns the step object. Default: Loom's runtime.TrainingStep.")
    step_options: dict[str, Any] = Field(
        default_factory=dict, description="Options the training step reads from its context (ctx.options), e.g. "
                                          "clip_grad_norm for the default step.")


class RegistryConfig(_Strict):
    """Where trained model versions are recorded."""

    kind: str = Field("local", description="Registry plugin name.")
    alias: str = Field("production", description="Alias set on each newly registered version.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options passed to the registry plugin.")


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Storage:
    """Where a project's state lives, as plugin factories receive it (``storage=``): ``loom.yaml``'s ``storage:``
    section with relative paths resolved. ``None`` means the store's own default under the state directory.

    Either may hold credentials (from ``${VAR}`` interpolation): show them only through :func:`runtime.redact`,
    which ``repr`` does.
    """

    #: Where artifacts, offline features, captured traffic and reports go: an absolute directory or a file system
    #: URI (``s3://bucket/loom``); ``None``: the state directory.
    url: str | None = None
    #: SQLAlchemy URL of the metadata database (``postgresql://…``); ``None``: a SQLite file per store.
    db: str | None = None

    def __repr__(self) -> str:
        url = None if self.url is None else redact(self.url)
        db = None if self.db is None else redact(self.db)
        return f"Storage(url={url!r}, db={db!r})"

    def location(self, *parts: str, default: str | os.PathLike[str]) -> str:
        """``<url>/<parts>`` when ``url`` is set, else ``default`` (a store's own local directory), as a string."""
        if self.url is None:
            return os.fspath(default)
        return "/".join([self.url.rstrip("/"), *(p.strip("/") for p in parts)])


class StorageConfig(_Strict):
    """Where the project's state lives, so that several hosts can share it (docs/registry.md, "Shared storage")."""

    url: str | None = Field(
        None, description="Where artifacts, offline features, captured traffic and reports go: a directory "
        "(relative to the project) or any pyarrow/fsspec file system URI (s3://bucket/loom, gs://..., "
        "file:///mnt/shared/loom). Default: the state directory. Credentials come from the environment (${VAR}, "
        "or the file system's own chain such as AWS_* variables), never written inline.")
    db: str | None = Field(
        None, description="SQLAlchemy URL of the metadata database (registry, tracking, online features), e.g. "
        "postgresql://loom:${LOOM_DB_PASSWORD}@db:5432/loom. Default: a SQLite file per store under the state "
        "directory.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a directory or a file system URI such as s3://bucket/loom (or left out)")
        return v

    @field_validator("db")
    @classmethod
    def _db(cls, v: str | None) -> str | None:
        if v is not None and not _URL.match(v):
            # the value is not echoed: a malformed URL may hold a password that redact() cannot find
            raise ValueError("is not a database URL (scheme://...); write e.g. postgresql://user:${PASSWORD}@host/db")
        return v


class AutoscalingConfig(_Strict):
    """Ray Serve autoscaling of the serving replicas, used instead of a fixed ``replicas`` count."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 lets an idle application scale to zero.")
    max_replicas: int = Field(2, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(32, gt=0, description="In-flight requests per replica to aim for.")
    upscale_delay_s: float = Field(5, ge=0, description="Load must stay high this long before adding replicas.")
    downscale_delay_s: float = Field(60, ge=0, description="Load must stay low this long before removing replicas.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class ServingConfig(_Strict):
    """The Ray Serve HTTP application: one ingress deployment that holds every served model version in-process."""

    host: str = Field("127.0.0.1", description="Interface to bind; 127.0.0.1 unless you mean to expose it.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    route_prefix: str = Field("/", description="URL prefix of the application, e.g. /churn; '/' serves at the root.")
    replicas: int = Field(1, ge=1, description="Serving replicas (ignored when `autoscaling` is set).")
    autoscaling: AutoscalingConfig | None = Field(None, description="Autoscale replicas instead of a fixed count.")
    replica_cpus: float = Field(0.5, gt=0, description="Logical CPUs reserved per replica.")
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="At most this many replicas on one node (1: one per node, so losing a node loses "
        "one replica); unset: Ray Serve places them.")
    max_ongoing_requests: int = Field(128, ge=1, description="Requests a replica works on at once; they share "
                                      "dynamic batches.")
    max_queued_requests: int = Field(
        256, ge=-1, description="Requests a replica holds beyond max_ongoing_requests; more are refused at once "
        "with `overload_status` and Retry-After (-1: unbounded, never refuse).")
    overload_status: Literal[503, 429] = Field(503, description="Status answered to refused requests.")
    retry_after_s: float = Field(1, ge=0, description="Retry-After sent with refused requests, in seconds.")
    max_batch_size: int = Field(64, ge=1, description="Most rows one forward pass takes (dynamic batching).")
    batch_wait_ms: float = Field(
        0, ge=0, le=1000, description="How long a forming batch waits for more requests. 0: run as soon as the "
        "model is free; batches still form from requests that arrive meanwhile, without adding latency.")
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = Field(
        "EveryNode", description="Where Ray Serve runs HTTP proxies: on every node with a replica (default), only on "
        "the head node, or none (handles only).")
    health_check_period_s: float = Field(5, gt=0, description="Seconds between replica health checks.")
    health_check_timeout_s: float = Field(10, gt=0, description="A health check slower than this fails.")
    auth_token_env: str | None = Field(
        None, description="Environment variable holding the inference bearer token; when set, every route needs a "
        "token except the health probes and `public_paths` (docs/security.md).")
    operator_token_env: str | None = Field(
        None, description="Environment variable holding the operator token, needed for feedback, monitoring, "
        "metrics, admin and rollout routes. Default: the inference token (auth_token_env) covers them too.")
    public_paths: list[str] = Field(
        default_factory=list, description="Exact paths (after route_prefix) opened without a token on purpose, e.g. "
        "/metrics for a Prometheus on a private network. The health probes are always open.")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host header values accepted (names, optionally *.suffix; any port); "
        "others get 400. Empty: any host.")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest accepted request body, enforced while "
                                "it is read, chunked or not (413 above).")
    max_rows: int = Field(10_000, ge=1, description="Most rows one request may carry (413 above); a request is "
                          "split into batches of max_batch_size.")
    max_string_length: int = Field(4096, ge=1, description="Longest string input value, in characters (400 above).")
    max_json_depth: int = Field(32, ge=2, description="Deepest nesting of a JSON request body (400 above).")
    allowed_architectures: list[str] | None = Field(
        None, description="Import paths 'module:Class' a served version may name; checked before anything is "
        "imported. Default: runtime.model:TabularMLP and the project's model.architecture.")
    max_parameters: int = Field(500_000_000, ge=1, description="Most parameters (elements of all weight tensors, "
                                "read from the safetensors header) a served version may have.")

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/") or (v != "/" and v.endswith("/")) or "//" in v or ".." in v:
            raise ValueError(f"route_prefix {v!r} must start with '/' and not end with one, e.g. /churn")
        return v

    @field_validator("public_paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith("/") or "*" in p or ".." in p:
                raise ValueError(f"public path {p!r} must be an exact path starting with '/' (no wildcards)")
        return v

    def architectures(self, model: ModelConfig) -> frozenset[str]:
        """The architectures a served version may name (see ``allowed_architectures``)."""
        if self.allowed_architectures is not None:
            return frozenset(self.allowed_architectures)
        return frozenset({"runtime.model:TabularMLP", model.architecture})


def parse_duration(value: str | float | int, what: str = "duration") -> float:
    """Seconds in ``value``: a number of seconds, or a string such as ``90s``, ``30m``, ``24h``, ``7d``."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of seconds or a string such as 30m, 24h, 7d; got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(value))
        if m is None:
            raise ValueError(f"{what} must be a number of seconds or a string such as 30m, 24h, 7d; got {value!r}")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return seconds


class RetrainConfig(_Strict):
    """The closed loop (``loom loop``): on drift, retrain on the original data plus labelled production traffic;
    the candidate runs in shadow, then as a canary, and is promoted only when a paired statistical test finds it
    better and the latency and error guards hold."""

    enabled: bool = Field(False, description="Act on drift; off by default so production never retrains unasked.")
    source: str | None = Field(None, description="Data source URI of fresh training data (default: data.source).")
    captured: bool = Field(True, description="Add captured traffic joined to its feedback labels (the `captured` "
                           "data source over the capture store) to the round's training data.")
    window: str | float = Field("7d", description="How far back captured traffic is read for training: seconds or "
                                "a duration such as 6h, 7d.")
    every: str | float | None = Field(None, description="Also start a round on a schedule, e.g. 24h: this long after "
                                      "the last round ended (or the loop started); null: only on drift, a "
                                      "loom_drift_detected hook or `loom retrain`.")
    shadow_requests: int = Field(200, ge=0, description="Mirrored requests the candidate scores in shadow (answers "
                                 "still come from production) before it becomes a canary; 0 skips the shadow phase.")
    canary_percent: int = Field(10, ge=1, le=99, description="Traffic share of the retrained version while judged.")
    min_labelled: int = Field(100, ge=1, description="Labelled served rows, captured since the canary started, "
                              "needed to judge it.")
    min_improvement: float = Field(0.0, ge=0, description="How much the new version must improve the task's metric to be "
                                                        "promoted: accuracy gained, or RMSE lost (regression).")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence with which the judge's paired test "
                              "(McNemar's exact test; a bootstrap of the RMSE gap for regression) must find the new "
                              "version better before it is promoted.")
    max_latency_ratio: float = Field(2.0, gt=1, description="Guard: the candidate's p99 latency may be at most this "
                                     "many times production's (plus 10 ms), over the judged period; its p50 against "
                                     "production's until it has served 500 requests.")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Guard: highest share of the candidate's requests "
                                  "that may fail with a server error (shadow and canary).")
    cooldown_s: float = Field(600, ge=0, description="Seconds after a round before drift can start another.")
    controller: bool = Field(True, description="Run the loop in a Ray actor beside the deployment, started by "
                             "`loom up` / `loom deploy`; false: run `loom loop` yourself.")
    check_interval_s: float = Field(5, gt=0, description="Seconds between the controller's steps.")
    workers: int | None = Field(None, ge=1, description="Ray Train workers of a round (default: training.workers): "
                                "the round's training shares the cluster with serving.")
    nice: int = Field(10, ge=0, le=19, description="OS scheduling priority of a round's training workers (nice "
                      "value): serving keeps the CPU it needs while a round trains.")

    @field_validator("window", "every")
    @classmethod
    def _duration(cls, v: Any, info: Any) -> Any:
        if v is not None:
            parse_duration(v, f"monitoring.retrain.{info.field_name}")
        return v

    @property
    def window_s(self) -> float:
        return parse_duration(self.window)

    @property
    def every_s(self) -> float | None:
        return None if self.every is None else parse_duration(self.every)


class MonitoringConfig(_Strict):
    """Drift monitoring of served traffic: capture, scheduled checks, history and the retrain loop."""

    monitor: str | None = Field("evidently", description="Drift-monitor plugin name; null turns monitoring off.")
    sample_rate: float = Field(1.0, ge=0, le=1, description="Fraction of served requests captured.")
    window: int = Field(1000, ge=10, description="Captured rows kept per model version for drift checks.")
    window_s: float | None = Field(None, gt=0, description="Check only rows captured in the last this many seconds.")
    reference_rows: int = Field(2000, ge=10, description="Training rows kept as the drift reference.")
    check_rows: int = Field(5000, ge=100, description="A larger window is sampled down to this many rows per check.")
    interval_s: float | None = Field(60, gt=0, description="Seconds between scheduled checks in each replica; "
                                     "null: on demand only.")
    min_rows: int = Field(100, ge=1, description="New captured rows needed before a scheduled check runs.")
    history: int = Field(200, ge=1, description="Check results kept per model (also appended to the store).")
    store: Literal["parquet"] | None = Field("parquet", description="Capture store; null keeps only the window.")
    store_path: str | None = Field(None, description="Where captured rows go (default: <state_dir>/capture).")
    flush_interval_s: float = Field(2, gt=0, description="Seconds between background flushes to the store.")
    max_pending: int = Field(100_000, ge=1, description="Sampled rows buffered for the store; more are dropped "
                             "and counted (loom_capture_dropped_total).")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig, description="The drift-to-retrain loop.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options passed to the drift-monitor plugin.")


class ProjectConfig(_Strict):
    """A whole Loom project: one file takes a model from data to monitored serving."""

    name: str = Field(description="Project name.")
    state_dir: str = Field(".loom", description="Where the embedded defaults keep their files (relative to project).")
    plugins: list[str] = Field(default_factory=list, description="Extra plugin modules to load by import path.")
    data: DataConfig = Field(description="Data source and schema.")
    features: FeaturesConfig = Field(default_factory=FeaturesConfig, description="Feature store.")
    model: ModelConfig = Field(description="Model to train.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Ray Train settings.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="Model registry.")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="Ray Serve settings.")
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig, description="Drift monitoring.")
    # exclude=True: left out of model_dump(), so where state lives (and its credentials) never enters the lineage
    # key, which hashes the dumped settings: moving a project's storage is not a reason to retrain.
    storage: StorageConfig = Field(default_factory=StorageConfig, exclude=True,
                                   description="Where state lives: a file system URI for files, a database URL for "
                                               "metadata (default: all under state_dir).")

    @model_validator(mode="after")
    def _features_resolve(self) -> ProjectConfig:
        try:
            resolve_features(self.data, self.features)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return self

    @property
    def feature_definitions(self) -> FeatureDefinitions:
        """Entities, views and services of the features section, with every default filled in."""
        return resolve_features(self.data, self.features)


class Project(BaseModel):
    """A loaded project: its validated config and the directory it lives in."""

    model_config = ConfigDict(frozen=True)

    root: Path
    config: ProjectConfig
    #: The project file as written (``${VAR}`` not yet replaced), with any settings changed since: what
    #: :meth:`spec` ships to processes on other nodes, which interpolate it from their own environment.
    _raw: dict[str, Any] | None = PrivateAttr(None)

    def spec(self) -> dict[str, Any]:
        """What another process needs to open this project without reading its directory: the root (for relative
        paths) and the project file's settings, secrets still as ``${VAR}`` when the project came from a file."""
        if self._raw is not None and self._raw_matches():
            data = self._raw
        else:  # built in code, or changed since it was read (model_copy): its settings as they are
            data = self.config.model_dump(mode="json", exclude_unset=True)
            storage = self.config.storage.model_dump(mode="json", exclude_none=True)
            if storage:
                data["storage"] = storage
        return {"root": str(self.root), "data": data}

    def _raw_matches(self) -> bool:
        """Whether the file's settings (interpolated here) are still this project's: a copy with other settings
        (``model_copy(update=...)``) keeps the private ``_raw`` of the project it came from."""
        try:
            return parse_config(interpolate(self._raw)) == self.config
        except ConfigError:
            return False

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Project:
        """The project :meth:`spec` describes, its ``${VAR}`` replaced from this process's environment."""
        root = Path(spec["root"])
        file = root / PROJECT_FILE
        try:
            data = interpolate(spec["data"])
        except ConfigError as err:
            raise ConfigError(f"{file}: {err}") from None
        project = cls(root=root, config=parse_config(data, file))
        project._raw = spec["data"]
        return project

    def with_serving(self, **updates: Any) -> Project:
        """This project with some ``serving:`` settings changed (e.g. from the command line)."""
        cfg = self.config
        project = Project(root=self.root, config=cfg.model_copy(
            update={"serving": cfg.serving.model_copy(update=updates)}))
        if self._raw is not None:
            raw = dict(self._raw)
            raw["serving"] = {**(raw.get("serving") or {}), **updates}
            project._raw = raw
        return project

    @property
    def state_dir(self) -> Path:
        """Where the embedded defaults keep their files. ``LOOM_STATE_DIR`` overrides the project file, e.g. to
        put it on storage every node of a cluster shares."""
        override = os.environ.get("LOOM_STATE_DIR")
        return Path(override).expanduser().resolve() if override else (self.root / self.config.state_dir).resolve()

    @property
    def capture_dir(self) -> Path:
        """The capture store's local directory, where the retrain loop keeps its state: ``monitoring.store_path`` when
        it is a directory, else ``<state_dir>/capture`` (captured traffic itself goes to :attr:`capture_uri`)."""
        path = self.config.monitoring.store_path
        return self.path(path) if path and not _URL.match(path) else self.state_dir / "capture"

    @property
    def capture_uri(self) -> str:
        """Where served traffic, feedback and drift history go, as a directory or file system URI (open it with
        :func:`runtime.open_location`): ``monitoring.store_path``, else ``<storage.url>/capture`` when
        ``storage.url`` is set, else :attr:`capture_dir`. May hold credentials: show it through :func:`runtime.redact`."""
        path = self.config.monitoring.store_path
        if path:
            return path if _URL.match(path) else str(self.path(path))
        url = self.storage.url
        return join_uri(url, "capture") if url is not None else str(self.state_dir / "capture")

    @property
    def quarantine_dir(self) -> Path:
        """Where rows that failed validation are set aside: ``data.bad_rows.path``, else ``<state_dir>/quarantine``."""
        path = self.config.data.bad_rows.path
        return self.path(path) if path else self.state_dir / "quarantine"

    @property
    def runs_dir(self) -> Path:
        """Where Ray Train keeps its runs and checkpoints: ``<state_dir>/runs``."""
        return self.state_dir / "runs"

    @property
    def runs_uri(self) -> str:
        """Where Ray Train keeps runs and checkpoints, which every training worker must reach: ``<storage.url>/runs``
        when ``storage.url`` is set, else :attr:`runs_dir`."""
        url = self.storage.url
        return join_uri(url, "runs") if url is not None else str(self.runs_dir)

    @property
    def storage(self) -> Storage:
        """The ``storage:`` section as plugin factories receive it: ``url`` with a relative directory resolved
        against the project, ``None`` where a store keeps its default under :attr:`state_dir`."""
        cfg = self.config.storage
        url = cfg.url
        if url is not None and not _URL.match(url):
            url = str(self.path(url))
        return Storage(url=url, db=cfg.db)

    @property
    def storage_url(self) -> str:
        """Where files go (artifacts, offline features, captured traffic, reports): ``storage.url``, else the state
        directory. May hold credentials: show it through :func:`runtime.redact`."""
        url = self.storage.url
        return url if url is not None else str(self.state_dir)

    @property
    def storage_db(self) -> str | None:
        """The metadata database's URL (``storage.db``), or ``None``: each store's own SQLite file under the state
        directory. May hold credentials: show it through :func:`runtime.redact`."""
        return self.config.storage.db

    def path(self, relative: str) -> Path:
        """Resolve a path written in the project file."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self.root / p).resolve()


def _format_errors(err: ValidationError, file: Path) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {loc}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"  - {loc}: required key is missing")
        else:
            lines.append(f"  - {loc}: {e['msg']}")
    return f"{file} is invalid:\n" + "\n".join(lines)


def parse_config(data: Any, file: Path | str = PROJECT_FILE) -> ProjectConfig:
    """Validate a project-file mapping, raising :class:`ConfigError` that names each bad key and its location."""
    if not isinstance(data, dict):
        raise ConfigError(f"{file} must contain a mapping at the top level, got {type(data).__name__}")
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, Path(file))) from None


def load_project(path: str | Path) -> Project:
    """Load ``loom.yaml`` from a project directory (or the file itself)."""
    p = Path(path).expanduser().resolve()
    file = p / PROJECT_FILE if p.is_dir() else p
    if not file.exists():
        raise ConfigError(f"no {PROJECT_FILE} found at {file}")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{file} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file} must contain a mapping at the top level, got {type(data).__name__}")
    return Project.from_spec({"root": str(file.parent), "data": data})
