"""Class filtering and balancing on hand-made manifest rows with counts worked out by hand."""

from pathlib import Path

import numpy as np
import pytest

from wsss.platform.config import load_config
from wsss.platform.datasets.manifest import DatasetInfo, ManifestRow
from wsss.platform.loaders.balance import (
    balance,
    balance_report,
    binary_task_rows,
    class_histogram,
    remove_classes,
    repeat_to_size,
)
from wsss.platform.runners.classifier import classifier_task


def _row(row_id: str, *labels: str) -> ManifestRow:
    return ManifestRow(id=row_id, image=f"images/{row_id}.jpg", split="train", labels=labels)


# cat 5 (a1 a2 a3 a4 b2), dog 3 (a4 d1 d2), bird 2 (b1 b2).
ROWS = [
    _row("a1", "cat"),
    _row("a2", "cat"),
    _row("a3", "cat"),
    _row("a4", "cat", "dog"),
    _row("d1", "dog"),
    _row("d2", "dog"),
    _row("b1", "bird"),
    _row("b2", "bird", "cat"),
]


def _random_rows(seed: int, count: int = 300) -> list[ManifestRow]:
    """Multi-label rows over 6 classes with Zipf-like frequencies."""
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(6)]
    weights = 1.0 / np.arange(1, 7)
    rows = []
    for index in range(count):
        size = int(rng.integers(1, 4))
        labels = rng.choice(names, size=size, replace=False, p=weights / weights.sum())
        rows.append(_row(f"r{index}", *sorted(labels)))
    return rows


def _ids(rows: list[ManifestRow]) -> list[str]:
    return [row.id for row in rows]


def test_class_histogram_counts_images_per_class() -> None:
    assert class_histogram(ROWS) == {"cat": 5, "dog": 3, "bird": 2}
    assert list(class_histogram(ROWS)) == ["cat", "dog", "bird"]


def test_remove_classes_drops_the_label_and_rows_left_empty() -> None:
    rows = [*ROWS, _row("p1", "person"), _row("p2", "person", "dog")]

    kept = remove_classes(rows, ["person", "bird"])

    assert _ids(kept) == ["a1", "a2", "a3", "a4", "d1", "d2", "b2", "p2"]
    assert kept[-2].labels == ("cat",)
    assert kept[-1].labels == ("dog",)
    assert class_histogram(kept) == {"cat": 5, "dog": 4}
    assert rows[-1].labels == ("person", "dog"), "the input rows must not change"


def test_binary_task_rows_keep_every_image_with_a_0_1_target() -> None:
    pairs = binary_task_rows(ROWS, "dog")

    assert [row.id for row, _ in pairs] == _ids(ROWS)
    assert [target for _, target in pairs] == [0, 0, 0, 1, 1, 1, 0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_downsample_caps_every_class_at_the_rarest_count(seed: int) -> None:
    # Rarest class bird (2) is visited first: b1, b2 kept (cat 1). Then a4, d1, d2: whichever
    # order, dog and cat both reach 2 (a4 first: one of d1/d2; else d1, d2 and one plain cat).
    result = balance(ROWS, "downsample", seed)

    assert class_histogram(result) == {"bird": 2, "cat": 2, "dog": 2}
    assert {"b1", "b2"} <= set(_ids(result))
    assert len(result) in (4, 5)
    assert _ids(result) == [row.id for row in ROWS if row in result], "input order kept"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_upsample_raises_every_class_to_the_most_frequent_count(seed: int) -> None:
    # bird 2 -> 5: repeat b1 (no full co-label) before b2 (cat already full): b1, b2, b1; cat 6.
    # dog 3 -> 5: d1 and d2 (a4 carries full cat) once each.
    result = balance(ROWS, "upsample", seed)

    assert class_histogram(result) == {"cat": 6, "bird": 5, "dog": 5}
    assert result[: len(ROWS)] == ROWS
    assert sorted(_ids(result[len(ROWS) :])) == ["b1", "b1", "b2", "d1", "d2"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_both_caps_and_raises_to_the_median_count(seed: int) -> None:
    # median_low(5, 3, 2) = 3. Downsample: b1 b2 a4 d1 d2 + one plain cat -> bird 2, cat 3, dog 3.
    # Upsample: bird needs one repeat, b1 (b2 carries full cat).
    result = balance(ROWS, "both", seed)

    assert class_histogram(result) == {"bird": 3, "cat": 3, "dog": 3}
    assert len(result) == 7
    assert _ids(result).count("b1") == 2


def test_none_returns_the_rows_unchanged() -> None:
    assert balance(ROWS, "none", 0) == ROWS


@pytest.mark.parametrize("mode", ["downsample", "upsample", "both"])
def test_balance_is_deterministic_per_seed_and_differs_across_seeds(mode: str) -> None:
    rows = _random_rows(0)

    first, again, other = balance(rows, mode, 5), balance(rows, mode, 5), balance(rows, mode, 6)

    assert first == again
    assert first != other


def test_balance_keeps_its_promises_on_many_multi_label_rows() -> None:
    rows = _random_rows(1)
    counts = class_histogram(rows).values()

    down = class_histogram(balance(rows, "downsample", 0))
    up = class_histogram(balance(rows, "upsample", 0))

    assert max(down.values()) == min(counts)
    assert min(up.values()) == max(counts)


def test_balance_report_lists_before_and_after_per_class() -> None:
    report = balance_report(ROWS, balance(ROWS, "downsample", 0))

    lines = report.splitlines()
    assert lines[0].split() == ["class", "before", "after"]
    assert [line.split() for line in lines[1:4]] == [
        ["cat", "5", "2"],
        ["dog", "3", "2"],
        ["bird", "2", "2"],
    ]
    assert lines[4].split()[:2] == ["images", "8"]


def test_repeat_to_size_repeats_whole_then_samples_each_row_at_most_once() -> None:
    rows = [_row("a", "cat"), _row("b", "dog"), _row("c", "cat", "dog")]
    repeated = repeat_to_size(rows, 8, seed=0)
    # 8 = 2 whole copies (6 rows) + 2 of the 3 rows drawn without replacement
    assert len(repeated) == 8
    assert repeated[:6] == rows * 2
    assert len({row.id for row in repeated[6:]}) == 2
    assert repeated == repeat_to_size(rows, 8, seed=0)


def test_repeat_to_size_leaves_a_long_enough_or_empty_set_alone() -> None:
    rows = [_row("a", "cat"), _row("b", "dog")]
    assert repeat_to_size(rows, 2, seed=0) == rows
    assert repeat_to_size(rows, 1, seed=0) == rows
    assert repeat_to_size([], 5, seed=0) == []


@pytest.mark.parametrize(("balanced_epoch", "epoch_rows"), [("balanced", 7), ("train_size", 8)])
def test_step1_trains_on_the_balanced_rows_repeated_to_the_train_size_when_asked(
    balanced_epoch: str, epoch_rows: int, tmp_path: Path
) -> None:
    # `both` keeps 7 of the 8 train rows (above); `train_size` repeats them to the split's 8.
    config = load_config("smoke")
    config.data.balance = "both"
    config.data.balanced_epoch = balanced_epoch
    info = DatasetInfo("hand", "synthetic", tmp_path, ["background", "cat", "dog", "bird"])
    val = ManifestRow(id="v1", image="images/v1.jpg", split="val", labels=("dog",))
    task, names = classifier_task(config, info, [*ROWS, val])

    assert names == ["cat", "dog", "bird"]
    assert len(task.train_data.items) == epoch_rows
    assert len(task.val_data.items) == 1
