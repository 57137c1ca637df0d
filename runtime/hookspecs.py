"""Every hook a Loom plugin can implement.

Plugins implement hooks with ``@runtime.hookimpl`` and are found through the ``loom`` entry-point group.
Hook implementations may declare any subset of a hook's parameters (pluggy passes only those), so new
parameters can be added later without breaking plugins. docs/plugins.md documents each hook with an example;
tests/test_docs.py fails when a hook here is missing there or has no test in tests/test_hooks.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import click

    from .config import Project
    from .monitoring import DriftReport
    from .registry import ModelVersion

hookspec = pluggy.HookspecMarker("loom")

Register = Callable[[str, Callable[..., Any]], None]


# ---------------------------------------------------------------------------------------------------------------
# Registration hooks: called once when a plugin manager is built. ``register(name, factory)`` is owned by the
# host, which rejects duplicate or malformed registrations with the registering plugin's name.
# ---------------------------------------------------------------------------------------------------------------


@hookspec
def loom_register_data_sources(register: Register) -> None:
    """Register data-source factories by URI scheme.

    :param register: ``register(scheme, factory)``; ``factory(uri, *, base_dir, options)`` returns a
        :class:`runtime.DataSource`. ``scheme`` is the part before ``://`` (``csv``, ``parquet``, ...).
    :return: nothing; return values are ignored.

    Since 0.1.0. Built-ins: ``files`` (``csv``, ``parquet``, ``file``, ...), ``sql`` (``sqlite``, ``postgresql``).
    """


@hookspec
def loom_register_feature_stores(register: Register) -> None:
    """Register feature-store factories by name (the ``features.store`` key of ``loom.yaml``).

    :param register: ``register(name, factory)``; ``factory(*, state_dir, options)`` or
        ``factory(*, state_dir, options, storage)`` returns a :class:`runtime.FeatureStore`. ``storage`` (passed
        only to a factory that declares it, or ``**kwargs``) is the project's ``storage:`` section, a frozen
        object with ``url`` (where offline features go; ``None``: under ``state_dir``) and ``db`` (a SQLAlchemy URL
        for the online store; ``None``: a local file). Both may hold credentials: show them through
        :func:`runtime.redact`.
    :return: nothing.

    Since 0.1.0 (``storage`` is newer; factories without it keep working). Built-ins: ``local_features``
    (``local``), ``feast`` (``feast``).
    """


@hookspec
def loom_register_registries(register: Register) -> None:
    """Register model-registry factories by name (the ``registry.kind`` key of ``loom.yaml``).

    :param register: ``register(name, factory)``; ``factory(*, state_dir, options)`` or
        ``factory(*, state_dir, options, storage)`` returns a :class:`runtime.ModelRegistry`. ``storage`` (passed
        only to a factory that declares it, or ``**kwargs``) is the project's ``storage:`` section, a frozen
        object with ``url`` (where artifacts go; ``None``: under ``state_dir``) and ``db`` (a SQLAlchemy URL for
        versions and runs, e.g. ``postgresql://...``; ``None``: a local file). Both may hold credentials: show
        them through :func:`runtime.redact`.
    :return: nothing.

    Since 0.1.0 (``storage`` is newer; factories without it keep working). Built-ins: ``local_registry``
    (``local``), ``mlflow`` (``mlflow``).
    """


@hookspec
def loom_register_drift_monitors(register: Register) -> None:
    """Register drift-monitor factories by name (the ``monitoring.monitor`` key of ``loom.yaml``).

    :param register: ``register(name, factory)``; ``factory(*, options)`` returns a :class:`runtime.DriftMonitor`.
    :return: nothing.

    Since 0.1.0. Built-in: ``evidently``.
    """


@hookspec
def loom_register_model_formats(register: Register) -> None:
    """Register model formats by name (what ``loom models import --format`` names, and what a version's
    ``model.json`` records as its ``model_format``).

    :param register: ``register(name, factory)``; ``factory()`` returns a :class:`runtime.ModelFormat`: the
        artifact names its versions hold and ``load(files, spec, limits)``, which turns them into the network that
        runs on Loom's encoded batch. Loom keeps the encoding (declared inputs, preprocessing, task, classes), so
        every route, batching, capture, drift and canary work the same for every format.
    :return: nothing.

    ``torch`` (safetensors weights and the architecture's import path) is built in and cannot be registered.

    Since 0.3.0. Built-in: ``onnx``.
    """


@hookspec
def loom_register_commands(cli: click.Group) -> None:
    """Add commands to the ``loom`` command line.

    :param cli: the top-level :class:`click.Group`; call ``cli.add_command(...)`` or use ``@cli.command()``.
    :return: nothing.

    Called when the CLI lists its commands or meets one it does not define; only installed plugins are asked.

    Since 0.1.0.
    """


# ---------------------------------------------------------------------------------------------------------------
# Life-cycle hooks: called as a project moves through its stages, in the driver process. Every implementation
# is called; an exception is reported with the plugin's name and stops the stage.
# ---------------------------------------------------------------------------------------------------------------


@hookspec
def loom_before_training(project: Project, train_rows: int, params: dict[str, Any]) -> None:
    """Called before Ray Train starts.

    :param project: the loaded project.
    :param train_rows: number of training rows after the point-in-time join.
    :param params: the training parameters about to be used (read-only).

    Since 0.1.0.
    """


@hookspec
def loom_after_training(project: Project, metrics: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """Called when training has finished successfully.

    :param project: the loaded project.
    :param metrics: final validation metrics.
    :param history: per-epoch metrics, oldest first.

    Since 0.1.0.
    """


@hookspec
def loom_model_registered(project: Project, version: ModelVersion) -> None:
    """Called after a model version has been committed to the registry.

    :param project: the loaded project.
    :param version: the new :class:`runtime.ModelVersion`.

    Since 0.1.0.
    """


@hookspec
def loom_model_deployed(project: Project, model: str, version: int, url: str) -> None:
    """Called once a model version answers over HTTP.

    :param project: the loaded project.
    :param model: model name.
    :param version: the deployed version number.
    :param url: the base URL it is served at.

    Since 0.1.0.
    """


@hookspec
def loom_drift_detected(project: Project, model: str, version: int, report: DriftReport) -> bool | None:
    """Called when a drift check on served traffic finds drift.

    :param project: the loaded project.
    :param model: model name.
    :param version: the version whose traffic drifted.
    :param report: the :class:`runtime.DriftReport`.
    :return: ``True`` to ask for a retrain; ``None``/``False`` to leave it. The request shows as
        ``retrain_requested`` in the drift report, and ``loom loop`` retrains on it as on drift itself.

    Called in the Serve replica whose captured traffic was checked (on demand or by the scheduled checks); the
    drift check's response waits for it. A failing implementation is logged and named in the report's
    ``hook_error``; the check still answers.

    Since 0.1.0.
    """


@hookspec
def loom_canary_judged(project: Project, model: str, version: int, previous: int, verdict: dict[str, Any]) -> None:
    """Called when the retrain loop has judged a canary, after it was promoted or rolled back.

    :param project: the loaded project.
    :param model: model name.
    :param version: the judged (candidate) version.
    :param previous: the version it was compared with.
    :param verdict: the decision and its evidence (:meth:`runtime.judge.Verdict.to_dict`): ``decision``
        (``promote``/``rollback``), ``metric``, ``candidate``, ``current``, ``n``, ``difference``, ``ci``,
        ``p_value``, ``confidence``, ``test``, ``reason``.

    Called by the process that runs the loop (``loom loop``). A failing implementation is logged, naming the plugin;
    the decision stands.

    Since 0.2.0.
    """


@hookspec
def loom_on_error(project: Project, stage: str, error: BaseException) -> None:
    """Called when a stage fails, before the error reaches the user. Must not raise.

    :param project: the loaded project.
    :param stage: the stage that failed (``ingest``, ``validate``, ``features``, ``train``, ``register``, ``deploy``).
    :param error: the exception.

    Since 0.1.0.
    """
