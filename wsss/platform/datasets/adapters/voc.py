"""PASCAL VOC 2012's layout, and the built-in synthetic set written in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss.platform.datasets.adapters.common import (
    AdapterOutput,
    candidate_from_files,
    labels_from_mask,
    read_class_file,
    register_adapter,
    xml_object_names,
)
from wsss.platform.datasets.manifest import (
    BACKGROUND,
    SPLITS,
    Candidate,
    DatasetError,
)

VOC_CLASSES = (
    BACKGROUND, "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


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
    classes = read_class_file(class_file) if class_file.is_file() else list(VOC_CLASSES)
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
                candidate_from_files(
                    image_id,
                    split,
                    image,
                    mask,
                    (lambda p=mask_path: labels_from_mask(p, classes))
                    if use_mask
                    else (lambda p=xml_path: xml_object_names(p)),
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
