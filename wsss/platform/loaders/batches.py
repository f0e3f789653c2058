"""Manifest rows -> Ray Dataset -> decoded, augmented, fixed-size batches.

Only the row metadata (ids, paths, labels) passes through the driver; images are decoded and
augmented inside Ray Data map tasks, block by block, so memory does not grow with the data set.
Each Train worker builds its share of the data every epoch (`training_dataset`, through
`wsss.platform.training.EpochData`) and reads it with `iter_torch_batches()`; batch inference
maps the same kind of dataset through a step's model (`runners.map_through_model`).

A row whose image or mask cannot be read is logged with the file and the reason and dropped;
the rest of the data set goes on.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray.data
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.data._internal.execution.streaming_executor_state import (
    WAIT_FOR_TASK_COMPLETION_TIMEOUT_S,
)

from wsss.platform.config import AugmentationConfig
from wsss.platform.datasets.images import ImageError, read_mask, read_rgb
from wsss.platform.datasets.manifest import ManifestRow
from wsss.platform.loaders.augment import strong_augmentation, weak_augmentation

logger = logging.getLogger(__name__)

Augmentation = Literal["strong", "weak"]


class SchedulingLoopPacer(ExecutionCallback):
    """Makes each step of a Ray Data scheduling loop last at least `min_step_s`.

    The loop waits for running tasks, but once none is running (every block decoded and
    waiting for a consumer that is busy training) it has nothing to wait on and spins, taking
    CPU from the Train workers it feeds; with each worker running its own dataset there is one
    such loop per worker.
    Registered through `DataContext.custom_execution_callback_classes` (Ray Data's hook for
    execution callbacks); one instance serves one execution.
    """

    # As long as Ray Data's own loop waits for running tasks at most: the idle loop then wakes
    # no more often than a busy one, and training, which takes a batch in about a second, is
    # not kept waiting by it; each wake-up of a shorter step costs the Train worker CPU.
    min_step_s = WAIT_FOR_TASK_COMPLETION_TIMEOUT_S

    def __init__(self) -> None:
        self._last_step: float | None = None

    def on_execution_step(self, executor: Any) -> None:
        if self._last_step is not None:
            remaining = self.min_step_s - (time.perf_counter() - self._last_step)
            if remaining > 0:
                time.sleep(remaining)
        self._last_step = time.perf_counter()


def pace_scheduling_loop(context: ray.data.DataContext) -> None:
    """Register `SchedulingLoopPacer` for the datasets created under `context`."""
    if SchedulingLoopPacer not in context.custom_execution_callback_classes:
        context.custom_execution_callback_classes.append(SchedulingLoopPacer)


def rows_dataset(rows: Sequence[ManifestRow]) -> ray.data.Dataset:
    """A Ray Dataset of manifest rows (metadata only: id, image, split, labels, mask)."""
    return ray.data.from_items([{**asdict(row), "labels": list(row.labels)} for row in rows])


def multi_hot(labels: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """float32 [K] with 1 at each label's position in `class_names` (object classes only)."""
    position = {name: i for i, name in enumerate(class_names)}
    target = np.zeros(len(class_names), np.float32)
    for label in labels:
        if label in position:
            target[position[label]] = 1.0
    return target


def _row_seed(seed: int, image_id: str) -> int:
    # A stable per-image seed: the same image gets the same augmentation for a given seed,
    # whichever task or worker happens to draw it.
    return zlib.crc32(f"{seed}:{image_id}".encode())


def decode_batch(
    batch: dict[str, np.ndarray],
    root: str,
    class_names: Sequence[str],
    size: int,
    augmentation: Augmentation,
    augmentation_config: AugmentationConfig | None = None,
    with_masks: bool = False,
    seed: int | None = None,
    rescale: float = 1.0,
    crop: bool = False,
) -> dict[str, np.ndarray]:
    """Decode and transform one batch of manifest rows.

    Input columns: id, image (path relative to `root`), labels, mask. Output columns: `id`,
    `image` uint8 [B, size, size, 3], `target` float32 [B, K] multi-hot over `class_names`,
    `size` int32 [B, 2] (height, width before resizing) and, with `with_masks`, `mask` uint8
    [B, size, size] (255 = ignore, also where padding was added). `seed=None` draws fresh
    augmentations each time (training); a seed makes them reproducible per image. `rescale`
    and `crop` go to the strong augmentation (multi-scale random crops).
    """
    transform = (
        strong_augmentation(
            augmentation_config or AugmentationConfig(), size, rescale=rescale, crop=crop
        )
        if augmentation == "strong"
        else weak_augmentation(size)
    )
    ids, images, targets, sizes, masks = [], [], [], [], []
    for index, image_id in enumerate(batch["id"]):
        image_path = Path(root) / str(batch["image"][index])
        mask_value = batch["mask"][index] if "mask" in batch else None
        try:
            image = read_rgb(image_path)
            inputs: dict[str, Any] = {"image": image}
            if with_masks:
                if mask_value is None or mask_value != mask_value:  # None or NaN from Arrow
                    raise ImageError(image_path, "no mask for this row")
                inputs["mask"] = read_mask(Path(root) / str(mask_value))
                if inputs["mask"].shape != image.shape[:2]:
                    raise ImageError(mask_value, "mask size differs from its image")
        except ImageError as exc:
            logger.warning("skipping %s: %s", image_id, exc)
            continue
        if seed is not None:
            transform.set_random_seed(_row_seed(seed, str(image_id)))
        out = transform(**inputs)
        ids.append(str(image_id))
        images.append(out["image"])
        targets.append(multi_hot(list(batch["labels"][index]), class_names))
        sizes.append(image.shape[:2])
        if with_masks:
            masks.append(out["mask"])
    result = {
        "id": np.array(ids, dtype=object),
        "image": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        "target": np.stack(targets) if targets else np.zeros((0, len(class_names)), np.float32),
        "size": np.array(sizes, np.int32).reshape(-1, 2),
    }
    if with_masks:
        result["mask"] = np.stack(masks) if masks else np.zeros((0, size, size), np.uint8)
    return result


def decoded_dataset(
    rows: Sequence[ManifestRow],
    root: Path,
    class_names: Sequence[str],
    size: int,
    augmentation: Augmentation,
    augmentation_config: AugmentationConfig | None = None,
    with_masks: bool = False,
    seed: int | None = None,
    batch_size: int = 16,
    num_cpus: float = 1.0,
    rescale: float = 1.0,
    crop: bool = False,
) -> ray.data.Dataset:
    """A lazily decoded and augmented Ray Dataset (see `decode_batch` for the columns).

    Decoding runs as Ray Data map tasks taking `num_cpus` each; nothing is read until a
    consumer iterates the dataset.
    """
    return rows_dataset(rows).map_batches(
        decode_batch,
        fn_kwargs={
            "root": str(root),
            "class_names": list(class_names),
            "size": size,
            "augmentation": augmentation,
            "augmentation_config": augmentation_config,
            "with_masks": with_masks,
            "seed": seed,
            "rescale": rescale,
            "crop": crop,
        },
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
    )


def training_dataset(
    rows: Sequence[ManifestRow],
    seed: int,
    *,
    root: str,
    class_names: Sequence[str],
    size: int,
    augmentation: Augmentation,
    augmentation_config: AugmentationConfig | None,
    columns: Sequence[str],
    with_masks: bool = False,
    rescales: Sequence[float] = (1.0,),
    crop: bool = False,
) -> ray.data.Dataset:
    """`decoded_dataset` of `rows` at each of `rescales` in turn, keeping `columns`: how every
    step's train and val rows become a worker's data (`EpochData.build`)."""
    per_scale = [
        decoded_dataset(
            rows,
            Path(root),
            class_names,
            size,
            augmentation,
            augmentation_config,
            with_masks=with_masks,
            # Each scale draws its own augmentation of an image, not the same flip twice.
            seed=seed + index,
            rescale=rescale,
            crop=crop,
        ).select_columns(list(columns))
        for index, rescale in enumerate(rescales)
    ]
    return per_scale[0].union(*per_scale[1:]) if len(per_scale) > 1 else per_scale[0]
