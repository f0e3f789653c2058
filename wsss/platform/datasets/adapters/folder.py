"""A folder of images with a CSV or JSON table of labels per image."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from wsss.platform.datasets.adapters.common import AdapterOutput, read_class_file, register_adapter
from wsss.platform.datasets.manifest import (
    BACKGROUND,
    Candidate,
    DatasetError,
    check_class_list,
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
        class_list = read_class_file(class_path)
    else:
        union = sorted({label for c in candidates for label in c.labels} - {BACKGROUND})
        class_list = check_class_list([BACKGROUND, *union], str(table_path))
    return AdapterOutput(class_list, candidates)
