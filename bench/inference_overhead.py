"""What batch inference on the platform costs over a plain loop: CAM extraction, pseudo masks
and the evaluation with TTA, each on the preset's synthetic data set at its own size.

For each pass, the same images go through the same model class, with the same settings:
- platform: the runner's own function, as a run calls it, on a local Ray cluster of the
  preset's `ray` settings (`cams.write_cam_files` for step 1's CAMs, `irnet.make_pseudo_masks`
  for step 2's pseudo masks, `segmentation.evaluate_segmenter` with the variants a run scores,
  the plain model and its TTA): Ray Data's single-CPU tasks, one running per CPU and the
  next queued behind it (`runners.cpu_tasks`), the driver summing what they return. Timed
  from the call to its return, so the workers' start-up (worker processes importing torch,
  each loading its model) is inside; the cluster's own start-up is not.
- plain: one process without Ray, which makes the model class (`CamExtractor`, `PseudoMaskWriter`,
  `SegmenterScorer`: its model loaded, timed too) and calls it on the same batches of rows in
  turn, with torch threads set to the cluster's CPUs, and sums its outputs as the runner does.
`ratio = platform_img_s / plain_img_s`. Both sides must give the same outputs (`outputs_agree`:
the train images' top scores, every CAM file, the pseudo masks' and the segmenter's scores) up
to float rounding: a thread count changes the order of a convolution's sums, so the plain loop's
two threads and the tasks' one differ in the last bits (`CAM_TOLERANCE`, `SCORE_TOLERANCE`).

The models are untrained, built as a run builds them (`classifier_task`, `irnet_task`,
`segmenter_task`) and saved in each step's format; every class threshold is 0.5. Weights change
what the passes decide, not how long they take (the random walk's and the CAMs' cost per image
hardly depends on the classes an image gets).

Each of `--repeats` rounds runs every pass on both sides in turn (the platform first in odd
rounds, the plain loop first in even ones), each side keeping its fastest: the machine's speed
drifts over minutes, so a side is compared with passes made beside it.

Prints progress, one JSON line per pass and, as the last line, one JSON object with every pass:
`{"pass", "images", "platform_img_s", "plain_img_s", "ratio", "outputs_agree", "threads"}`.

Run: `python bench/inference_overhead.py [--preset demo] [--repeats 2]
[--passes cams,pseudo_masks,evaluation]`.
"""

# wsss sets RAY_AUTH_MODE for the clusters it starts, and Ray reads that once, when imported.
import wsss  # noqa: F401  # isort: skip

import argparse
import functools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from crf import manifest_batches
from train_overhead import stand_in_step1

from wsss.platform.config import TTAConfig, WsssConfig, load_config
from wsss.platform.datasets.manifest import (
    ORACLE_MASK_DIR,
    DatasetInfo,
    ManifestRow,
    load_dataset,
)
from wsss.platform.datasets.synthetic.writing import build_synthetic_dataset
from wsss.platform.model_file import save_model_file
from wsss.platform.ray_cluster import ray_session
from wsss.platform.runners import (
    MASK_SCORED_SPLITS,
    scored_columns,
    scored_splits,
    sum_confusions,
    summaries_by_split,
)
from wsss.platform.runners import cams as step1_cams
from wsss.platform.runners import irnet as step2_irnet
from wsss.platform.runners import segmentation as step3_segmentation
from wsss.platform.runners.classifier import classifier_task
from wsss.platform.runners.outputs import (
    CAM_DIR,
    CLASSIFIER_FILE,
    IRNET_FILE,
    PSEUDO_MASK_DIR,
    SEGMENTER_FILE,
    Step1Output,
    Step3Output,
)

PASSES = ("cams", "pseudo_masks", "evaluation")
# A float16 CAM normalised to [0, 1] has steps of 2^-11 near 1: a few of them.
CAM_TOLERANCE = 2e-3
# Relative difference allowed between two scores (top class scores, mIoU, IoU, accuracies);
# scores closer than SCORE_FLOOR agree whatever their size.
SCORE_TOLERANCE = 1e-3
SCORE_FLOOR = 1e-6
Actor = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Inputs:
    """The data set, its rows as the inference passes select them, and the saved models."""

    config: WsssConfig
    info: DatasetInfo
    rows: list[ManifestRow]
    work: Path

    @property
    def cam_rows(self) -> list[ManifestRow]:
        """The rows a run's step 1 extracts CAMs for (and step 2 draws pseudo masks for)."""
        return step1_cams.cam_rows(self.rows, self.info.root)

    @property
    def models(self) -> Path:
        """The folder of the step-1 classifier (with the CAMs the pseudo masks read), IRNet and
        the segmenter."""
        return self.work / "models"

    @property
    def variants(self) -> dict[str, TTAConfig | None]:
        """What the evaluation scores, as a run asks for it."""
        return step3_segmentation.evaluation_variants(self.config.step3.tta)


def prepare(work: Path, config: WsssConfig) -> Inputs:
    """Draw the preset's data set under `work` and save the untrained models a run would
    build, each in its step's file format."""
    print("drawing the data set", flush=True)
    build_synthetic_dataset(work / "dataset", config.data.synthetic, config.seed)
    info, rows = load_dataset(work / "dataset")
    inputs = Inputs(config, info, rows, work)
    models = inputs.models
    models.mkdir()
    torch.manual_seed(config.seed)
    task, names = classifier_task(config, info, rows)
    save_model_file(
        models / CLASSIFIER_FILE,
        task.build_model().state_dict(),
        backbone=config.step1.backbone,
        class_indices=[info.classes.index(n) for n in names],
        thresholds=[0.5] * len(names),
    )
    step1 = stand_in_step1(config, info, rows, models)
    irnet = step2_irnet.irnet_task(config, info, rows, step1).build_model()
    save_model_file(models / IRNET_FILE, irnet.state_dict(), backbone=config.step2.backbone)
    segmenter_task = step3_segmentation.segmenter_task(
        config, info, rows, info.root / ORACLE_MASK_DIR, step1
    )
    save_model_file(
        models / SEGMENTER_FILE,
        segmenter_task.build_model().state_dict(),
        encoder=config.step3.encoder,
        output_stride=config.step3.output_stride,
        classes=info.classes,
    )
    return inputs


def plain_outputs(
    make_actor: Callable[[], Actor], rows: list[ManifestRow], batch_size: int, threads: int
) -> list[dict[str, np.ndarray]]:
    """`make_actor()` called on `rows` in batches of `batch_size` in this process, with
    `threads` torch threads (set after the actor pins its own one)."""
    previous = torch.get_num_threads()
    actor = make_actor()
    torch.set_num_threads(threads)
    try:
        return [actor(batch) for batch in manifest_batches(rows, batch_size)]
    finally:
        torch.set_num_threads(previous)


def cams_platform(inputs: Inputs, folder: Path) -> dict[str, float]:
    return step1_cams.write_cam_files(
        inputs.config,
        inputs.info,
        inputs.cam_rows,
        [inputs.models / CLASSIFIER_FILE],
        folder / CAM_DIR,
    )


def cams_plain(inputs: Inputs, folder: Path, threads: int) -> dict[str, float]:
    cam_dir = folder / CAM_DIR
    cam_dir.mkdir(parents=True, exist_ok=True)

    def make_actor() -> Actor:
        return step1_cams.CamExtractor(
            root=str(inputs.info.root),
            classes=inputs.info.classes,
            model_files=[str(inputs.models / CLASSIFIER_FILE)],
            config=inputs.config.step1,
            cam_dir=str(cam_dir),
        )

    batches = plain_outputs(make_actor, inputs.cam_rows, step1_cams.CAM_BATCH, threads)
    return {
        str(image_id): float(top)
        for batch in batches
        for image_id, split, top in zip(
            batch["id"], batch["split"], batch["top_score"], strict=True
        )
        if split == "train"
    }


def agree(a: Any, b: Any) -> bool:
    """Whether two outputs are the same up to float rounding: dicts and lists item by item,
    floats within `SCORE_TOLERANCE` of each other, anything else equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(agree(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(agree(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=SCORE_TOLERANCE, abs_tol=SCORE_FLOOR)
    return a == b


def cam_files_agree(image_ids: list[str], first: Path, second: Path) -> bool:
    """Whether the CAM file of each of `image_ids` holds the same classes in the step folders
    `first` and `second`, and CAMs within `CAM_TOLERANCE`."""
    for image_id in image_ids:
        with (
            np.load(first / CAM_DIR / f"{image_id}.npz") as a,
            np.load(second / CAM_DIR / f"{image_id}.npz") as b,
        ):
            if set(a.files) != set(b.files):
                return False
            for key in a.files:
                if a[key].dtype.kind == "f":
                    close = np.allclose(a[key], b[key], rtol=0, atol=CAM_TOLERANCE)
                else:
                    close = np.array_equal(a[key], b[key])
                if not close:
                    return False
    return True


def pseudo_masks_platform(inputs: Inputs, folder: Path) -> dict[str, Any]:
    step1 = Step1Output(inputs.models, {})
    return step2_irnet.make_pseudo_masks(
        inputs.config, inputs.info, inputs.rows, step1, inputs.models / IRNET_FILE, folder
    )


def pseudo_masks_plain(inputs: Inputs, folder: Path, threads: int) -> dict[str, Any]:
    out_dir = folder / PSEUDO_MASK_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = inputs.info.classes

    def make_actor() -> Actor:
        return step2_irnet.PseudoMaskWriter(
            model_file=str(inputs.models / IRNET_FILE),
            root=str(inputs.info.root),
            cam_dir=str(inputs.models / CAM_DIR),
            out_dir=str(out_dir),
            config=inputs.config.step2,
            num_classes=len(classes),
        )

    rows = inputs.cam_rows
    batches = plain_outputs(make_actor, rows, step2_irnet.PSEUDO_MASK_BATCH, threads)
    splits = scored_splits(rows, MASK_SCORED_SPLITS)
    columns = scored_columns([step2_irnet.PSEUDO_MASK_METRIC], splits)
    return summaries_by_split(sum_confusions(batches, columns, len(classes)), splits, classes)


def evaluation_platform(inputs: Inputs, folder: Path) -> dict[str, Any]:
    step3 = Step3Output(inputs.models)
    return step3_segmentation.evaluate_segmenter(
        inputs.config, inputs.info, inputs.rows, step3, inputs.variants
    )


def evaluation_plain(inputs: Inputs, folder: Path, threads: int) -> dict[str, Any]:
    classes = inputs.info.classes
    splits = scored_splits(inputs.rows)
    rows = step3_segmentation.evaluation_rows(inputs.rows)

    def make_actor() -> Actor:
        return step3_segmentation.SegmenterScorer(
            model_file=str(inputs.models / SEGMENTER_FILE),
            root=str(inputs.info.root),
            variants=inputs.variants,
        )

    batches = plain_outputs(make_actor, rows, step3_segmentation.SCORING_BATCH, threads)
    columns = [f"{name}_{split}" for name in inputs.variants for split in splits]
    totals = sum_confusions(batches, columns, len(classes))
    return {
        split: {name: dict(totals[f"{name}_{split}"].summary(classes)) for name in inputs.variants}
        for split in splits
    }


@dataclass(frozen=True)
class InferencePass:
    """One inference pass: how many images it reads, and its two sides, each called with the
    inputs and a folder of its own and returning what is compared."""

    images: Callable[[Inputs], int]
    platform: Callable[[Inputs, Path], Any]
    plain: Callable[[Inputs, Path, int], Any]


INFERENCE_PASSES = {
    "cams": InferencePass(lambda i: len(i.cam_rows), cams_platform, cams_plain),
    "pseudo_masks": InferencePass(
        lambda i: len(i.cam_rows), pseudo_masks_platform, pseudo_masks_plain
    ),
    "evaluation": InferencePass(
        lambda i: len(step3_segmentation.evaluation_rows(i.rows)),
        evaluation_platform,
        evaluation_plain,
    ),
}


def timed(label: str, call: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds `call()` took, what it returned)."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - start
    print(f"  {label}: {elapsed:.2f} s (load average {load:.1f})", flush=True)
    return elapsed, result


def measure(inputs: Inputs, names: list[str], repeats: int, threads: int) -> list[dict[str, Any]]:
    """Every pass of `names` on both sides, `repeats` rounds, each side's fastest kept."""
    fastest: dict[tuple[str, str], float] = {}
    agreeing: dict[str, bool] = dict.fromkeys(names, True)
    for round_number in range(1, repeats + 1):
        sides = ("platform", "plain") if round_number % 2 else ("plain", "platform")
        for name in names:
            inference = INFERENCE_PASSES[name]
            print(f"[{name}] round {round_number}/{repeats}", flush=True)
            outputs = {}
            for side in sides:
                folder = inputs.work / side / name
                call = (
                    functools.partial(inference.platform, inputs, folder)
                    if side == "platform"
                    else functools.partial(inference.plain, inputs, folder, threads)
                )
                elapsed, outputs[side] = timed(side, call)
                fastest[name, side] = min(fastest.get((name, side), float("inf")), elapsed)
            agreeing[name] &= agree(outputs["platform"], outputs["plain"])
            if name == "cams":
                ids = [r.id for r in inputs.cam_rows]
                folders = [inputs.work / side / name for side in sides]
                agreeing[name] &= cam_files_agree(ids, *folders)
    results = []
    for name in names:
        images = INFERENCE_PASSES[name].images(inputs)
        platform_s, plain_s = fastest[name, "platform"], fastest[name, "plain"]
        result = {
            "pass": name,
            "images": images,
            "platform_img_s": round(images / platform_s, 2),
            "plain_img_s": round(images / plain_s, 2),
            "ratio": round(plain_s / platform_s, 3),
            "outputs_agree": agreeing[name],
            "threads": threads,
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every pass")
    parser.add_argument("--passes", default=",".join(PASSES), help="comma-separated")
    args = parser.parse_args()
    names = args.passes.split(",")
    unknown = sorted(set(names) - set(PASSES))
    if unknown:
        parser.error(f"--passes: unknown {unknown}; known: {', '.join(PASSES)}")
    config = load_config(args.preset)
    with tempfile.TemporaryDirectory(prefix="wsss-inference-bench-") as folder:
        inputs = prepare(Path(folder), config)
        with ray_session(config.ray):
            # The pseudo masks read step 1's CAMs where a run keeps them.
            cams_platform(inputs, inputs.models)
            results = measure(
                inputs, [n for n in PASSES if n in names], args.repeats, config.ray.num_cpus
            )
    print(json.dumps({"preset": args.preset, "passes": results}))


if __name__ == "__main__":
    main()
