"""Writing the built-in set in the PASCAL VOC 2012 layout (with `classes.txt` and the true train
masks in `oracle/`), in parallel worker processes, some files stored the awkward ways users'
files come, then importing it with the VOC adapter."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from wsss.platform.config import SyntheticConfig
from wsss.platform.datasets.adapters import import_dataset
from wsss.platform.datasets.images import write_palette_png
from wsss.platform.datasets.manifest import (
    ORACLE_LABELS,
    ORACLE_MASK_DIR,
    SPLITS,
    write_atomic,
)
from wsss.platform.datasets.stats import dataset_stats
from wsss.platform.datasets.synthetic.design import class_names, design_classes
from wsss.platform.datasets.synthetic.drawing import draw_image
from wsss.stages.labels import IGNORE_INDEX

SUMMARY_FILE = "synth_summary.json"


# The kinds of image file users' collections hold besides RGB JPEGs (`awkward_files`).
AWKWARD_KINDS = ("grey", "rgba", "sixteen_bit", "cmyk", "exif_turned", "one_pixel", "wide")


AWKWARD_SIZES = {"one_pixel": (1, 1), "wide": (10000, 200)}  # (width, height)


EXIF_ORIENTATION = 0x0112


def _annotation_xml(image_id: str, size: int, boxes: Sequence[tuple[str, tuple]]) -> str:
    objects = "".join(
        f"<object><name>{escape(name)}</name><difficult>0</difficult><bndbox>"
        f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax>"
        "</bndbox></object>"
        for name, (x0, y0, x1, y1) in boxes
    )
    return (
        f"<annotation><folder>WSSS-SYNTH</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>"
        f"{objects}</annotation>\n"
    )


def awkward_kind(config: SyntheticConfig, split: str, index: int) -> str | None:
    """How image `index` of `split` is stored when `config.awkward_files` is on, else None.
    The wide file stays out of val, whose pixel-pooled mIoU its pixels would outweigh (they
    do outweigh the rest of train's in the train rows: a set for tests, not for scores)."""
    if not config.awkward_files or split == "test":
        return None
    kinds = AWKWARD_KINDS if split == "train" else AWKWARD_KINDS[:-1]
    return kinds[index] if index < len(kinds) else None


def _write_image(path: Path, image: np.ndarray, kind: str | None) -> None:
    """`image` at `path` as a JPEG, or as the awkward `kind` of file (PNG data under the VOC
    layout's .jpg name where a JPEG cannot hold it, as in collections scraped from the web)."""
    picture = Image.fromarray(image)
    if kind is None:
        picture.save(path, format="JPEG", quality=92)
    elif kind == "grey":
        picture.convert("L").save(path, format="JPEG", quality=92)
    elif kind == "rgba":
        picture.convert("RGBA").save(path, format="PNG")
    elif kind == "sixteen_bit":
        grey = np.asarray(picture.convert("L"), np.uint16) * 257
        Image.fromarray(grey).save(path, format="PNG")
    elif kind == "cmyk":
        picture.convert("CMYK").save(path, format="JPEG", quality=92)
    elif kind == "exif_turned":
        # Stored turned a quarter to the left; orientation 6 tells a viewer to turn it back.
        turned = picture.transpose(Image.Transpose.ROTATE_90)
        exif = turned.getexif()
        exif[EXIF_ORIENTATION] = 6
        turned.save(path, format="JPEG", quality=92, exif=exif)
    else:
        picture.resize(AWKWARD_SIZES[kind], Image.Resampling.BILINEAR).save(path, format="PNG")


def _image_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, SPLITS.index(split), index])


def _render_chunk(args: tuple[Path, SyntheticConfig, int, str, list[int]]) -> list[dict]:
    out, config, seed, split, indices = args
    designs = design_classes(config)
    dominant = config.dominant_class
    # Within the images that show the dominant class, the label can only go missing where
    # another label remains (an empty label set is no training example); raise the drop
    # probability there so the overall share matches the configured rate.
    drop_probability = min(1.0, config.missing_label_rate / max(config.dominant_cooccurrence, 1e-6))
    records = []
    for index in indices:
        rng = np.random.default_rng(_image_seed(seed, split, index))
        drawn = draw_image(designs, config, rng)
        image_id = f"{split}_{index:06d}"
        kind = awkward_kind(config, split, index)
        _write_image(out / "JPEGImages" / f"{image_id}.jpg", drawn.image, kind)
        mask = drawn.mask
        if kind in AWKWARD_SIZES:
            resized = Image.fromarray(mask).resize(AWKWARD_SIZES[kind], Image.Resampling.NEAREST)
            mask = np.asarray(resized)
        given = list(drawn.labels)
        boxes = drawn.boxes
        if (
            split == "train"
            and dominant in given
            and len(given) > 1
            and rng.random() < drop_probability
        ):
            given.remove(dominant)
            boxes = [b for b in boxes if b[0] != dominant]
        (out / "Annotations" / f"{image_id}.xml").write_text(
            _annotation_xml(image_id, config.image_size, boxes)
        )
        mask_dir = out / ORACLE_MASK_DIR if split == "train" else out / ("SegmentationClass")
        write_palette_png(mask_dir / f"{image_id}.png", mask)
        labels = drawn.labels
        if kind in AWKWARD_SIZES:
            present = set(np.unique(mask).tolist()) - {0, IGNORE_INDEX}
            labels = [d.name for d in designs if d.name in labels and d.index in present] or labels
        records.append({"id": image_id, "split": split, "labels": labels})
    return records


def generate(out: Path, config: SyntheticConfig, seed: int = 0) -> None:
    """Write the synthetic set in the VOC layout under `out`.

    Layout: JPEGImages/, Annotations/ (image-level labels as VOC XML objects; the dominant
    class dropped where its label is missing), SegmentationClass/ (val, test),
    ImageSets/Segmentation/{train,val,test}.txt, classes.txt, oracle/ (train masks and true
    labels).
    """
    out = Path(out)
    for folder in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    (out / ORACLE_MASK_DIR).mkdir(parents=True, exist_ok=True)
    classes = class_names(config)
    counts = {"train": config.train_images, "val": config.val_images, "test": config.test_images}
    chunk = 32
    jobs = [
        (out, config, seed, split, list(range(start, min(start + chunk, n))))
        for split, n in counts.items()
        for start in range(0, n, chunk)
    ]
    if config.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=config.workers) as pool:
            records = [r for part in pool.map(_render_chunk, jobs) for r in part]
    else:
        records = [r for job in jobs for r in _render_chunk(job)]

    for split in SPLITS:
        ids = [r["id"] for r in records if r["split"] == split]
        (out / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    oracle = {r["id"]: r["labels"] for r in records if r["split"] == "train"}
    (out / ORACLE_LABELS).write_text(json.dumps(oracle))


def build_synthetic_dataset(out: Path, config: SyntheticConfig, seed: int = 0) -> dict:
    """Generate the set under `out`, import it there as a dataset folder (the same checks as
    any real dataset's), and write and return its statistics (`synth_summary.json`)."""
    generate(out, config, seed)
    import_dataset("synthetic", out, out, name=f"synthetic-{seed}", workers=config.workers)
    summary = dataset_stats(out, config.dominant_class)
    write_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary
