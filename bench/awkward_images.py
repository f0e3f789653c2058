"""Awkward image files through a whole run: the `smoke` preset's synthetic set written as a
`folder` data set in which the first train and val images are stored as a grey PNG, an RGBA
PNG, a 16-bit grey PNG, a CMYK JPEG, a JPEG whose pixels are stored turned and an EXIF
orientation turns them back, a 1x1 PNG and a 10000x200 PNG (a val image's mask resized with
it, its labels those of the resized mask). The set is imported with `wsss data import folder`
and run with `wsss run --preset smoke` (one epoch per training step), as a user would.

Prints the run's console, and as the last line one JSON object: `{"returncode", "awkward":
{id: kind}, "cams", "pseudo_masks", "images", "steps": {row: val mIoU}, "seconds"}`, where
`cams` and `pseudo_masks` count the files the run wrote (every image gets both).

Run: `python bench/awkward_images.py [--out runs/awkward_images] [--seed 0]` (the synthetic
set's seed).
"""

# wsss sets RAY_AUTH_MODE for the clusters it starts, and Ray reads that once, when imported.
import wsss  # noqa: F401  # isort: skip

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.platform.config import load_config
from wsss.platform.datasets.manifest import ManifestRow, load_dataset
from wsss.platform.datasets.synthetic import build_synthetic_dataset

WSSS = Path(sys.executable).parent / "wsss"
KINDS = ("grey", "rgba", "sixteen_bit", "cmyk", "exif_turned", "one_pixel", "wide")
EXIF_ORIENTATION = 0x0112
SIZES = {"one_pixel": (1, 1), "wide": (10000, 200)}  # (width, height)


def _write_awkward(image: Image.Image, kind: str, stem: Path) -> Path:
    """`image` written as `kind`; returns the file."""
    if kind == "grey":
        path, saved = stem.with_suffix(".png"), image.convert("L")
    elif kind == "rgba":
        path, saved = stem.with_suffix(".png"), image.convert("RGBA")
    elif kind == "sixteen_bit":
        grey = np.asarray(image.convert("L"), np.uint16) * 257
        path, saved = stem.with_suffix(".png"), Image.fromarray(grey)
    elif kind == "cmyk":
        path, saved = stem.with_suffix(".jpg"), image.convert("CMYK")
    elif kind == "exif_turned":
        # Stored turned a quarter to the left; orientation 6 says "turn 90 degrees clockwise".
        path, saved = stem.with_suffix(".jpg"), image.transpose(Image.Transpose.ROTATE_90)
        exif = saved.getexif()
        exif[EXIF_ORIENTATION] = 6
        saved.save(path, exif=exif, quality=95)
        return path
    else:
        path, saved = stem.with_suffix(".png"), image.resize(SIZES[kind], Image.Resampling.BILINEAR)
    saved.save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


def write_folder_set(synthetic: Path, out: Path) -> dict[str, str]:
    """The synthetic set at `synthetic` as a `folder` set in `out`, awkward files in train and
    val; returns {image id: kind} of the awkward ones."""
    info, rows = load_dataset(synthetic)
    awkward = {
        row.id: kind
        for split in ("train", "val")
        for kind, row in zip(KINDS, [r for r in rows if r.split == split], strict=False)
    }
    for folder in ("images", "masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    table = []
    for row in rows:
        table.append(_folder_row(synthetic, out, row, awkward.get(row.id), info.classes))
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in info.classes))
    with (out / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "image", "labels", "split", "mask"])
        writer.writeheader()
        writer.writerows(table)
    return awkward


def _folder_row(
    synthetic: Path, out: Path, row: ManifestRow, kind: str | None, classes: list[str]
) -> dict[str, str]:
    labels = list(row.labels)
    if kind is None:
        image = Path("images") / Path(row.image).name
        shutil.copy(synthetic / row.image, out / image)
    else:
        written = _write_awkward(Image.open(synthetic / row.image).convert("RGB"), kind,
                                 out / "images" / row.id)  # fmt: skip
        image = written.relative_to(out)
    mask = ""
    if row.mask:
        palette_mask = Image.open(synthetic / row.mask)
        if kind in SIZES:
            palette_mask = palette_mask.resize(SIZES[kind], Image.Resampling.NEAREST)
            present = set(np.unique(np.asarray(palette_mask)).tolist()) - {0, 255}
            labels = [classes[value] for value in sorted(present)] or labels
        mask = f"masks/{row.id}.png"
        palette_mask.save(out / mask)
    return {"id": row.id, "image": str(image), "labels": ";".join(labels), "split": row.split,
            "mask": mask}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/awkward_images"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    synthetic, source, dataset = out / "synthetic", out / "source", out / "dataset"
    build_synthetic_dataset(synthetic, load_config("smoke").data.synthetic, seed=args.seed)
    awkward = write_folder_set(synthetic, source)
    subprocess.run([str(WSSS), "data", "import", "folder", str(source), "--out", str(dataset),
                    "--strict"], check=True)  # fmt: skip
    settings = ["data.source=folder", f"data.root={dataset}", "step1.epochs=1", "step2.epochs=1",
                "step3.epochs=1", "name=awkward"]  # fmt: skip
    command = [str(WSSS), "run", "--preset", "smoke", "--runs-dir", str(out / "runs"),
               *[part for setting in settings for part in ("--set", setting)]]  # fmt: skip
    started = time.perf_counter()
    run = subprocess.run(command)
    seconds = time.perf_counter() - started
    run_dir = out / "runs" / "awkward"
    report_file = run_dir / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    _, rows = load_dataset(dataset)
    result = {
        "returncode": run.returncode,
        "awkward": awkward,
        "images": len(rows),
        "cams": len(list((run_dir / "step1" / "cams").glob("*.npz"))),
        "pseudo_masks": len(list((run_dir / "step2" / "pseudo_masks").glob("*.png"))),
        "steps": {row: round(s["miou"], 4) for row, s in report.get("steps", {}).items()},
        "seconds": round(seconds, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
