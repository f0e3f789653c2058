"""Dense CRF throughput: step 1's own dense-CRF stage on Ray Data at 1 and 2 CPUs, against a
plain loop over the same function and two plain processes.

What runs is what a run's step 1 runs after its CAMs (`wsss.platform.runners.cams`): for every
image, `refine_and_score` reads the image and its CAM file, runs the dense CRF (twice for a
train image, IRNet's confident labels at two thresholds; once per label set for a val or test
image, its CAM+CRF mask drawn with the given and with the predicted labels), writes the train
images' IR labels and the val and test images' masks, and returns confusion matrices, which the
driver sums.

The inputs are a built-in synthetic data set drawn for the bench (`--images` of `--size`
pixels, 20 object classes, three quarters of them train) and a CAM file per image written as
step 1 writes them (`cams.write_cams`): for each labelled class, its true mask pooled to the
CAM stride plus Gaussian noise, normalised to a maximum of 1; the same maps stand for the
predicted classes. A trained classifier's CAMs would change what the CRF decides, not how long
it takes.

Variants, each given the same rows in batches of `cams.CRF_BATCH`:
- loop: `refine_and_score` on each batch in this process, summed with `sum_confusions`.
- Ray 1 CPU, Ray 2 CPUs: `cams.crf_stage` on a fresh local Ray instance with that many CPUs,
  summed with `total_confusions` as `extract_cams` does; Ray Data's start-up, the tasks'
  scheduling and the confusion matrices' way back are inside every timed pass.
- two processes: two spawned processes each loop over half the batches: what two CPUs of this
  machine give without Ray, the figure the 2-CPU stage is measured against.
Each variant first runs a few batches untimed (imports, process start-up), then one timed pass;
`--repeats` rounds run the four variants in turn and each keeps its fastest pass: the machine's
speed drifts over minutes, so a variant is compared with passes made beside its own, and the
fastest is the one least disturbed by other processes. Every variant must give the loop's
confusion matrices (`same_scores`).

Prints progress, and as the last line one JSON object: `loop_img_s`, `ray_1cpu_img_s`,
`ray_2cpu_img_s`, `two_processes_img_s` (images per second), `overhead_1cpu_vs_loop` (loop /
ray_1cpu), `speedup_2cpu_vs_loop`, `speedup_two_processes_vs_loop`,
`ray_2cpu_vs_two_processes` (ray_2cpu / two_processes), `same_scores`, and the settings.

Run: `python bench/crf.py [--images 64] [--size 320] [--repeats 3]`.
"""

# wsss sets RAY_AUTH_MODE for the clusters it starts, and Ray reads that once, when imported.
import wsss  # noqa: F401  # isort: skip

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.data

from wsss.platform.config import ClassificationConfig, RayConfig, SyntheticConfig
from wsss.platform.datasets.images import read_mask
from wsss.platform.datasets.manifest import (
    DatasetInfo,
    ManifestRow,
    load_dataset,
    with_oracle_masks,
)
from wsss.platform.datasets.synthetic.writing import build_synthetic_dataset
from wsss.platform.runners import (
    MASK_SCORED_SPLITS,
    SCORED_SPLITS,
    scored_columns,
    scored_splits,
    sum_confusions,
    total_confusions,
)
from wsss.platform.runners import cams as step1_cams
from wsss.platform.runners.outputs import CAM_DIR
from wsss.stages.classification.cam import strided_size
from wsss.stages.metrics import ConfusionMatrix

NUM_OBJECT_CLASSES = 20
CAM_NOISE = 0.15


@dataclass(frozen=True)
class CrfInputs:
    """The data set, the rows step 1's CRF stage refines, and the step folder with their CAMs."""

    info: DatasetInfo
    rows: list[ManifestRow]
    step_dir: Path
    config: ClassificationConfig

    @property
    def columns(self) -> list[str]:
        splits = scored_splits(self.rows, MASK_SCORED_SPLITS)
        return scored_columns(step1_cams.CAM_METRICS, splits)


def noisy_cams(
    truth: np.ndarray, classes: list[int], stride: int, rng: np.random.Generator
) -> np.ndarray:
    """float16 [len(classes), h, w] at `stride`: each class's true mask pooled to the stride,
    plus Gaussian noise, clipped at 0 and normalised to a maximum of 1."""
    height, width = strided_size(truth.shape, stride)
    padded = np.zeros((height * stride, width * stride), truth.dtype)
    padded[: truth.shape[0], : truth.shape[1]] = truth
    maps = []
    for class_index in classes:
        pooled = (padded == class_index).reshape(height, stride, width, stride).mean(axis=(1, 3))
        noisy = np.clip(pooled + rng.normal(0.0, CAM_NOISE, pooled.shape), 0.0, None)
        maps.append(noisy / max(float(noisy.max()), 1e-6))
    return np.array(maps, np.float16).reshape(len(classes), height, width)


def prepare_inputs(folder: Path, images: int, size: int, seed: int) -> CrfInputs:
    """Draw the data set into `folder` and write every refined row's CAM file."""
    test = max(1, images // 8)
    synthetic = SyntheticConfig(
        num_classes=NUM_OBJECT_CLASSES,
        image_size=size,
        train_images=images - 2 * test,
        val_images=test,
        test_images=test,
    )
    build_synthetic_dataset(folder / "dataset", synthetic, seed)
    info, rows = load_dataset(folder / "dataset")
    splits = scored_splits(rows, SCORED_SPLITS)
    refined = [
        r for r in with_oracle_masks(rows, info.root) if r.split == "train" or r.split in splits
    ]
    config = ClassificationConfig()
    step_dir = folder / "step1"
    (step_dir / CAM_DIR).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for row in refined:
        truth = read_mask(info.root / row.mask)
        classes = [info.classes.index(label) for label in row.labels]
        maps = noisy_cams(truth, classes, config.cam_stride, rng)
        saved = {"cams": maps, "classes": np.array(classes, np.int32), "top_score": 1.0}
        if row.split in SCORED_SPLITS:
            saved.update(predicted_cams=maps, predicted_classes=saved["classes"])
        step1_cams.write_cams(step_dir / CAM_DIR, row.id, saved)
    return CrfInputs(info, refined, step_dir, config)


def manifest_batches(
    rows: list[ManifestRow], batch_size: int = step1_cams.CRF_BATCH
) -> Iterator[dict[str, np.ndarray]]:
    """`rows` in batches of `batch_size`, with the columns Ray Data hands a `map_batches`
    function over `rows_dataset(rows)`."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        labels = np.empty(len(chunk), dtype=object)
        labels[:] = [list(r.labels) for r in chunk]
        yield {
            "id": np.array([r.id for r in chunk]),
            "image": np.array([r.image for r in chunk]),
            "split": np.array([r.split for r in chunk]),
            "labels": labels,
            "mask": np.array([r.mask for r in chunk], dtype=object),
        }


def loop_totals(inputs: CrfInputs, rows: list[ManifestRow]) -> dict[str, ConfusionMatrix]:
    """`refine_and_score` over `rows` in this process, summed."""
    refined = (
        step1_cams.refine_and_score(
            batch,
            str(inputs.info.root),
            len(inputs.info.classes),
            inputs.config,
            str(inputs.step_dir),
        )
        for batch in manifest_batches(rows)
    )
    return sum_confusions(refined, inputs.columns, len(inputs.info.classes))


Pass = tuple[float, dict[str, ConfusionMatrix]]


def timed_pass(label: str, run_pass: Callable[[], dict[str, ConfusionMatrix]], images: int) -> Pass:
    """(images per second of one call of `run_pass`, its totals)."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    totals = run_pass()
    elapsed = time.perf_counter() - start
    print(f"  {label}: {elapsed:.2f} s (load average {load:.1f})")
    return images / elapsed, totals


def bench_loop(inputs: CrfInputs) -> Pass:
    loop_totals(inputs, inputs.rows[: step1_cams.CRF_BATCH])
    return timed_pass("loop", lambda: loop_totals(inputs, inputs.rows), len(inputs.rows))


def _part_totals(inputs: CrfInputs, start: int, stop: int) -> dict[str, ConfusionMatrix]:
    return loop_totals(inputs, inputs.rows[start:stop])


def bench_two_processes(inputs: CrfInputs) -> Pass:
    """Two processes, each looping over half the batches. They are spawned, not forked: a
    process forked after this one ran PyTorch's OpenMP threads can hang in them."""
    batches = -(-len(inputs.rows) // step1_cams.CRF_BATCH)
    half = (batches + 1) // 2 * step1_cams.CRF_BATCH
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        list(pool.map(_part_totals, [inputs, inputs], [0, half], [1, half + 1]))

        def run_pass() -> dict[str, ConfusionMatrix]:
            parts = [(0, half), (half, len(inputs.rows))]
            first, second = pool.map(_part_totals, [inputs, inputs], *zip(*parts, strict=True))
            for column, matrix in first.items():
                matrix.counts += second[column].counts
            return first

        return timed_pass("two processes", run_pass, len(inputs.rows))


def bench_ray(inputs: CrfInputs, num_cpus: int) -> Pass:
    """`crf_stage` summed by `total_confusions` on a fresh local Ray instance of `num_cpus`."""
    ray.init(
        address="local",
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.2",
        include_dashboard=False,
        object_store_memory=512 * 1024**2,
        log_to_driver=False,
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        classes = len(inputs.info.classes)

        def run(rows: list[ManifestRow]) -> dict[str, ConfusionMatrix]:
            stage = step1_cams.crf_stage(
                rows, inputs.info, inputs.config, inputs.step_dir, RayConfig(num_cpus=num_cpus)
            )
            return total_confusions(stage, inputs.columns, classes)

        run(inputs.rows[: step1_cams.CRF_BATCH * num_cpus])
        return timed_pass(f"ray {num_cpus} cpu", lambda: run(inputs.rows), len(inputs.rows))
    finally:
        ray.shutdown()


def same(a: dict[str, ConfusionMatrix], b: dict[str, ConfusionMatrix]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k].counts, b[k].counts) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=64, help="images in the data set")
    parser.add_argument("--size", type=int, default=320, help="image side, pixels")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of one pass a variant")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rates: dict[str, float] = {}
    scores: dict[str, dict[str, ConfusionMatrix]] = {}
    with tempfile.TemporaryDirectory(prefix="wsss-crf-bench-") as folder:
        print(f"drawing {args.images} images of {args.size} px and their CAMs")
        inputs = prepare_inputs(Path(folder), args.images, args.size, args.seed)
        variants: dict[str, Callable[[], Pass]] = {
            "loop": lambda: bench_loop(inputs),
            "ray_1cpu": lambda: bench_ray(inputs, 1),
            "ray_2cpu": lambda: bench_ray(inputs, 2),
            "two_processes": lambda: bench_two_processes(inputs),
        }
        for round_number in range(1, args.repeats + 1):
            print(f"round {round_number}/{args.repeats} over {len(inputs.rows)} images")
            for name, run_variant in variants.items():
                rate, scores[name] = run_variant()
                rates[name] = max(rates.get(name, 0.0), rate)
    loop, ray_1cpu, ray_2cpu, two_processes = (rates[name] for name in variants)

    result = {
        "images": len(inputs.rows),
        "size": args.size,
        "loop_img_s": round(loop, 3),
        "ray_1cpu_img_s": round(ray_1cpu, 3),
        "ray_2cpu_img_s": round(ray_2cpu, 3),
        "two_processes_img_s": round(two_processes, 3),
        "overhead_1cpu_vs_loop": round(loop / ray_1cpu, 3),
        "speedup_2cpu_vs_loop": round(ray_2cpu / loop, 3),
        "speedup_two_processes_vs_loop": round(two_processes / loop, 3),
        "ray_2cpu_vs_two_processes": round(ray_2cpu / two_processes, 3),
        "same_scores": all(same(scores["loop"], other) for other in scores.values()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
