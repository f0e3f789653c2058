"""Class filtering and balancing of manifest rows (paper 3.1: remove `person`, downsample).

Counts are images per class: an image labelled {cat, dog} counts once for each. Every function
returns a new list and leaves its input alone; random choices come from `seed` only, so the same
rows and seed give the same result on every machine.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Literal

import numpy as np

from wsss.platform.datasets.manifest import ManifestRow

BalanceMode = Literal["none", "downsample", "upsample", "both"]


def class_histogram(rows: Sequence[ManifestRow]) -> dict[str, int]:
    """Images per class, most frequent first (ties by name); classes with no image are absent."""
    counts = Counter(label for row in rows for label in set(row.labels))
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def remove_classes(rows: Sequence[ManifestRow], classes: Collection[str]) -> list[ManifestRow]:
    """Rows with `classes` dropped from their labels; rows left without any label are dropped."""
    removed = set(classes)
    kept = []
    for row in rows:
        labels = tuple(label for label in row.labels if label not in removed)
        if labels:
            kept.append(row if labels == row.labels else dataclasses.replace(row, labels=labels))
    return kept


def binary_task_rows(
    rows: Sequence[ManifestRow], class_name: str
) -> list[tuple[ManifestRow, Literal[0, 1]]]:
    """Every row with target 1 if it carries `class_name`, else 0 (the separate binary task)."""
    return [(row, 1 if class_name in row.labels else 0) for row in rows]


def _random_ranks(count: int, rng: np.random.Generator) -> list[int]:
    return rng.permutation(count).tolist()


def _downsample(rows: Sequence[ManifestRow], cap: int, seed: int) -> list[ManifestRow]:
    """Greedy: keep a row iff every label it carries is still under `cap`.

    Rows are visited by the count of the rarest class they carry (ascending), ties in a seeded
    random order, so images of rare classes are decided before common classes fill up. No class
    ends above `cap`; the rarest class keeps all its images; a class may end below `cap` when its
    remaining images also carry a class that is already full.
    """
    histogram = class_histogram(rows)
    ranks = _random_ranks(len(rows), np.random.default_rng(seed))
    order = sorted(
        range(len(rows)),
        key=lambda i: (min((histogram[label] for label in rows[i].labels), default=0), ranks[i]),
    )
    counts: Counter[str] = Counter()
    keep = [False] * len(rows)
    for index in order:
        labels = set(rows[index].labels)
        if all(counts[label] < cap for label in labels):
            counts.update(labels)
            keep[index] = True
    return [row for row, kept in zip(rows, keep, strict=True) if kept]


def _upsample(rows: Sequence[ManifestRow], target: int, seed: int) -> list[ManifestRow]:
    """Repeat images until every class has at least `target` images.

    The class with the fewest images (ties by name) is raised to `target` by repeating its
    images in turn; then the next one, with counts that include the labels the repeats brought
    along. Within a class, images whose other labels are already at `target` are repeated last,
    ties in a seeded random order. Each class is raised once and counts only grow, so every class
    ends at `target` or above (above only through co-occurring labels).
    """
    rng = np.random.default_rng(seed)
    counts = Counter(class_histogram(rows))
    repeats: list[ManifestRow] = []
    while counts and min(counts.values()) < target:
        name = min(counts, key=lambda label: (counts[label], label))
        candidates = [row for row in rows if name in row.labels]
        ranks = _random_ranks(len(candidates), rng)
        order = sorted(
            range(len(candidates)),
            key=lambda i: (
                sum(counts[label] >= target for label in candidates[i].labels if label != name),
                ranks[i],
            ),
        )
        for step in range(target - counts[name]):
            row = candidates[order[step % len(order)]]
            repeats.append(row)
            counts.update(set(row.labels))
    return [*rows, *repeats]


def balance(rows: Sequence[ManifestRow], mode: BalanceMode, seed: int) -> list[ManifestRow]:
    """Rows rebalanced over classes; deterministic for a given `seed`.

    - "none": the rows unchanged.
    - "downsample" (the paper's): cap every class at the image count of the rarest class.
    - "upsample" (the paper's future work): repeat images until every class reaches the count of
      the most frequent one.
    - "both": cap at the median class count (`statistics.median_low`, an actual class's count),
      then upsample to it.

    Multi-label rules are those of `_downsample` and `_upsample`. Kept rows stay in input order;
    repeats follow them, as the same `ManifestRow` (same id: it is the same image, and
    augmentation makes each showing differ), so shuffle downstream and run per-id outputs (CAMs)
    on unbalanced rows. Rows without labels count for no class and are always kept once.
    """
    histogram = class_histogram(rows)
    if mode == "none" or not histogram:
        return list(rows)
    counts = list(histogram.values())
    if mode == "downsample":
        return _downsample(rows, min(counts), seed)
    if mode == "upsample":
        return _upsample(rows, max(counts), seed)
    if mode == "both":
        median = statistics.median_low(counts)
        return _upsample(_downsample(rows, median, seed), median, seed)
    raise ValueError(f"unknown balance mode {mode!r}; allowed: none, downsample, upsample, both")


def repeat_to_size(rows: Sequence[ManifestRow], size: int, seed: int) -> list[ManifestRow]:
    """`rows` repeated whole as often as `size` allows, then a seeded sample of them (each row
    at most once) up to `size` rows; `rows` unchanged when already that long or empty.

    A balanced set shown this way each epoch keeps its class shares while the number of
    training steps follows the size of the data set rather than what balancing kept of it.
    """
    if not rows or len(rows) >= size:
        return list(rows)
    whole, rest = divmod(size, len(rows))
    sample = np.random.default_rng(seed).choice(len(rows), size=rest, replace=False)
    return [*rows * whole, *(rows[i] for i in sorted(sample))]


def balance_report(before: Sequence[ManifestRow], after: Sequence[ManifestRow]) -> str:
    """A text table: images per class before and after, most frequent class (before) first."""
    histogram_before = class_histogram(before)
    histogram_after = class_histogram(after)
    names = [*histogram_before, *(n for n in histogram_after if n not in histogram_before)]
    width = max([len("images"), *(len(name) for name in names)])

    def line(name: str, first: object, second: object) -> str:
        return f"{name:<{width}}  {first:>8}  {second:>8}"

    lines = [line("class", "before", "after")]
    lines += [line(n, histogram_before.get(n, 0), histogram_after.get(n, 0)) for n in names]
    lines.append(line("images", len(before), len(after)))
    return "\n".join(lines)
