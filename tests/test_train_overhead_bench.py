"""bench/train_overhead.py's own parts: the images an epoch feeds, the batches the plain loop is
given, and a plain loop that steps once per batch and validates once per epoch."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

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


def test_each_round_runs_the_platform_then_the_plain_loop_and_the_figures_are_medians(
    monkeypatch,
) -> None:
    """Three rounds: platform runs of 40, 20 and 30 s (epochs 30, 10, 20 s) and plain loops of
    10, 30 and 20 s give medians 30, 20 and 20 s; the batches are drawn once, after the first
    platform run."""
    clock = {"now": 0.0}
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))
    calls: list[str] = []

    def draw(data, epoch, batch_size):
        calls.append(f"draw {epoch}")
        return []

    plain_seconds = iter([10.0, 30.0, 20.0])

    def plain(task, train, val, threads):
        calls.append("plain")
        return next(plain_seconds)

    def platform(round_: int) -> list[dict]:
        calls.append(f"platform {round_}")
        clock["now"] += [40.0, 20.0, 30.0][round_]
        return [{"epoch_s": [20.0, 0.0, 10.0][round_]}, {"epoch_s": 10.0}]

    monkeypatch.setattr(bench, "drawn_batches", draw)
    monkeypatch.setattr(bench, "plain_loop", plain)
    task = TrainTask(
        "toy", lambda: nn.Linear(1, 1), _groups, _loss,
        EpochData(list(range(60)), _from_items, seed=0), epochs=2, batch_size=2,
    )  # fmt: skip
    config = SimpleNamespace(ray=SimpleNamespace(num_workers=2))
    result = bench.measure("toy", task, config, platform, threads=2, repeats=3)
    assert calls == ["platform 0", "draw 0", "draw 1", "plain", "platform 1", "plain",
                     "platform 2", "plain"]  # fmt: skip
    assert result["images"] == 120 and result["repeats"] == 3
    assert result["platform_img_s"] == 4.0  # 120 images / 30 s
    assert result["platform_epoch_img_s"] == 6.0  # / 20 s
    assert result["plain_img_s"] == 6.0
    assert result["ratio"] == 0.667 and result["epoch_ratio"] == 1.0
    assert result["startup_s"] == 10.0
