"""`wsss predict`: segment new images with a finished run's best model, through Ray Data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.data

from wsss.platform.config import WsssConfig
from wsss.platform.console import Progress
from wsss.platform.ray_cluster import ray_session
from wsss.platform.runners.outputs import SEGMENTER_FILE
from wsss.platform.runners.segmentation import segment_images

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def collect_images(inputs: list[Path]) -> list[tuple[str, Path]]:
    """(output id, path) for every image file named or found (recursively) in a folder.

    Ids are the path below the named folder with '/' replaced by '__', so images of the same
    name in different folders never overwrite each other.
    """
    found: list[tuple[str, Path]] = []
    for item in inputs:
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                found.append((str(path.relative_to(item).with_suffix("")).replace("/", "__"), path))
        else:
            found.append((item.stem, item))
    return found


def predict_images(
    run_dir: Path, inputs: list[Path], out_dir: Path, config: WsssConfig
) -> dict[str, Any]:
    """Write `<id>.png` and `<id>_overlay.png` per readable image into `out_dir`.

    Paths may be relative to the current folder: they are resolved here, before any Ray
    worker (which runs elsewhere) sees them. Returns {"written": n, "unreadable": [(path,
    reason), ...]}; an unreadable image (or a path that does not exist) is reported and the
    rest go on.
    """
    model_file = Path(run_dir).resolve() / "step3" / SEGMENTER_FILE
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} is missing: {run_dir} holds no finished run")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    images = collect_images(inputs)
    if not images:
        raise FileNotFoundError(f"no images in {', '.join(map(str, inputs))}")
    rows = [{"id": image_id, "image": str(path.resolve())} for image_id, path in images]
    progress = Progress("[predict] segmented", len(rows))
    written, unreadable = 0, []
    with ray_session(config.ray, training=False):
        results = segment_images(
            model_file,
            ray.data.from_items(rows),
            out_dir,
            config.step3.test_time_augmentation,
            config.ray,
        )
        for batch in results.iter_batches(batch_format="numpy", batch_size=None):
            for path, error in zip(batch["image"], batch["error"], strict=True):
                if error:
                    unreadable.append((str(path), str(error)))
                else:
                    written += 1
            progress.update(len(batch["image"]))
    progress.finish()
    return {"written": written, "unreadable": unreadable}
