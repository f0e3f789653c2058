"""Adapters from known on-disk layouts to the manifest + class list.

Each adapter reads a layout and proposes `Candidate` rows; `import_dataset` validates them
with `check_candidates` and writes the dataset folder. An adapter never stops at one bad
file: it marks the candidate with the problem and goes on.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss.platform.datasets.images import IGNORE_INDEX, ImageError, read_mask
from wsss.platform.datasets.manifest import (
    BACKGROUND,
    REJECTED_FILE,
    SPLITS,
    Candidate,
    DatasetError,
    DatasetInfo,
    ManifestRow,
    Reject,
    check_candidates,
    check_class_list,
    write_dataset,
)

VOC_CLASSES = (
    BACKGROUND, "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


@dataclass
class AdapterOutput:
    classes: list[str]
    candidates: list[Candidate]


Adapter = Callable[..., AdapterOutput]
ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str) -> Callable[[Adapter], Adapter]:
    def add(function: Adapter) -> Adapter:
        ADAPTERS[name] = function
        return function

    return add


def get_adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        raise DatasetError(f"unknown dataset format {name!r}; valid formats: {', '.join(ADAPTERS)}")
    return ADAPTERS[name]


def _read_class_file(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if names and names[0] != BACKGROUND:
        names = [BACKGROUND, *names]
    return check_class_list(names, str(path))


def _labels_from_mask(path: Path, classes: list[str]) -> list[str]:
    """Object class names present in a class-index mask (background and 255 excluded)."""
    values = {int(v) for v in np.unique(read_mask(path))} - {0, IGNORE_INDEX}
    unknown = sorted(v for v in values if v >= len(classes))
    if unknown:
        raise ImageError(path, f"class indices {unknown} outside 0..{len(classes) - 1} and 255")
    return [classes[v] for v in sorted(values)]


def _xml_object_names(path: Path) -> list[str]:
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise ImageError(path, f"annotation is not valid XML: {exc}") from None
    return [name.text.strip() for name in tree.getroot().iterfind("object/name") if name.text]


def _candidate_from_files(
    image_id: str,
    split: str,
    image: str,
    mask: str | None,
    label_source: Callable[[], list[str]],
    source: str,
) -> Candidate:
    try:
        labels = label_source()
    except (ImageError, OSError) as exc:
        return Candidate(image_id, image, split, [], mask, source, problem=str(exc))
    return Candidate(image_id, image, split, labels, mask, source)


@register_adapter("voc")
def read_voc(src: Path, labels_from: str = "auto", split_dir: str = "ImageSets/Segmentation"):
    """PASCAL VOC 2012: JPEGImages/, SegmentationClass/ (palette PNG, 255 = ignore),
    ImageSets/Segmentation/{train,val,test}.txt, Annotations/*.xml.

    Image-level labels come from the mask where one exists (`labels_from=auto`), else from the
    XML objects; `masks` or `xml` forces one source. `classes.txt` beside the layout replaces
    the 20 VOC classes (the built-in synthetic set uses this).
    """
    if labels_from not in ("auto", "masks", "xml"):
        raise DatasetError(f"labels_from must be auto, masks or xml, got {labels_from!r}")
    class_file = src / "classes.txt"
    classes = _read_class_file(class_file) if class_file.is_file() else list(VOC_CLASSES)
    lists = {split: src / split_dir / f"{split}.txt" for split in SPLITS}
    if not any(path.is_file() for path in lists.values()):
        raise DatasetError(f"{src / split_dir}: no train.txt, val.txt or test.txt split list")
    candidates = []
    for split, list_path in lists.items():
        if not list_path.is_file():
            continue
        for line_number, line in enumerate(list_path.read_text().splitlines(), start=1):
            image_id = line.strip()
            if not image_id:
                continue
            source = f"{list_path}:{line_number}"
            image = f"JPEGImages/{image_id}.jpg"
            mask_path = src / "SegmentationClass" / f"{image_id}.png"
            xml_path = src / "Annotations" / f"{image_id}.xml"
            mask = f"SegmentationClass/{image_id}.png" if mask_path.exists() else None
            use_mask = labels_from == "masks" or (labels_from == "auto" and mask is not None)
            if use_mask and mask is None:
                problem = f"missing mask {mask_path}"
                candidates.append(Candidate(image_id, image, split, [], None, source, problem))
                continue
            if not use_mask and not xml_path.is_file():
                problem = f"missing annotation {xml_path}"
                candidates.append(Candidate(image_id, image, split, [], mask, source, problem))
                continue
            candidates.append(
                _candidate_from_files(
                    image_id,
                    split,
                    image,
                    mask,
                    (lambda p=mask_path: _labels_from_mask(p, classes))
                    if use_mask
                    else (lambda p=xml_path: _xml_object_names(p)),
                    source,
                )
            )
    return AdapterOutput(classes, candidates)


@register_adapter("synthetic")
def read_synthetic(src: Path, **options: Any) -> AdapterOutput:
    """The built-in synthetic set: the VOC layout with its own `classes.txt`."""
    if not (src / "classes.txt").is_file():
        raise DatasetError(f"{src / 'classes.txt'} is missing: not a `wsss data synth` folder")
    return read_voc(src, **options)


def _lid_classes(src: Path, synset_map: Path) -> tuple[list[str], dict[str, str]]:
    """Class list and synset -> name map from ILSVRC's `map_det.txt` ("wnid index name")."""
    if not synset_map.is_file():
        raise DatasetError(
            f"{synset_map} is missing: the LID adapter needs ILSVRC's map_det.txt "
            "(lines 'n02672831 1 accordion'); pass synset_map=PATH"
        )
    by_index: dict[int, str] = {}
    synsets: dict[str, str] = {}
    for number, line in enumerate(synset_map.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not fields[1].isdigit():
            raise DatasetError(f"{synset_map}:{number}: expected 'wnid index name', got {line!r}")
        wnid, index, name = fields
        by_index[int(index)] = name
        synsets[wnid] = name
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise DatasetError(f"{synset_map}: class indices must run 1..N without gaps")
    classes = check_class_list([BACKGROUND, *(by_index[i] for i in sorted(by_index))], str(src))
    return classes, synsets


@register_adapter("lid")
def read_lid(
    src: Path,
    synset_map: str = "map_det.txt",
    train_labels: str | None = None,
    idx_to_name: str = "idx_to_name.json",
    split_images: str = "LID_track1/{split}",
    split_masks: str = "LID_track1_annotations/{split}",
) -> AdapterOutput:
    """The LID challenge layout (ILSVRC DET training images, val/test with 201-class masks).

    Train labels come from ILSVRC/Annotations/DET/train/**.xml (synset ids mapped through
    map_det.txt), or, with `train_labels=FILE`, from a JSON list of
    `[path under ILSVRC/Data/DET/train without extension, [1-based class ids]]` whose ids are
    named by `idx_to_name.json` (the paper's authors kept their labels this way). Val and test
    images (`*.JPEG`) have palette masks of the same stem (0 = background).
    """
    train_root = "ILSVRC/Data/DET/train"
    if train_labels is None:
        classes, synsets = _lid_classes(src, src / synset_map)
        candidates = list(_lid_train_from_xml(src, train_root, synsets))
    else:
        names_path = src / idx_to_name
        labels_path = src / train_labels
        for path in (names_path, labels_path):
            if not path.is_file():
                raise DatasetError(f"{path} is missing (LID labels list and its idx_to_name)")
        names = json.loads(names_path.read_text())
        ordered = [names[str(i)] for i in range(1, len(names) + 1)]
        classes = check_class_list([BACKGROUND, *ordered], str(names_path))
        candidates = []
        for number, entry in enumerate(json.loads(labels_path.read_text()), start=1):
            source = f"{labels_path}[{number - 1}]"
            try:
                stem, ids = entry
                labels = [classes[int(i)] if 0 < int(i) < len(classes) else f"#{i}" for i in ids]
            except (TypeError, ValueError):
                problem = f"malformed entry {entry!r}"
                candidates.append(
                    Candidate(f"entry{number}", "", "train", [], None, source, problem)
                )
                continue
            candidates.append(
                Candidate(
                    stem.replace("/", "_"),
                    f"{train_root}/{stem}.JPEG",
                    "train",
                    labels,
                    None,
                    source,
                )
            )
    for split in ("val", "test"):
        image_dir = src / split_images.format(split=split)
        mask_dir = src / split_masks.format(split=split)
        for image_path in sorted(image_dir.glob("*.JPEG")):
            mask_path = mask_dir / f"{image_path.stem}.png"
            image = str(image_path.relative_to(src))
            if not mask_path.is_file():
                problem = f"missing mask {mask_path}"
                source = str(image_path)
                candidates.append(
                    Candidate(image_path.stem, image, split, [], None, source, problem)
                )
                continue
            candidates.append(
                _candidate_from_files(
                    image_path.stem,
                    split,
                    image,
                    str(mask_path.relative_to(src)),
                    lambda p=mask_path: _labels_from_mask(p, classes),
                    str(image_path),
                )
            )
    return AdapterOutput(classes, candidates)


def _lid_train_from_xml(src: Path, train_root: str, synsets: dict[str, str]) -> Iterator:
    annotation_root = src / "ILSVRC/Annotations/DET/train"
    for xml_path in sorted(annotation_root.rglob("*.xml")):
        relative = xml_path.relative_to(annotation_root).with_suffix(".JPEG")
        image_id = str(relative.with_suffix("")).replace("/", "_")
        image = f"{train_root}/{relative}"
        yield _candidate_from_files(
            image_id,
            "train",
            image,
            None,
            lambda p=xml_path: [synsets.get(w, w) for w in _xml_object_names(p)],
            str(xml_path),
        )


def _split_labels(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value or "")
    separator = "|" if "|" in text else ";"
    return [part.strip() for part in text.split(separator) if part.strip()]


@register_adapter("folder")
def read_folder(src: Path, labels: str | None = None, classes: str = "classes.txt"):
    """A plain image folder plus a label table: `labels.csv` or `labels.jsonl` in `src`.

    Columns: `image` and `labels` (required; CSV labels separated by ';' or '|'), `id`
    (default: the image's stem), `split` (default train), `mask` (optional). Paths are
    relative to `src`. `classes.txt` fixes the class list (then unknown names are rejected);
    without it the classes are the sorted union of all labels.
    """
    if labels is None:
        found = [name for name in ("labels.csv", "labels.jsonl") if (src / name).is_file()]
        if not found:
            raise DatasetError(f"{src}: no labels.csv or labels.jsonl (or pass labels=FILE)")
        labels = found[0]
    table_path = src / labels
    if not table_path.is_file():
        raise DatasetError(f"{table_path} does not exist")
    if table_path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(table_path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    records.append((f"{table_path}:{number}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    records.append((f"{table_path}:{number}", {"_problem": f"bad JSON: {exc}"}))
    else:
        with table_path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"image", "labels"} - set(reader.fieldnames or ())
            if missing:
                raise DatasetError(f"{table_path}: missing column(s) {sorted(missing)}")
            records = [(f"{table_path}:{n}", row) for n, row in enumerate(reader, start=2)]
    candidates = []
    for source, record in records:
        image = str(record.get("image") or "")
        problem = record.get("_problem") or (None if image else "no 'image' field")
        image_id = str(record.get("id") or Path(image).stem)
        candidates.append(
            Candidate(
                id=image_id,
                image=image,
                split=str(record.get("split") or "train"),
                labels=_split_labels(record.get("labels")),
                mask=record.get("mask") or None,
                source=source,
                problem=problem,
            )
        )
    class_path = src / classes
    if class_path.is_file():
        class_list = _read_class_file(class_path)
    else:
        union = sorted({label for c in candidates for label in c.labels} - {BACKGROUND})
        class_list = check_class_list([BACKGROUND, *union], str(table_path))
    return AdapterOutput(class_list, candidates)


def import_dataset(
    fmt: str,
    src: Path,
    out: Path,
    name: str | None = None,
    workers: int = 1,
    strict: bool = False,
    **options: Any,
) -> tuple[DatasetInfo, list[ManifestRow], list[Reject]]:
    """Read `src` in layout `fmt`, validate every row, and write the dataset folder `out`.

    The good rows and the rejects (with reasons) are always written; with `strict`, any
    reject then raises `DatasetError`.
    """
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src} is not a folder")
    adapter = get_adapter(fmt)
    try:
        output = adapter(src, **options)
    except TypeError as exc:
        raise DatasetError(f"format {fmt!r}: bad option ({exc})") from None
    rows, rejects = check_candidates(src, output.classes, output.candidates, workers=workers)
    info = DatasetInfo(
        name=name or src.resolve().name, format=fmt, root=src, classes=output.classes
    )
    write_dataset(Path(out), info, rows, rejects)
    if strict and rejects:
        listed = "\n  ".join(f"{r.file}: {r.reason}" for r in rejects[:20])
        raise DatasetError(
            f"--strict: {len(rejects)} row(s) rejected (all of them in "
            f"{Path(out) / REJECTED_FILE}):\n  {listed}"
        )
    return info, rows, rejects
