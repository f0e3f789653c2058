"""The three steps wired to Ray Data and Ray Train; each reads the previous step's artifacts.

What the steps share: the splits scored against pixel ground truth, the check that a step's
inputs exist before any work, how models run (tasks on CPU cores, actors on GPUs), and how the
per-batch confusion matrices of a scoring pass are summed with progress shown.
"""

from __future__ import annotations

import logging
import os
import signal
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
import ray.data
import torch

from wsss.platform.config import ConfigError, RayConfig
from wsss.platform.console import Progress
from wsss.platform.datasets.manifest import ManifestRow
from wsss.platform.model_file import ModelFileError, load_model, load_model_file
from wsss.platform.training import MIN_TRAIN_BATCH
from wsss.stages.metrics import ConfusionMatrix

# Splits with pixel ground truth that every step is scored on: val is the paper's column (step
# 3 picks its epoch there), test is scored alongside where the data set has its masks.
SCORED_SPLITS = ("val", "test")
# Steps 1 and 2's masks are scored on train too where the data set has its true masks (VOC's
# train masks, the built-in set's oracle masks): the quality of the masks step 3 learns from.
MASK_SCORED_SPLITS = ("train", *SCORED_SPLITS)
# The column of a scoring pass's output that counts the images of each batch.
IMAGES_COLUMN = "images"
# Fault injection for the lost-node test: "<node address>:<marker file>" makes the first
# dense-CRF task on that node take its node down before it returns (its raylet killed, as when a
# machine is switched off); the marker file it creates says so, and that it happened once (the
# node put in its place has the same address).
REMOVE_NODE_ENV = "WSSS_REMOVE_NODE"
logger = logging.getLogger(__name__)


class StepInputError(FileNotFoundError):
    """A file or folder a step reads is missing or unreadable (found in the driver, before any
    worker starts)."""


def require_inputs(step: str, inputs: Mapping[str, Path]) -> None:
    """Raise `StepInputError` naming the first of `inputs` ({what: path}) that is missing or
    unreadable, a saved model (`.pt`) included that cannot be loaded; a Ray worker would
    otherwise fail on it, and be retried, minutes later."""
    for what, path in inputs.items():
        if not path.exists():
            problem = "does not exist" if not path.is_symlink() else "is a broken link"
        elif not os.access(path, os.R_OK):
            problem = "is not readable"
        else:
            if path.suffix == ".pt":
                try:
                    load_model_file(path)
                except ModelFileError as error:
                    raise StepInputError(f"{step} needs {what}: {error}") from error
            continue
        raise StepInputError(f"{step} needs {what}: {path} {problem}")


def require_split_sizes(rows: Sequence[ManifestRow], ray_config: RayConfig) -> None:
    """Raise `ConfigError` when the train split cannot give every Ray Train worker a training
    batch, or val has no image (step 1 sets its thresholds and step 3 picks its epoch there):
    found before any step, not in every worker hours into a run."""
    sizes = {split: sum(r.split == split for r in rows) for split in ("train", "val")}
    needed = ray_config.num_workers * MIN_TRAIN_BATCH
    if sizes["train"] < needed:
        raise ConfigError(
            f"the train split has {sizes['train']} images; ray.num_workers="
            f"{ray_config.num_workers} Ray Train workers need at least {MIN_TRAIN_BATCH} each "
            f"({needed}): a training batch needs {MIN_TRAIN_BATCH} images, as BatchNorm takes "
            f"no batch of one (add train images or lower ray.num_workers)"
        )
    if not sizes["val"]:
        raise ConfigError(
            "the val split has no image: step 1 sets its thresholds and step 3 picks its "
            "epoch on val (give the data set val images)"
        )


def scored_splits(rows: Sequence[ManifestRow], among: Sequence[str] = SCORED_SPLITS) -> list[str]:
    """The splits of `among` that have rows with pixel ground truth."""
    return [s for s in among if any(r.split == s and r.mask is not None for r in rows)]


def inference_device() -> torch.device:
    """The device of batch inference: its GPU where Ray gave it one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Tasks a CPU pass keeps submitted per CPU: one running, the next waiting in the submitting
# process, which hands it to the worker freed by the one before (`cpu_tasks`).
TASKS_PER_CPU = 2


def cpu_tasks(
    dataset: ray.data.Dataset,
    function: Callable[..., dict[str, np.ndarray]],
    fn_kwargs: dict[str, Any],
    batch_size: int,
    ray_config: RayConfig,
) -> ray.data.Dataset:
    """`dataset` mapped batch by batch through `function(batch, **fn_kwargs)` as single-CPU
    Ray tasks, `TASKS_PER_CPU` in flight for each CPU of the cluster (`ray.num_cpus` at least,
    where an autoscaling cluster has not grown yet): how the platform runs a pass on CPUs
    (batch inference, the dense CRF). Each CPU runs one and has the next queued behind it.

    Ray Data budgets the CPUs its operators may take and submits a task only when the budget
    has room: left to it, a pass submits each task after one ends, and that CPU sits idle for
    the round trip (the first batches wait for the budget's first update too). With Ray Data's
    per-operator reservation off, its concurrency cap bounds the tasks in flight instead:
    `TASKS_PER_CPU` a CPU, so the next task is already queued where it was submitted and Ray
    hands it to the worker the moment the one before returns. These passes are one operator
    over an in-memory row list, where the reservation (which keeps a pipeline's stages from
    starving each other) has nothing to share."""
    cpus = max(ray_config.num_cpus, int(ray.cluster_resources().get("CPU", 0)))
    mapped = dataset.map_batches(
        function,
        fn_kwargs=fn_kwargs,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=TASKS_PER_CPU * cpus),
        num_cpus=1,
    )
    mapped.context.op_resource_reservation_enabled = False
    return mapped


def map_through_model(
    dataset: ray.data.Dataset,
    model_class: type,
    constructor_kwargs: dict[str, Any],
    batch_size: int,
    ray_config: RayConfig,
) -> ray.data.Dataset:
    """`dataset` mapped batch by batch through `model_class(**constructor_kwargs)`, a callable
    that loads its model when made: how every step's batch inference runs. With
    `ray.use_gpu`, on a pool of one actor per GPU of the cluster; on CPUs, as `cpu_tasks`,
    each worker process making the callable once and keeping it (`loaded_model`)."""
    if ray_config.use_gpu:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        return dataset.map_batches(
            model_class,
            fn_constructor_kwargs=constructor_kwargs,
            compute=ray.data.ActorPoolStrategy(size=max(1, gpus)),
            num_gpus=1,
            batch_size=batch_size,
            batch_format="numpy",
        )
    # Ray runs a job's CPU tasks in the worker processes it keeps, where an actor pool starts
    # new ones every pass: a later pass (the dense CRF after the CAMs, the pseudo masks after
    # IRNet's fit, a sweep's evaluations) finds PyTorch imported and, the same model asked for
    # again, loaded; the nodes the platform starts keep them through a fit
    # (`idle_workers_limit`). Ray gives a GPU task a new process every time, hence the actors.
    return cpu_tasks(
        dataset,
        _through_loaded(model_class),
        {"constructor_kwargs": constructor_kwargs},
        batch_size,
        ray_config,
    )


def _through_loaded(model_class: type) -> Callable[..., dict[str, np.ndarray]]:
    def run(batch: dict[str, np.ndarray], constructor_kwargs: dict[str, Any]) -> dict:
        return loaded_model(model_class, constructor_kwargs)(batch)

    # Ray names the stage after the function: the dashboard and task list show the model's.
    run.__name__ = run.__qualname__ = model_class.__name__
    return run


# This process's last inference callable: ((module, class name), constructor kwargs, instance).
_loaded: tuple[tuple[str, str], dict[str, Any], Any] | None = None


def loaded_model(model_class: type, constructor_kwargs: dict[str, Any]) -> Any:
    """`model_class(**constructor_kwargs)`, made once in this process and kept until another
    is asked for: one model at a time in a worker's memory. A model file is never rewritten
    under its path (the store publishes each in a folder of its own), so equal arguments mean
    the same model."""
    global _loaded
    # By name: a class Ray ships by value arrives as a new object with every task.
    name = (model_class.__module__, model_class.__qualname__)
    if _loaded is None or _loaded[0] != name or _loaded[1] != constructor_kwargs:
        _loaded = None  # the old model's memory goes before the new one's is taken
        _loaded = (name, constructor_kwargs, model_class(**constructor_kwargs))
    return _loaded[2]


def load_for_inference(
    path: Path | str, build: Callable[[dict[str, Any]], torch.nn.Module]
) -> tuple[torch.nn.Module, dict[str, Any], torch.device]:
    """A step's saved model as batch inference holds it: on its GPU where Ray gave it one,
    else on the CPU with one thread (a task per CPU runs at a time). Returns (model in eval
    mode, the model file's dict, the device)."""
    torch.set_num_threads(1)
    device = inference_device()
    model, saved = load_model(path, build, device)
    return model, saved, device


def remove_this_node_once() -> None:
    """The `REMOVE_NODE_ENV` fault, for a task on the node it names."""
    address, _, marker = os.environ.get(REMOVE_NODE_ENV, "").partition(":")
    if not address or address != ray.util.get_node_ip_address():
        return
    try:
        descriptor = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "w") as written:
        written.write(f"{address} lost in task {ray.get_runtime_context().get_task_id()}\n")
    logger.warning(f"[step1] {REMOVE_NODE_ENV}: the node at {address} goes down")
    # A Ray worker's parent is its node's raylet; the node's `ray start --block` stops the
    # rest of the node when the raylet dies.
    os.kill(os.getppid(), signal.SIGKILL)


# Which classes' CAMs of an image a step reads: those step 1 kept from its labels, or (val and
# test images) those the classifiers predict, as step 3 sees an image.
CamLabels = Literal["given", "predicted"]
# The metric name of a row drawn with predicted labels: "<row><PREDICTED_SUFFIX>".
PREDICTED_SUFFIX = "_predicted"


class CamFileError(ValueError):
    """A CAM file of step 1 cannot be used; the message names it and what to do."""


def read_cams(
    cam_dir: Path, image_id: str, labels: CamLabels = "given"
) -> tuple[np.ndarray, np.ndarray]:
    """(CAMs float32 [n, h, w] at the saved stride, dataset class indices [n]) of one image,
    as step 1 saved them: of the classes it kept from the image's labels (`labels="given"`)
    or, for a val or test image, of those the classifiers predict (`"predicted"`). A file
    that cannot be read or holds NaN or infinite values raises `CamFileError` naming it,
    before a CRF or random walk turns it into a meaningless mask."""
    path = cam_dir / f"{image_id}.npz"
    prefix = "predicted_" if labels == "predicted" else ""
    try:
        with np.load(path) as saved:
            cams = saved[f"{prefix}cams"].astype(np.float32)
            classes = saved[f"{prefix}classes"]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        problem = f"cannot be read ({type(error).__name__}: {error})"
    else:
        if np.isfinite(cams).all():
            return cams, classes
        problem = "holds NaN or infinite values"
    raise CamFileError(
        f"{path} {problem}: remove the step folder that holds it "
        f"({path.resolve().parent.parent}) and run the same command again, which makes it anew"
    )


def scored_columns(names: Sequence[str], splits: Sequence[str]) -> list[str]:
    """The confusion columns of a scoring pass over `splits` (those with true masks):
    `<name>_<split>` for each metric of `names`, and on val and test its twin drawn with
    predicted labels, `<name>_predicted_<split>`."""
    return [
        f"{name}{suffix}_{split}"
        for split in splits
        for suffix in ("", *((PREDICTED_SUFFIX,) if split in SCORED_SPLITS else ()))
        for name in names
    ]


def summaries_by_split(
    totals: Mapping[str, ConfusionMatrix], splits: Sequence[str], classes: list[str]
) -> dict[str, dict[str, Any]]:
    """{split: {metric: summary}} of the `scored_columns` confusion matrices in `totals`."""
    return {
        split: {
            column.removesuffix(f"_{split}"): matrix.summary(classes)
            for column, matrix in totals.items()
            if column.endswith(f"_{split}")
        }
        for split in splits
    }


def confusion_batch(matrices: Mapping[str, ConfusionMatrix], images: int) -> dict[str, np.ndarray]:
    """A scoring task's output for one batch of `images`: each matrix flattened to one row of
    its column, and the image count, as `total_confusions` sums them."""
    return {
        IMAGES_COLUMN: np.array([images]),
        **{column: matrix.counts.reshape(1, -1) for column, matrix in matrices.items()},
    }


def total_confusions(
    dataset: ray.data.Dataset,
    columns: list[str],
    num_classes: int,
    progress: Progress | None = None,
) -> dict[str, ConfusionMatrix]:
    """`sum_confusions` over a scoring pass's dataset, batch by batch as its tasks finish.

    Scoring tasks return their batch's counts instead of per-pixel predictions, so only
    K*K numbers per batch travel to the driver.
    """
    batches = dataset.iter_batches(batch_format="numpy", batch_size=None)
    return sum_confusions(batches, columns, num_classes, progress)


def sum_confusions(
    batches: Iterable[Mapping[str, np.ndarray]],
    columns: list[str],
    num_classes: int,
    progress: Progress | None = None,
) -> dict[str, ConfusionMatrix]:
    """Sum scoring batches (`confusion_batch` outputs: flattened [n, K*K] rows in `columns`)
    into one confusion matrix per column; their `IMAGES_COLUMN` advances `progress`."""
    totals = {column: ConfusionMatrix(num_classes) for column in columns}
    for batch in batches:
        for column, matrix in totals.items():
            matrix.counts += batch[column].sum(axis=0).reshape(matrix.counts.shape)
        if progress is not None:
            progress.update(int(batch[IMAGES_COLUMN].sum()))
    if progress is not None:
        progress.finish()
    return totals
