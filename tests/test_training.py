"""The shared Ray Train loop: learning, dealing data to workers, reproducible runs, resuming
after a killed worker."""

import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import ray.data
import ray.train.torch
import torch
from ray.util.state import list_actors
from torch import nn

from wsss.platform import training
from wsss.platform.config import RayConfig
from wsss.platform.training import (
    CHECKPOINT_STAGING_DIR,
    EpochData,
    TrainTask,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
    native_bf16_cpu,
    registered_epoch,
    train_step,
    trains_in_bf16,
)

ROWS = 128

# Ray workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _linear() -> nn.Module:
    return nn.Linear(3, 1)


def _groups(model: nn.Module) -> list[dict]:
    return [{"params": model.parameters(), "lr": 0.05}]


def _mse(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return ((model(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()


def _mse_dying_once(
    model: nn.Module, batch: dict[str, torch.Tensor], folder: str, run_folder: str
) -> torch.Tensor:
    """Counts batches in `folder`; a worker process dies once, mid-epoch 2 (the 11th batch of
    both workers), after Ray Train has registered epoch 1's checkpoint of `run_folder`, as
    it would have in any real epoch."""
    counter = Path(folder) / f"batches-{os.getpid()}"
    count = int(counter.read_text()) + 1 if counter.exists() else 1
    # Written whole through a rename: the other worker reads these files at any moment.
    (Path(folder) / f".tmp-{os.getpid()}").write_text(str(count))
    (Path(folder) / f".tmp-{os.getpid()}").replace(counter)
    total = sum(int(p.read_text()) for p in Path(folder).glob("batches-*"))
    marker = Path(folder) / "died"
    if total >= 11 and not marker.exists():
        marker.write_text("x")
        while registered_epoch(Path(run_folder)) < 1:
            time.sleep(0.05)
        os._exit(1)
    return _mse(model, batch)


def _errors(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {"error": ((model(batch["x"]).squeeze(1) - batch["y"]) ** 2).cpu().numpy()}


def _summary(outputs: dict[str, np.ndarray]) -> dict:
    return {"neg_mse": -float(outputs["error"].mean()), "count": len(outputs["error"])}


def _from_items(items: list[dict], seed: int) -> ray.data.Dataset:
    return ray.data.from_items(items)


def _record(folder: str, event: str) -> None:
    """Leaves a file in `folder` naming `event`, its process and when it happened."""
    (Path(folder) / f"{time.monotonic_ns()}-{os.getpid()}-{event}").touch()


def _from_items_recorded(items: list[dict], seed: int, folder: str, kind: str) -> ray.data.Dataset:
    """`_from_items`, recording each dataset made as `kind`."""
    _record(folder, kind)
    return _from_items(items, seed)


def _summary_recorded(outputs: dict[str, np.ndarray], folder: str) -> dict:
    """`_summary`, recording each call as "eval"."""
    _record(folder, "eval")
    return _summary(outputs)


def _events_by_worker(folder: Path) -> dict[str, list[str]]:
    """What `_record` left in `folder`: each process's events in the order they happened."""
    events: dict[str, list[str]] = {}
    for name in sorted(folder.iterdir(), key=lambda path: int(path.name.split("-")[0])):
        _, pid, event = name.name.split("-")
        events.setdefault(pid, []).append(event)
    return events


def _task(loss, epochs: int) -> TrainTask:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32)
    rows = [{"x": a, "y": b} for a, b in zip(x, y, strict=True)]
    return TrainTask(
        name="toy",
        build_model=_linear,
        param_groups=_groups,
        batch_loss=loss,
        train_data=EpochData(rows, _from_items, seed=0),
        val_data=EpochData(rows, _from_items, seed=0, shuffle=False),
        epochs=epochs,
        batch_size=16,
        eval_batch=_errors,
        eval_summary=_summary,
        select_metric="neg_mse",
    )


def test_epoch_data_deals_equal_disjoint_shares_reshuffled_each_epoch() -> None:
    data = EpochData(list("abcde"), _from_items, seed=3)
    first = [data.worker_items(0, rank, 2) for rank in range(2)]
    assert [len(share) for share in first] == [2, 2]  # the fifth item waits: equal DDP steps
    assert len(set(first[0] + first[1])) == 4
    assert first == [data.worker_items(0, rank, 2) for rank in range(2)]
    order = np.random.default_rng([3, 0]).permutation(5)
    assert first[0] == [data.items[order[0]], data.items[order[2]]]
    assert [data.worker_items(1, rank, 2) for rank in range(2)] != first


def test_an_epoch_takes_as_many_steps_as_its_batch_items_fill_across_workers() -> None:
    assert EpochData(list(range(128)), _from_items, seed=0).steps_per_epoch(16, 2) == 4
    # 130 items give a fifth, partial step; two copies of each (two scales) twice the steps.
    assert EpochData(list(range(130)), _from_items, seed=0).steps_per_epoch(16, 2) == 5
    assert EpochData(list(range(128)), _from_items, seed=0, copies=2).steps_per_epoch(16, 2) == 8


def test_epoch_data_without_shuffle_deals_every_item_in_order() -> None:
    data = EpochData(list("abcde"), _from_items, seed=3, shuffle=False)
    assert data.worker_items(0, 0, 2) == ["a", "c", "e"]
    assert data.worker_items(7, 1, 2) == ["b", "d"]


def _square_of_output(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return (model(batch["x"]) ** 2).mean()


def _quarter_lr(model: nn.Module) -> list[dict]:
    return [{"params": model.parameters(), "lr": 0.25}]


def test_a_train_step_takes_one_optimizer_step_and_the_schedule_stops_at_its_end() -> None:
    task = TrainTask(
        name="scalar",
        build_model=functools.partial(nn.Linear, 1, 1, bias=False),
        param_groups=_quarter_lr,
        batch_loss=_square_of_output,
        train_data=EpochData([], _from_items, seed=0),
        epochs=1,
        batch_size=1,
        momentum=0.0,
        poly_power=1.0,
    )
    model = task.build_model()
    nn.init.constant_(model.weight, 1.0)
    optimizer = make_optimizer(task, model)
    scheduler = make_scheduler(task, optimizer, total_steps=2)
    batch = {"x": torch.ones(1, 1)}
    # loss w^2, gradient 2w: w 1 -> 1 - 0.25 * 2 = 0.5; the poly schedule halves the rate.
    assert train_step(task, model, batch, optimizer, scheduler, 2) == 1.0
    assert model.weight.item() == 0.5 and optimizer.param_groups[0]["lr"] == 0.125
    # w 0.5 -> 0.5 - 0.125 * 1 = 0.375; the rate reaches 0 at the schedule's end ...
    assert train_step(task, model, batch, optimizer, scheduler, 2) == 0.25
    assert model.weight.item() == 0.375 and optimizer.param_groups[0]["lr"] == 0.0
    # ... and stays there: no step past `total_steps` (PolynomialLR would raise it again).
    assert train_step(task, model, batch, optimizer, scheduler, 2) == 0.140625
    assert model.weight.item() == 0.375 and scheduler.last_epoch == 2


def _recorded_square_of_output(
    dtypes: list[torch.dtype], model: nn.Module, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    output = model(batch["x"])
    dtypes.append(output.dtype)
    return (output.float() ** 2).sum()


@pytest.mark.parametrize(
    "precision, dtype",
    [
        ("fp32", torch.float32),
        ("bf16", torch.bfloat16),
        ("auto", torch.bfloat16 if native_bf16_cpu() else torch.float32),
    ],
)
def test_a_bf16_train_step_runs_the_model_in_bfloat16_and_keeps_float32_weights(
    precision, dtype
) -> None:
    dtypes: list[torch.dtype] = []
    task = TrainTask(
        name="scalar",
        build_model=functools.partial(nn.Linear, 1, 1, bias=False),
        param_groups=_quarter_lr,
        batch_loss=functools.partial(_recorded_square_of_output, dtypes),
        train_data=EpochData([], _from_items, seed=0),
        epochs=1,
        batch_size=1,
        momentum=0.0,
        poly_power=None,
        precision=precision,
    )
    model = task.build_model()
    nn.init.constant_(model.weight, 1.0)
    optimizer = make_optimizer(task, model)
    # loss w^2, gradient 2w: w 1 -> 1 - 0.25 * 2 = 0.5, exact in bfloat16 too.
    assert train_step(task, model, {"x": torch.ones(1, 1)}, optimizer, None, 1) == 1.0
    assert dtypes == [dtype]
    assert model.weight.dtype == torch.float32 and model.weight.item() == 0.5


@pytest.mark.parametrize(
    "flags, native",
    [
        ("fpu sse2 avx2 avx512f avx512bw", False),
        ("fpu sse2 avx2 avx512f avx512_bf16", True),
        ("fpu sse2 avx2 amx_bf16 amx_tile", True),
    ],
)
def test_a_cpu_computes_bf16_natively_where_linux_lists_its_bf16_flags(
    flags: str, native: bool, tmp_path: Path
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    # Two processors, as Linux lists each; "flags" but not "vmx flags" counts.
    processor = f"processor\t: 0\nflags\t\t: {flags}\nvmx flags\t: avx512_bf16\n\n"
    cpuinfo.write_text(processor + processor.replace(": 0", ": 1"))
    assert native_bf16_cpu(cpuinfo) is native
    assert native_bf16_cpu(tmp_path / "absent") is False


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_trains_in_bf16_only_where_the_device_computes_it_natively(
    native: bool, monkeypatch
) -> None:
    monkeypatch.setattr(training, "native_bf16_cpu", lambda: native)
    assert trains_in_bf16("auto", "cpu") is native
    assert trains_in_bf16("auto", "mps") is False  # no bfloat16 check there: float32
    for device in ("cpu", "mps"):
        assert trains_in_bf16("bf16", device) and not trains_in_bf16("fp32", device)


def test_evaluate_scores_every_batch_in_eval_mode_and_summarises_them_once() -> None:
    task = _task(_mse, epochs=1)
    model = task.build_model()
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
    batches = [
        {"x": torch.ones(2, 3), "y": torch.tensor([1.0, 2.0])},
        {"x": torch.ones(1, 3), "y": torch.tensor([3.0])},
    ]
    metrics, extras = evaluate(task, model, batches)
    # A zero model's squared errors are y^2: (1 + 4 + 9) / 3.
    assert metrics == {"neg_mse": pytest.approx(-14 / 3), "count": 3.0} and extras == {}
    assert not model.training
    no_eval = TrainTask("toy", _linear, _groups, _mse, task.train_data, epochs=1, batch_size=2)
    assert evaluate(no_eval, model, batches) == ({}, {})


def _counting_batches(asked: threading.Event, fail_after: int | None = None):
    """The batches x = 0, 1, 2, setting `asked` when the first is asked for; raising where
    batch `fail_after` would come."""
    asked.set()
    for i in range(3):
        if i == fail_after:
            raise RuntimeError("unreadable batch")
        yield {"x": torch.tensor([i])}


def test_started_batches_fetch_their_first_before_being_asked_and_keep_their_order() -> None:
    asked = threading.Event()
    batches = training._started(_counting_batches(asked))
    assert asked.wait(timeout=60)  # set by the background fetch: nothing has iterated yet
    assert [int(batch["x"]) for batch in batches] == [0, 1, 2]
    assert list(training._started(iter([]))) == []
    failing = training._started(_counting_batches(threading.Event(), fail_after=1))
    assert int(next(failing)["x"]) == 0
    with pytest.raises(RuntimeError, match="unreadable batch"):
        next(failing)
    with pytest.raises(RuntimeError, match="unreadable batch"):
        list(training._started(_counting_batches(threading.Event(), fail_after=0)))


def test_training_learns_and_evaluates_every_val_row_with_the_next_epoch_on_its_way(
    ray_cluster, tmp_path: Path
):
    task = _task(_mse, 4)
    task.precision = "auto"
    folder = tmp_path / "events"
    folder.mkdir()
    recorded = functools.partial(_from_items_recorded, folder=str(folder))
    task.train_data = EpochData(task.train_data.items, functools.partial(recorded, kind="train"), 0)
    task.val_data = EpochData(
        task.val_data.items, functools.partial(recorded, kind="val"), seed=0, shuffle=False
    )
    task.eval_summary = functools.partial(_summary_recorded, folder=str(folder))
    output = fit(task, RayConfig(), tmp_path, "toy")
    # Each epoch's checkpoint folder is gone once Ray Train has copied it to storage.
    assert not (tmp_path / "toy" / CHECKPOINT_STAGING_DIR).exists()
    assert registered_epoch(tmp_path / "toy") == 4
    losses = [row["loss"] for row in output.history]
    assert [row["epoch"] for row in output.history] == [1, 2, 3, 4]
    assert losses[-1] < 0.5 * losses[0]
    assert all(row["count"] == ROWS for row in output.history)  # both workers' shares gathered
    # What `auto` trained in, each epoch, as the run's history (and MLflow) keeps it.
    assert [row["bf16"] for row in output.history] == [float(training.native_bf16_cpu())] * 4
    # Each worker decodes its validation share once, not once an epoch, and makes (and starts)
    # each epoch's training data before the epoch before it validates.
    events = _events_by_worker(folder)
    assert len(events) == RayConfig().num_workers
    for pid, order in events.items():
        assert order == ["train", "val"] + ["train", "eval"] * 3 + ["eval"], pid
    assert output.metrics["neg_mse"] == max(row["neg_mse"] for row in output.history)
    model = _linear()
    model.load_state_dict(output.model_state)  # the best epoch's weights, loadable as is


class _FitCalledError(Exception):
    pass


def test_fit_shortens_the_controller_poll_unless_the_user_set_it(monkeypatch, tmp_path):
    """What the trainer sees of `CONTROLLER_POLL_ENV` when it is made (Ray Train reads it there
    and hands it to its controller)."""
    seen = []

    class RecordingTrainer:
        def __init__(self, *args, **kwargs) -> None:
            seen.append(os.environ.get(training.CONTROLLER_POLL_ENV))

        def fit(self):
            raise _FitCalledError

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", RecordingTrainer)
    monkeypatch.delenv(training.CONTROLLER_POLL_ENV, raising=False)
    with pytest.raises(_FitCalledError):
        fit(_task(_mse, 1), RayConfig(), tmp_path, "poll")
    monkeypatch.setenv(training.CONTROLLER_POLL_ENV, "3")
    with pytest.raises(_FitCalledError):
        fit(_task(_mse, 1), RayConfig(), tmp_path, "poll")
    assert seen == ["0.5", "3"]


def test_a_killed_worker_resumes_from_the_last_checkpoint(ray_cluster, tmp_path: Path):
    folder = tmp_path / "counts"
    folder.mkdir()
    loss = functools.partial(
        _mse_dying_once, folder=str(folder), run_folder=str(tmp_path / "dying")
    )
    output = fit(_task(loss, 3), RayConfig(), tmp_path, "dying")
    assert (folder / "died").exists()
    assert [row["epoch"] for row in output.history] == [1, 2, 3]
    batches = sum(int(p.read_text()) for p in folder.glob("batches-*"))
    # 8 worker-batches an epoch. Resumed after epoch 1: 8 + (part of epoch 2) + 16, at most 32.
    # Started again from scratch it would be 8 + (part of epoch 2) + 24, at least 35.
    assert 24 < batches <= 32
    # And it ends with the model an uninterrupted run trains, to the last bit.
    uninterrupted = fit(_task(_mse, 3), RayConfig(), tmp_path, "uninterrupted")
    for name, weights in uninterrupted.model_state.items():
        assert torch.equal(output.model_state[name], weights), name
    assert output.history[-1]["loss"] == uninterrupted.history[-1]["loss"]


def _batch_normed() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def test_training_never_hands_batch_norm_a_batch_of_one(ray_cluster, tmp_path: Path):
    """66 rows on 2 workers with batches of 16: each worker's share, 33, ends in a batch of one,
    which BatchNorm in training mode refuses (a ValueError that failed every retry)."""
    task = _task(_mse, 1)
    task.build_model = _batch_normed
    task.train_data = EpochData(task.train_data.items[:66], _from_items, seed=0)
    output = fit(task, RayConfig(), tmp_path, "batch_of_one", max_failures=0)
    assert [row["epoch"] for row in output.history] == [1]
    assert np.isfinite(output.history[0]["loss"])


def _alive_actor_classes() -> set[str]:
    return {actor.class_name for actor in list_actors(filters=[("state", "=", "ALIVE")])}


def test_fit_hands_ctrl_c_back_and_lets_its_controller_go(ray_cluster, tmp_path: Path):
    """Ray Train's Ctrl-C handler, which aborts the run and holds its controller actor, is
    replaced by the driver's own once `fit` returns: the controller and its dataset manager
    then end, and Ctrl-C interrupts whatever the driver does next. The driver's handler is
    Python's own, set here: a suite started in the background by a shell without job control
    inherits SIGINT ignored, which Python then keeps (and which `fit` rightly hands back)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        fit(_task(_mse, 1), RayConfig(), tmp_path, "handed_back")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        deadline = time.monotonic() + 60
        while {"TrainController", "DatasetManager"} & _alive_actor_classes():
            assert time.monotonic() < deadline, _alive_actor_classes()
            time.sleep(0.5)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)
