"""What training on the platform costs over a plain PyTorch loop, for each of the three steps.

For each step, the preset's own `TrainTask` (`classifier_task`, `irnet_task`, `segmenter_task`,
as a run builds them, with `--epochs` epochs) is trained twice on the preset's synthetic data:
- platform: `training.fit` as a run calls it: Ray Train with the preset's workers and CPUs per
  worker, each worker's share read, decoded and augmented by Ray Data every epoch, validation
  where the step has it, a checkpoint every epoch. Timed from the call to its return, so Ray
  Train's start-up (worker processes, process group, model build) is inside.
- plain: one process, no Ray, over the same epochs' decoded and augmented batches, drawn
  beforehand (untimed) from the same `EpochData` with the whole item list on one worker and
  batches of `batch_size x workers` (the global batch of the platform's step); the same model,
  optimizer (`make_optimizer`), schedule (`make_scheduler`), optimizer step (`train_step`) and
  validation (`evaluate`); torch threads set to the total the platform's workers use (asked of
  a Ray task with the worker's CPUs).
With `--repeats`, each round trains the platform's run anew and then the plain loop, in turn (the
machine's speed drifts over minutes), and the figures are the rounds' medians.
Both count the train images an epoch feeds (`items x copies`, the remainder DDP leaves out
included) over the same `--epochs`, so `ratio = platform_img_s / plain_img_s` is what the
platform keeps of the plain loop's speed, with the decoding and feeding it has to do and the
plain loop has done beforehand. `platform_epoch_img_s` counts the epochs' own time only
(`epoch_s` of the history: training and validation, without start-up and checkpoints), and
`epoch_ratio` compares that with the plain loop: what a longer run, whose start-up counts
less, tends to.

Step 2 and 3's inputs are the synthetic set's true masks (`oracle/`), standing in for step 1's IR
labels and step 2's pseudo masks, and step 1's classifier trained by this bench; what the
masks hold changes what the models learn, not how long a step takes.

Prints progress, and one JSON line per step, the last line holding every step:
`{"step", "platform_img_s", "platform_epoch_img_s", "plain_img_s", "ratio", "epoch_ratio",
"startup_s", "images", "threads", "repeats"}`.

Run: `python bench/train_overhead.py [--preset demo] [--epochs 2] [--steps step1,step2,step3]
[--repeats 1]`.
"""

# wsss sets RAY_AUTH_MODE for the clusters it starts, and Ray reads that once, when imported.
import wsss  # noqa: F401  # isort: skip

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from wsss.platform.config import WsssConfig, load_config
from wsss.platform.datasets.manifest import (
    ORACLE_MASK_DIR,
    DatasetInfo,
    ManifestRow,
    load_dataset,
)
from wsss.platform.datasets.synthetic.writing import build_synthetic_dataset
from wsss.platform.ray_cluster import ray_session
from wsss.platform.runners.classifier import classifier_task, train_classifier
from wsss.platform.runners.irnet import irnet_task
from wsss.platform.runners.outputs import CLASSIFIER_FILE, IR_LABEL_DIR, Step1Output
from wsss.platform.runners.segmentation import segmenter_task
from wsss.platform.training import (
    EpochData,
    TrainTask,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
    train_step,
)

STEPS = ("step1", "step2", "step3")
Batch = dict[str, torch.Tensor]


def epoch_images(data: EpochData, epochs: int) -> int:
    """Train images `epochs` epochs of `data` feed, as `steps_per_epoch` counts them."""
    return len(data.items) * data.copies * epochs


def drawn_batches(data: EpochData, epoch: int, batch_size: int) -> list[Batch]:
    """Every batch of `data`'s `epoch` on one worker, decoded and augmented, in memory."""
    dataset = data.worker_dataset(epoch, 0, 1)
    return list(dataset.iter_torch_batches(batch_size=batch_size))


def plain_loop(task: TrainTask, train: list[list[Batch]], val: list[Batch], threads: int) -> float:
    """Seconds a single process takes for `len(train)` epochs of `task` over drawn batches."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(task.seed)
        model = task.build_model()
        optimizer = make_optimizer(task, model)
        total_steps = max(1, sum(len(epoch) for epoch in train))
        scheduler = make_scheduler(task, optimizer, total_steps)
        start = time.perf_counter()
        for batches in train:
            model.train()
            for batch in batches:
                train_step(task, model, batch, optimizer, scheduler, total_steps)
            if val:
                evaluate(task, model, val)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)


@ray.remote
def _worker_threads() -> int:
    return torch.get_num_threads()


def platform_threads(config: WsssConfig) -> int:
    """Torch threads the preset's Train workers use together (one asked, times the workers)."""
    per_worker = _worker_threads.options(num_cpus=config.ray.cpus_per_worker).remote()
    return ray.get(per_worker) * config.ray.num_workers


def measure(
    name: str,
    task: TrainTask,
    config: WsssConfig,
    train_platform: Callable[[int], list[dict[str, Any]]],
    threads: int,
    repeats: int = 1,
) -> dict[str, Any]:
    """Platform and plain throughput of `task` over `repeats` rounds, each training it on the
    platform (`train_platform(round)`, a fresh run that returns its history) and then in the
    plain loop; the figures are the rounds' medians."""
    images = epoch_images(task.train_data, task.epochs)
    global_batch = task.batch_size * config.ray.num_workers
    train: list[list[Batch]] | None = None
    val: list[Batch] = []
    platform_s, epochs_s, plain_s = [], [], []
    for round_ in range(repeats):
        print(
            f"[{name}] round {round_ + 1}/{repeats}, platform: {task.epochs} epochs of "
            f"{images // task.epochs} images",
            flush=True,
        )
        start = time.perf_counter()
        history = train_platform(round_)
        platform_s.append(time.perf_counter() - start)
        epochs_s.append(sum(row["epoch_s"] for row in history))
        print(
            f"[{name}] platform {platform_s[-1]:.1f} s ({epochs_s[-1]:.1f} s in epochs)",
            flush=True,
        )
        if train is None:  # after the first platform run, which starts as cold as in a run
            print(f"[{name}] plain: drawing the batches (untimed)", flush=True)
            train = [drawn_batches(task.train_data, e, global_batch) for e in range(task.epochs)]
            val = drawn_batches(task.val_data, 0, global_batch) if task.val_data else []
        plain_s.append(plain_loop(task, train, val, threads))
        print(f"[{name}] plain {plain_s[-1]:.1f} s on {threads} threads", flush=True)
    platform, epochs, plain = (statistics.median(t) for t in (platform_s, epochs_s, plain_s))
    result = {
        "step": name,
        "platform_img_s": round(images / platform, 2),
        "platform_epoch_img_s": round(images / epochs, 2),
        "plain_img_s": round(images / plain, 2),
        "ratio": round(plain / platform, 3),
        "epoch_ratio": round(plain / epochs, 3),
        "startup_s": round(platform - epochs, 1),
        "images": images,
        "threads": threads,
        "repeats": repeats,
    }
    print(json.dumps(result), flush=True)
    return result


def stand_in_step1(
    config: WsssConfig, info: DatasetInfo, rows: list[ManifestRow], step_dir: Path
) -> Step1Output:
    """Step 1's output for steps 2 and 3: its classifier (trained here unless `step_dir` has
    one), the true masks as IR labels and every train image confident."""
    if not (step_dir / CLASSIFIER_FILE).is_file():
        train_classifier(config, info, rows, step_dir)
    labels = step_dir / IR_LABEL_DIR
    shutil.copytree(info.root / ORACLE_MASK_DIR, labels, dirs_exist_ok=True)
    train_ids = {r.id for r in rows if r.split == "train"}
    return Step1Output(step_dir, {row_id: 1.0 for row_id in train_ids})


def with_epochs(config: WsssConfig, epochs: int) -> WsssConfig:
    config = config.model_copy(deep=True)
    for step in (config.step1, config.step2, config.step3):
        step.epochs = epochs
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated")
    parser.add_argument("--repeats", type=int, default=1, help="rounds per step (medians)")
    args = parser.parse_args()
    steps = args.steps.split(",")
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; known: {', '.join(STEPS)}")
    if args.repeats < 1:
        parser.error("--repeats: at least 1")
    config = with_epochs(load_config(args.preset), args.epochs)

    results = []
    with tempfile.TemporaryDirectory(prefix="wsss-train-bench-") as folder:
        work = Path(folder)
        print(f"drawing the {args.preset} preset's data set", flush=True)
        build_synthetic_dataset(work / "dataset", config.data.synthetic, config.seed)
        info, rows = load_dataset(work / "dataset")
        step_dir = work / "step1"
        with ray_session(config.ray):
            threads = platform_threads(config)
            storage = work / "train"
            if "step1" in steps:
                task, _ = classifier_task(config, info, rows)

                def step1(round_: int) -> list[dict[str, Any]]:
                    # Round 1's classifier stands in for step 1 below; later rounds train anew.
                    folder = step_dir if round_ == 0 else work / f"step1-round{round_ + 1}"
                    return train_classifier(config, info, rows, folder).history

                results.append(measure("step1", task, config, step1, threads, args.repeats))
            tasks = {}
            if {"step2", "step3"} & set(steps):
                step1_output = stand_in_step1(config, info, rows, step_dir)
                oracle = info.root / ORACLE_MASK_DIR
                tasks["step2"] = irnet_task(config, info, rows, step1_output)
                tasks["step3"] = segmenter_task(config, info, rows, oracle, step1_output)
            for name, task in tasks.items():
                if name in steps:

                    def train(
                        round_: int, task: TrainTask = task, name: str = name
                    ) -> list[dict[str, Any]]:
                        return fit(task, config.ray, storage, f"{name}-round{round_ + 1}").history

                    results.append(measure(name, task, config, train, threads, args.repeats))
    print(json.dumps({"preset": args.preset, "epochs": args.epochs, "steps": results}))


if __name__ == "__main__":
    main()
