"""MLflow tracking: one parent run per `wsss run`, one nested run per step.

The store defaults to a SQLite database in the runs folder (MLflow 3 refuses the plain
`./mlruns` file store); `MLFLOW_TRACKING_URI` or `tracking.tracking_uri` point elsewhere,
e.g. a tracking server. `wsss ui` serves the default store on 127.0.0.1.

A store that cannot be reached, from the start or from some point of a run on, does not stop
the run: the tracker says so once and logs nothing more; the run folder keeps every number, and
`wsss log <run folder>` logs the finished run later.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import mlflow.pytorch
import numpy as np
from mlflow.exceptions import MlflowException

from wsss.platform.config import TrackingConfig

logger = logging.getLogger(__name__)
T = TypeVar("T")

URI_VARIABLE = "MLFLOW_TRACKING_URI"
DATABASE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
# MLflow 3's UI opens an experiment of unknown kind on its GenAI views (traces, an assistant);
# this tag makes it open on the training runs, their metrics and artifacts.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow retries a request to a server 7 times with growing pauses (minutes in all) by default;
# a run whose server is gone would wait that long at each call. Settings in the environment win.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def tracking_uri(config: TrackingConfig, runs_dir: Path) -> str:
    """The store to log to: config, then MLFLOW_TRACKING_URI, then runs_dir/mlflow.db."""
    return config.tracking_uri or os.environ.get(URI_VARIABLE) or _default_uri(runs_dir)


def _default_uri(runs_dir: Path) -> str:
    return f"sqlite:///{(Path(runs_dir) / DATABASE_FILE).resolve()}"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole (MLflow params are strings)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def metric_values(summary: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Table-1 metrics (and per-class IoU) of a metrics summary as MLflow metric names."""
    values = {
        f"{prefix}_{key}": float(summary[key])
        for key in ("miou", "mean_accuracy", "pixel_accuracy")
        if summary.get(key) is not None
    }
    for name, iou in summary.get("per_class_iou", {}).items():
        if iou is not None:
            values[f"{prefix}_iou_{name}"] = float(iou)
    return values


def unavailable_reason(error: Exception) -> str:
    """What a store that stopped answering raised, in one line: its type and first line."""
    text = str(error).strip()
    first_line = text.splitlines()[0][:300] if text else ""
    return f"{type(error).__name__}: {first_line}".rstrip(": ")


class TrackingUnavailableError(RuntimeError):
    """The tracking store did not answer while `wsss log` logged a run to it."""


class Tracker:
    """A thin layer over MLflow's fluent API for one pipeline run and its step runs.

    A disabled tracker (`enabled=False`: a sweep's trial, whose numbers the sweep's driver
    logs) logs nothing; its runs have no id. A tracker whose store stops answering disables
    itself, says so once (`run_dir`: the folder `wsss log` takes then) and keeps the reason in
    `unavailable`.
    """

    def __init__(
        self,
        config: TrackingConfig,
        runs_dir: Path,
        enabled: bool = True,
        run_dir: Path | None = None,
    ) -> None:
        self.enabled = enabled
        self.uri = tracking_uri(config, runs_dir) if enabled else None
        self.unavailable: str | None = None
        self.experiment_id: str | None = None
        self._run_dir = run_dir
        if not enabled:
            return
        if self.uri.startswith(("http://", "https://")):
            for name, value in HTTP_RETRY_DEFAULTS.items():
                os.environ.setdefault(name, value)
        self._guarded(lambda: self._open_experiment(config.experiment, runs_dir))

    def _open_experiment(self, name: str, runs_dir: Path) -> None:
        chosen = os.environ.get(URI_VARIABLE)
        mlflow.set_tracking_uri(self.uri)
        # MLflow exports the URI to the environment too, where `tracking_uri` would take it
        # for the user's choice in a later run of this process (another runs folder).
        if chosen is None:
            os.environ.pop(URI_VARIABLE, None)
        else:
            os.environ[URI_VARIABLE] = chosen
        if mlflow.get_experiment_by_name(name) is None:
            # Without a location MLflow puts artifacts in ./mlruns of whatever the current
            # folder is; next to the default database they stay with the run they belong to.
            # A tracking server given by URI chooses its own artifact store.
            local = self.uri == _default_uri(runs_dir)
            location = (Path(runs_dir) / ARTIFACT_DIR).resolve().as_uri() if local else None
            try:
                mlflow.create_experiment(name, artifact_location=location)
            except MlflowException as exc:
                # Another run, started at the same time, created it first.
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        self.experiment_id = mlflow.set_experiment(name).experiment_id
        mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    def _guarded(self, call: Callable[[], T]) -> T | None:
        """`call()` while the store answers; None (and nothing logged from then on) after."""
        if not self.enabled:
            return None
        try:
            return call()
        # Whatever the store raises (MLflow's errors, requests' OSErrors, SQLAlchemy's for a
        # full or locked database): tracking never stops the run.
        except Exception as exc:
            self.enabled = False
            self.unavailable = unavailable_reason(exc)
            later = f"wsss log {self._run_dir}" if self._run_dir else "wsss log <run folder>"
            logger.warning(
                f"[mlflow] tracking at {self.uri} is unavailable ({self.unavailable}); the run "
                f"goes on without it and keeps every number in its folder: `{later}` logs it "
                "to MLflow once the store answers"
            )
            self._close_runs()
            return None

    def _close_runs(self) -> None:
        """Take this process's runs off MLflow's stack (marking them failed where the store
        still answers), so that nothing later in the process nests under them."""
        while mlflow.active_run() is not None:
            with contextlib.suppress(Exception):
                mlflow.end_run("FAILED")  # leaves the stack before it calls the store

    @contextmanager
    def _run(self, start: Callable[[], str]) -> Iterator[str | None]:
        run_id = self._guarded(start)
        try:
            yield run_id
        except BaseException as stopped:
            if run_id is not None:
                # Ctrl-C shows in the UI as a run someone stopped, not one that failed.
                status = "KILLED" if isinstance(stopped, KeyboardInterrupt) else "FAILED"
                self._guarded(lambda: mlflow.end_run(status))
            raise
        if run_id is not None:
            self._guarded(mlflow.end_run)

    def parent_run(
        self, name: str, params: Mapping[str, Any], run_id: str | None = None
    ) -> contextlib.AbstractContextManager[str | None]:
        """A top-level run (`run_id`: continue that one) with `params` flattened."""

        def start() -> str:
            run = mlflow.start_run(run_id=run_id, run_name=None if run_id else name)
            if run_id is None:
                mlflow.log_params(_param_values(params))
            return run.info.run_id

        return self._run(start)

    def step_run(
        self, name: str, params: Mapping[str, Any]
    ) -> contextlib.AbstractContextManager[str | None]:
        def start() -> str:
            run = mlflow.start_run(run_name=name, nested=True)
            mlflow.log_params(_param_values(params))
            return run.info.run_id

        return self._run(start)

    def log_history(self, history: list[dict[str, Any]], prefix: str = "") -> None:
        """Per-epoch training metrics, with the epoch as MLflow's step."""
        for row in history:
            epoch = int(row.get("epoch", 0))
            values = {f"{prefix}{k}": float(v) for k, v in row.items() if k != "epoch"}
            self._guarded(lambda v=values, e=epoch: mlflow.log_metrics(v, step=e))

    def log_metrics(self, values: Mapping[str, float]) -> None:
        self._guarded(lambda: mlflow.log_metrics(dict(values)))

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        self._guarded(lambda: mlflow.log_image(image, artifact_file=artifact_file))

    def log_dict(self, values: Mapping[str, Any], artifact_file: str) -> None:
        self._guarded(lambda: mlflow.log_dict(dict(values), artifact_file))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._guarded(lambda: mlflow.log_text(text, artifact_file))

    def log_model(self, model: Any, name: str) -> None:
        # Explicit requirements: inferring them imports and inspects the whole environment.
        # Pickle format: MLflow's default (pt2) traces the graph and needs an input example.
        self._guarded(
            lambda: mlflow.pytorch.log_model(
                model,
                name=name,
                pip_requirements=["torch", "segmentation-models-pytorch"],
                serialization_format="pickle",
            )
        )


def _param_values(params: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params: flattened keys, values as text (MLflow keeps 500 characters)."""
    return {k: str(v)[:500] for k, v in flatten(params).items()}
