"""What every adapter shares: its output, the registry of formats, and reading class lists,
labels from masks and VOC XML annotations."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss.platform.datasets.images import ImageError, read_mask
from wsss.platform.datasets.manifest import (
    BACKGROUND,
    Candidate,
    DatasetError,
    check_class_list,
)
from wsss.registry import Registry
from wsss.stages.labels import IGNORE_INDEX


@dataclass
class AdapterOutput:
    classes: list[str]
    candidates: list[Candidate]


Adapter = Callable[..., AdapterOutput]
ADAPTERS: Registry[Adapter] = Registry("dataset format")


def register_adapter(name: str) -> Callable[[Adapter], Adapter]:
    """Add the adapter of the dataset format `name`."""
    return ADAPTERS.register(name)


def get_adapter(name: str) -> Adapter:
    """The adapter of the dataset format `name`; an unknown one raises `DatasetError` listing
    the formats there are."""
    try:
        return ADAPTERS.get(name)
    except ValueError as error:
        raise DatasetError(str(error)) from None


def read_class_file(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if names and names[0] != BACKGROUND:
        names = [BACKGROUND, *names]
    return check_class_list(names, str(path))


def labels_from_mask(path: Path, classes: list[str]) -> list[str]:
    """Object class names present in a class-index mask (background and 255 excluded)."""
    values = {int(v) for v in np.unique(read_mask(path))} - {0, IGNORE_INDEX}
    unknown = sorted(v for v in values if v >= len(classes))
    if unknown:
        raise ImageError(path, f"class indices {unknown} outside 0..{len(classes) - 1} and 255")
    return [classes[v] for v in sorted(values)]


def xml_object_names(path: Path) -> list[str]:
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise ImageError(path, f"annotation is not valid XML: {exc}") from None
    return [name.text.strip() for name in tree.getroot().iterfind("object/name") if name.text]


def candidate_from_files(
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
