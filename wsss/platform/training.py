"""One Ray Train loop for all three steps.

The steps differ only in what a `TrainTask` names: the model, its parameter groups and
optimizer, the loss of a batch, its data, and (optionally) how a validation batch is scored and
how the scores become metrics. Everything else is shared: DDP through
`ray.train.torch.prepare_model`, the poly schedule, a checkpoint every epoch holding the whole
training state plus the best model so far, resumption from the latest checkpoint after a lost
worker (`FailureConfig`) or a restarted driver (same run name and storage path), and per-epoch
progress lines. The function runs unchanged on one CPU or many GPUs.

Training is reproducible: each worker builds its own Ray Dataset every epoch from an
`EpochData`, whose items are shuffled and dealt to workers, and whose augmentation is seeded,
from (seed, epoch) alone; batches keep their order and torch's generator is seeded per epoch.
So a run gives the same model every time, and a run resumed from a checkpoint gives the model
the uninterrupted run would have (on the same hardware and number of workers).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray.data
import ray.train
import ray.train.torch
import torch
from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.trainable.trainable_fn_utils import _in_tune_session
from torch import nn

from wsss.platform.config import AugmentationConfig, RayConfig
from wsss.platform.console import eta_text
from wsss.platform.loaders.batches import pace_scheduling_loop, training_dataset
from wsss.platform.model_file import load_model_file

STATE_FILE = "state.pt"
# Fault injection for the killed-driver test: "<task name>:<epoch>" makes the driver die, as a
# SIGKILL would, once Ray Train has registered that task's checkpoint of that epoch.
EXIT_AFTER_CHECKPOINT_ENV = "WSSS_EXIT_AFTER_CHECKPOINT"
# Where rank 0 writes each epoch's checkpoint for Ray Train to copy, inside the run's folder in
# storage: a folder whose copy an abort (Ctrl-C) or a lost worker cut short is then removed by
# the driver, on any node, instead of staying in a worker's temp dir.
CHECKPOINT_STAGING_DIR = "staged-checkpoints"
# Ray Train's controller sees its workers start, report and finish once per poll, every 2 s by
# default, and each fit waits for a poll at each of these: a shorter poll shortens every fit's
# start and end. A poll that finds a worker busy is only a missed health check (Ray Train marks
# a worker dead after its own 10-minute limit).
CONTROLLER_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
CONTROLLER_POLL_S = "0.5"
# Worker lines go through logging: Ray Train tees a worker's print() to its logger and to the
# worker's wrapped stdout, which showed every line twice on the driver.
logger = logging.getLogger(__name__)

BatchLoss = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
EvalBatch = Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, np.ndarray]]
EvalSummary = Callable[[dict[str, np.ndarray]], dict[str, Any]]


@dataclass(frozen=True)
class EpochData:
    """Items (manifest rows, or any picklable rows) and how a worker turns its share into a
    Ray Dataset: `build(items, seed)`, where `seed` seeds the augmentation.

    With `shuffle`, every epoch shuffles the items with a generator seeded by (seed, epoch) and
    deals each worker the same number (the remainder waits for another epoch: DDP needs
    every worker in every step); without it, workers take every item in order, dealt round
    the table (for evaluation).
    """

    items: Sequence[Any]
    build: Callable[[list[Any], int], ray.data.Dataset]
    seed: int
    shuffle: bool = True
    # How many batch items an item gives (IRNet reads each image once per scale).
    copies: int = 1

    def steps_per_epoch(self, batch_size: int, world_size: int) -> int:
        """Optimizer steps an epoch of these items takes on `world_size` workers."""
        return math.ceil(len(self.items) * self.copies / (batch_size * world_size))

    def worker_items(self, epoch: int, rank: int, world_size: int) -> list[Any]:
        """The items worker `rank` of `world_size` reads in `epoch` (0-based)."""
        order = np.arange(len(self.items))
        if self.shuffle:
            order = self._generator(epoch).permutation(order)
            order = order[: len(order) - len(order) % world_size]
        return [self.items[i] for i in order[rank::world_size]]

    def worker_dataset(self, epoch: int, rank: int, world_size: int) -> ray.data.Dataset:
        """The Ray Dataset of `worker_items`, augmented with a seed drawn from (seed, epoch)."""
        augmentation_seed = int(self._generator(epoch).integers(2**31, size=2)[1])
        return self.build(self.worker_items(epoch, rank, world_size), augmentation_seed)

    def _generator(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])


def epoch_data(
    rows: Sequence[Any],
    seed: int,
    *,
    train: bool,
    root: Path,
    class_names: Sequence[str],
    size: int,
    augmentation_config: AugmentationConfig,
    columns: Sequence[str],
    rescales: Sequence[float] = (1.0,),
    crop: bool = False,
) -> EpochData:
    """A step's manifest rows as its workers read them: train rows shuffled every epoch with
    the strong augmentation (at each of `rescales`, cropped with `crop`), validation rows in
    order with the weak one; decoded to `columns` ("mask" among them reads each row's mask)."""
    build = functools.partial(
        training_dataset,
        root=str(root),
        class_names=list(class_names),
        size=size,
        augmentation="strong" if train else "weak",
        augmentation_config=augmentation_config,
        columns=list(columns),
        with_masks="mask" in columns,
        rescales=tuple(rescales),
        crop=crop,
    )
    return EpochData(rows, build, seed, shuffle=train, copies=len(rescales))


@dataclass
class TrainTask:
    """What one step trains and how. Every callable must be picklable (module-level)."""

    name: str
    build_model: Callable[[], nn.Module]
    param_groups: Callable[[nn.Module], list[dict[str, Any]]]
    batch_loss: BatchLoss
    train_data: EpochData
    epochs: int
    batch_size: int
    optimizer: Literal["adam", "sgd"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    poly_power: float | None = 0.9
    val_data: EpochData | None = None
    eval_batch: EvalBatch | None = None
    eval_summary: EvalSummary | None = None
    select_metric: str | None = None
    seed: int = 0
    # "bf16": each training batch's forward and backward under bfloat16 autocast; "auto": so
    # where the worker's device computes bfloat16 natively (`trains_in_bf16`).
    precision: Literal["fp32", "bf16", "auto"] = "fp32"


@dataclass
class TrainOutput:
    """The selected model (best epoch by `select_metric`, else the last) and what came with it."""

    model_state: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    extras: dict[str, Any]
    history: list[dict[str, Any]]


def make_optimizer(task: TrainTask, model: nn.Module) -> torch.optim.Optimizer:
    """`task`'s optimizer over `model`'s parameter groups."""
    groups = task.param_groups(model)
    if task.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=task.weight_decay)
    return torch.optim.SGD(groups, momentum=task.momentum, weight_decay=task.weight_decay)


def make_scheduler(
    task: TrainTask, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The poly schedule over `total_steps` optimizer steps, or None without `poly_power`."""
    if task.poly_power is None:
        return None
    return torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=total_steps, power=task.poly_power
    )


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _gather(outputs: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate this worker's eval outputs with every other worker's."""
    local = {k: np.concatenate(v) if v else np.zeros(0) for k, v in outputs.items()}
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return local
    everyone: list[dict[str, np.ndarray]] = [None] * torch.distributed.get_world_size()  # type: ignore[list-item]
    torch.distributed.all_gather_object(everyone, local)
    keys = set().union(*(part.keys() for part in everyone))
    return {
        k: np.concatenate([part[k] for part in everyone if k in part and part[k].size])
        for k in keys
    }


# A training batch needs two items: BatchNorm in training mode (DeepLabV3+'s pooling branch sees
# one value per channel per item) refuses a batch of one.
MIN_TRAIN_BATCH = 2


def _worker_dataset(data: EpochData, epoch: int) -> ray.data.Dataset:
    """This worker's share of `data` in `epoch`."""
    context = ray.train.get_context()
    return data.worker_dataset(epoch, context.get_world_rank(), context.get_world_size())


def _batches(
    task: TrainTask, dataset: ray.data.Dataset, min_size: int = 1
) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of `dataset` with at least `min_size` items, in a fixed order (only the last
    batch of a share can be smaller than the batch size)."""
    batches = dataset.iter_torch_batches(
        batch_size=task.batch_size,
        device=ray.train.torch.get_device(),
    )
    return (batch for batch in batches if len(next(iter(batch.values()))) >= min_size)


def _started(batches: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    """`batches`, its first batch already being fetched in the background. A Ray Dataset
    starts executing at the first request and takes a while to schedule its first tasks:
    asking for the next epoch's first batch while this epoch validates and checkpoints hides
    that wait (and the fetch needs no collective, so the lockstep stays in the main thread)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="first-batch")
    first = pool.submit(next, batches, None)
    pool.shutdown(wait=False)

    def from_first() -> Iterator[dict[str, torch.Tensor]]:
        batch = first.result()
        if batch is not None:
            yield batch
            yield from batches

    return from_first()


def _in_lockstep(batches: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    """`batches` until any worker has run out. DDP needs every worker in every step, and one
    worker can hold a batch fewer when an unreadable image was dropped from its share."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        yield from batches
        return
    for batch in itertools.chain(batches, [None]):
        has_batch = torch.tensor(
            [int(batch is not None)], dtype=torch.int32, device=ray.train.torch.get_device()
        )
        torch.distributed.all_reduce(has_batch, op=torch.distributed.ReduceOp.MIN)
        if not has_batch.item():
            return
        yield batch


CPUINFO = Path("/proc/cpuinfo")
# x86 flags of bfloat16 arithmetic in hardware (AVX-512 BF16, AMX); without them PyTorch
# emulates bfloat16 on the CPU, slower than float32.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def native_bf16_cpu(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this machine's CPU computes bfloat16 natively, as Linux lists its flags in
    `cpuinfo`; False where that cannot be read (another system: trained in float32)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return False
    flags = {flag for line in lines if line.startswith("flags") for flag in line.split()}
    return bool(NATIVE_BF16_CPU_FLAGS & flags)


def trains_in_bf16(precision: str, device: str) -> bool:
    """Whether a training step in `precision` runs under bfloat16 autocast on `device` (a torch
    device type): always in bf16, never in fp32, with auto where the device computes bfloat16
    natively (a CUDA GPU from Ampere on, a CPU with `NATIVE_BF16_CPU_FLAGS`)."""
    if precision != "auto":
        return precision == "bf16"
    if device == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device == "cpu" and native_bf16_cpu()


def train_step(
    task: TrainTask,
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    total_steps: int,
) -> float:
    """One optimizer step of `task` on `batch` (the schedule stops at `total_steps`), in
    `task.precision`; the batch's loss."""
    device = next(iter(batch.values())).device.type
    with torch.autocast(
        device, dtype=torch.bfloat16, enabled=trains_in_bf16(task.precision, device)
    ):
        loss = task.batch_loss(model, batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if scheduler is not None and scheduler.last_epoch < total_steps:
        scheduler.step()
    return float(loss.detach())


def evaluate(
    task: TrainTask, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, extras) of `task`'s eval functions over `batches` (and every other worker's,
    under DDP); empty without them."""
    if task.eval_batch is None or task.eval_summary is None:
        return {}, {}
    model.eval()
    outputs: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in batches:
            for key, value in task.eval_batch(model, batch).items():
                outputs.setdefault(key, []).append(value)
    summary = task.eval_summary(_gather(outputs))
    metrics = {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}
    # Extras (e.g. per-class thresholds) travel in checkpoints, which load with weights_only.
    extras = {k: np.asarray(v).tolist() for k, v in summary.items() if k not in metrics}
    return metrics, extras


def _quiet_ray_train_file_loggers() -> None:
    """Warnings only from Ray Train's loggers named by file path (`getLogger(__file__)`), which
    `LoggingConfig`'s level misses: they printed "Reporting training result" per worker per
    epoch."""
    marker = f"{os.sep}ray{os.sep}train{os.sep}"
    for name in list(logging.root.manager.loggerDict):
        if marker in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The per-worker training function handed to `TorchTrainer` (config: "task", the
    `TrainTask`; "staging", the folder where rank 0 writes each checkpoint for Ray Train to
    copy)."""
    task: TrainTask = config["task"]
    staging = Path(config["staging"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    data_context = ray.data.DataContext.get_current()
    data_context.execution_options.preserve_order = True  # batches in the same order every run
    data_context.enable_progress_bars = False  # the epoch lines report progress
    data_context.print_on_execution_start = False
    pace_scheduling_loop(data_context)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no line per dataset per epoch
    _quiet_ray_train_file_loggers()
    torch.manual_seed(task.seed)
    model = task.build_model()
    optimizer = make_optimizer(task, model)
    steps_per_epoch = task.train_data.steps_per_epoch(task.batch_size, context.get_world_size())
    total_steps = max(1, task.epochs * steps_per_epoch)
    scheduler = make_scheduler(task, optimizer, total_steps)
    start_epoch, best_value = 0, -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, Any] = {}
    best_extras: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    # On the worker's device before any state is loaded, so that the optimizer's state lands
    # where its parameters are.
    model = ray.train.torch.prepare_model(model)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_model_file(Path(folder) / STATE_FILE)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1
        best_value, best_state = state["best_value"], state["best_model"]
        best_metrics, best_extras, history = (
            state["best_metrics"],
            state["best_extras"],
            state["history"],
        )
        if rank == 0:
            logger.info(f"[{task.name}] resuming after epoch {start_epoch} from {checkpoint.path}")
    device = ray.train.torch.get_device().type
    in_bf16 = trains_in_bf16(task.precision, device)
    if rank == 0 and task.precision == "auto":
        chosen = "bf16" if in_bf16 else "fp32"
        logger.info(f"[{task.name}] precision auto: training in {chosen} on {device}")

    def train_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        dataset = _worker_dataset(task.train_data, epoch)
        return _started(_batches(task, dataset, MIN_TRAIN_BATCH))

    upcoming = train_batches(start_epoch) if start_epoch < task.epochs else iter(())
    # Validation rows come in order and are decoded without randomness (`epoch_data`'s weak
    # augmentation): the same blocks every epoch, so decoded once and kept in the object store,
    # which spills to disk what it cannot hold.
    val_dataset = _worker_dataset(task.val_data, 0).materialize() if task.val_data else None
    for epoch in range(start_epoch, task.epochs):
        started = time.perf_counter()
        # Seeded by epoch, not carried over: a run resumed at this epoch draws the same numbers.
        torch.manual_seed(task.seed * 1_000_003 + epoch)
        model.train()
        losses = [
            train_step(task, model, batch, optimizer, scheduler, total_steps)
            for batch in _in_lockstep(upcoming)
        ]
        if epoch + 1 < task.epochs:
            upcoming = train_batches(epoch + 1)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)) if losses else math.nan,
            # What `auto` became, per epoch: a run resumed on another machine may differ.
            "bf16": float(in_bf16),
        }
        eval_metrics, extras = ({}, {})
        if val_dataset is not None:
            eval_metrics, extras = evaluate(task, model, _batches(task, val_dataset))
        metrics.update(eval_metrics)
        metrics["epoch_s"] = time.perf_counter() - started
        history.append(metrics)
        value = metrics.get(task.select_metric, -math.inf) if task.select_metric else epoch
        if best_state is None or value > best_value:
            best_value = value
            best_state = {
                k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()
            }
            best_metrics, best_extras = dict(metrics), extras
        if rank == 0:
            shown = " ".join(
                f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("epoch", "epoch_s", "bf16")
            )
            took = metrics["epoch_s"]
            so_far = eta_text(sum(row["epoch_s"] for row in history), epoch + 1, task.epochs)
            logger.info(
                f"[{task.name}] epoch {epoch + 1}/{task.epochs} {shown} ({took:.1f}s; {so_far})"
            )
        saved = None
        if rank == 0:
            staging.mkdir(parents=True, exist_ok=True)
            folder = tempfile.mkdtemp(prefix=f"epoch-{epoch + 1}-", dir=staging)
            torch.save(
                {
                    "model": _unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "epoch": epoch,
                    "best_value": best_value,
                    "best_model": best_state,
                    "best_metrics": best_metrics,
                    "best_extras": best_extras,
                    "history": history,
                },
                Path(folder) / STATE_FILE,
            )
            saved = ray.train.Checkpoint.from_directory(folder)
        # Ray Train copies the folder to storage in the background and deletes it then: the next
        # epoch trains meanwhile (and a run's last copy ends before `fit` returns).
        ray.train.report(
            metrics, checkpoint=saved, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC
        )


def registered_epoch(run_folder: Path) -> int:
    """The epoch of the latest checkpoint Ray Train's controller has registered for the run in
    `run_folder` (what a restarted run resumes from); 0 before the first."""
    try:
        state = json.loads((run_folder / CHECKPOINT_MANAGER_SNAPSHOT_FILENAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-write
        return 0
    return int(((state.get("latest_checkpoint_result") or {}).get("metrics") or {}).get("epoch", 0))


def _exit_after_checkpoint(task_name: str, run_folder: Path) -> None:
    """Start the `EXIT_AFTER_CHECKPOINT_ENV` fault for `task_name` when it names this task."""
    wanted, _, epoch = os.environ.get(EXIT_AFTER_CHECKPOINT_ENV, "").partition(":")
    if wanted != task_name:
        return

    def die_when_registered() -> None:
        while registered_epoch(run_folder) < int(epoch):
            time.sleep(0.1)
        logger.warning(f"[{task_name}] {EXIT_AFTER_CHECKPOINT_ENV}: the driver dies")
        # The local cluster this process started shares its fate (Ray's kill-on-parent-death).
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=die_when_registered, daemon=True).start()


@contextlib.contextmanager
def _ctrl_c_as_elsewhere() -> Iterator[None]:
    """Ctrl-C during and after the block acts as it does anywhere else in the driver: a
    KeyboardInterrupt.

    `TorchTrainer.fit` installs a handler that aborts its run on Ctrl-C and then ends the driver
    with a bare SystemExit (no message, status 1); and it leaves that handler installed, which
    held the finished run's controller actor (and its dataset manager) alive until the driver
    exited and swallowed Ctrl-C in all the driver did next (CAM extraction, evaluation). The run
    is still aborted by Ray Train; the driver's own handler is back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # a handler can only be installed from the main thread: Ray Train installs none
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit as aborted:
        raise KeyboardInterrupt("Ray Train aborted the training run on Ctrl-C") from aborted
    finally:
        signal.signal(signal.SIGINT, handler)


def fit(
    task: TrainTask,
    ray_config: RayConfig,
    storage: Path,
    run_name: str,
    max_failures: int = 2,
) -> TrainOutput:
    """Train `task` with a `TorchTrainer` over `ray_config.num_workers` workers.

    Checkpoints go to `storage/run_name`; starting again with the same arguments resumes from
    the latest one. Inside a Ray Tune trial every epoch's metrics are reported to Tune too
    (its schedulers stop weak trials on them).
    """
    callbacks = [TuneReportCallback()] if _in_tune_session() else []
    # Read where the trainer is made (this process: the driver or a Tune trial) and handed on
    # to its controller; a value the user set stays.
    os.environ.setdefault(CONTROLLER_POLL_ENV, CONTROLLER_POLL_S)
    storage = Path(storage).resolve()
    _exit_after_checkpoint(task.name, storage / run_name)
    staging = storage / run_name / CHECKPOINT_STAGING_DIR
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"task": task, "staging": str(staging)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=ray_config.num_workers,
            use_gpu=ray_config.use_gpu,
            resources_per_worker={"CPU": ray_config.cpus_per_worker},
            placement_strategy=ray_config.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Ray Train's INFO lines (a "Reporting training result" per worker per epoch) would
            # bury the epoch lines; warnings and errors still show.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
        ),
    )
    # Only this run writes there (the step store lets one process build a step): what is left
    # is from an attempt that was killed.
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with _ctrl_c_as_elsewhere():
            result = trainer.fit()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if result.checkpoint is None:
        raise RuntimeError(f"{task.name}: training finished without a checkpoint ({result.error})")
    with result.checkpoint.as_directory() as folder:
        state = load_model_file(Path(folder) / STATE_FILE)
    return TrainOutput(
        state["best_model"], state["best_metrics"], state["best_extras"], state["history"]
    )
