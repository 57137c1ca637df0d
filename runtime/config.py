"""The project file (``loom.yaml``) schema.

Every model forbids unknown keys and describes every field, so a typo is reported with its location instead of
being silently ignored. Paths in the file are relative to the project directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .names import check_name

PROJECT_FILE = "loom.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ColumnType = Literal["int", "float", "bool", "string", "category", "timestamp"]


class ColumnSpec(_Strict):
    """One column of the declared data schema."""

    type: ColumnType = Field(description="Logical type; values are coerced to it by explicit rules (see docs).")
    nullable: bool = Field(True, description="Whether missing values are allowed in this column.")
    min: float | None = Field(None, description="Smallest allowed value (numeric columns).")
    max: float | None = Field(None, description="Largest allowed value (numeric columns).")
    categories: list[str] | None = Field(None, description="Allowed values (category columns).")


class DataConfig(_Strict):
    """Where the data comes from and what it must look like."""

    source: str = Field(description="Data source URI; its scheme picks the data-source plugin, e.g. csv://data/x.csv.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options passed to the data-source plugin.")
    entity: str = Field(description="Entity key column, e.g. customer_id.")
    timestamp: str = Field(description="Event-time column used for point-in-time joins.")
    label: str = Field(description="Target column the model learns to predict.")
    columns: dict[str, ColumnSpec] = Field(description="Declared schema: every column the pipeline reads.")

    @model_validator(mode="after")
    def _key_columns_declared(self) -> DataConfig:
        for role in ("entity", "timestamp", "label"):
            col = getattr(self, role)
            if col not in self.columns:
                raise ValueError(f"data.{role} column {col!r} is not declared in data.columns")
        return self

    @property
    def feature_columns(self) -> list[str]:
        """Columns the model reads: everything declared except entity, timestamp and label."""
        skip = {self.entity, self.timestamp, self.label}
        return [c for c in self.columns if c not in skip]


class FeaturesConfig(_Strict):
    """The feature store that holds the features offline (training) and online (serving)."""

    store: str = Field("local", description="Feature-store plugin name.")
    view: str = Field("features", description="Name of the feature view built from the data source.")
    ttl_days: float | None = Field(None, description="Feature values older than this are not joined (None: no limit).")
    options: dict[str, Any] = Field(default_factory=dict, description="Options passed to the feature-store plugin.")


class ModelConfig(_Strict):
    """The model to train and serve."""

    name: str = Field(description="Registered model name; also the serving route, e.g. /v2/models/<name>.")
    architecture: str = Field(
        "runtime.model:TabularMLP", description="Import path 'module:Class' of the torch.nn.Module to train."
    )
    hidden: list[int] = Field(default_factory=lambda: [64, 32], description="Hidden layer widths of the MLP.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout between hidden layers.")

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


class RegistryConfig(_Strict):
    """Where trained model versions are recorded."""

    kind: str = Field("local", description="Registry plugin name.")
    alias: str = Field("production", description="Alias set on each newly registered version.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options passed to the registry plugin.")


class ServingConfig(_Strict):
    """The Ray Serve HTTP application."""

    host: str = Field("127.0.0.1", description="Interface to bind; 127.0.0.1 unless you mean to expose it.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    replicas: int = Field(1, ge=1, description="Serving replicas.")
    replica_cpus: float = Field(0.5, gt=0, description="Logical CPUs reserved per replica.")
    max_ongoing_requests: int = Field(64, ge=1, description="Concurrent requests a replica accepts.")
    auth_token_env: str | None = Field(
        None, description="Environment variable holding a bearer token; when set, inference needs it."
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest accepted request body (413 above).")


class MonitoringConfig(_Strict):
    """Drift monitoring of served traffic."""

    monitor: str | None = Field("evidently", description="Drift-monitor plugin name; null turns monitoring off.")
    sample_rate: float = Field(1.0, ge=0, le=1, description="Fraction of served rows captured.")
    window: int = Field(1000, ge=10, description="Captured rows kept per model for drift checks.")
    reference_rows: int = Field(2000, ge=10, description="Training rows kept as the drift reference.")
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


class Project(BaseModel):
    """A loaded project: its validated config and the directory it lives in."""

    model_config = ConfigDict(frozen=True)

    root: Path
    config: ProjectConfig

    @property
    def state_dir(self) -> Path:
        return (self.root / self.config.state_dir).resolve()

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
    return Project(root=file.parent, config=parse_config(data, file))
