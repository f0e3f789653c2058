"""`wsss predict`: segment new images with a finished run's best model, through Ray Data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.data

from wsss.platform.config import WsssConfig
from wsss.platform.ray_cluster import ray_session
from wsss.platform.steps.segmentation import SEGMENTER_FILE, segment_images

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

    Returns {"written": n, "unreadable": [(path, reason), ...]}; an unreadable image (or a
    path that does not exist) is reported and the rest go on.
    """
    model_file = Path(run_dir) / "step3" / SEGMENTER_FILE
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} is missing: {run_dir} holds no finished run")
    out_dir.mkdir(parents=True, exist_ok=True)
    images = collect_images(inputs)
    if not images:
        raise FileNotFoundError(f"no images in {', '.join(map(str, inputs))}")
    rows = [{"id": image_id, "image": str(path.resolve())} for image_id, path in images]
    with ray_session(config.ray):
        results = segment_images(
            model_file, ray.data.from_items(rows), out_dir, config.step3.tta, config.ray.num_cpus
        ).to_pandas()
    failed = results[results["error"] != ""]
    return {
        "written": int((results["error"] == "").sum()),
        "unreadable": list(zip(failed["image"], failed["error"], strict=True)),
    }
