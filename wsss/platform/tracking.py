"""MLflow tracking: one parent run per `wsss run`, one nested run per step.

The store defaults to a SQLite database in the runs folder (MLflow 3 refuses the plain
`./mlruns` file store); `MLFLOW_TRACKING_URI` or `tracking.tracking_uri` point elsewhere,
e.g. a tracking server. `wsss ui` serves the default store on 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
from mlflow.exceptions import MlflowException

from wsss.platform.config import TrackingConfig

DATABASE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
# MLflow 3's UI opens an experiment of unknown kind on its GenAI views (traces, an assistant);
# this tag makes it open on the training runs, their metrics and artifacts.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri(config: TrackingConfig, runs_dir: Path) -> str:
    """The store to log to: config, then MLFLOW_TRACKING_URI, then runs_dir/mlflow.db."""
    return config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _default_uri(runs_dir)


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


class Tracker:
    """A thin layer over MLflow's fluent API for one pipeline run and its step runs.

    A disabled tracker (`enabled=False`: a sweep's trial, whose numbers the sweep's driver
    logs) logs nothing; its runs have no id.
    """

    def __init__(self, config: TrackingConfig, runs_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.uri = tracking_uri(config, runs_dir) if enabled else None
        if not enabled:
            return
        mlflow.set_tracking_uri(self.uri)
        if mlflow.get_experiment_by_name(config.experiment) is None:
            # Without a location MLflow puts artifacts in ./mlruns of whatever the current
            # folder is; next to the default database they stay with the run they belong to.
            # A tracking server given by URI chooses its own artifact store.
            local = self.uri == _default_uri(runs_dir)
            location = (Path(runs_dir) / ARTIFACT_DIR).resolve().as_uri() if local else None
            try:
                mlflow.create_experiment(config.experiment, artifact_location=location)
            except MlflowException as exc:
                # Another run, started at the same time, created it first.
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        mlflow.set_experiment(config.experiment)
        mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    @contextmanager
    def parent_run(
        self, name: str, params: Mapping[str, Any], run_id: str | None = None
    ) -> Iterator[str | None]:
        """A top-level run (`run_id`: continue that one) with `params` flattened."""
        if not self.enabled:
            yield None
            return
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else name) as run:
            if run_id is None:
                mlflow.log_params(_param_values(params))
            yield run.info.run_id

    @contextmanager
    def step_run(self, name: str, params: Mapping[str, Any]) -> Iterator[str | None]:
        if not self.enabled:
            yield None
            return
        with mlflow.start_run(run_name=name, nested=True) as run:
            mlflow.log_params(_param_values(params))
            yield run.info.run_id

    def log_history(self, history: list[dict[str, Any]], prefix: str = "") -> None:
        """Per-epoch training metrics, with the epoch as MLflow's step."""
        for row in history if self.enabled else ():
            epoch = int(row.get("epoch", 0))
            mlflow.log_metrics(
                {f"{prefix}{k}": float(v) for k, v in row.items() if k != "epoch"}, step=epoch
            )

    def log_metrics(self, values: Mapping[str, float]) -> None:
        if self.enabled:
            mlflow.log_metrics(dict(values))

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        if self.enabled:
            mlflow.log_image(image, artifact_file=artifact_file)

    def log_dict(self, values: Mapping[str, Any], artifact_file: str) -> None:
        if self.enabled:
            mlflow.log_dict(dict(values), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            mlflow.log_text(text, artifact_file)

    def log_model(self, model: Any, name: str) -> None:
        if not self.enabled:
            return
        # Explicit requirements: inferring them imports and inspects the whole environment.
        # Pickle format: MLflow's default (pt2) traces the graph and needs an input example.
        mlflow.pytorch.log_model(
            model,
            name=name,
            pip_requirements=["torch", "segmentation-models-pytorch"],
            serialization_format="pickle",
        )


def _param_values(params: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params: flattened keys, values as text (MLflow keeps 500 characters)."""
    return {k: str(v)[:500] for k, v in flatten(params).items()}
