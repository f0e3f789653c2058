"""What a dataset holds: per-class counts, imbalance, the dominant class's co-occurrence and
missing-label rate, object coverage — the properties that make WSSS hard."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from wsss.platform.datasets.images import read_mask
from wsss.platform.datasets.manifest import ORACLE_LABELS, SPLITS, ManifestRow, load_dataset
from wsss.stages.labels import IGNORE_INDEX


def dataset_stats(dataset_dir: Path | str, dominant_class: str = "person") -> dict:
    """Statistics of a dataset folder.

    `missing_label_rate` (share of train images showing the dominant class whose label is
    missing) needs the true labels, which only the synthetic set keeps (`oracle/labels.json`);
    elsewhere it is None. `mean_object_coverage` is the mean share of labelled (non-ignore)
    pixels that belong to an object, over images with masks.
    """
    info, rows = load_dataset(dataset_dir)
    per_class = {split: Counter() for split in SPLITS}
    for row in rows:
        per_class[row.split].update(row.labels)
    train = [r for r in rows if r.split == "train"]
    train_counts = per_class["train"]
    total = sum(train_counts.values())
    top3 = sum(n for _, n in train_counts.most_common(3)) / total if total else None

    oracle_path = info.root / ORACLE_LABELS
    truth: dict[str, list[str]] = (
        json.loads(oracle_path.read_text()) if oracle_path.is_file() else {}
    )

    def true_labels(row: ManifestRow) -> tuple[str, ...] | list[str]:
        # Co-occurrence is a property of the images, not of the (possibly incomplete) labels.
        return truth.get(row.id, row.labels)

    with_dominant = [r for r in rows if dominant_class in true_labels(r)]
    cooccurrence = (
        sum(len(true_labels(r)) > 1 for r in with_dominant) / len(with_dominant)
        if with_dominant
        else None
    )
    missing_rate = None
    showing = [r for r in train if r.id in truth and dominant_class in truth[r.id]]
    if showing:
        missing_rate = sum(dominant_class not in r.labels for r in showing) / len(showing)

    coverages = []
    for row in rows:
        if row.mask is not None:
            mask = read_mask(info.root / row.mask)
            labelled = mask != IGNORE_INDEX
            coverages.append(float((mask[labelled] != 0).mean()) if labelled.any() else 0.0)
    return {
        "name": info.name,
        "format": info.format,
        "root": str(info.root),
        "classes": len(info.object_classes),
        "images": {split: sum(r.split == split for r in rows) for split in SPLITS},
        "rejected": info.rejected,
        "images_per_class": {
            split: {c: per_class[split][c] for c in info.object_classes} for split in SPLITS
        },
        "top3_label_share": top3,
        "dominant_class": dominant_class,
        "dominant_cooccurrence": cooccurrence,
        "missing_label_rate": missing_rate,
        "mean_object_coverage": float(np.mean(coverages)) if coverages else None,
        "mean_labels_per_image": float(np.mean([len(r.labels) for r in rows])) if rows else None,
    }


def format_stats(stats: dict) -> str:
    """A human-readable table of `dataset_stats` output."""

    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = [
        f"dataset {stats['name']} ({stats['format']}) at {stats['root']}",
        "images: "
        + ", ".join(f"{s} {n}" for s, n in stats["images"].items())
        + f"; rejected at import: {stats['rejected']}",
        f"{stats['classes']} object classes; top-3 classes carry "
        f"{percent(stats['top3_label_share'])} of train labels (imbalance)",
        f"'{stats['dominant_class']}' co-occurs with another class in "
        f"{percent(stats['dominant_cooccurrence'])} of its images; its label is missing from "
        f"{percent(stats['missing_label_rate'])} of the train images that show it",
        f"mean object coverage {percent(stats['mean_object_coverage'])} of labelled pixels; "
        f"{stats['mean_labels_per_image'] or 0:.2f} labels per image",
        "",
        f"{'class':<16}" + "".join(f"{s:>8}" for s in SPLITS),
    ]
    per_class = stats["images_per_class"]
    ranked = sorted(per_class["train"], key=lambda c: -per_class["train"][c])
    for name in ranked:
        lines.append(f"{name:<16}" + "".join(f"{per_class[s][name]:>8}" for s in SPLITS))
    return "\n".join(lines)
