"""The LID challenge's layout: ILSVRC's detection train set with image-level labels from its
XML, and the challenge's val and test masks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from wsss.platform.datasets.adapters.common import (
    AdapterOutput,
    candidate_from_files,
    labels_from_mask,
    register_adapter,
    xml_object_names,
)
from wsss.platform.datasets.manifest import (
    BACKGROUND,
    Candidate,
    DatasetError,
    check_class_list,
)


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
                candidate_from_files(
                    image_path.stem,
                    split,
                    image,
                    str(mask_path.relative_to(src)),
                    lambda p=mask_path: labels_from_mask(p, classes),
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
        yield candidate_from_files(
            image_id,
            "train",
            image,
            None,
            lambda p=xml_path: [synsets.get(w, w) for w in xml_object_names(p)],
            str(xml_path),
        )
