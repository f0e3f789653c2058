"""LID at scale, simulated: what a run on LID's 456,567 train images over 201 classes asks of the
driver (memory, time per stage) and of the disk (files and bytes per step), measured on the
platform's own code paths with a few hundred small real files standing in for the photos.

The data set is laid out as the `lid` adapter reads it (`wsss data import lid SRC --option
train_labels=FILE`): `--rows` train rows (default 456,567, LID's train split), each its own
path `ILSVRC/Data/DET/train/<folder>/<name>.JPEG`, a hard link to one of `--files` small JPEGs
drawn by the built-in synthetic generator (`build_synthetic_dataset`, 200 object classes,
`--file-size` px); their labels in the authors' JSON list (`[path without extension, [1-based
class ids]]`) with `idx_to_name.json`; `--val` and `--test` images with masks under
`LID_track1/{split}` and `LID_track1_annotations/{split}`, hard links to the drawn set's val and
test images and masks. The class list is background plus 200 object classes (LID's 200
ILSVRC DET classes; named `det_<n>` here, one of them `person`). The train labels follow the
built-in set's model of LID's imbalance (`SyntheticConfig`'s defaults: Zipf class frequencies
over the other 199 classes, `person` in `dominant_share` of the images, with another class in
`dominant_cooccurrence` of those, its label missing from `missing_label_rate` of them; 1 to 4
objects an image), drawn by `simulate_labels`.

Stages, each timed (rows per second through it) with the process's resident set size (RSS)
sampled every 50 ms and its kernel high-water mark (`ru_maxrss`) read at the end:
- import, in its own process as `wsss data import lid` runs it (`import_dataset`'s sequence,
  timed step by step): the adapter reading the labels list and the val and test folders
  (`adapter`), `check_candidates` with `--import-workers` processes decoding every image
  (`checks`), `write_dataset` (`manifest_write`).
- run, in a fresh process as `wsss run`'s driver: `load_dataset` (`manifest_read`); step 1's
  balancing as `train_classifier` calls it with the demo preset's data settings
  (`remove_classes` of `step1.exclude_classes`, `balance` with `data.balance: both`,
  `repeat_to_size` for `data.balanced_epoch: train_size`); the per-epoch deal to `--workers`
  Ray Train workers (`epoch_data` as the classifier builds it, `EpochData.worker_items` of
  epoch 0 for every rank) and the size of that `EpochData` pickled (Ray Train ships it to every
  worker in `train_loop_config`); step 1's `summary.json` of every train image's top score,
  collected and written as `extract_cams` and the step store do (`summary`); then, on a local
  Ray cluster of the demo preset (`ray_session`), the rows step 1's CAM extraction hands Ray
  Data (`with_oracle_masks`, `rows_dataset`, as `extract_cams` builds them: `cam_rows`), and
  streaming decode: rank 0's `EpochData.worker_dataset` of epoch 0 read with
  `iter_torch_batches(batch_size=32)` with the Train workers' Ray Data settings, for
  `--batches` batches (`decode`; time to the first batch counted from the `worker_dataset`
  call).
- layout, in this process: the files each step writes per image at LID's image size, on
  `--layout-train` train and `--layout-eval` val and test images drawn at 500 px and cropped to
  500x375, with the paper preset's step-1 settings (`cam_stride` 4, its CRF and thresholds).
  Step 1: a CAM file per image (`write_cams`; a train image's classes those of a simulated
  train row less `exclude_classes`, a val or test image's its own, standing also for the
  predicted ones; maps pooled from the image's true mask plus noise, `noisy_cams` of
  bench/crf.py), then `refine_and_score` on them, which writes the train images' IR labels and
  the val and test images' CAM and CAM+CRF masks. Step 2: a pseudo mask per image
  (`write_palette_png`, as `PseudoMaskWriter` writes it; the image's CAM+CRF mask stands in for
  the random walk's). Step 3 writes no file per image in a run (only `segmenter.pt`); `wsss
  predict` writes a palette mask and an overlay panel per image (`write_palette_png`,
  `side_by_side`, `overlay`, `with_legend`, as `Segmenter` does), measured on the test images.
  Each output's mean bytes per image of its split times that split's full row count gives the
  full-scale files and bytes; the data set folder's files and step 1's `summary.json` are
  measured at full scale. Model files and Ray Train
  checkpoints are not counted: their size does not grow with the data set.

The stand-in files are small, so import checks and decoding run faster here than on LID's
photos: `check_decode_ms` gives the check's decode time of one file of each size, and
`checks_lid_size_est_s` the checks' time with LID-size files.

Prints progress, and as the last line one JSON object: `rows`, `classes`, `val`, `test`,
`driver_peak_rss_mb` (the run process's peak RSS, MiB; `driver_base_rss_mb` its RSS once
its modules are imported), `import_peak_rss_mb`, `first_batch_s`, rows per second through each
stage (`adapter_rows_s`, `checks_rows_s`, `manifest_rows_s` (written and read back),
`balance_rows_s`, `deal_rows_s`, `cam_rows_rows_s`, `decode_rows_s` and
`decode_after_first_rows_s`), `checks_lid_size_est_s`, `check_decode_ms`, `stage_s` and
`stage_peak_rss_mb` per stage, `balanced_rows`, `worker_rows`, `epoch_data_pickle_mb`,
`per_image_bytes` (by output folder and split), and `steps`: per step (`data`, `step1`,
`step2`, `step3`, `predict`) the `files` and `bytes` (and `gb`) at full scale.

Run: `python bench/scale.py [--rows 456567] [--files 300] [--workers 8] [--batches 200]
[--work DIR]` (`--work` is kept; by default a temporary folder, removed at the end).
"""

# wsss sets RAY_AUTH_MODE for the clusters it starts, and Ray reads that once, when imported.
import wsss  # noqa: F401  # isort: skip

import argparse
import gc
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import ray
import ray.data
from PIL import Image

# psutil comes with Ray (ray/thirdparty_files), which puts it on sys.path when imported.
import psutil  # isort: skip

from wsss.platform.config import SyntheticConfig, load_config
from wsss.platform.datasets.adapters.common import get_adapter
from wsss.platform.datasets.images import image_size, read_mask, read_rgb, write_palette_png
from wsss.platform.datasets.manifest import (
    BACKGROUND,
    DATASET_FILE,
    MANIFEST_FILE,
    REJECTED_FILE,
    DatasetInfo,
    ManifestRow,
    check_candidates,
    load_dataset,
    with_oracle_masks,
    write_dataset,
)
from wsss.platform.datasets.synthetic.writing import build_synthetic_dataset
from wsss.platform.loaders.balance import balance, remove_classes, repeat_to_size
from wsss.platform.loaders.batches import pace_scheduling_loop, rows_dataset
from wsss.platform.ray_cluster import ray_session
from wsss.platform.runners import SCORED_SPLITS, scored_splits
from wsss.platform.runners import cams as step1_cams
from wsss.platform.runners.outputs import CAM_DIR, CAM_MASK_DIRS, IR_LABEL_DIR, PSEUDO_MASK_DIR
from wsss.platform.training import EpochData, epoch_data
from wsss.stages.segmentation.render import overlay, side_by_side, with_legend

# LID's train split and class list (ILSVRC DET's 200 classes plus background).
LID_TRAIN_ROWS = 456_567
LID_OBJECT_CLASSES = 200
# The sizes of LID's track-1 val and test sets.
LID_VAL_IMAGES = 4_690
LID_TEST_IMAGES = 10_000
DOMINANT = "person"
# Where the dominant class sits in the class list changes nothing measured here.
DOMINANT_INDEX = 124
# LID's photos are ImageNet's, about 500 px on their long side; 500x375 is a common shape.
LAYOUT_WIDTH, LAYOUT_HEIGHT = 500, 375
# The lid adapter's folders (its defaults) and the name of the train labels list.
TRAIN_ROOT = "ILSVRC/Data/DET/train"
SPLIT_IMAGES = "LID_track1/{split}"
SPLIT_MASKS = "LID_track1_annotations/{split}"
TRAIN_LABELS = "train_labels.json"
IDX_TO_NAME = "idx_to_name.json"
# Train rows are spread over folders of this many files, as a large image set is.
FOLDER_SIZE = 1000
# Step 1's balancing and data settings come from the demo preset (the README's main job),
# the per-image outputs from the paper preset (LID's image size, cam_stride and CRF).
DATA_PRESET = "demo"
LAYOUT_PRESET = "paper"
MIB = 1024**2
GB = 1e9
PREDICT_DIRS = {"mask": "predictions", "overlay": "overlays"}
# (step, output folder, splits it holds a file for): every file a step writes per image.
PER_IMAGE_OUTPUTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("step1", CAM_DIR, ("train", *SCORED_SPLITS)),
    ("step1", IR_LABEL_DIR, ("train",)),
    ("step1", CAM_MASK_DIRS["cam"], SCORED_SPLITS),
    ("step1", CAM_MASK_DIRS["cam_crf"], SCORED_SPLITS),
    ("step2", PSEUDO_MASK_DIR, ("train", *SCORED_SPLITS)),
    ("predict", PREDICT_DIRS["mask"], ("test",)),
    ("predict", PREDICT_DIRS["overlay"], ("test",)),
)
STEPS = ("data", "step1", "step2", "step3", "predict")


def load_crf_bench() -> ModuleType:
    """bench/crf.py, for its CAMs made from true masks and its batches of manifest rows."""
    spec = importlib.util.spec_from_file_location("crf_bench", Path(__file__).with_name("crf.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the simulated manifest ------------------------------------------------------------------


def lid_classes(object_classes: int = LID_OBJECT_CLASSES) -> list[str]:
    """Background, then `object_classes` classes `det_<n>`, the dominant one named `person`."""
    names = [f"det_{index:03d}" for index in range(1, object_classes + 1)]
    names[min(DOMINANT_INDEX, object_classes) - 1] = DOMINANT
    return [BACKGROUND, *names]


@dataclass(frozen=True)
class SimulatedLabels:
    """Each row's label ids (1-based class indices, sorted), and whether its image shows the
    dominant class (labelled or not)."""

    labels: list[list[int]]
    shows_dominant: np.ndarray

    def dominant_share(self) -> float:
        """Share of the images that show the dominant class."""
        return float(self.shows_dominant.mean())

    def missing_share(self, dominant: int) -> float:
        """Share of the images showing the dominant class whose label is missing."""
        labelled = np.array([dominant in ids for ids in self.labels])
        shown = self.shows_dominant
        return float((shown & ~labelled).sum() / max(int(shown.sum()), 1))


def simulate_labels(
    rows: int, classes: Sequence[str], config: SyntheticConfig, rng: np.random.Generator
) -> SimulatedLabels:
    """Train label sets drawn as the built-in set draws its images' classes (`config`'s Zipf
    exponent, dominant share and co-occurrence, objects per image) and drops the dominant
    label (`missing_label_rate` of the images that show it, only where another label remains)."""
    dominant = classes.index(config.dominant_class)
    mains = np.array([i for i in range(1, len(classes)) if i != dominant])
    weights = 1.0 / np.arange(1, len(mains) + 1) ** config.zipf_exponent
    weights /= weights.sum()
    shows = rng.random(rows) < config.dominant_share
    together = shows & (rng.random(rows) < config.dominant_cooccurrence)
    if config.max_objects < 2:
        together[:] = False
    alone = rng.integers(config.min_objects, config.max_objects + 1, rows)
    beside = rng.integers(1, max(config.max_objects, 2), rows)
    others = np.where(shows, np.where(together, beside, 0), alone)
    draws = mains[rng.choice(len(mains), size=int(others.sum()), p=weights)].tolist()
    # Only an image with another label can lose the dominant one; the drop probability there
    # is raised so that the share over all images showing it is the configured rate.
    drop = min(1.0, config.missing_label_rate / max(config.dominant_cooccurrence, 1e-6))
    dropped = together & (rng.random(rows) < drop)
    ends = np.cumsum(others).tolist()
    labels, start = [], 0
    for row, end in enumerate(ends):
        ids = set(draws[start:end])
        if shows[row] and not dropped[row]:
            ids.add(dominant)
        labels.append(sorted(ids))
        start = end
    return SimulatedLabels(labels, shows)


def train_stem(row: int) -> str:
    """The path of train row `row` under the train root, without extension, shaped as ILSVRC's."""
    return f"ILSVRC2014_train_{row // FOLDER_SIZE:04d}/ILSVRC2014_train_{row:08d}"


def eval_stem(split: str, row: int) -> str:
    return f"ILSVRC2012_{split}_{row:08d}"


@dataclass(frozen=True)
class Plan:
    """What to simulate: the row counts, the drawn files and the seed."""

    rows: int
    val: int
    test: int
    files: int
    eval_files: int
    file_size: int
    seed: int

    @property
    def images(self) -> dict[str, int]:
        return {"train": self.rows, "val": self.val, "test": self.test}


def prepare_lid(work: Path, plan: Plan) -> Path:
    """The LID layout under `work/lid` (reused when `work` already holds one for `plan`):
    small files drawn once, hard-linked under every row's path; the train labels list."""
    src, marker = work / "lid", work / "lid.json"
    settings = json.dumps(plan.__dict__, sort_keys=True)
    if marker.is_file() and marker.read_text() == settings:
        print(f"reusing the simulated LID layout in {src}", flush=True)
        return src
    shutil.rmtree(src, ignore_errors=True)
    drawn = work / "files"
    if not (drawn / DATASET_FILE).is_file():
        print(
            f"drawing {plan.files} train and {plan.eval_files} val and test files of "
            f"{plan.file_size} px into {drawn}",
            flush=True,
        )
        config = SyntheticConfig(
            num_classes=LID_OBJECT_CLASSES,
            image_size=plan.file_size,
            train_images=plan.files,
            val_images=plan.eval_files,
            test_images=plan.eval_files,
        )
        build_synthetic_dataset(drawn, config, plan.seed)
    info, drawn_rows = load_dataset(drawn)
    pool = {
        split: [r for r in drawn_rows if r.split == split] for split in ("train", *SCORED_SPLITS)
    }
    start = time.perf_counter()
    classes = lid_classes()
    simulated = simulate_labels(
        plan.rows, classes, SyntheticConfig(), np.random.default_rng(plan.seed)
    )
    person = classes.index(DOMINANT)
    print(
        f"simulated {plan.rows} train label sets over {len(classes) - 1} object classes: "
        f"{DOMINANT} shown in {simulated.dominant_share():.1%} of the images, its label "
        f"missing from {simulated.missing_share(person):.1%} of those; "
        f"{np.mean([len(ids) for ids in simulated.labels]):.2f} labels an image",
        flush=True,
    )
    src.mkdir(parents=True)
    (src / IDX_TO_NAME).write_text(json.dumps({str(i): c for i, c in enumerate(classes) if i}))
    entries = [[train_stem(row), ids] for row, ids in enumerate(simulated.labels)]
    (src / TRAIN_LABELS).write_text(json.dumps(entries))
    del entries, simulated
    train_pool = [info.root / r.image for r in pool["train"]]
    for row in range(plan.rows):
        path = src / TRAIN_ROOT / f"{train_stem(row)}.JPEG"
        if row % FOLDER_SIZE == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        os.link(train_pool[row % len(train_pool)], path)
    for split in SCORED_SPLITS:
        images = src / SPLIT_IMAGES.format(split=split)
        masks = src / SPLIT_MASKS.format(split=split)
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for row in range(plan.images[split]):
            drawn_row = pool[split][row % len(pool[split])]
            assert drawn_row.mask is not None
            os.link(info.root / drawn_row.image, images / f"{eval_stem(split, row)}.JPEG")
            os.link(info.root / drawn_row.mask, masks / f"{eval_stem(split, row)}.png")
    print(f"  laid out in {time.perf_counter() - start:.0f} s", flush=True)
    marker.write_text(settings)
    return src


# --- timing and memory -----------------------------------------------------------------------


class Stages:
    """Times named stages and samples this process's RSS every `interval` s in a background
    thread, keeping the peak seen during each stage."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.seconds: dict[str, float] = {}
        self.peak_bytes: dict[str, int] = {}
        self._current: str | None = None
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        name = self._current
        if name is not None:
            rss = self._process.memory_info().rss
            self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._current = name
        self._sample()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self._sample()
            self._current = None
            rss = self.peak_bytes.get(name, 0) / MIB
            print(f"  {name}: {self.seconds[name]:.2f} s, peak RSS {rss:.0f} MiB", flush=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peaks_mb(self) -> dict[str, float]:
        return {name: round(peak / MIB, 1) for name, peak in self.peak_bytes.items()}


def max_rss_mb() -> float:
    """This process's peak RSS so far, as the kernel counts it (Linux: `ru_maxrss` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rows_per_s(rows: int, seconds: float) -> float:
    return round(rows / seconds, 1) if seconds > 0 else float("inf")


# --- the import process ----------------------------------------------------------------------


def import_phase(work: Path, workers: int) -> dict[str, Any]:
    """`import_dataset("lid", ...)`'s steps on the simulated layout, each timed."""
    src, out = work / "lid", work / "dataset"
    stages = Stages()
    print(f"importing {src} as `wsss data import lid` does, into {out}", flush=True)
    with stages.stage("adapter"):
        output = get_adapter("lid")(src, train_labels=TRAIN_LABELS, idx_to_name=IDX_TO_NAME)
    with stages.stage("checks"):
        rows, rejects = check_candidates(src, output.classes, output.candidates, workers=workers)
    info = DatasetInfo(name="lid-simulated", format="lid", root=src, classes=output.classes)
    with stages.stage("manifest_write"):
        write_dataset(out, info, rows, rejects)
    stages.stop()
    candidates = len(output.candidates)
    print(f"  {len(rows)} rows kept, {len(rejects)} rejected", flush=True)
    for reject in rejects[:5]:
        print(f"  rejected {reject.file}: {reject.reason}", flush=True)
    return {
        "phase": "import",
        "candidates": candidates,
        "kept": len(rows),
        "rejected": len(rejects),
        "classes": len(output.classes),
        "seconds": stages.seconds,
        "peaks_mb": stages.peaks_mb(),
        "peak_rss_mb": round(max_rss_mb(), 1),
    }


# --- the run process -------------------------------------------------------------------------


def top_scores_summary_bytes(ids: Sequence[str], seed: int) -> int:
    """Bytes of step 1's `summary.json` holding a top score (a float32 read back as a Python
    float, as `extract_cams` collects them) for each of `ids`, written as the step store writes
    a summary (`json.dumps(..., indent=2)`)."""
    scores = np.random.default_rng(seed).random(len(ids), dtype=np.float32).tolist()
    summary = {"train_top_scores": dict(zip(ids, scores, strict=True))}
    return len((json.dumps(summary, indent=2) + "\n").encode())


def run_phase(work: Path, workers: int, batches: int, batch_size: int) -> dict[str, Any]:
    """Step 1's driver-side data path at full scale, as `wsss run` takes it."""
    config = load_config(DATA_PRESET)
    step1 = config.step1
    stages = Stages()
    base_mb = psutil.Process().memory_info().rss / MIB
    print(f"running step 1's data path on {work / 'dataset'} (driver at {base_mb:.0f} MiB)")
    with stages.stage("manifest_read"):
        info, rows = load_dataset(work / "dataset")
    train_rows = [r for r in rows if r.split == "train"]
    with stages.stage("remove_classes"):
        kept = remove_classes(train_rows, step1.exclude_classes)
    with stages.stage("balance"):
        balanced = balance(kept, config.data.balance, config.seed)
    with stages.stage("repeat_to_size"):
        epoch_rows = (
            repeat_to_size(balanced, len(train_rows), config.seed)
            if config.data.balanced_epoch == "train_size"
            else balanced
        )
    print(
        f"  {len(train_rows)} train rows, {len(kept)} without {step1.exclude_classes}, "
        f"{len(balanced)} balanced ({config.data.balance}), {len(epoch_rows)} an epoch",
        flush=True,
    )
    names = [c for c in info.object_classes if c not in step1.exclude_classes]
    with stages.stage("deal"):
        data = epoch_data(
            epoch_rows,
            config.seed,
            train=True,
            root=info.root,
            class_names=names,
            size=config.data.image_size,
            augmentation_config=config.data.augmentation,
            columns=["image", "target"],
        )
        shares = [data.worker_items(0, rank, workers) for rank in range(workers)]
    worker_rows = len(shares[0])
    del shares
    with stages.stage("pickle"):
        pickled = len(ray.cloudpickle.dumps(data))
    print(f"  the epoch's EpochData pickles to {pickled / MIB:.1f} MiB", flush=True)
    with stages.stage("summary"):
        summary_bytes = top_scores_summary_bytes([r.id for r in train_rows], config.seed)

    decode: dict[str, float] = {}
    with ray_session(config.ray) as where:
        print(f"  Ray: {where}", flush=True)
        # As a Ray Train worker sets Ray Data up before reading its share.
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        pace_scheduling_loop(context)
        with stages.stage("cam_rows"):
            splits = scored_splits(rows)
            wanted = [
                r
                for r in with_oracle_masks(rows, info.root)
                if r.split == "train" or r.split in splits
            ]
            cam_rows = rows_dataset(wanted)
        del cam_rows
        gc.collect()
        with stages.stage("decode"):
            decode = stream_batches(data, workers, batches, batch_size)
    stages.stop()
    seconds = stages.seconds
    return {
        "phase": "run",
        "train_rows": len(train_rows),
        "balanced_rows": len(balanced),
        "epoch_rows": len(epoch_rows),
        "worker_rows": worker_rows,
        "cam_rows": len(wanted),
        "epoch_data_pickle_mb": round(pickled / MIB, 1),
        "step1_summary_bytes": summary_bytes,
        "base_rss_mb": round(base_mb, 1),
        "seconds": seconds,
        "peaks_mb": stages.peaks_mb(),
        "peak_rss_mb": round(max_rss_mb(), 1),
        **decode,
    }


def stream_batches(
    data: EpochData, workers: int, batches: int, batch_size: int
) -> dict[str, float]:
    """Rank 0's share of epoch 0 through decode + augment + batching, as a Train worker reads
    it, for `batches` batches; the time to the first batch counts from building its dataset."""
    start = time.perf_counter()
    dataset = data.worker_dataset(0, 0, workers)
    iterator = iter(dataset.iter_torch_batches(batch_size=batch_size))
    rows, first, pixel_mean, read = 0, 0.0, 0.0, 0
    for batch in iterator:
        if read == 0:
            first = time.perf_counter() - start
            print(f"  first batch after {first:.2f} s", flush=True)
        # Touch every pixel, as training would, and keep nothing.
        pixel_mean += float(batch["image"].float().mean())
        rows += len(batch["image"])
        read += 1
        if read == batches:
            break
    elapsed = time.perf_counter() - start
    del iterator, dataset
    print(
        f"  {read} batches, {rows} rows in {elapsed:.1f} s (mean pixel "
        f"{pixel_mean / max(read, 1):.1f})",
        flush=True,
    )
    return {
        "first_batch_s": round(first, 2),
        "decode_s": elapsed,
        "decode_rows": rows,
        "decode_batches": read,
        "decode_after_first_rows_s": rows_per_s(rows - batch_size, elapsed - first),
    }


# --- the output layout -----------------------------------------------------------------------


def full_scale(
    per_image_bytes: Mapping[tuple[str, str], float],
    images: Mapping[str, int],
    outputs: Sequence[tuple[str, str, Sequence[str]]] = PER_IMAGE_OUTPUTS,
) -> dict[str, dict[str, float]]:
    """Files and bytes per step at full scale: one file per image of each output's splits,
    each of the mean bytes measured for that (output folder, split)."""
    steps: dict[str, dict[str, float]] = {}
    for step, folder, splits in outputs:
        totals = steps.setdefault(step, {"files": 0, "bytes": 0.0})
        for split in splits:
            totals["files"] += images[split]
            totals["bytes"] += per_image_bytes[(folder, split)] * images[split]
    return steps


def with_fixed_files(
    per_image: Mapping[str, Mapping[str, float]], fixed: Mapping[str, Sequence[int]]
) -> dict[str, dict[str, float]]:
    """`per_image` totals plus each step's files measured at full scale (`fixed`: step ->
    their sizes in bytes), for every step of `STEPS`, with gigabytes."""
    steps = {}
    for step in STEPS:
        files = per_image.get(step, {}).get("files", 0) + len(fixed.get(step, ()))
        size = per_image.get(step, {}).get("bytes", 0.0) + sum(fixed.get(step, ()))
        steps[step] = {"files": int(files), "bytes": round(size), "gb": round(size / GB, 2)}
    return steps


def layout_rows(
    work: Path, train: int, evaluated: int, seed: int
) -> tuple[Path, list[ManifestRow]]:
    """Images of 500x375 px with their true masks (val and test rows carry theirs): drawn by
    the synthetic generator at 500 px and cropped."""
    drawn, root = work / "layout-drawn", work / "layout"
    config = SyntheticConfig(
        num_classes=LID_OBJECT_CLASSES,
        image_size=LAYOUT_WIDTH,
        train_images=train,
        val_images=evaluated,
        test_images=evaluated,
    )
    if not (drawn / DATASET_FILE).is_file():
        build_synthetic_dataset(drawn, config, seed)
    info, rows = load_dataset(drawn)
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cropped = []
    for row in with_oracle_masks(rows, info.root):
        assert row.mask is not None
        image = read_rgb(info.root / row.image)[:LAYOUT_HEIGHT, :LAYOUT_WIDTH]
        truth = read_mask(info.root / row.mask)[:LAYOUT_HEIGHT, :LAYOUT_WIDTH]
        Image.fromarray(image).save(root / "images" / f"{row.id}.jpg", format="JPEG", quality=92)
        write_palette_png(root / "masks" / f"{row.id}.png", truth)
        mask = f"masks/{row.id}.png"
        cropped.append(ManifestRow(row.id, f"images/{row.id}.jpg", row.split, row.labels, mask))
    return root, cropped


def measure_layout(
    work: Path, sample_labels: Sequence[Sequence[int]], evaluated: int, seed: int
) -> tuple[dict[tuple[str, str], list[int]], dict[str, float]]:
    """Every per-image output of `PER_IMAGE_OUTPUTS` written for the layout images (one train
    image per label set of `sample_labels`), as each step writes it; their sizes by (output
    folder, split), and the check's decode time of one such image."""
    crf_bench = load_crf_bench()
    config = load_config(LAYOUT_PRESET).step1
    classes = lid_classes()
    excluded = {classes.index(name) for name in config.exclude_classes}
    root, rows = layout_rows(work, len(sample_labels), evaluated, seed)
    step_dir, step2_dir, predict_dir = work / "step1", work / "step2", work / "predict"
    for folder in (step_dir, step2_dir, predict_dir):
        shutil.rmtree(folder, ignore_errors=True)
    cam_dir = step_dir / CAM_DIR
    cam_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train_labels = iter(sample_labels)
    # The layout rows as step 1 refines them: train rows without a mask.
    refined = []
    for row in rows:
        truth = read_mask(root / str(row.mask))
        # An image whose objects the crop cut off lends its background to the maps.
        objects = [int(v) for v in np.unique(truth) if v not in (0, 255)] or [0]
        if row.split == "train":
            kept = [c for c in next(train_labels) if c not in excluded]
            # A simulated row's classes, drawn where the image's own objects are.
            maps = crf_bench.noisy_cams(
                truth, [objects[j % len(objects)] for j in range(len(kept))], config.cam_stride, rng
            )
            refined.append(ManifestRow(row.id, row.image, row.split, row.labels, None))
        else:
            kept = objects
            maps = crf_bench.noisy_cams(truth, kept, config.cam_stride, rng)
            refined.append(row)
        saved: dict[str, Any] = {"cams": maps, "classes": np.array(kept, np.int32)}
        saved["top_score"] = float(rng.random(dtype=np.float32))
        if row.split in SCORED_SPLITS:
            saved.update(predicted_cams=maps, predicted_classes=saved["classes"])
        step1_cams.write_cams(cam_dir, row.id, saved)
    print(f"  CAM files written; dense CRF on {len(refined)} images", flush=True)
    for batch in crf_bench.manifest_batches(refined):
        step1_cams.refine_and_score(batch, str(root), len(classes), config, str(step_dir))
    print("  IR labels and masks written; pseudo masks and predictions", flush=True)
    for folder in (step2_dir / PSEUDO_MASK_DIR, *(predict_dir / d for d in PREDICT_DIRS.values())):
        folder.mkdir(parents=True)
    for row in refined:
        image = read_rgb(root / row.image)
        _, refined_mask = step1_cams.cam_masks(image, row.id, cam_dir, config)
        write_palette_png(step2_dir / PSEUDO_MASK_DIR / f"{row.id}.png", refined_mask)
        if row.split == "test":
            write_palette_png(predict_dir / PREDICT_DIRS["mask"] / f"{row.id}.png", refined_mask)
            panel = side_by_side(image, overlay(image, refined_mask))
            panel = with_legend(panel, refined_mask, classes)
            Image.fromarray(panel).save(predict_dir / PREDICT_DIRS["overlay"] / f"{row.id}.png")
    folders = {
        CAM_DIR: cam_dir,
        IR_LABEL_DIR: step_dir / IR_LABEL_DIR,
        **{name: step_dir / name for name in CAM_MASK_DIRS.values()},
        PSEUDO_MASK_DIR: step2_dir / PSEUDO_MASK_DIR,
        **{name: predict_dir / name for name in PREDICT_DIRS.values()},
    }
    split_of = {row.id: row.split for row in rows}
    sizes: dict[tuple[str, str], list[int]] = {}
    for name, folder in folders.items():
        for path in sorted(folder.iterdir()):
            sizes.setdefault((name, split_of[path.stem]), []).append(path.stat().st_size)
    return sizes, {"layout": check_decode_ms(root / rows[0].image)}


def check_decode_ms(path: Path, repeats: int = 20) -> float:
    """Milliseconds the import check (`image_size`, a full decode) takes on `path`, fastest of
    `repeats`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        image_size(path)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def folder_files(folder: Path, names: Sequence[str]) -> list[int]:
    return [(folder / name).stat().st_size for name in names]


# --- orchestration ---------------------------------------------------------------------------


def run_child(phase: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """This script's `phase` in a fresh Python process, echoing its output; its result is the
    last JSON line it prints with that phase."""
    command = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--work",
        str(work),
        "--import-workers",
        str(args.import_workers),
        "--workers",
        str(args.workers),
        "--batches",
        str(args.batches),
        "--batch-size",
        str(args.batch_size),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        lines = []
        for line in child.stdout:
            lines.append(line)
            if not line.startswith('{"phase"'):
                print(line, end="", flush=True)
    if child.returncode != 0:
        raise RuntimeError(f"the {phase} phase failed (exit code {child.returncode})")
    # Ray may echo worker output after the result: take the last line that is the result.
    for line in reversed(lines):
        if line.startswith('{"phase"'):
            return json.loads(line)
    raise RuntimeError(f"the {phase} phase printed no result")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=LID_TRAIN_ROWS, help="train rows")
    parser.add_argument("--val", type=int, default=LID_VAL_IMAGES, help="val rows")
    parser.add_argument("--test", type=int, default=LID_TEST_IMAGES, help="test rows")
    parser.add_argument("--files", type=int, default=300, help="distinct train files")
    parser.add_argument("--eval-files", type=int, default=40, help="distinct val, test files")
    parser.add_argument("--file-size", type=int, default=128, help="side of the files, pixels")
    parser.add_argument("--import-workers", type=int, default=2, help="import check processes")
    parser.add_argument("--workers", type=int, default=8, help="Ray Train workers dealt to")
    parser.add_argument("--batches", type=int, default=200, help="batches streamed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layout-train", type=int, default=24, help="train images measured")
    parser.add_argument("--layout-eval", type=int, default=8, help="val, test images measured")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="working folder, kept (default: temporary)")
    parser.add_argument("--phase", choices=("import", "run"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "import":
        print(json.dumps(import_phase(args.work, args.import_workers)), flush=True)
        return
    if args.phase == "run":
        result = run_phase(args.work, args.workers, args.batches, args.batch_size)
        print(json.dumps(result), flush=True)
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="wsss-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    plan = Plan(
        args.rows, args.val, args.test, args.files, args.eval_files, args.file_size, args.seed
    )
    try:
        result = measure(work, plan, args)
    finally:
        if args.work is None:
            print(f"removing {work}", flush=True)
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


def measure(work: Path, plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    """Every phase on the simulated LID under `work`; the result line."""
    src = prepare_lid(work, plan)
    imported = run_child("import", args, work)
    run = run_child("run", args, work)

    print(f"output layout on {args.layout_train} train, {args.layout_eval} val and test images")
    start = time.perf_counter()
    entries = json.loads((src / TRAIN_LABELS).read_text())
    picks = np.random.default_rng(args.seed).choice(len(entries), args.layout_train, replace=False)
    sample_labels = [entries[int(i)][1] for i in picks]
    del entries
    sizes, decode_ms = measure_layout(work, sample_labels, args.layout_eval, args.seed)
    decode_ms["files"] = check_decode_ms(next((src / TRAIN_ROOT).rglob("*.JPEG")))
    print(f"  measured in {time.perf_counter() - start:.0f} s", flush=True)
    per_image = {key: float(np.mean(values)) for key, values in sizes.items()}
    for (folder, split), values in sorted(sizes.items()):
        print(
            f"  {folder}/ ({split}): {len(values)} files, mean {np.mean(values) / 1024:.1f} KiB",
            flush=True,
        )
    dataset_files = folder_files(work / "dataset", (DATASET_FILE, MANIFEST_FILE, REJECTED_FILE))
    steps = with_fixed_files(
        full_scale(per_image, plan.images),
        {"data": dataset_files, "step1": [run["step1_summary_bytes"]]},
    )
    for step, totals in steps.items():
        print(f"  {step}: {totals['files']} files, {totals['gb']} GB at full scale", flush=True)

    seconds = {**imported["seconds"], **run["seconds"]}
    total_rows = imported["candidates"]
    balancing = sum(seconds[name] for name in ("remove_classes", "balance", "repeat_to_size"))
    # The checks decode every file: with LID-size photos each decode costs what one of the
    # layout images does, spread over the import's processes.
    extra_s = total_rows * (decode_ms["layout"] - decode_ms["files"]) / 1000 / args.import_workers
    return {
        "rows": plan.rows,
        "classes": imported["classes"],
        "val": plan.val,
        "test": plan.test,
        "rejected": imported["rejected"],
        "driver_peak_rss_mb": run["peak_rss_mb"],
        "driver_base_rss_mb": run["base_rss_mb"],
        "import_peak_rss_mb": imported["peak_rss_mb"],
        "first_batch_s": run["first_batch_s"],
        "adapter_rows_s": rows_per_s(total_rows, seconds["adapter"]),
        "checks_rows_s": rows_per_s(total_rows, seconds["checks"]),
        "manifest_rows_s": rows_per_s(
            total_rows, seconds["manifest_write"] + seconds["manifest_read"]
        ),
        "balance_rows_s": rows_per_s(run["train_rows"], balancing),
        "deal_rows_s": rows_per_s(run["epoch_rows"], seconds["deal"]),
        "cam_rows_rows_s": rows_per_s(run["cam_rows"], seconds["cam_rows"]),
        "decode_rows_s": rows_per_s(run["decode_rows"], run["decode_s"]),
        "decode_after_first_rows_s": run["decode_after_first_rows_s"],
        "checks_lid_size_est_s": round(seconds["checks"] + extra_s, 1),
        "check_decode_ms": {k: round(v, 3) for k, v in decode_ms.items()},
        "stage_s": {name: round(value, 2) for name, value in seconds.items()},
        "stage_peak_rss_mb": {**imported["peaks_mb"], **run["peaks_mb"]},
        "balanced_rows": run["balanced_rows"],
        "worker_rows": run["worker_rows"],
        "decode_rows": run["decode_rows"],
        "epoch_data_pickle_mb": run["epoch_data_pickle_mb"],
        "per_image_bytes": {f"{f}/{s}": round(v) for (f, s), v in sorted(per_image.items())},
        "steps": steps,
        "settings": {
            "files": plan.files,
            "file_size": plan.file_size,
            "import_workers": args.import_workers,
            "workers": args.workers,
            "batches": args.batches,
            "batch_size": args.batch_size,
            "layout_images": {"train": args.layout_train, "val": args.layout_eval},
        },
    }


if __name__ == "__main__":
    main()
