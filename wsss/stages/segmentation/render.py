"""Pictures of masks: VOC colours, colour over image, panels side by side, and a legend.

All functions take and return uint8 arrays: images RGB [H, W, 3], masks class indices [H, W]
with 0 = background and 255 = ignore.
"""

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsss.stages.labels import BACKGROUND_INDEX, IGNORE_INDEX, voc_palette

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
LEGEND_ROW = 14  # pixels per legend line: a 10 px swatch and PIL's default bitmap font
LEGEND_SWATCH = 10


def colorize(mask: np.ndarray) -> np.ndarray:
    """VOC-palette colours of a uint8 class-index mask [H, W], as uint8 RGB [H, W, 3]."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.shape} {mask.dtype}")
    return _PALETTE[mask]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """`image` [H, W, 3] uint8 with each class pixel of `mask` [H, W] uint8 blended to its colour.

    A class pixel becomes `round((1 - alpha) * image + alpha * colour)`; background (0) and
    ignore (255) pixels keep the image, so only predicted objects are tinted. `alpha` in [0, 1].
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    tinted = (mask != BACKGROUND_INDEX) & (mask != IGNORE_INDEX)
    blended = (1.0 - alpha) * image[tinted] + alpha * colorize(mask)[tinted]
    result = image.copy()
    result[tinted] = np.rint(blended).astype(np.uint8)
    return result


def side_by_side(*panels: np.ndarray, separator: int = 2) -> np.ndarray:
    """Panels uint8 [H, W_i, 3] in a row, `separator` white columns between neighbours.

    The result is uint8 [H, sum(W_i) + separator * (n - 1), 3]; all panels share one height.
    """
    if not panels:
        raise ValueError("needs at least one panel")
    if separator < 0:
        raise ValueError(f"separator must be >= 0, got {separator}")
    height = panels[0].shape[0]
    for panel in panels:
        if panel.ndim != 3 or panel.shape[2] != 3 or panel.dtype != np.uint8:
            raise ValueError(f"panels must be uint8 [H, W, 3], got {panel.shape} {panel.dtype}")
        if panel.shape[0] != height:
            raise ValueError(f"panel heights differ: {height} and {panel.shape[0]}")
    gap = np.full((height, separator, 3), 255, dtype=np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row.extend((gap, panel))
    return np.concatenate(row, axis=1)


def legend(class_ids: Sequence[int], class_names: Sequence[str]) -> np.ndarray:
    """A white strip with one line per class of `class_ids`: its palette colour as a square
    swatch, then `class_names[class_id]`. uint8 [LEGEND_ROW * max(1, n), W, 3], W the width of
    the longest line; with no class it says so ("no object class")."""
    font = ImageFont.load_default()
    lines = [(class_id, class_names[class_id]) for class_id in class_ids]
    texts = [name for _, name in lines] or ["no object class"]
    text_width = max(int(font.getlength(text)) for text in texts)
    width = LEGEND_SWATCH + 4 + text_width + 2
    strip = Image.new("RGB", (width, LEGEND_ROW * len(texts)), "white")
    draw = ImageDraw.Draw(strip)
    for row, text in enumerate(texts):
        top = row * LEGEND_ROW
        if lines:
            colour = tuple(int(c) for c in _PALETTE[lines[row][0]])
            swatch = (1, top + 2, LEGEND_SWATCH, top + 1 + LEGEND_SWATCH)
            draw.rectangle(swatch, fill=colour, outline="black")
        draw.text((LEGEND_SWATCH + 4, top + 1), text, fill="black", font=font)
    return np.asarray(strip, dtype=np.uint8)


def with_legend(panel: np.ndarray, mask: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """`panel` uint8 [H, W, 3] above the `legend` of the object classes in `mask` (neither
    background nor ignore), both padded with white to the wider of the two."""
    present = [int(c) for c in np.unique(mask) if c not in (BACKGROUND_INDEX, IGNORE_INDEX)]
    strip = legend(present, class_names)
    width = max(panel.shape[1], strip.shape[1])

    def padded(picture: np.ndarray) -> np.ndarray:
        right = np.full((picture.shape[0], width - picture.shape[1], 3), 255, np.uint8)
        return np.concatenate([picture, right], axis=1)

    return np.concatenate([padded(panel), padded(strip)], axis=0)
