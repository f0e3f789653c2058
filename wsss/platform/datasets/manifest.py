"""The data contract: a manifest (one row per image) plus a class list.

A dataset folder holds `dataset.json` (name, source format, root, classes, counts),
`manifest.jsonl` (rows: id, image, split, labels, mask; paths relative to the root) and
`rejected.jsonl` (what an import refused, with the file and the reason). Adapters propose
`Candidate` rows; `check_candidates` is the one place that decides what is a good row.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wsss.platform.datasets.images import ImageError, image_size, read_mask
from wsss.stages.labels import IGNORE_INDEX

SPLITS = ("train", "val", "test")
BACKGROUND = "background"
DATASET_FILE = "dataset.json"
MANIFEST_FILE = "manifest.jsonl"
REJECTED_FILE = "rejected.jsonl"
# Where a data set may keep what the weak pipeline never reads: the train split's true masks
# and labels (the built-in set does). Only pseudo masks are scored against them.
ORACLE_DIR = Path("oracle")
ORACLE_MASK_DIR = ORACLE_DIR / "SegmentationClass"
ORACLE_LABELS = ORACLE_DIR / "labels.json"


class DatasetError(ValueError):
    """A dataset folder or manifest cannot be used; the message names the file and field."""


@dataclass(frozen=True)
class ManifestRow:
    """One image: paths are relative to the dataset root; labels are class names."""

    id: str
    image: str
    split: str
    labels: tuple[str, ...]
    mask: str | None = None


def with_oracle_masks(rows: Sequence[ManifestRow], root: Path) -> list[ManifestRow]:
    """`rows` with each train row's mask set to its true mask in `ORACLE_MASK_DIR` under
    `root`, where the data set keeps one: rows to score pseudo masks with, never to train on."""
    oracle = Path(root) / ORACLE_MASK_DIR
    return [
        replace(row, mask=str(ORACLE_MASK_DIR / f"{row.id}.png"))
        if row.split == "train" and (oracle / f"{row.id}.png").is_file()
        else row
        for row in rows
    ]


@dataclass
class Candidate:
    """A row an adapter proposes; `problem` is set when the adapter already found it bad."""

    id: str
    image: str
    split: str
    labels: list[str]
    mask: str | None = None
    source: str = ""
    problem: str | None = None


@dataclass(frozen=True)
class Reject:
    id: str
    file: str
    reason: str


@dataclass
class DatasetInfo:
    name: str
    format: str
    root: Path
    classes: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    rejected: int = 0

    @property
    def object_classes(self) -> list[str]:
        """Class names without background, in class-index order (index = position + 1)."""
        return self.classes[1:]


def check_class_list(classes: Sequence[str], source: str) -> list[str]:
    """Validate a class list: background first, then unique non-empty object class names."""
    names = [c.strip() for c in classes]
    if not names or names[0] != BACKGROUND:
        raise DatasetError(f"{source}: the class list must start with {BACKGROUND!r}")
    duplicates = sorted(name for name, n in Counter(names).items() if n > 1)
    if duplicates:
        raise DatasetError(f"{source}: duplicate class names {duplicates}")
    if any(not name for name in names):
        raise DatasetError(f"{source}: empty class name")
    if len(names) > IGNORE_INDEX:
        raise DatasetError(f"{source}: {len(names)} classes do not fit in 8-bit masks (max 255)")
    return names


def _inside(root: Path, relative: str) -> Path | None:
    """The resolved file for `relative`, or None if it escapes `root`."""
    if Path(relative).is_absolute():
        return None
    resolved = (root / relative).resolve()
    return resolved if resolved.is_relative_to(root.resolve()) else None


def _check_files(root: Path, candidate: Candidate, num_classes: int) -> str | None:
    """The reason the candidate's image or mask is unusable, or None."""
    image_path = _inside(root, candidate.image)
    if image_path is None:
        return f"image path {candidate.image!r} escapes the dataset root {root}"
    try:
        size = image_size(image_path)
    except ImageError as exc:
        return f"image {exc.path}: {exc.reason}"
    if candidate.mask is None:
        return None
    mask_path = _inside(root, candidate.mask)
    if mask_path is None:
        return f"mask path {candidate.mask!r} escapes the dataset root {root}"
    try:
        mask = read_mask(mask_path)
    except ImageError as exc:
        return f"mask {exc.path}: {exc.reason}"
    if mask.shape != size:
        return (
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{size[1]}x{size[0]} (width x height)"
        )
    values = np.unique(mask)
    bad = [int(v) for v in values if v >= num_classes and v != IGNORE_INDEX]
    if bad:
        return f"mask {mask_path} holds class indices {bad} outside 0..{num_classes - 1} and 255"
    return None


def _check_files_chunk(args: tuple[Path, list[Candidate], int]) -> list[str | None]:
    root, chunk, num_classes = args
    return [_check_files(root, c, num_classes) for c in chunk]


def check_candidates(
    root: Path, classes: Sequence[str], candidates: Iterable[Candidate], workers: int = 1
) -> tuple[list[ManifestRow], list[Reject]]:
    """Split candidates into good rows and rejects, each reject with its file and reason.

    Checks: problems the adapter found, duplicate ids, unknown split, empty label set, labels
    naming unknown classes, paths escaping the root, missing/empty/corrupt/truncated images and
    masks, mask size differing from its image, mask values outside the class range. Decoding
    runs in `workers` processes; nothing stops at the first bad file.
    """
    known = set(classes[1:])
    seen: dict[str, str] = {}
    pending: list[Candidate] = []
    rejects: list[Reject] = []
    for candidate in candidates:
        where = candidate.source or candidate.image
        reason = candidate.problem
        if reason is None and candidate.id in seen:
            reason = f"duplicate id {candidate.id!r} (first seen in {seen[candidate.id]})"
        if reason is None and candidate.split not in SPLITS:
            reason = f"unknown split {candidate.split!r}; allowed: {', '.join(SPLITS)}"
        if reason is None and not candidate.labels:
            reason = "empty label set: an image needs at least one object class"
        unknown = sorted(set(candidate.labels) - known)
        if reason is None and unknown:
            reason = f"unknown class {', '.join(map(repr, unknown))}; not in the class list"
        if reason is None:
            seen[candidate.id] = where
            pending.append(candidate)
        else:
            rejects.append(Reject(candidate.id, where, reason))

    chunk_size = 64
    chunks = [
        (root, pending[i : i + chunk_size], len(classes))
        for i in range(0, len(pending), chunk_size)
    ]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            reasons = [r for chunk in pool.map(_check_files_chunk, chunks) for r in chunk]
    else:
        reasons = [r for chunk in chunks for r in _check_files_chunk(chunk)]

    rows = []
    order = {name: index for index, name in enumerate(classes)}
    for candidate, reason in zip(pending, reasons, strict=True):
        if reason is not None:
            rejects.append(Reject(candidate.id, candidate.source or candidate.image, reason))
            continue
        labels = tuple(sorted(set(candidate.labels), key=order.__getitem__))
        rows.append(
            ManifestRow(candidate.id, candidate.image, candidate.split, labels, candidate.mask)
        )
    return rows, rejects


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary name, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def write_dataset(
    out_dir: Path, info: DatasetInfo, rows: Sequence[ManifestRow], rejects: Sequence[Reject]
) -> DatasetInfo:
    """Write dataset.json, manifest.jsonl and rejected.jsonl into `out_dir`, each atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info.counts = {split: sum(r.split == split for r in rows) for split in SPLITS}
    info.rejected = len(rejects)
    root = info.root.resolve()
    stored_root = (
        os.path.relpath(root, out_dir.resolve())
        if root.is_relative_to(out_dir.resolve())
        else str(root)
    )
    meta = {
        "name": info.name,
        "format": info.format,
        "root": stored_root,
        "classes": info.classes,
        "counts": info.counts,
        "rejected": info.rejected,
    }
    write_atomic(out_dir / MANIFEST_FILE, "".join(json.dumps(asdict(r)) + "\n" for r in rows))
    write_atomic(out_dir / REJECTED_FILE, "".join(json.dumps(asdict(r)) + "\n" for r in rejects))
    # dataset.json last: its presence means the manifest beside it is complete.
    write_atomic(out_dir / DATASET_FILE, json.dumps(meta, indent=2) + "\n")
    return info


def load_dataset(dataset_dir: Path | str) -> tuple[DatasetInfo, list[ManifestRow]]:
    """Read a dataset folder written by `write_dataset`; errors name the file, line and field."""
    folder = Path(dataset_dir)
    meta_path = folder / DATASET_FILE
    if not meta_path.is_file():
        raise DatasetError(
            f"{folder} is not a dataset folder: {DATASET_FILE} is missing "
            "(create one with `wsss data synth` or `wsss data import`)"
        )
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        info = DatasetInfo(
            name=meta["name"],
            format=meta["format"],
            root=(folder / meta["root"]).resolve(),
            classes=check_class_list(meta["classes"], str(meta_path)),
            counts=meta.get("counts", {}),
            rejected=meta.get("rejected", 0),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{meta_path}: malformed ({exc!r})") from None
    rows = []
    manifest_path = folder / MANIFEST_FILE
    with manifest_path.open() as lines:
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                rows.append(
                    ManifestRow(
                        id=record["id"],
                        image=record["image"],
                        split=record["split"],
                        labels=tuple(record["labels"]),
                        mask=record.get("mask"),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{manifest_path}:{number}: malformed row ({exc!r})") from None
    return info, rows


def read_rejects(dataset_dir: Path | str) -> list[Reject]:
    path = Path(dataset_dir) / REJECTED_FILE
    if not path.is_file():
        return []
    return [Reject(**json.loads(line)) for line in path.read_text().splitlines() if line]
