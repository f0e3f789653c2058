"""The synthetic set keeps the promises that make it a fair WSSS test, measured on a set."""

import json
from pathlib import Path

import numpy as np
import pytest

from wsss.platform.config import SyntheticConfig, load_config
from wsss.platform.datasets.images import read_mask, read_rgb
from wsss.platform.datasets.manifest import (
    ORACLE_LABELS,
    ORACLE_MASK_DIR,
    load_dataset,
    with_oracle_masks,
)
from wsss.platform.datasets.synthetic.design import design_classes
from wsss.platform.datasets.synthetic.drawing import draw_image
from wsss.platform.datasets.synthetic.writing import SUMMARY_FILE, build_synthetic_dataset
from wsss.stages.labels import IGNORE_INDEX

CONFIG = SyntheticConfig(
    num_classes=10, image_size=64, train_images=600, val_images=60, test_images=30, workers=2
)


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    summary = build_synthetic_dataset(out, CONFIG, seed=3)
    return out, summary


def test_layout_is_voc_and_imports_without_rejects(synthetic_set):
    out, _ = synthetic_set
    for folder in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        assert (out / folder).is_dir()
    info, _ = load_dataset(out)
    assert info.rejected == 0
    assert info.counts == {"train": 600, "val": 60, "test": 30}
    assert len(info.object_classes) == 10


def test_train_has_image_labels_only_and_val_test_have_masks(synthetic_set):
    out, _ = synthetic_set
    _, rows = load_dataset(out)
    assert all(r.mask is None for r in rows if r.split == "train")
    assert all(r.mask is not None for r in rows if r.split != "train")
    # The upper-bound masks of train images exist, but outside anything the manifest names.
    assert len(list((out / ORACLE_MASK_DIR).glob("*.png"))) == 600
    # Only scoring rows name them, and only for train.
    scoring = with_oracle_masks(rows, out)
    assert [r.mask for r in scoring if r.split != "train"] == [
        r.mask for r in rows if r.split != "train"
    ]
    train = [r for r in scoring if r.split == "train"]
    assert all(r.mask == f"oracle/SegmentationClass/{r.id}.png" for r in train)
    (out / ORACLE_MASK_DIR / f"{train[0].id}.png").rename(out / "aside.png")
    assert with_oracle_masks(rows, out)[0].mask is None
    (out / "aside.png").rename(out / ORACLE_MASK_DIR / f"{train[0].id}.png")


def test_val_masks_agree_with_complete_labels_and_mark_borders_ignore(synthetic_set):
    out, _ = synthetic_set
    info, rows = load_dataset(out)
    ignore_share = []
    for row in (r for r in rows if r.split != "train"):
        mask = read_mask(out / row.mask)
        present = {info.classes[v] for v in np.unique(mask) if v not in (0, IGNORE_INDEX)}
        assert present == set(row.labels), row.id
        ignore_share.append((mask == IGNORE_INDEX).mean())
    assert 0.01 < np.mean(ignore_share) < 0.2


def test_imbalance_top_three_classes_carry_about_half_the_labels(synthetic_set):
    _, summary = synthetic_set
    assert 0.4 <= summary["top3_label_share"] <= 0.65
    counts = summary["images_per_class"]["train"]
    mains = [d.name for d in design_classes(CONFIG) if d.kind == "main"]
    assert counts[mains[0]] > 4 * counts[mains[-1]]  # Zipf: the head dwarfs the tail


def test_dominant_class_cooccurs_and_its_label_goes_missing(synthetic_set):
    out, summary = synthetic_set
    assert 0.7 <= summary["dominant_cooccurrence"] <= 0.9
    assert 0.3 <= summary["missing_label_rate"] <= 0.5
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
    truth = json.loads((out / ORACLE_LABELS).read_text())
    _, rows = load_dataset(out)
    for row in (r for r in rows if r.split == "train"):
        assert set(row.labels) <= set(truth[row.id])
        assert set(truth[row.id]) - set(row.labels) <= {"person"}  # only person goes missing


def test_accessories_sit_on_the_dominant_class(synthetic_set):
    out, _ = synthetic_set
    _, rows = load_dataset(out)
    designs = design_classes(CONFIG)
    person = next(d.index for d in designs if d.kind == "dominant")
    accessories = {d.index for d in designs if d.kind == "accessory"}
    touching, total = 0, 0
    for row in (r for r in rows if r.split != "train"):
        mask = read_mask(out / row.mask)
        for index in accessories & set(np.unique(mask).tolist()):
            total += 1
            ys, xs = np.nonzero(mask == index)
            y0, y1, x0, x1 = ys.min() - 3, ys.max() + 4, xs.min() - 3, xs.max() + 4
            touching += bool((mask[max(y0, 0) : y1, max(x0, 0) : x1] == person).any())
    assert total > 0 and touching / total > 0.8


def test_classes_share_shapes_and_parts_pairwise_but_never_both():
    designs = [d for d in design_classes(SyntheticConfig(num_classes=30)) if d.kind == "main"]
    pairs = [(d.shape, d.part_colour, d.part_pattern) for d in designs]
    assert len(set(pairs)) == len(pairs)
    for d in designs:
        assert any(o.shape == d.shape for o in designs if o is not d)
        assert any((o.part_colour, o.part_pattern) == (d.part_colour, d.part_pattern)
                   for o in designs if o is not d)  # fmt: skip


def test_discriminative_part_is_a_small_share_of_the_object():
    config = SyntheticConfig(image_size=96)
    designs = design_classes(config)
    part_colours = {d.part_colour for d in designs if d.kind == "main"}
    shares = []
    for seed in range(40):
        drawn = draw_image(designs, config, np.random.default_rng(seed))
        image = drawn.image.astype(int)
        objects = (drawn.mask != 0) & (drawn.mask != IGNORE_INDEX)
        near_part = np.zeros(objects.shape, bool)
        for colour in part_colours:
            near_part |= np.abs(image - np.array(colour)).sum(-1) < 60
        if objects.any():
            shares.append((near_part & objects).sum() / objects.sum())
    assert 0.02 < np.mean(shares) < 0.3


def test_generation_is_deterministic_per_seed_whatever_the_worker_count(tmp_path: Path):
    config = SyntheticConfig(image_size=48, train_images=40, val_images=8, test_images=8)
    build_synthetic_dataset(tmp_path / "a", config.model_copy(update={"workers": 1}), seed=5)
    build_synthetic_dataset(tmp_path / "b", config.model_copy(update={"workers": 2}), seed=5)
    build_synthetic_dataset(tmp_path / "c", config, seed=6)
    for name in ("train_000007", "val_000003"):
        a = read_rgb(tmp_path / "a/JPEGImages" / f"{name}.jpg")
        assert np.array_equal(a, read_rgb(tmp_path / "b/JPEGImages" / f"{name}.jpg"))
        assert not np.array_equal(a, read_rgb(tmp_path / "c/JPEGImages" / f"{name}.jpg"))
    assert (tmp_path / "a/manifest.jsonl").read_text() == (
        tmp_path / "b/manifest.jsonl"
    ).read_text()


def test_two_hundred_classes_fit():
    config = load_config("demo", overrides=["data.synthetic.num_classes=200"]).data.synthetic
    designs = design_classes(config)
    assert len(designs) == 200 and len({d.name for d in designs}) == 200
