"""The Ray Data input pipeline on a real local cluster: decoding, targets, bad rows."""

import time
from pathlib import Path

import numpy as np
import pytest
import ray.data
from PIL import Image

from wsss.platform.config import AugmentationConfig
from wsss.platform.datasets.images import write_palette_png
from wsss.platform.datasets.manifest import ManifestRow
from wsss.platform.loaders.batches import (
    SchedulingLoopPacer,
    decode_batch,
    decoded_dataset,
    multi_hot,
    pace_scheduling_loop,
)

CLASSES = ["dog", "cat", "person"]


def _rows(root: Path, count: int, corrupt: int | None = None) -> list[ManifestRow]:
    rows = []
    for index in range(count):
        name = f"img{index:03d}"
        if index == corrupt:
            (root / f"{name}.jpg").write_bytes(b"\xff\xd8 truncated")
        else:
            Image.fromarray(np.full((20, 30, 3), index, np.uint8)).save(root / f"{name}.png")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, 5:10] = 1
        write_palette_png(root / f"{name}_mask.png", mask)
        suffix = "jpg" if index == corrupt else "png"
        rows.append(
            ManifestRow(name, f"{name}.{suffix}", "train", ("dog", "person"), f"{name}_mask.png")
        )
    return rows


def test_multi_hot_marks_each_label_position():
    assert multi_hot(["person", "dog"], CLASSES).tolist() == [1.0, 0.0, 1.0]
    assert multi_hot([], CLASSES).tolist() == [0.0, 0.0, 0.0]


def test_decode_batch_resizes_pads_and_keeps_masks_aligned(tmp_path: Path):
    rows = _rows(tmp_path, 2)
    batch = {
        "id": np.array([r.id for r in rows], dtype=object),
        "image": np.array([r.image for r in rows], dtype=object),
        "labels": [list(r.labels) for r in rows],
        "mask": np.array([r.mask for r in rows], dtype=object),
    }
    out = decode_batch(batch, str(tmp_path), CLASSES, 60, "weak", with_masks=True)
    assert out["image"].shape == (2, 60, 60, 3)
    assert out["size"].tolist() == [[20, 30], [20, 30]]
    assert out["target"].tolist() == [[1.0, 0.0, 1.0]] * 2
    # 30 px wide -> 60: scale 2; the 5..9 square lands on 10..19; padding below row 40 is ignore.
    assert (out["mask"][0, 10:20, 10:20] == 1).all()
    assert out["mask"][0, 9, 9] == 0 and (out["mask"][0, 40:] == 255).all()


def test_a_corrupt_image_mid_dataset_is_reported_and_the_rest_completes(
    ray_cluster, tmp_path, caplog
):
    rows = _rows(tmp_path, 12, corrupt=5)
    dataset = decoded_dataset(
        rows, tmp_path, CLASSES, 32, "strong", AugmentationConfig(), batch_size=4
    )
    ids = sorted(dataset.to_pandas()["id"])
    assert ids == [r.id for r in rows if r.id != "img005"]
    batch = {
        "id": np.array(["img005"], dtype=object),
        "image": np.array(["img005.jpg"], dtype=object),
        "labels": [["dog"]],
    }
    with caplog.at_level("WARNING"):
        out = decode_batch(batch, str(tmp_path), CLASSES, 32, "weak")
    assert len(out["id"]) == 0 and out["image"].shape == (0, 32, 32, 3)
    assert "skipping img005" in caplog.text and "img005.jpg" in caplog.text


def test_scheduling_loop_pacer_spaces_consecutive_steps():
    pacer = SchedulingLoopPacer()
    started = time.perf_counter()
    for _ in range(6):
        pacer.on_execution_step(None)
    # The first step has nothing to follow; each of the next five waits out the minimum.
    assert time.perf_counter() - started >= 5 * SchedulingLoopPacer.min_step_s


def test_datasets_made_under_a_paced_context_call_the_pacer(
    ray_cluster, monkeypatch: pytest.MonkeyPatch
):
    steps: list[int] = []
    monkeypatch.setattr(
        SchedulingLoopPacer, "on_execution_step", lambda self, executor: steps.append(1)
    )
    context = ray.data.DataContext.get_current()
    monkeypatch.setattr(context, "custom_execution_callback_classes", [])
    pace_scheduling_loop(context)
    pace_scheduling_loop(context)
    assert context.custom_execution_callback_classes == [SchedulingLoopPacer]
    rows = ray.data.range(8, override_num_blocks=4).map_batches(lambda batch: batch).take_all()
    assert sorted(row["id"] for row in rows) == list(range(8))
    assert steps
