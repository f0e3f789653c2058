"""bench/train_overhead.py's own parts: the images an epoch feeds, the batches the plain loop is
given, and a plain loop that steps once per batch and validates once per epoch."""

import importlib.util
from pathlib import Path

import ray.data
import torch
from torch import nn

from wsss.platform.training import EpochData, TrainTask

SPEC = importlib.util.spec_from_file_location(
    "train_overhead_bench", Path(__file__).parents[1] / "bench" / "train_overhead.py"
)
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def _from_items(items: list[dict], seed: int) -> ray.data.Dataset:
    return ray.data.from_items(items)


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["x"]).pow(2).mean()


def _groups(model: nn.Module) -> list[dict]:
    return [{"params": model.parameters(), "lr": 0.1}]


def _count(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    return {"x": batch["x"].numpy()}


def _summary(outputs: dict) -> dict:
    return {"rows": len(outputs["x"])}


def test_an_epoch_counts_every_item_at_every_scale() -> None:
    data = EpochData(list(range(10)), _from_items, seed=0, copies=2)
    assert bench.epoch_images(data, epochs=3) == 60


def test_the_drawn_batches_hold_the_whole_epoch_on_one_worker(ray_cluster) -> None:
    data = EpochData([{"x": [float(i)]} for i in range(10)], _from_items, seed=0, shuffle=False)
    batches = bench.drawn_batches(data, epoch=0, batch_size=4)
    assert [len(b["x"]) for b in batches] == [4, 4, 2]
    assert torch.cat([b["x"] for b in batches]).flatten().tolist() == [float(i) for i in range(10)]


def test_the_plain_loop_steps_once_per_batch_and_validates_once_per_epoch(monkeypatch) -> None:
    task = TrainTask(
        "toy",
        lambda: nn.Linear(1, 1),
        _groups,
        _loss,
        EpochData([], _from_items, seed=0),
        epochs=2,
        batch_size=2,
        eval_batch=_count,
        eval_summary=_summary,
    )
    calls = {"steps": 0, "evaluations": 0, "threads": set()}
    train_step, evaluate = bench.train_step, bench.evaluate

    def counting_step(*args):
        calls["steps"] += 1
        calls["threads"].add(torch.get_num_threads())
        return train_step(*args)

    def counting_evaluate(*args):
        calls["evaluations"] += 1
        return evaluate(*args)

    monkeypatch.setattr(bench, "train_step", counting_step)
    monkeypatch.setattr(bench, "evaluate", counting_evaluate)
    batch = {"x": torch.ones(2, 1)}
    threads = torch.get_num_threads()
    seconds = bench.plain_loop(task, [[batch] * 3, [batch] * 2], [batch], threads=1)
    assert seconds > 0
    assert calls == {"steps": 5, "evaluations": 2, "threads": {1}}
    assert torch.get_num_threads() == threads
